//! Class CH (chaos) queries for the server's identity: `version.bind`, `version.server`,
//! `hostname.bind` and `id.server` (RFC 4892), which operators and probes ask every server.
//!
//! They are ours to answer, never an upstream's: forwarded, they would report the upstream's
//! identity as ours. With `--identity` set they get that text; without it they get REFUSED, so
//! no version or host name leaks by default (as NSD's `hide-version`).

use hickory_proto::ProtoError;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, RData};

use crate::wire::prepared::{BodyBuilder, Owner, Prepared};

/// Class CH (RFC 1035 §3.2.4).
pub const CLASS_CH: u16 = 3;

/// The identity names, lower-cased wire format.
const NAMES: [&[u8]; 4] = [
    b"\x07version\x04bind\x00",
    b"\x07version\x06server\x00",
    b"\x08hostname\x04bind\x00",
    b"\x02id\x06server\x00",
];

const TYPE_TXT: u16 = 16;
const TYPE_ANY: u16 = 255;

/// TTL of the identity record: nothing caches it for long (BIND uses 0).
const TTL: u32 = 0;

pub struct Chaos {
    /// The TXT answer, when an identity is configured.
    answer: Option<Prepared>,
}

impl Chaos {
    /// Answers the identity names with `identity` (a TXT record; split in 255-byte strings
    /// when longer, though the flag takes one), or refuses them when `None`.
    pub fn new(identity: Option<&str>) -> Result<Self, ProtoError> {
        let answer = match identity {
            None => None,
            Some(text) => {
                let strings: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
                let mut b = BodyBuilder::in_class(DNSClass::CH);
                b.answer(Owner::QueryName, TTL, &RData::TXT(TXT::from_bytes(strings)))?;
                Some(b.finish(ResponseCode::NoError))
            }
        };
        Ok(Chaos { answer })
    }

    /// The body for a class CH question, or `None` for REFUSED.
    pub fn answer(&self, qname: &[u8], qtype: u16) -> Option<&Prepared> {
        let asked = NAMES.contains(&qname) && matches!(qtype, TYPE_TXT | TYPE_ANY);
        self.answer.as_ref().filter(|_| asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identity_names_with_txt_or_any_are_answered() {
        let chaos = Chaos::new(Some("globaldns")).unwrap();
        assert!(chaos.answer(NAMES[0], TYPE_TXT).is_some());
        assert!(chaos.answer(NAMES[3], TYPE_ANY).is_some());
        assert!(chaos.answer(NAMES[0], 1).is_none());
        assert!(chaos.answer(b"\x07example\x00", TYPE_TXT).is_none());
        let quiet = Chaos::new(None).unwrap();
        assert!(quiet.answer(NAMES[0], TYPE_TXT).is_none());
    }
}
