//! Sources of ServiceEntries. A source knows nothing about DNS: it publishes the complete set of
//! what it currently declares, and the name table is rebuilt from that.

pub mod file;
pub mod service_entry;

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;

/// "These hosts are declared by this ServiceEntry, with these explicit addresses."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// Where the entry came from, e.g. the manifest file.
    pub origin: Arc<str>,
    pub namespace: String,
    pub name: String,
    /// Lower-cased, fully qualified.
    pub hosts: Vec<Name>,
    /// Explicit addresses (`spec.addresses`, CIDRs left out).
    pub addresses: Vec<IpAddr>,
    /// The entry has no `spec.addresses` at all, so its hosts need an allocated VIP.
    pub needs_vip: bool,
}

impl Declaration {
    /// Stable ordering key: every replica sorts declarations the same way.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.origin, &self.namespace, &self.name)
    }

    pub fn id(&self) -> String {
        format!("{} {}/{}", self.origin, self.namespace, self.name)
    }
}

/// Everything one source declares right now.
pub type DeclarationSet = Arc<Vec<Declaration>>;
