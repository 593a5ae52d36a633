//! The part of Istio's `ServiceEntry` (`networking.istio.io`) that globaldns reads.
//!
//! Unknown fields are ignored so newer Istio releases keep working; the fields we do read are
//! typed, so a malformed entry is rejected with a precise error instead of being half-served.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::rr::Name;
use ipnet::IpNet;
use serde::Deserialize;

/// API versions under which Istio serves the same ServiceEntry schema.
pub const API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

pub const KIND: &str = "ServiceEntry";

#[derive(Clone, Debug, Deserialize)]
pub struct ServiceEntry {
    pub metadata: ObjectMeta,
    pub spec: ServiceEntrySpec,
    #[serde(default)]
    pub status: ServiceEntryStatus,
}

/// What istiod (and globaldns) write back; only the VIPs given to the entry's hosts are read.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServiceEntryStatus {
    #[serde(default)]
    pub addresses: Vec<StatusAddress>,
}

/// One VIP given to one host of the entry (`{value: 240.240.0.5, host: reviews.global}`).
#[derive(Clone, Debug, Deserialize)]
pub struct StatusAddress {
    pub value: String,
    #[serde(default)]
    pub host: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    pub resolution: Option<Resolution>,
    pub location: Option<Location>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub number: u16,
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub target_port: Option<u16>,
}

impl Port {
    /// The first two labels of this port's SRV name, the way Kubernetes DNS names service ports:
    /// the port name with an underscore (lower-cased), and `_udp` for UDP or `_tcp` for every
    /// other (TCP-based) protocol. `Ok(None)` for a port without a name; an error when the name
    /// is not a DNS label (RFC 1123: letters, digits and inner hyphens, at most 62 here so that
    /// the underscore fits in 63).
    pub fn srv_labels(&self) -> Result<Option<(String, &'static str)>, &'static str> {
        let Some(name) = self.name.as_deref() else {
            return Ok(None);
        };
        if name.is_empty() || name.len() > 62 {
            return Err("empty or longer than 62 characters");
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("only letters, digits and hyphens make a DNS label");
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err("a DNS label neither starts nor ends with a hyphen");
        }
        let udp = self
            .protocol
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case("udp"));
        let label = format!("_{}", name.to_ascii_lowercase());
        Ok(Some((label, if udp { "_udp" } else { "_tcp" })))
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Endpoint {
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    pub network: Option<String>,
    pub locality: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("spec.hosts is empty")]
    NoHosts,
    #[error("host {host:?} is not a valid DNS name: {reason}")]
    BadHost { host: String, reason: String },
    #[error("address {0:?} is neither an IP address nor a CIDR")]
    BadAddress(String),
    #[error("resolution STATIC needs endpoints or addresses")]
    StaticWithoutEndpoints,
    #[error(
        "{} addresses ({v4} IPv4, {v6} IPv6) do not fit in one DNS message (at most {max_v4} IPv4, or {max_v6} IPv6)",
        v4 + v6
    )]
    TooManyAddresses {
        v4: usize,
        v6: usize,
        max_v4: usize,
        max_v6: usize,
    },
}

/// The addresses of an entry, split into what can be served and the CIDRs that cannot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Addresses {
    pub ips: Vec<IpAddr>,
    pub cidrs: Vec<IpNet>,
}

impl ServiceEntry {
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// Hosts as lower-cased fully-qualified names.
    pub fn host_names(&self) -> Result<Vec<Name>, EntryError> {
        if self.spec.hosts.is_empty() {
            return Err(EntryError::NoHosts);
        }
        self.spec.hosts.iter().map(|h| parse_host(h)).collect()
    }

