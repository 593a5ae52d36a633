//! Who holds each stored VIP, and how many addresses of each pool are held. Built once and then
//! followed from one state to the next by what changed between them, so that a transaction
//! choosing one new VIP in a big mesh does not index every record again.

use std::collections::HashMap;
use std::net::IpAddr;

use super::allocator::Policy;
use super::state::{Records, follow_records};

#[derive(Clone, Default)]
pub struct Holders {
    /// The records this index describes.
    records: Records,
    owners: Owners,
}

/// Who holds each address, and the count per pool: kept apart from the records so that a walk
/// over the records can change it.
#[derive(Clone, Default)]
struct Owners {
    by_address: HashMap<IpAddr, String>,
    /// Per pool, in the policy's order.
    held: Vec<u128>,
}

impl Owners {
    fn take(&mut self, policy: &Policy, address: IpAddr, host: &str) {
        if self.by_address.insert(address, host.to_string()).is_none() {
            policy.count_usable(&mut self.held, address, true);
        }
    }

    /// Frees `address` if `host` holds it (a damaged state may list it under two hosts).
    fn release(&mut self, policy: &Policy, address: IpAddr, host: &str) {
        if self
            .by_address
            .get(&address)
            .is_some_and(|owner| owner == host)
        {
            self.by_address.remove(&address);
            policy.count_usable(&mut self.held, address, false);
        }
    }
}

impl Holders {
    /// Brings the index to `records`: a walk over what differs from the records it describes,
    /// which for two states of one store is what the transactions between them changed.
    pub(super) fn follow(&mut self, policy: &Policy, records: &Records) {
        if self.owners.held.len() != policy.pools.len() {
            *self = Holders::default();
            self.owners.held = vec![0; policy.pools.len()];
        }
        let owners = &mut self.owners;
        follow_records(&mut self.records, records, |host, before, after| {
            for address in before.iter().flat_map(|r| &r.addresses) {
                owners.release(policy, *address, host);
            }
            for address in after.iter().flat_map(|r| &r.addresses) {
                owners.take(policy, *address, host);
            }
        });
    }

    /// Says that the index now describes `records`: every address that changed hands between
    /// the records it described and these went through [`Holders::take`] and
    /// [`Holders::release`].
    pub(super) fn settle(&mut self, records: &Records) {
        self.records = records.clone();
    }

    pub(super) fn owner(&self, address: &IpAddr) -> Option<&str> {
        self.owners.by_address.get(address).map(String::as_str)
    }

    /// Addresses of the `pool`th pool held by records.
    pub(super) fn held(&self, pool: usize) -> u128 {
        self.owners.held[pool]
    }

    pub(super) fn take(&mut self, policy: &Policy, address: IpAddr, host: &str) {
        self.owners.take(policy, address, host);
    }

    /// Frees `address` if `host` holds it (a damaged state may list it under two hosts).
    pub(super) fn release(&mut self, policy: &Policy, address: IpAddr, host: &str) {
        self.owners.release(policy, address, host);
    }
}
