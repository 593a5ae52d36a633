//! TSIG (RFC 8945) on zone transfers: checking the key and signature of a request, and signing
//! every message of the reply, the first over the request's MAC and each next one over the MAC
//! before it (§5.3.1). hickory-proto does the HMACs and the TSIG record's encoding.

use hickory_proto::ProtoError;
use hickory_proto::rr::rdata::tsig::{TSIG, make_tsig_record, signed_bitmessage_to_buf};
use hickory_proto::rr::{Name, TSigner};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// One TSIG key and what it opens.
#[derive(Clone)]
pub struct TransferKey {
    pub signer: TSigner,
    /// The apex (lower-cased wire form) of the one zone this key opens; every zone when `None`.
    pub zone: Option<Box<[u8]>>,
}

/// TSIG keys; printed by name only, so the secrets stay out of logs.
#[derive(Clone, Default)]
pub struct TsigKeys(pub Vec<TransferKey>);

impl std::fmt::Debug for TsigKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = (self.0.iter())
            .map(|k| k.signer.signer_name().to_string())
            .collect();
        f.debug_tuple("TsigKeys").field(&names).finish()
    }
}

impl TsigKeys {
    /// The keys that open the zone at `apex` (lower-cased wire form): a transfer of it must be
    /// signed with one of them when there are any, and NOTIFY for it is signed with the first.
    pub fn for_zone<'a>(&'a self, apex: &'a [u8]) -> impl Iterator<Item = &'a TSigner> + 'a {
        (self.0.iter())
            .filter(move |k| k.zone.as_deref().is_none_or(|z| z == apex))
            .map(|k| &k.signer)
    }

    /// The zones named by keys for one zone only.
    pub fn zones(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().filter_map(|k| k.zone.as_deref())
    }
}

/// Why a signed request was not accepted (each is NOTAUTH to the client, RFC 8945 §5.2).
#[derive(Debug, thiserror::Error)]
pub enum TsigFailure {
    #[error("the TSIG record does not read: {0}")]
    Malformed(#[source] ProtoError),
    #[error("no key named {0} with that algorithm is configured")]
    UnknownKey(String),
    #[error("the signature does not match the key {0}")]
    BadSignature(String),
    #[error("signed at {signed}, more than {fudge} s from our clock ({now})")]
    BadTime { signed: u64, fudge: u16, now: u64 },
}

/// Checks the TSIG of `message` (a request, as received) against `keys` at time `now` (Unix
/// seconds); the signer for the reply when it holds.
pub fn check(message: &[u8], keys: &TsigKeys, now: u64) -> Result<ReplySigner, TsigFailure> {
    let (tbv, record) =
        signed_bitmessage_to_buf(message, None, true).map_err(TsigFailure::Malformed)?;
    let tsig = &record.data;
    let signer = (keys.0.iter().map(|k| &k.signer))
        .find(|k| *k.signer_name() == record.name && *k.algorithm() == tsig.algorithm)
        .ok_or_else(|| TsigFailure::UnknownKey(record.name.to_string()))?;
    signer
        .verify(&tbv, &tsig.mac)
        .map_err(|_| TsigFailure::BadSignature(record.name.to_string()))?;
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Err(TsigFailure::BadTime {
            signed: tsig.time,
            fudge: tsig.fudge,
            now,
        });
    }
    Ok(ReplySigner {
        signer: signer.clone(),
        previous_mac: tsig.mac.clone(),
        original_id: tsig.oid,
        first: true,
    })
}

/// Signs the messages of one reply in order.
pub struct ReplySigner {
    signer: TSigner,
    /// The request's MAC, then each signed message's.
    previous_mac: Vec<u8>,
    original_id: u16,
    first: bool,
}

impl ReplySigner {
    /// The name of the key the request was signed with.
    pub fn key_name(&self) -> &Name {
        self.signer.signer_name()
    }

    /// Appends a TSIG record signing `message` (complete but for it) at time `now`.
    pub fn sign(&mut self, message: &mut Vec<u8>, now: u64) -> Result<(), ProtoError> {
        let stub = TSIG::new(
            self.signer.algorithm().clone(),
            now,
            self.signer.fudge(),
            Vec::new(),
            self.original_id,
            None,
            Vec::new(),
        );
        let tbs = if self.first {
            self.signer
                .encode_response_tbs(&self.previous_mac, message, &stub)?
        } else {
            // Later messages cover the MAC before, the message and the timers only.
            let mut tbs = Vec::with_capacity(2 + self.previous_mac.len() + message.len() + 8);
            tbs.extend_from_slice(&(self.previous_mac.len() as u16).to_be_bytes());
            tbs.extend_from_slice(&self.previous_mac);
            tbs.extend_from_slice(message);
            tbs.extend_from_slice(&now.to_be_bytes()[2..]);
            tbs.extend_from_slice(&self.signer.fudge().to_be_bytes());
            tbs
        };
        let mac = self
            .signer
            .sign(&tbs)
            .map_err(|e| ProtoError::from(e.to_string()))?;
        append_tsig(message, &self.signer, stub.set_mac(mac.clone()))?;
        self.previous_mac = mac;
        self.first = false;
        Ok(())
    }
}

