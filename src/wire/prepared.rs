//! Precomputed response bodies.
//!
//! A [`Prepared`] holds everything that follows the question section of a response, already in wire
//! format. Its only reference into the message is a compression pointer to the question name at
//! offset 12, so one body answers the query name in any letter case and every name a wildcard
//! covers. All other names are written uncompressed for the same reason.

use hickory_proto::ProtoError;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

/// Compression pointer to offset 12, where the question name starts.
const QNAME_POINTER: [u8; 2] = [0xC0, 0x0C];

/// The sections of a response after the question, ready to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    pub rcode: ResponseCode,
    pub answers: u16,
    pub authorities: u16,
    /// Additional records, before any OPT the response writer appends.
    pub additionals: u16,
    pub body: Box<[u8]>,
}

impl Prepared {
    /// A body with no records, for error responses.
    pub fn empty(rcode: ResponseCode) -> Self {
        Prepared {
            rcode,
            answers: 0,
            authorities: 0,
            additionals: 0,
            body: Box::new([]),
        }
    }

    pub fn view(&self) -> Body<'_> {
        Body {
            rcode: self.rcode,
            answers: self.answers,
            authorities: self.authorities,
            additionals: self.additionals,
            body: &self.body,
        }
    }
}

/// A prepared body as the query path reads it, wherever it is stored.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a> {
    pub rcode: ResponseCode,
    pub answers: u16,
    pub authorities: u16,
    pub additionals: u16,
    pub body: &'a [u8],
}

impl<'a> Body<'a> {
    /// The answer records, each without its owner (a pointer to the query name): type, class,
    /// TTL, length and data, ready to follow any owner name. For zone transfers.
    pub fn answer_records(self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let body = self.body;
        let mut at = 0usize;
        (0..self.answers).map_while(move |_| {
            let owner = body.get(at..at + 2)?;
            debug_assert_eq!(owner, QNAME_POINTER, "answers are owned by the query name");
            let start = at + 2;
            let rdlen = u16::from_be_bytes(body.get(start + 8..start + 10)?.try_into().ok()?);
            let end = start + 10 + rdlen as usize;
            at = end;
            body.get(start..end)
        })
    }
}

/// The answers of one name, one per query type, in two allocations whatever their number: a
/// big mesh holds hundreds of thousands of names.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    slots: Box<[Slot]>,
    bytes: Box<[u8]>,
}

#[derive(Clone, Debug)]
struct Slot {
    qtype: u16,
    rcode: ResponseCode,
    answers: u16,
    authorities: u16,
    additionals: u16,
    end: u32,
}

impl Answers {
    pub fn new(prepared: Vec<(u16, Prepared)>) -> Self {
        let mut bytes = Vec::with_capacity(prepared.iter().map(|(_, p)| p.body.len()).sum());
        let slots = prepared
            .into_iter()
            .map(|(qtype, p)| {
                bytes.extend_from_slice(&p.body);
                Slot {
                    qtype,
                    rcode: p.rcode,
                    answers: p.answers,
                    authorities: p.authorities,
                    additionals: p.additionals,
                    end: bytes.len() as u32,
                }
            })
            .collect();
        Answers {
            slots,
            bytes: bytes.into_boxed_slice(),
        }
    }

    pub fn get(&self, qtype: u16) -> Option<Body<'_>> {
        let at = self.slots.iter().position(|s| s.qtype == qtype)?;
        let start = at.checked_sub(1).map_or(0, |i| self.slots[i].end as usize);
        let slot = &self.slots[at];
        Some(Body {
            rcode: slot.rcode,
            answers: slot.answers,
            authorities: slot.authorities,
            additionals: slot.additionals,
            body: &self.bytes[start..slot.end as usize],
        })
    }
}

/// Who owns a record: the query name itself, or another name written out in full.
#[derive(Clone, Copy)]
pub enum Owner<'a> {
    QueryName,
    Named(&'a Name),
}

/// Builds a [`Prepared`]: all answer records first, then authority, then additional records.
#[derive(Default)]
pub struct BodyBuilder {
    body: Vec<u8>,
    answers: u16,
    authorities: u16,
    additionals: u16,
    /// The records' class; `None` is IN, the class of everything but server identity.
    class: Option<DNSClass>,
}

