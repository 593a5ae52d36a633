//! The name table's nodes, by lower-cased wire name, in shards that successive tables share.
//!
//! A change to a few names copies the few shards holding them (a few hundred pointers each)
//! and shares every other shard with the table before, so a new snapshot of a big mesh costs
//! what changed, not the mesh. The name is hashed once: the hash picks the shard and then the
//! slot in it. Nodes sit behind `Arc`s, so copying a shard copies no answers.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

/// Something stored by its key.
pub(super) trait Keyed {
    fn key(&self) -> &[u8];
}

pub(super) struct Shards<N> {
    shards: Box<[Arc<HashTable<Arc<N>>>]>,
    /// Kept from table to table: a shard's slots were placed with it.
    hasher: RandomState,
}

impl<N> Clone for Shards<N> {
    fn clone(&self) -> Self {
        Shards {
            shards: self.shards.clone(),
            hasher: self.hasher.clone(),
        }
    }
}

/// Nodes per shard aimed for: copying a shard stays in the microseconds.
const PER_SHARD: usize = 256;

impl<N: Keyed + Clone> Shards<N> {
    /// Room for about `nodes` nodes (more fit; shards then grow).
    pub(super) fn with_capacity(nodes: usize) -> Self {
        let count = (nodes / PER_SHARD).next_power_of_two().clamp(1, 1 << 14);
        Shards {
            shards: (0..count).map(|_| Arc::new(HashTable::new())).collect(),
            hasher: RandomState::default(),
        }
    }

    fn place(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        // The high bits pick the shard; the table uses the low ones (and the top 7) within it.
        let shard = (hash.rotate_left(32) as usize) & (self.shards.len() - 1);
        (hash, shard)
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&N> {
        let (hash, shard) = self.place(key);
        self.shards[shard]
            .find(hash, |n| n.key() == key)
            .map(|n| &**n)
    }

    /// The node at `key` to change: its shard and the node itself are copied first when the
    /// table before shares them.
    pub(super) fn get_mut(&mut self, key: &[u8]) -> Option<&mut N> {
        let (hash, shard) = self.place(key);
        let table = Arc::make_mut(&mut self.shards[shard]);
        table.find_mut(hash, |n| n.key() == key).map(Arc::make_mut)
    }

    /// Adds `node`, replacing any node with its key.
    pub(super) fn insert(&mut self, node: N) {
        let (hash, shard) = self.place(node.key());
        let hasher = self.hasher.clone();
        let table = Arc::make_mut(&mut self.shards[shard]);
        match table.find_mut(hash, |n| n.key() == node.key()) {
            Some(slot) => *slot = Arc::new(node),
            None => {
                table.insert_unique(hash, Arc::new(node), |n| hasher.hash_one(n.key()));
            }
        }
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Arc<N>> {
        let (hash, shard) = self.place(key);
        let table = Arc::make_mut(&mut self.shards[shard]);
        let found = table.find_entry(hash, |n| n.key() == key).ok()?;
        Some(found.remove().0)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &N> {
        self.shards.iter().flat_map(|s| s.iter().map(|n| &**n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Item(Vec<u8>, u32);

    impl Keyed for Item {
        fn key(&self) -> &[u8] {
            &self.0
        }
    }

    #[test]
    fn a_copy_shares_until_changed_and_changes_stay_its_own() {
        let mut a = Shards::with_capacity(2000);
        for i in 0..2000u32 {
            a.insert(Item(i.to_be_bytes().to_vec(), i));
        }
        let mut b = a.clone();
        b.get_mut(&7u32.to_be_bytes()).unwrap().1 = 70;
        b.remove(&8u32.to_be_bytes());
        b.insert(Item(b"new".to_vec(), 1));
        assert_eq!(a.get(&7u32.to_be_bytes()).unwrap().1, 7);
        assert_eq!(b.get(&7u32.to_be_bytes()).unwrap().1, 70);
        assert!(a.get(&8u32.to_be_bytes()).is_some() && b.get(&8u32.to_be_bytes()).is_none());
        assert_eq!((a.iter().count(), b.iter().count()), (2000, 2000));
        let shared = (a.shards.iter().zip(b.shards.iter()))
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(
            shared + 3 >= a.shards.len(),
            "only the changed shards are copied"
        );
    }
}
