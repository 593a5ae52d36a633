//! How allocations are laid out in ConfigMaps.
//!
//! Hosts are spread over [`SHARDS`] ConfigMaps by the top bits of the SHA-256 of the host (the
//! same hash that picks a host's first VIP candidate). The mapping never changes, so an entry
//! never moves: a shard's ConfigMap is simply created the first time a host lands in it.
//!
//! One data entry per host: the key is the host with `_` written `__` and `*` written `_s`
//! (ConfigMap keys allow only `[-._a-zA-Z0-9]`); the value is the addresses, comma-separated,
//! then optional words: `pinned`, `released=<unix seconds>`. About 40 bytes per host, so 64
//! shards of at most [`MAX_SHARD_BYTES`] hold over a million hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::alloc::pool::host_hash;
use crate::alloc::state::{Record, ZoneSerial, host_key_from_str};

pub const SHARDS: usize = 64;
/// Format of the shard contents, in the `globaldns.io/format` annotation.
pub const FORMAT_VERSION: &str = "1";
pub const FORMAT_ANNOTATION: &str = "globaldns.io/format";
pub const SHARD_LABEL: &str = "globaldns.io/shard";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "globaldns");
/// On the first shard: the zones' serial and the content it was given for (see
/// [`ZoneSerial`]), as `<serial> <content>`.
pub const SERIAL_ANNOTATION: &str = "globaldns.io/zone-serial";
/// The shard that carries [`SERIAL_ANNOTATION`].
pub const SERIAL_SHARD: usize = 0;
/// Well below the API server's 1 MiB limit for ConfigMap data.
pub const MAX_SHARD_BYTES: usize = 768 * 1024;

pub fn shard_of(host: &str) -> usize {
    (host_hash(host) >> (128 - SHARDS.trailing_zeros())) as usize
}

pub fn shard_name(shard: usize) -> String {
    format!("globaldns-vips-{shard:02x}")
}

pub fn encode_key(host: &str) -> Option<String> {
    let mut key = String::with_capacity(host.len() + 4);
    for c in host.chars() {
        match c {
            '_' => key.push_str("__"),
            '*' => key.push_str("_s"),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => key.push(c),
            _ => return None,
        }
    }
    (key.len() <= 253).then_some(key)
}

pub fn decode_key(key: &str) -> Option<String> {
    let mut host = String::with_capacity(key.len());
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '_' => match chars.next()? {
                '_' => host.push('_'),
                's' => host.push('*'),
                _ => return None,
            },
            c => host.push(c),
        }
    }
    Some(host)
}

pub fn encode_value(record: &Record) -> String {
    let addresses: Vec<String> = record.addresses.iter().map(IpAddr::to_string).collect();
    let mut value = addresses.join(",");
    if record.pinned {
        value.push_str(" pinned");
    }
    if let Some(at) = record.released_at {
        value.push_str(&format!(" released={at}"));
    }
    value
}

pub fn decode_value(value: &str) -> Option<Record> {
    let mut words = value.split(' ');
    let addresses = words
        .next()?
        .split(',')
        .map(|a| a.parse().ok())
        .collect::<Option<Vec<IpAddr>>>()?;
    let mut record = Record {
        addresses,
        ..Default::default()
    };
    for word in words {
        match word.split_once('=') {
            None if word == "pinned" && !record.pinned => record.pinned = true,
            Some(("released", at)) if record.released_at.is_none() => {
                record.released_at = Some(at.parse().ok()?)
            }
            _ => return None,
        }
    }
    (!record.addresses.is_empty()).then_some(record)
}

pub fn encode_serial(serial: &ZoneSerial) -> String {
    format!("{} {}", serial.serial, serial.content)
}

/// `None` for anything but what [`encode_serial`] writes: the serial is then given anew.
pub fn decode_serial(text: &str) -> Option<ZoneSerial> {
    let (serial, content) = text.split_once(' ')?;
    if content.is_empty() || !content.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(ZoneSerial {
        serial: serial.parse().ok()?,
        content: content.to_string(),
    })
}

