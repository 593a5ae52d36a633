//! Reading queries off the wire.
//!
//! The common case (one question, at most an OPT record, no compression) is read directly from
//! the packet without allocating. Anything else goes through hickory-proto's full decoder, which
//! decides between a usable question, FORMERR, NOTIMP and BADVERS.

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use super::TYPE_OPT;
use super::header::{HEADER_LEN, is_response, u16_at};
use super::name::MAX_NAME_LEN;

/// A domain name in wire format, kept as received and lower-cased for lookups.
#[derive(Clone)]
pub struct QName {
    raw: [u8; MAX_NAME_LEN],
    lower: [u8; MAX_NAME_LEN],
    len: u8,
}

impl QName {
    /// As the client wrote it (its letter case is echoed back, RFC 1035 §7.3 / 0x20 clients).
    pub fn wire(&self) -> &[u8] {
        &self.raw[..self.len as usize]
    }

    pub fn lower(&self) -> &[u8] {
        &self.lower[..self.len as usize]
    }

    /// Reads an uncompressed name at `at`; returns it and the offset after it.
    fn read(packet: &[u8], mut at: usize) -> Option<(QName, usize)> {
        let mut name = QName {
            raw: [0; MAX_NAME_LEN],
            lower: [0; MAX_NAME_LEN],
            len: 0,
        };
        let mut len = 0usize;
        loop {
            let label = *packet.get(at)? as usize;
            if label & 0xC0 != 0 {
                return None;
            }
            let end = at + 1 + label;
            if end > packet.len() || len + 1 + label > MAX_NAME_LEN {
                return None;
            }
            let src = &packet[at..end];
            name.raw[len..len + src.len()].copy_from_slice(src);
            for (d, s) in name.lower[len..len + src.len()].iter_mut().zip(src) {
                *d = s.to_ascii_lowercase();
            }
            len += src.len();
            at = end;
            if label == 0 {
                name.len = len as u8;
                return Some((name, at));
            }
        }
    }

    fn from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Option<QName> {
        let mut wire = Vec::with_capacity(MAX_NAME_LEN);
        for label in labels {
            wire.push(u8::try_from(label.len()).ok()?);
            wire.extend_from_slice(label);
        }
        wire.push(0);
        QName::read(&wire, 0).map(|(n, _)| n)
    }
}

/// Presentation format (`www.example.`), for logs; bytes outside printable ASCII as `\DDD`.
impl std::fmt::Display for QName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut at = 0;
        let wire = self.wire();
        while let Some(&len) = wire.get(at).filter(|&&l| l > 0) {
            for &b in &wire[at + 1..at + 1 + len as usize] {
                match b {
                    b'.' | b'\\' => write!(f, "\\{}", b as char)?,
                    0x21..=0x7E => write!(f, "{}", b as char)?,
                    _ => write!(f, "\\{b:03}")?,
                }
            }
            f.write_str(".")?;
            at += 1 + len as usize;
        }
        if at == 0 {
            f.write_str(".")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The client's UDP payload size.
    pub payload: u16,
    pub dnssec_ok: bool,
}

#[derive(Clone)]
pub struct Question {
    pub name: QName,
    pub qtype: u16,
    pub qclass: u16,
}

/// The parts of a query a response is built from.
#[derive(Clone)]
pub struct Request {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub question: Option<Question>,
    pub edns: Option<Edns>,
    /// An IXFR query's serial: that of the SOA in its authority section (RFC 1995 §3).
    pub ixfr_serial: Option<u32>,
    /// The message as received, when it carries a TSIG record: kept to check the signature.
    pub signed: Option<Box<[u8]>>,
}

impl Request {
    pub fn qtype(&self) -> Option<RecordType> {
        self.question.as_ref().map(|q| RecordType::from(q.qtype))
    }
}

#[derive(Clone)]
pub enum Parsed {
    /// A standard query with one question.
    Query(Request),
    /// Answer with this error code only.
    Error(Request, ResponseCode),
    /// Not worth an answer (too short, or itself a response).
    Drop,
}

pub fn parse(packet: &[u8]) -> Parsed {
    match parse_simple(packet) {
        Some(req) => Parsed::Query(req),
        None => parse_general(packet),
    }
}

fn header_request(packet: &[u8]) -> Request {
    Request {
        id: u16::from_be_bytes([packet[0], packet[1]]),
        opcode: (packet[2] >> 3) & 0x0F,
        recursion_desired: packet[2] & 0x01 != 0,
        checking_disabled: packet[3] & 0x10 != 0,
        question: None,
        edns: None,
        ixfr_serial: None,
        signed: None,
    }
}

