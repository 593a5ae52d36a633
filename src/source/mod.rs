//! Sources of ServiceEntries. A source knows nothing about DNS: it publishes what it currently
//! declares as shared sets, rebuilding only the sets a change touched (a file, a bucket of a
//! cluster's entries); the publisher tells the change by the sets that are new.

pub mod file;
pub mod kube;
mod manifest;
pub mod readiness;
pub mod service_entry;
pub mod set;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use internment::ArcIntern;
use ipnet::IpNet;
use tracing::warn;

use service_entry::{EntryError, Port, Resolution, ServiceEntry};

/// "These hosts are declared by this ServiceEntry, with these explicit addresses", and where
/// it was read. What the entry says is shared: a mesh declares the same entry in every cluster
/// (a GitOps repository applied everywhere), and a million declarations of a hundred thousand
/// hosts then hold a hundred thousand contents, not a million.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// Where the entry came from, e.g. the manifest file.
    pub origin: Arc<str>,
    content: ArcIntern<Content>,
}

/// What one ServiceEntry declares, apart from where it was read. Interned: equal contents are
/// one allocation, freed with the last declaration holding it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Content {
    pub namespace: String,
    pub name: String,
    /// Lower-cased, fully qualified.
    pub hosts: Vec<Name>,
    /// Explicit addresses (`spec.addresses`, CIDRs left out).
    pub addresses: Vec<IpAddr>,
    /// The entry has no `spec.addresses` at all, so its hosts need an allocated VIP.
    pub needs_vip: bool,
    /// `spec.resolution`, carried for the data-plane work (what Istio's sidecar does with the
    /// entry depends on it).
    pub resolution: Option<Resolution>,
    /// `spec.ports`, carried for SRV records; boxed so an entry without ports costs 16 bytes.
    pub ports: Box<[Port]>,
    /// `metadata.labels`, carried for the data-plane work (no allocation when there are none).
    pub labels: BTreeMap<String, String>,
    /// What the entry's `status.addresses` holds (istiod's VIPs, or ours written back), by
    /// host: never handed to another host.
    pub claimed: Box<[(Name, IpAddr)]>,
}

impl std::ops::Deref for Declaration {
    type Target = Content;

    fn deref(&self) -> &Content {
        &self.content
    }
}

impl Declaration {
    /// `content`, read from `origin`.
    pub fn new(origin: Arc<str>, content: Content) -> Declaration {
        Declaration {
            origin,
            content: ArcIntern::new(content),
        }
    }

    /// The same declaration with its content changed by `change`.
    #[cfg(test)]
    pub fn changed(&self, change: impl FnOnce(&mut Content)) -> Declaration {
        let mut content = Content::clone(&self.content);
        change(&mut content);
        Declaration::new(self.origin.clone(), content)
    }

    /// Reads one typed ServiceEntry; also returns the CIDRs of `spec.addresses`, which have no
    /// single address to answer with, for the caller to report.
    pub fn from_entry(
        origin: Arc<str>,
        mut se: ServiceEntry,
    ) -> Result<(Declaration, Vec<IpNet>), EntryError> {
        let mut hosts = se.host_names()?;
        let mut addresses = se.addresses()?;
        fits_one_message(&addresses.ips)?;
        // Kept for the life of the source: no spare capacity (a mesh has many entries).
        hosts.shrink_to_fit();
        addresses.ips.shrink_to_fit();
        let needs_vip = se.spec.addresses.is_empty();
        let resolution = se.spec.resolution;
        let ports = std::mem::take(&mut se.spec.ports).into_boxed_slice();
        let namespace = se.namespace().to_string();
        let labels = std::mem::take(&mut se.metadata.labels);
        let claimed = se.status_addresses().into_boxed_slice();
        let mut name = se.metadata.name;
        name.shrink_to_fit();
        let content = Content {
            namespace,
            name,
            hosts,
            needs_vip,
            addresses: addresses.ips,
            resolution,
            ports,
            labels,
            claimed,
        };
        Ok((Declaration::new(origin, content), addresses.cidrs))
    }

    /// Reports what of the entry is not served: `cidrs` of `spec.addresses`, and ports whose
    /// name cannot make an SRV name.
    pub fn warn_ignored(&self, cidrs: &[IpNet]) {
        for cidr in cidrs {
            warn!(origin = %self.origin, namespace = %self.namespace, entry = %self.name, %cidr, "CIDR in spec.addresses has no single address to answer with; ignored");
        }
        for port in self.ports.iter() {
            if let Err(reason) = port.srv_labels() {
                warn!(origin = %self.origin, namespace = %self.namespace, entry = %self.name, port = port.number, name = port.name.as_deref().unwrap_or_default(), reason, "port name is not a DNS label; no SRV record for it");
            }
        }
    }

    /// Stable ordering key: every replica sorts declarations the same way.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.origin, &self.namespace, &self.name)
    }

    pub fn id(&self) -> String {
        format!("{} {}/{}", self.origin, self.namespace, self.name)
    }
}

/// Room for answer records in one DNS message: 65,535 bytes less the header, the longest
/// question and an OPT record.
const ANSWER_ROOM: usize = 65_535 - 12 - (255 + 4) - 11;

/// A host's addresses must fit in one answer (an ANY answer carries both families; over TCP too,
/// no message is bigger): with the name compressed, an A record takes 16 bytes, an AAAA 28.
/// More cannot be served, so the entry is refused like any other invalid one, by name.
fn fits_one_message(ips: &[IpAddr]) -> Result<(), EntryError> {
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    let v6 = ips.len() - v4;
    if v4 * 16 + v6 * 28 <= ANSWER_ROOM {
        return Ok(());
    }
    Err(EntryError::TooManyAddresses {
        v4,
        v6,
        max_v4: ANSWER_ROOM / 16,
        max_v6: ANSWER_ROOM / 28,
    })
}

/// Everything one source declares right now.
pub type DeclarationSet = Arc<Vec<Declaration>>;