    /// `status.addresses` that read as one address for one host (a lower-cased FQDN); anything
    /// else there is left out, since the status is istiod's to write, not the user's.
    pub fn status_addresses(&self) -> Vec<(Name, IpAddr)> {
        let address = |value: &str| {
            value.parse::<IpAddr>().ok().or_else(|| {
                let net = value.parse::<IpNet>().ok()?;
                (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
            })
        };
        (self.status.addresses.iter())
            .filter_map(|a| Some((parse_host(&a.host).ok()?, address(&a.value)?)))
            .collect()
    }

    /// `spec.addresses`: IPs are served; a CIDR (allowed by Istio for TCP services) has no single
    /// address to answer with.
    pub fn addresses(&self) -> Result<Addresses, EntryError> {
        let mut out = Addresses::default();
        for raw in &self.spec.addresses {
            if let Ok(ip) = raw.parse::<IpAddr>() {
                out.ips.push(ip);
            } else if let Ok(net) = raw.parse::<IpNet>() {
                if net.prefix_len() == net.max_prefix_len() {
                    out.ips.push(net.addr());
                } else {
                    out.cidrs.push(net);
                }
            } else {
                return Err(EntryError::BadAddress(raw.clone()));
            }
        }
        if self.spec.resolution == Some(Resolution::Static)
            && self.spec.endpoints.is_empty()
            && out.ips.is_empty()
        {
            return Err(EntryError::StaticWithoutEndpoints);
        }
        Ok(out)
    }
}

fn parse_host(host: &str) -> Result<Name, EntryError> {
    let bad = |reason: String| EntryError::BadHost {
        host: host.to_string(),
        reason,
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(bad("empty or contains whitespace or '/'".into()));
    }
    let mut name = Name::from_ascii(host).map_err(|e| bad(e.to_string()))?;
    if name.iter().skip(1).any(|label| label.contains(&b'*'))
        || name
            .iter()
            .next()
            .is_some_and(|l| l.contains(&b'*') && l != b"*")
    {
        return Err(bad("'*' may only be the whole first label".into()));
    }
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_names_make_srv_labels_the_way_kubernetes_does() {
        let port = |name: Option<&str>, protocol: Option<&str>| Port {
            number: 80,
            protocol: protocol.map(String::from),
            name: name.map(String::from),
            target_port: None,
        };
        let labels = |name, protocol| port(name, protocol).srv_labels();
        assert_eq!(
            labels(Some("Http-Web"), Some("HTTP")),
            Ok(Some(("_http-web".into(), "_tcp")))
        );
        assert_eq!(
            labels(Some("dns"), Some("udp")),
            Ok(Some(("_dns".into(), "_udp")))
        );
        assert_eq!(
            labels(Some("grpc"), None),
            Ok(Some(("_grpc".into(), "_tcp")))
        );
        assert_eq!(labels(None, Some("TCP")), Ok(None));
        for bad in ["http_web", "-http", "http-", "a.b", "", &"x".repeat(63)] {
            assert!(labels(Some(bad), None).is_err(), "{bad:?}");
        }
    }

    use super::*;

    fn entry(yaml: &str) -> ServiceEntry {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn hosts_are_lowercase_fqdn_and_wildcards_checked() {
        let se =
            entry("metadata: {name: a}\nspec: {hosts: [Reviews.Default.Global, '*.foo.global']}");
        let names: Vec<String> = se
            .host_names()
            .unwrap()
            .iter()
            .map(|n| n.to_ascii())
            .collect();
        assert_eq!(names, ["reviews.default.global.", "*.foo.global."]);
        let bad = entry("metadata: {name: a}\nspec: {hosts: ['a.*.global']}");
        assert!(matches!(bad.host_names(), Err(EntryError::BadHost { .. })));
        let none = entry("metadata: {name: a}\nspec: {hosts: []}");
        assert_eq!(none.host_names(), Err(EntryError::NoHosts));
    }

    #[test]
    fn cidrs_are_split_from_ips() {
        let se = entry(
            "metadata: {name: a}\nspec: {hosts: [a.global], addresses: [240.0.0.1, 10.0.0.0/24, '2001:db8::1/128']}",
        );
        let a = se.addresses().unwrap();
        assert_eq!(
            a.ips,
            vec![
                "240.0.0.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(a.cidrs, vec!["10.0.0.0/24".parse::<IpNet>().unwrap()]);
        let junk = entry("metadata: {name: a}\nspec: {hosts: [a.global], addresses: [nope]}");
        assert_eq!(junk.addresses(), Err(EntryError::BadAddress("nope".into())));
    }

    #[test]
    fn typed_fields_reject_bad_values() {
        let port: Result<ServiceEntry, _> = serde_yaml_ng::from_str(
            "metadata: {name: a}\nspec: {hosts: [a.global], ports: [{number: 70000}]}",
        );
        assert!(port.is_err());
        let res: Result<ServiceEntry, _> = serde_yaml_ng::from_str(
            "metadata: {name: a}\nspec: {hosts: [a.global], resolution: SOMETIMES}",
        );
        assert!(res.is_err());
    }
}
