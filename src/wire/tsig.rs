//! TSIG (RFC 8945) on zone transfers: checking the key and signature of a request, and signing
//! every message of the reply, the first over the request's MAC and each next one over the MAC
//! before it (§5.3.1). hickory-proto does the HMACs and the TSIG record's encoding.

use hickory_proto::ProtoError;
use hickory_proto::rr::TSigner;
use hickory_proto::rr::rdata::tsig::{TSIG, make_tsig_record, signed_bitmessage_to_buf};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// TSIG keys; printed by name only, so the secrets stay out of logs.
#[derive(Clone, Default)]
pub struct TsigKeys(pub Vec<TSigner>);

impl std::fmt::Debug for TsigKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(|k| k.signer_name().to_string()).collect();
        f.debug_tuple("TsigKeys").field(&names).finish()
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
pub fn check(message: &[u8], keys: &[TSigner], now: u64) -> Result<ReplySigner, TsigFailure> {
    let (tbv, record) =
        signed_bitmessage_to_buf(message, None, true).map_err(TsigFailure::Malformed)?;
    let tsig = &record.data;
    let signer = keys
        .iter()
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
        let record = make_tsig_record(self.signer.signer_name().clone(), stub.set_mac(mac.clone()));
        let mut encoded = Vec::with_capacity(128);
        record.emit(&mut BinEncoder::new(&mut encoded))?;
        message.extend_from_slice(&encoded);
        let additionals = u16::from_be_bytes([message[10], message[11]]) + 1;
        message[10..12].copy_from_slice(&additionals.to_be_bytes());
        self.previous_mac = mac;
        self.first = false;
        Ok(())
    }
}

/// Seconds since the Unix epoch, TSIG's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