impl BodyBuilder {
    /// A builder whose records are of `class` instead of IN.
    pub fn in_class(class: DNSClass) -> Self {
        BodyBuilder {
            class: Some(class),
            ..Default::default()
        }
    }

    pub fn answer(
        &mut self,
        owner: Owner<'_>,
        ttl: u32,
        rdata: &RData,
    ) -> Result<&mut Self, ProtoError> {
        debug_assert_eq!(self.authorities + self.additionals, 0, "answers come first");
        self.push(owner, ttl, rdata)?;
        self.answers += 1;
        Ok(self)
    }

    pub fn authority(
        &mut self,
        owner: Owner<'_>,
        ttl: u32,
        rdata: &RData,
    ) -> Result<&mut Self, ProtoError> {
        debug_assert_eq!(self.additionals, 0, "authorities precede additionals");
        self.push(owner, ttl, rdata)?;
        self.authorities += 1;
        Ok(self)
    }

    pub fn additional(
        &mut self,
        owner: Owner<'_>,
        ttl: u32,
        rdata: &RData,
    ) -> Result<&mut Self, ProtoError> {
        self.push(owner, ttl, rdata)?;
        self.additionals += 1;
        Ok(self)
    }

    pub fn finish(self, rcode: ResponseCode) -> Prepared {
        Prepared {
            rcode,
            answers: self.answers,
            authorities: self.authorities,
            additionals: self.additionals,
            body: self.body.into_boxed_slice(),
        }
    }

    fn push(&mut self, owner: Owner<'_>, ttl: u32, rdata: &RData) -> Result<(), ProtoError> {
        let mut record = Vec::with_capacity(64);
        {
            let mut enc = BinEncoder::new(&mut record);
            enc.set_name_encoding(NameEncoding::Uncompressed);
            match owner {
                Owner::QueryName => enc.emit_vec(&QNAME_POINTER)?,
                Owner::Named(name) => name.emit(&mut enc)?,
            }
            rdata.record_type().emit(&mut enc)?;
            self.class.unwrap_or(DNSClass::IN).emit(&mut enc)?;
            enc.emit_u32(ttl)?;
            let place = enc.place::<u16>()?;
            rdata.emit(&mut enc)?;
            let len = enc.len_since_place(&place);
            place.replace(&mut enc, len as u16)?;
        }
        self.body.extend_from_slice(&record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;
    use std::net::Ipv4Addr;

    #[test]
    fn answers_keep_each_body_whole_and_apart() {
        let body = |rcode, bytes: &[u8]| Prepared {
            rcode,
            answers: bytes.len() as u16,
            authorities: 0,
            additionals: 0,
            body: bytes.into(),
        };
        let answers = Answers::new(vec![
            (1, body(ResponseCode::NoError, b"aaaa")),
            (16, body(ResponseCode::NoError, b"")),
            (28, body(ResponseCode::ServFail, b"bbbbbbbbbb")),
        ]);
        let get = |qtype| answers.get(qtype).map(|b| (b.rcode, b.answers, b.body));
        assert_eq!(get(1), Some((ResponseCode::NoError, 4, &b"aaaa"[..])));
        assert_eq!(get(16), Some((ResponseCode::NoError, 0, &b""[..])));
        assert_eq!(
            get(28),
            Some((ResponseCode::ServFail, 10, &b"bbbbbbbbbb"[..]))
        );
        assert!(get(255).is_none());
        assert!(Answers::default().get(1).is_none());
    }

    /// A body appended to a header and question must decode as a normal message.
    #[test]
    fn body_decodes_after_any_case_question() {
        let mut b = BodyBuilder::default();
        b.answer(
            Owner::QueryName,
            30,
            &RData::A(Ipv4Addr::new(240, 0, 0, 3).into()),
        )
        .unwrap();
        let prepared = b.finish(ResponseCode::NoError);

        let mut msg = vec![0, 1, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x07ReViEws\x07default\x06GLOBAL\x00\x00\x01\x00\x01");
        msg.extend_from_slice(&prepared.body);
        let decoded = Message::from_vec(&msg).unwrap();
        let answer = &decoded.answers[0];
        assert_eq!(answer.name.to_ascii(), "ReViEws.default.GLOBAL.");
        assert_eq!(answer.record_type(), RecordType::A);
        assert_eq!(answer.ttl, 30);
    }
}
