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

/// Records by host. A persistent map: a copy shares every node it did not change, so a store
/// transaction or a publish copies the allocations of a big mesh in O(1), and two states that
/// share a history are compared by walking only the parts they do not share
/// ([`imbl::OrdMap::diff`]).
pub type Records = imbl::OrdMap<String, Record>;

/// Every allocation, keyed by host (lower-case FQDN without the trailing dot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocState {
    pub records: Records,
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
    allocations: Records,
    #[serde(default, rename = "zoneSerial")]
    zone_serial: Option<ZoneSerial>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a globaldns allocation document: {0}")]
    Syntax(String),
    #[error("unknown format {0:?} (this build reads {FORMAT})")]
    Format(String),
    #[error("host {0:?} is not a lower-case DNS name")]
    Host(String),
    #[error("line {line}: {detail}")]
    Journal { line: usize, detail: String },
    #[error("address {address} is held by both {first} and {second}")]
    Duplicate {
        address: IpAddr,
        first: String,
        second: String,
    },
}

impl AllocState {
    /// The stored form: pretty-printed JSON, one line per address, hosts in order.
    pub fn to_json(&self) -> String {
        Renderer::default().render(self)
    }

    /// Parses and validates a stored document; anything doubtful is an error, never a guess.
    pub fn from_json(text: &str) -> Result<AllocState, DecodeError> {
        let doc: Document =
            serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?;
        if doc.format != FORMAT {
            return Err(DecodeError::Format(doc.format));
        }
        let state = AllocState {
            records: doc.allocations,
            unreadable: BTreeSet::new(),
            zone_serial: doc.zone_serial,
        };
        state.validate()?;
        Ok(state)
    }

