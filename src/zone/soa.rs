//! Start-of-authority settings shared by every served zone: the SOA fields, and the name server
//! the apex NS record names.

use std::net::IpAddr;

use hickory_proto::rr::Name;
use hickory_proto::rr::rdata::SOA;

/// SOA fields. Names left unset are derived from the zone apex
/// (`ns.dns.<zone>` for the primary name server, `hostmaster.<zone>` for the mailbox).
#[derive(Clone, Debug)]
pub struct SoaSettings {
    pub mname: Option<Name>,
    pub rname: Option<Name>,
    pub refresh: i32,
    pub retry: i32,
    pub expire: i32,
    /// Negative-caching TTL (RFC 2308).
    pub minimum: u32,
    /// Where clients reach the primary name server (port 53 implied): its A/AAAA records when
    /// its name is inside the zone, also given as additional data with the apex NS. Resolvers
    /// that prime a stub zone (BIND `type stub`, unbound `stub-prime`) need them.
    pub ns_addresses: Vec<IpAddr>,
}

impl Default for SoaSettings {
    fn default() -> Self {
        SoaSettings::DEFAULT
    }
}

impl SoaSettings {
    /// The defaults, also those of the `--soa-*` flags.
    pub const DEFAULT: SoaSettings = SoaSettings {
        mname: None,
        rname: None,
        refresh: 7200,
        retry: 1800,
        expire: 86400,
        minimum: 30,
        ns_addresses: Vec::new(),
    };

    /// Name of the primary server of `apex`, also served as its NS record.
    pub fn primary(&self, apex: &Name) -> Name {
        self.mname
            .clone()
            .unwrap_or_else(|| under(apex, &["ns", "dns"]))
    }

    pub fn record(&self, apex: &Name, serial: u32) -> SOA {
        let rname = self
            .rname
            .clone()
            .unwrap_or_else(|| under(apex, &["hostmaster"]));
        SOA::new(
            self.primary(apex),
            rname,
            serial,
            self.refresh,
            self.retry,
            self.expire,
            self.minimum,
        )
    }
}

/// `labels` prepended to `apex`; falls back to the apex when the result would be too long.
fn under(apex: &Name, labels: &[&str]) -> Name {
    let mut name = apex.clone();
    for label in labels.iter().rev() {
        match name.prepend_label(*label) {
            Ok(longer) => name = longer,
            Err(_) => return apex.clone(),
        }
    }
    name
}