/// Signs a request we send (a NOTIFY) with `signer` at time `now`: the MAC covers the message
/// and the TSIG variables, with no MAC before it (RFC 8945 §4.3.3).
pub fn sign_request(signer: &TSigner, message: &mut Vec<u8>, now: u64) -> Result<(), ProtoError> {
    let id = u16::from_be_bytes([message[0], message[1]]);
    let stub = TSIG::new(
        signer.algorithm().clone(),
        now,
        signer.fudge(),
        Vec::new(),
        id,
        None,
        Vec::new(),
    );
    let mut variables = Vec::with_capacity(64);
    stub.emit_tsig_for_mac(&mut BinEncoder::new(&mut variables), signer.signer_name())?;
    let tbs = [&message[..], &variables[..]].concat();
    let mac = signer
        .sign(&tbs)
        .map_err(|e| ProtoError::from(e.to_string()))?;
    append_tsig(message, signer, stub.set_mac(mac))
}

/// Adds the TSIG record `tsig` of `signer` to the end of `message` and counts it.
fn append_tsig(message: &mut Vec<u8>, signer: &TSigner, tsig: TSIG) -> Result<(), ProtoError> {
    let record = make_tsig_record(signer.signer_name().clone(), tsig);
    let mut encoded = Vec::with_capacity(128);
    record.emit(&mut BinEncoder::new(&mut encoded))?;
    message.extend_from_slice(&encoded);
    let additionals = u16::from_be_bytes([message[10], message[11]]) + 1;
    message[10..12].copy_from_slice(&additionals.to_be_bytes());
    Ok(())
}

/// Seconds since the Unix epoch, TSIG's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::tsig::TsigAlgorithm;

    fn key(name: &str) -> TSigner {
        let name = Name::from_ascii(name).unwrap();
        TSigner::new(
            b"0123456789abcdef".to_vec(),
            TsigAlgorithm::HmacSha256,
            name,
            300,
        )
        .unwrap()
    }

    /// A NOTIFY we sign is one a secondary holding the key accepts, and no other.
    #[test]
    fn signed_requests_verify_with_the_key_only() {
        let notify =
            b"\xab\xcd\x20\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06global\x00\x00\x06\x00\x01";
        let mut message = notify.to_vec();
        sign_request(&key("transfer."), &mut message, 1_800_000_000).unwrap();
        assert_eq!(u16::from_be_bytes([message[10], message[11]]), 1);
        let keys = |k: TSigner| {
            TsigKeys(vec![TransferKey {
                signer: k,
                zone: None,
            }])
        };
        let signer = check(&message, &keys(key("transfer.")), 1_800_000_010).unwrap();
        assert_eq!(signer.key_name().to_ascii(), "transfer.");
        assert!(matches!(
            check(&message, &keys(key("other.")), 1_800_000_010),
            Err(TsigFailure::UnknownKey(_))
        ));
        let mut tampered = message.clone();
        tampered[13] ^= 1; // the zone name (the ID may change: the MAC covers the original)
        assert!(matches!(
            check(&tampered, &keys(key("transfer.")), 1_800_000_010),
            Err(TsigFailure::BadSignature(_))
        ));
    }

    #[test]
    fn zone_keys_open_their_zone_only() {
        let apex = b"\x06global\x00";
        let keys = TsigKeys(vec![
            TransferKey {
                signer: key("all."),
                zone: None,
            },
            TransferKey {
                signer: key("g."),
                zone: Some(apex.as_slice().into()),
            },
        ]);
        let names = |zone: &[u8]| -> Vec<String> {
            keys.for_zone(zone)
                .map(|k| k.signer_name().to_ascii())
                .collect()
        };
        assert_eq!(names(apex), ["all.", "g."]);
        assert_eq!(names(b"\x03240\x07in-addr\x04arpa\x00"), ["all."]);
        assert_eq!(keys.zones().collect::<Vec<_>>(), [apex.as_slice()]);
    }
}
