//! What the stores persist: one record per host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

/// Format marker written with every state, so a future layout can be told apart.
pub const FORMAT: &str = "globaldns.io/allocations/v1";

/// A host's VIPs (at most one per address family, IPv4 first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    pub addresses: Vec<IpAddr>,
    /// Set by an operator (`dnsctl allocate`): never moved and never released automatically.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// Unix seconds when the last declaration of the host went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Allocated automatically for a declared host.
    Allocated,
    Pinned,
    /// No longer declared; kept until the grace period ends.
    Released,
}

impl Record {
    pub fn state(&self) -> RecordState {
        match (self.pinned, self.released_at) {
            (true, _) => RecordState::Pinned,
            (false, Some(_)) => RecordState::Released,
            (false, None) => RecordState::Allocated,
        }
    }
}

/// The SOA serial given to one content of the served zones. Kept beside the allocations so
/// that every replica sharing the store gives the same content the same serial, and a serial
/// only ever grows (see the publisher).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSerial {
    pub serial: u32,
    /// The content's fingerprint (hex).
    pub content: String,
}

/// Every allocation, keyed by host (lower-case FQDN without the trailing dot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocState {
    pub records: BTreeMap<String, Record>,
    /// Addresses found in storage that could not be read as records (a damaged shard): nobody
    /// may be given them until the damage is repaired.
    pub unreadable: BTreeSet<IpAddr>,
    pub zone_serial: Option<ZoneSerial>,
}

/// The serialized form: versioned and human-readable.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    allocations: BTreeMap<String, Record>,
    #[serde(default, rename = "zoneSerial")]
    zone_serial: Option<ZoneSerial>,
}

/// [`Document`] for writing, borrowing the records.
#[derive(Serialize)]
struct DocumentRef<'a> {
    format: &'a str,
    allocations: &'a BTreeMap<String, Record>,
    #[serde(rename = "zoneSerial", skip_serializing_if = "Option::is_none")]
    zone_serial: &'a Option<ZoneSerial>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a globaldns allocation document: {0}")]
    Syntax(String),
    #[error("unknown format {0:?} (this build reads {FORMAT})")]
    Format(String),
    #[error("host {0:?} is not a lower-case DNS name")]
    Host(String),
    #[error("address {address} is held by both {first} and {second}")]
    Duplicate {
        address: IpAddr,
        first: String,
        second: String,
    },
}

impl AllocState {
    pub fn to_json(&self) -> String {
        let doc = DocumentRef {
            format: FORMAT,
            allocations: &self.records,
            zone_serial: &self.zone_serial,
        };
        let mut text = serde_json::to_string_pretty(&doc).expect("records serialize");
        text.push('\n');
        text
    }

    /// Parses and validates a stored document; anything doubtful is an error, never a guess.
    pub fn from_json(text: &str) -> Result<AllocState, DecodeError> {
        let doc: Document =
            serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?;
        if doc.format != FORMAT {
            return Err(DecodeError::Format(doc.format));
        }
        let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (host, record) in &doc.allocations {
            if host_key_from_str(host).as_deref() != Some(host.as_str()) {
                return Err(DecodeError::Host(host.clone()));
            }
            for address in &record.addresses {
                if let Some(first) = owners.insert(*address, host) {
                    return Err(DecodeError::Duplicate {
                        address: *address,
                        first: first.into(),
                        second: host.clone(),
                    });
                }
            }
        }
        Ok(AllocState {
            records: doc.allocations,
            unreadable: BTreeSet::new(),
            zone_serial: doc.zone_serial,
        })
    }
}

/// The record key of a host name.
pub fn host_key(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

/// Normalizes what a person typed (`Reviews.Default.Global.`) into a record key.
pub fn host_key_from_str(host: &str) -> Option<String> {
    let name = Name::from_ascii(host).ok()?;
    (!name.is_root() && !host.is_empty()).then(|| host_key(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let mut state = AllocState::default();
        state.records.insert(
            "a.global".into(),
            Record {
                addresses: vec!["240.0.0.1".parse().unwrap()],
                ..Default::default()
            },
        );
        state.records.insert(
            "b.global".into(),
            Record {
                addresses: vec!["240.0.0.2".parse().unwrap()],
                pinned: true,
                released_at: Some(5),
            },
        );
        state.zone_serial = Some(ZoneSerial {
            serial: 1_764_000_000,
            content: "00ff".into(),
        });
        let text = state.to_json();
        assert!(
            text.contains(FORMAT)
                && text.contains("\"pinned\": true")
                && text.contains("releasedAt")
                && text.contains("zoneSerial")
        );
        assert_eq!(AllocState::from_json(&text).unwrap(), state);

        assert!(matches!(
            AllocState::from_json(&text[..text.len() / 2]),
            Err(DecodeError::Syntax(_))
        ));
        assert!(matches!(
            AllocState::from_json(""),
            Err(DecodeError::Syntax(_))
        ));
        let other = text.replace(FORMAT, "globaldns.io/allocations/v9");
        assert!(matches!(
            AllocState::from_json(&other),
            Err(DecodeError::Format(_))
        ));
        let dup = text.replace("240.0.0.2", "240.0.0.1");
        assert!(matches!(
            AllocState::from_json(&dup),
            Err(DecodeError::Duplicate { .. })
        ));
        let upper = text.replace("a.global", "A.global");
        assert!(matches!(
            AllocState::from_json(&upper),
            Err(DecodeError::Host(_))
        ));
    }

    #[test]
    fn keys_are_lower_case_without_the_root() {
        assert_eq!(
            host_key_from_str("Reviews.Default.Global.").unwrap(),
            "reviews.default.global"
        );
        assert_eq!(host_key_from_str("*.apps.global").unwrap(), "*.apps.global");
        assert_eq!(host_key_from_str("."), None);
        assert_eq!(host_key_from_str("a..b"), None);
    }
}