/// The allocation-free reader for ordinary queries; `None` sends the packet to [`parse_general`].
///
/// Public only as a seam: tests compare it with [`parse_general`] and benches time it. The
/// server calls [`parse`].
pub fn parse_simple(packet: &[u8]) -> Option<Request> {
    if packet.len() < HEADER_LEN || packet[2] & 0xF8 != 0 {
        return None; // a response, or an opcode other than QUERY
    }
    let counts = [
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    ];
    if counts[0] != 1 || counts[1] != 0 || counts[2] != 0 || counts[3] > 1 {
        return None;
    }
    let (name, at) = QName::read(packet, HEADER_LEN)?;
    let qtype = u16_at(packet, at)?;
    let qclass = u16_at(packet, at + 2)?;
    let mut at = at + 4;
    let mut req = header_request(packet);
    if counts[3] == 1 {
        // Only a well-formed version-0 OPT with a root owner is taken here.
        if packet.get(at) != Some(&0)
            || u16_at(packet, at + 1)? != TYPE_OPT
            || packet.get(at + 6) != Some(&0)
        {
            return None;
        }
        let payload = u16_at(packet, at + 3)?;
        let flags = u16_at(packet, at + 7)?;
        let rdlen = u16_at(packet, at + 9)? as usize;
        at += 11;
        // The options must tile the OPT data exactly; anything else is the general path's
        // FORMERR. Options whose content has rules (client subnet, NSID) are left to the
        // general reader, which checks them.
        const NSID: u16 = 3;
        const CLIENT_SUBNET: u16 = 8;
        let end = at + rdlen;
        while at < end {
            if matches!(u16_at(packet, at)?, NSID | CLIENT_SUBNET) {
                return None;
            }
            at += 4 + u16_at(packet, at + 2)? as usize;
        }
        if at != end {
            return None;
        }
        req.edns = Some(Edns {
            // Below 512 counts as 512 (RFC 6891 §6.2.5), as the general reader has it.
            payload: payload.max(512),
            dnssec_ok: flags & 0x8000 != 0,
        });
    }
    if at != packet.len() {
        return None;
    }
    req.question = Some(Question {
        name,
        qtype,
        qclass,
    });
    Some(req)
}

/// Full decode with hickory-proto for everything unusual: the general path.
///
/// Public only as a seam, so tests can force the general path for packets the fast one would
/// take and check that both answer alike. The server calls [`parse`].
pub fn parse_general(packet: &[u8]) -> Parsed {
    if packet.len() < HEADER_LEN || is_response(packet) {
        return Parsed::Drop;
    }
    let mut req = header_request(packet);
    let message = Message::from_vec(packet);
    if let Ok(msg) = &message {
        req.edns = msg.edns.as_ref().map(|e| Edns {
            payload: e.max_payload(),
            dnssec_ok: e.flags().dnssec_ok,
        });
        req.signed = msg.signature.is_some().then(|| packet.into());
        req.ixfr_serial = msg.authorities.iter().find_map(|r| match &r.data {
            hickory_proto::rr::RData::SOA(soa) => Some(soa.serial),
            _ => None,
        });
        if let [query] = msg.queries.as_slice() {
            req.question = QName::from_labels(query.name().iter()).map(|name| Question {
                name,
                qtype: u16::from(query.query_type()),
                qclass: u16::from(query.query_class()),
            });
        }
    }
    if OpCode::from_u8(req.opcode) != OpCode::Query {
        return Parsed::Error(req, ResponseCode::NotImp);
    }
    let Ok(msg) = message else {
        return Parsed::Error(req, ResponseCode::FormErr);
    };
    // A compression pointer in the question can only point into the header (nothing else comes
    // before it): malformed, and never forwarded or cached as sent.
    if req.question.is_none() || QName::read(packet, HEADER_LEN).is_none() {
        return Parsed::Error(req, ResponseCode::FormErr);
    }
    if msg.edns.as_ref().is_some_and(|e| e.version() != 0) {
        return Parsed::Error(req, ResponseCode::BADVERS);
    }
    Parsed::Query(req)
}

