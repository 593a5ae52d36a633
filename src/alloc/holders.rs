//! Who holds each stored VIP, and how many addresses of each pool are held. Built once and then
//! followed from one state to the next by what changed between them, so that a transaction
//! choosing one new VIP in a big mesh does not index every record again.

use std::collections::HashMap;
use std::net::IpAddr;

use imbl::ordmap::DiffItem;

use super::allocator::Policy;
use super::state::Records;

#[derive(Clone, Default)]
pub struct Holders {
    /// The records this index describes.
    records: Records,
    owners: HashMap<IpAddr, String>,
    /// Per pool, in the policy's order.
    held: Vec<u128>,
}

impl Holders {
    /// Brings the index to `records`: a walk over what differs from the records it describes,
    /// which for two states of one store is what the transactions between them changed.
    pub(super) fn follow(&mut self, policy: &Policy, records: &Records) {
        if self.held.len() != policy.pools.len() {
            *self = Holders {
                held: vec![0; policy.pools.len()],
                ..Holders::default()
            };
        }
        let old = std::mem::replace(&mut self.records, records.clone());
        for item in old.diff(records) {
            let (before, after) = match item {
                DiffItem::Add(host, record) => (None, Some((host, record))),
                DiffItem::Remove(host, record) => (Some((host, record)), None),
                DiffItem::Update { old, new } => (Some(old), Some(new)),
            };
            if let Some((host, record)) = before {
                for address in &record.addresses {
                    self.release(policy, *address, host);
                }
            }
            if let Some((host, record)) = after {
                for address in &record.addresses {
                    self.take(policy, *address, host);
                }
            }
        }
    }

    /// Says that the index now describes `records`: every address that changed hands between
    /// the records it described and these went through [`Holders::take`] and
    /// [`Holders::release`].
    pub(super) fn settle(&mut self, records: &Records) {
        self.records = records.clone();
    }

    pub(super) fn owner(&self, address: &IpAddr) -> Option<&str> {
        self.owners.get(address).map(String::as_str)
    }

    /// Addresses of the `pool`th pool held by records.
    pub(super) fn held(&self, pool: usize) -> u128 {
        self.held[pool]
    }

    pub(super) fn take(&mut self, policy: &Policy, address: IpAddr, host: &str) {
        if self.owners.insert(address, host.to_string()).is_none() {
            self.count(policy, address, true);
        }
    }

    /// Frees `address` if `host` holds it (a damaged state may list it under two hosts).
    pub(super) fn release(&mut self, policy: &Policy, address: IpAddr, host: &str) {
        if self.owner(&address) == Some(host) {
            self.owners.remove(&address);
            self.count(policy, address, false);
        }
    }

    fn count(&mut self, policy: &Policy, address: IpAddr, add: bool) {
        for (held, pool) in self.held.iter_mut().zip(&policy.pools) {
            if pool.is_usable(address) {
                *held = if add {
                    held.saturating_add(1)
                } else {
                    held.saturating_sub(1)
                };
            }
        }
    }
}