/// Why a shard cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("format {0:?} is not {FORMAT_VERSION}")]
    Format(Option<String>),
    #[error("key {0:?} is not an encoded host")]
    Key(String),
    #[error("entry {key:?} has an unreadable value {value:?}")]
    Value { key: String, value: String },
    #[error("host {host} belongs in shard {expected:02x}")]
    Misplaced { host: String, expected: usize },
}

/// Reads one shard's data into records.
pub fn decode_shard(
    shard: usize,
    format: Option<&str>,
    data: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Record>, ShardError> {
    if format != Some(FORMAT_VERSION) {
        return Err(ShardError::Format(format.map(str::to_string)));
    }
    let mut records = BTreeMap::new();
    for (key, value) in data {
        let host = decode_key(key)
            .filter(|h| host_key_from_str(h).as_deref() == Some(h.as_str()))
            .ok_or_else(|| ShardError::Key(key.clone()))?;
        if shard_of(&host) != shard {
            return Err(ShardError::Misplaced {
                expected: shard_of(&host),
                host,
            });
        }
        let record = decode_value(value).ok_or_else(|| ShardError::Value {
            key: key.clone(),
            value: value.clone(),
        })?;
        records.insert(host, record);
    }
    Ok(records)
}

/// Every address-looking word in a damaged shard, so none is handed out twice.
pub fn salvage(data: &BTreeMap<String, String>) -> BTreeSet<IpAddr> {
    data.values()
        .flat_map(|v| v.split([' ', ',', ';', '=']))
        .filter_map(|w| w.trim().parse::<IpAddr>().ok())
        .collect()
}

/// Bytes a shard's data takes against the API server's limit.
pub fn data_size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_valid_configmap_keys() {
        for host in [
            "reviews.default.global",
            "*.apps.global",
            "_http._tcp.x.global",
            "a__b.global",
        ] {
            let key = encode_key(host).unwrap();
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
                "{key}"
            );
            assert_eq!(decode_key(&key).unwrap(), host);
        }
        assert_eq!(encode_key("*.apps.global").unwrap(), "_s.apps.global");
        assert_eq!(decode_key("_x.global"), None);
        assert_eq!(encode_key("bad host"), None);
    }

    #[test]
    fn values_round_trip() {
        let record = Record {
            addresses: vec!["240.1.2.3".parse().unwrap(), "2001:2::7".parse().unwrap()],
            pinned: true,
            released_at: Some(42),
        };
        assert_eq!(
            encode_value(&record),
            "240.1.2.3,2001:2::7 pinned released=42"
        );
        assert_eq!(decode_value(&encode_value(&record)).unwrap(), record);
        for bad in [
            "",
            "240.1.2.3 pinned pinned",
            "nope",
            "240.1.2.3 released=x",
            "240.1.2.3 extra",
        ] {
            assert_eq!(decode_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(
            shard_of("reviews.default.global"),
            0x47 >> 2,
            "top six bits of the host hash"
        );
        let mut counts = [0usize; SHARDS];
        for i in 0..64_000 {
            counts[shard_of(&format!("svc{i}.ns{}.global", i % 100))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn damaged_shards_are_refused_but_their_addresses_salvaged() {
        let host = "reviews.default.global";
        let shard = shard_of(host);
        let mut data = BTreeMap::from([(host.to_string(), "240.1.2.3".to_string())]);
        assert_eq!(
            decode_shard(shard, Some("1"), &data).unwrap()[host].addresses[0].to_string(),
            "240.1.2.3"
        );
        assert!(matches!(
            decode_shard(shard, Some("2"), &data),
            Err(ShardError::Format(_))
        ));
        assert!(matches!(
            decode_shard(shard + 1, Some("1"), &data),
            Err(ShardError::Misplaced { .. })
        ));
        data.insert("other.global".into(), "240.9.9.9;garbage".into());
        assert!(decode_shard(shard, Some("1"), &data).is_err());
        let salvaged: Vec<String> = salvage(&data).iter().map(|a| a.to_string()).collect();
        assert_eq!(salvaged, ["240.1.2.3", "240.9.9.9"]);
    }
}