/// True for the classes served from the name table.
pub fn is_internet_class(qclass: u16) -> bool {
    qclass == u16::from(DNSClass::IN) || qclass == u16::from(DNSClass::ANY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns as HEdns, Query};
    use hickory_proto::rr::Name;

    #[test]
    fn a_compressed_question_is_formerr() {
        // Header, then a question whose name is a pointer to offset 4 (inside the header).
        let mut packet = encode("a.global.", RecordType::A, None);
        packet.truncate(HEADER_LEN);
        packet.extend_from_slice(&[0xC0, 4, 0, 1, 0, 1]);
        assert!(matches!(
            parse(&packet),
            Parsed::Error(_, ResponseCode::FormErr)
        ));
    }

    #[test]
    fn malformed_edns_options_are_formerr_on_both_paths() {
        let good = encode("a.global.", RecordType::A, Some(1232));
        assert!(parse_simple(&good).is_some());
        // One option (code 10, length 8) that claims more than the OPT data holds.
        let mut bad = good.clone();
        let rdlen_at = bad.len() - 2;
        bad[rdlen_at..].copy_from_slice(&6u16.to_be_bytes());
        bad.extend_from_slice(&[0, 10, 0, 8, 1, 2]);
        assert!(parse_simple(&bad).is_none());
        assert!(matches!(
            parse(&bad),
            Parsed::Error(_, ResponseCode::FormErr)
        ));
    }

    /// Found by fuzzing (fuzz/corpus/readers_agree): the readers agree on an EDNS payload
    /// below 512 and on a client-subnet option too short to hold one.
    #[test]
    fn readers_agree_on_small_payloads_and_bad_client_subnets() {
        let mut small = encode("a.global.", RecordType::A, Some(1232));
        let payload_at = small.len() - 8;
        small[payload_at..payload_at + 2].copy_from_slice(&0u16.to_be_bytes());
        let fast = parse_simple(&small).unwrap();
        let Parsed::Query(general) = parse_general(&small) else {
            panic!("general reader refused")
        };
        assert_eq!(fast.edns, general.edns);
        assert_eq!(fast.edns.unwrap().payload, 512);
        let mut subnet = encode("a.global.", RecordType::A, Some(1232));
        let rdlen_at = subnet.len() - 2;
        subnet[rdlen_at..].copy_from_slice(&4u16.to_be_bytes());
        subnet.extend_from_slice(&[0, 8, 0, 0]);
        assert!(parse_simple(&subnet).is_none());
        assert!(matches!(
            parse(&subnet),
            Parsed::Error(_, ResponseCode::FormErr)
        ));
    }

    fn encode(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = 0x1234;
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = HEdns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(true);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn simple_and_general_readers_agree() {
        for edns in [None, Some(1232)] {
            let packet = encode("ReViews.default.GLOBAL.", RecordType::AAAA, edns);
            let fast = parse_simple(&packet).expect("simple query");
            let Parsed::Query(slow) = parse_general(&packet) else {
                panic!("general reader refused")
            };
            for r in [&fast, &slow] {
                let q = r.question.as_ref().unwrap();
                assert_eq!(r.id, 0x1234);
                assert!(r.recursion_desired);
                assert_eq!(q.name.wire(), b"\x07ReViews\x07default\x06GLOBAL\x00");
                assert_eq!(q.name.lower(), b"\x07reviews\x07default\x06global\x00");
                assert_eq!(q.qtype, 28);
                assert_eq!(
                    r.edns,
                    edns.map(|payload| Edns {
                        payload,
                        dnssec_ok: true
                    })
                );
            }
        }
    }

    #[test]
    fn odd_packets_get_the_right_verdict() {
        assert!(matches!(parse(&[0u8; 5]), Parsed::Drop));
        let mut response = encode("a.global.", RecordType::A, None);
        response[2] |= 0x80;
        assert!(matches!(parse(&response), Parsed::Drop));
        let mut notify = encode("a.global.", RecordType::SOA, None);
        notify[2] = (notify[2] & 0x87) | (4 << 3);
        assert!(matches!(
            parse(&notify),
            Parsed::Error(_, ResponseCode::NotImp)
        ));
        let mut truncated = encode("a.global.", RecordType::A, None);
        truncated.truncate(20);
        assert!(matches!(
            parse(&truncated),
            Parsed::Error(_, ResponseCode::FormErr)
        ));
        let mut no_question = encode("a.global.", RecordType::A, None);
        no_question[5] = 0;
        no_question.truncate(12);
        assert!(matches!(
            parse(&no_question),
            Parsed::Error(_, ResponseCode::FormErr)
        ));
        let mut v1 = encode("a.global.", RecordType::A, Some(1232));
        let opt_version = v1.len() - 5; // root, type(2), class(2), ext-rcode, VERSION
        v1[opt_version] = 1;
        assert!(matches!(
            parse(&v1),
            Parsed::Error(_, ResponseCode::BADVERS)
        ));
    }
}