    /// Checks what no stored state may hold, however it was read: a host key that is not a
    /// lower-case name, or an address given to two hosts.
    pub fn validate(&self) -> Result<(), DecodeError> {
        let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (host, record) in &self.records {
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
        Ok(())
    }
}

/// Writes states in their stored form, keeping each record's text from one call to the next: a
/// big mesh's state file is written whole on every change, and rendering only the records that
/// changed since the last call leaves the rest of the work a copy.
#[derive(Default)]
pub struct Renderer {
    /// Whether it rendered before (see [`Renderer::render`]).
    used: bool,
    /// The records `entries` were rendered from.
    records: Records,
    /// Per host: `"host": {...}`, indented for its place in the document.
    entries: BTreeMap<String, String>,
}

impl Renderer {
    /// The document for `state`. The first call writes every record straight into it and
    /// keeps nothing (a one-off write, as `dnsctl` makes, costs no more than that); later
    /// calls keep each record's text and render only what changed since the call before.
    pub fn render(&mut self, state: &AllocState) -> String {
        let first = !std::mem::replace(&mut self.used, true);
        let mut text = String::new();
        text.push_str("{\n  \"format\": ");
        text.push_str(&json(&FORMAT, 1));
        text.push_str(",\n  \"allocations\": {");
        if first {
            text.reserve(state.records.len() * 120);
            for (i, (host, record)) in state.records.iter().enumerate() {
                text.push_str(if i == 0 { "\n    " } else { ",\n    " });
                write_entry(&mut text, host, record);
            }
        } else {
            follow_records(
                &mut self.records,
                &state.records,
                |host, _, now| match now {
                    Some(record) => {
                        let mut entry = String::new();
                        write_entry(&mut entry, host, record);
                        self.entries.insert(host.clone(), entry);
                    }
                    None => {
                        self.entries.remove(host);
                    }
                },
            );
            text.reserve(self.entries.values().map(|e| e.len() + 6).sum());
            for (i, entry) in self.entries.values().enumerate() {
                text.push_str(if i == 0 { "\n    " } else { ",\n    " });
                text.push_str(entry);
            }
        }
        text.push_str(if state.records.is_empty() {
            "}"
        } else {
            "\n  }"
        });
        if let Some(serial) = &state.zone_serial {
            text.push_str(",\n  \"zoneSerial\": ");
            text.push_str(&json(serial, 1));
        }
        text.push_str("\n}\n");
        text
    }
}

/// Calls `each` with every host whose record differs between `last` and `records` (the record
/// as it was, as it is), then makes `last` `records`. Two states of one store share most of
/// their nodes, which the walk skips: what an index kept beside the records needs to follow them.
pub(super) fn follow_records(
    last: &mut Records,
    records: &Records,
    mut each: impl FnMut(&String, Option<&Record>, Option<&Record>),
) {
    use imbl::ordmap::DiffItem;
    let old = std::mem::replace(last, records.clone());
    for item in old.diff(records) {
        match item {
            DiffItem::Add(host, record) => each(host, None, Some(record)),
            DiffItem::Remove(host, record) => each(host, Some(record), None),
            DiffItem::Update {
                old: (host, before),
                new: (_, after),
            } => each(host, Some(before), Some(after)),
        }
    }
}

/// One host's lines in the `allocations` object, as serde would indent them there (the test
/// below holds it to that). Written field by field: a big state has a hundred thousand, and
/// going through serde and re-indenting each took most of a write.
fn write_entry(out: &mut String, host: &str, record: &Record) {
    use std::fmt::Write;
    out.push_str(&serde_json::to_string(host).expect("strings serialize"));
    out.push_str(": {\n      \"addresses\": [");
    for (i, address) in record.addresses.iter().enumerate() {
        let _ = write!(
            out,
            "{}\"{address}\"",
            if i == 0 { "\n        " } else { ",\n        " }
        );
    }
    out.push_str(if record.addresses.is_empty() {
        "]"
    } else {
        "\n      ]"
    });
    if record.pinned {
        out.push_str(",\n      \"pinned\": true");
    }
    if let Some(at) = record.released_at {
        let _ = write!(out, ",\n      \"releasedAt\": {at}");
    }
    out.push_str("\n    }");
}

/// `value` pretty-printed for a place `depth` objects deep.
fn json(value: &impl Serialize, depth: usize) -> String {
    let text = serde_json::to_string_pretty(value).expect("records serialize");
    text.replace('\n', &format!("\n{}", "  ".repeat(depth)))
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

    /// The document as serde writes it whole: what [`Renderer`] must write, however it got
    /// to the state.
    fn whole(state: &AllocState) -> String {
        #[derive(Serialize)]
        struct Whole<'a> {
            format: &'a str,
            allocations: &'a Records,
            #[serde(rename = "zoneSerial", skip_serializing_if = "Option::is_none")]
            zone_serial: &'a Option<ZoneSerial>,
        }
        let doc = Whole {
            format: FORMAT,
            allocations: &state.records,
            zone_serial: &state.zone_serial,
        };
        serde_json::to_string_pretty(&doc).unwrap() + "\n"
    }

    #[test]
    fn a_renderer_writes_what_serde_writes_whole() {
        let mut renderer = Renderer::default();
        let mut state = AllocState::default();
        assert_eq!(renderer.render(&state), whole(&state), "empty");
        for i in 0..50u8 {
            let host = format!("h{}.global", i % 7);
            match i % 5 {
                0 | 1 => {
                    let record = Record {
                        addresses: vec![
                            format!("240.0.0.{i}").parse().unwrap(),
                            format!("2001:2::{i:x}").parse().unwrap(),
                        ],
                        pinned: i % 3 == 0,
                        released_at: (i % 4 == 0).then_some(u64::from(i)),
                    };
                    state.records.insert(host, record);
                }
                2 if i % 3 == 0 => {
                    state.records.insert(host, Record::default());
                }
                2 => {
                    state.records.remove(&host);
                }
                3 => {
                    state.zone_serial = Some(ZoneSerial {
                        serial: u32::from(i),
                        content: format!("{i:02x}"),
                    })
                }
                _ => state.zone_serial = None,
            }
            assert_eq!(renderer.render(&state), whole(&state), "step {i}");
            assert_eq!(AllocState::from_json(&state.to_json()).unwrap(), state);
        }
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
