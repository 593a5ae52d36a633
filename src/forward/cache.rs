//! Answers from upstreams, kept for their TTL.
//!
//! Keyed by the lower-cased question, the DO bit, whether the client spoke EDNS (a reply with
//! OPT must not reach a client that sent none) and the CD bit (data a validating upstream
//! refuses must not reach a client that wants validation because another asked with CD=1). Positive answers live for their smallest TTL,
//! negative ones (NXDOMAIN, NODATA) for the SOA minimum (RFC 2308 §5), both capped by
//! `max_ttl`. What is returned counts the TTLs down. SERVFAIL, truncated and unsigned-negative
//! replies without an SOA are not kept. The cache is bounded: an entry weighs one unit per KiB.
//!
//! With a stale window (RFC 8767), an expired answer is kept that much longer, to be served, with
//! a TTL of 30 s, only when the upstreams cannot answer.

use std::borrow::Borrow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::wire::TYPE_OPT;
use crate::wire::header::{HEADER_LEN, is_truncated, rcode, u16_at, u32_at};
use crate::wire::name::skip_name;
use crate::wire::records::records;
use crate::wire::request::Request;
use crate::wire::response::readdress;

const TYPE_SOA: u16 = 6;

/// The longest key: flags, type and class (5 bytes) and a name of at most 255.
const MAX_KEY: usize = 5 + 255;

/// A question packed into bytes: flags (EDNS, DO, CD), type, class, lower-cased wire name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheKey(Box<[u8]>);

impl Borrow<[u8]> for CacheKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl CacheKey {
    pub fn of(req: &Request) -> Option<CacheKey> {
        let (buf, len) = pack(req)?;
        Some(CacheKey(buf[..len].into()))
    }
}

/// The key of `req` on the stack, so that a cache hit allocates nothing.
fn pack(req: &Request) -> Option<([u8; MAX_KEY], usize)> {
    let q = req.question.as_ref()?;
    let name = q.name.lower();
    let mut buf = [0u8; MAX_KEY];
    let len = 5 + name.len();
    if len > MAX_KEY {
        return None;
    }
    let dnssec_ok = req.edns.is_some_and(|e| e.dnssec_ok);
    buf[0] = u8::from(req.edns.is_some())
        | u8::from(dnssec_ok) << 1
        | u8::from(req.checking_disabled) << 2;
    buf[1..3].copy_from_slice(&q.qtype.to_be_bytes());
    buf[3..5].copy_from_slice(&q.qclass.to_be_bytes());
    buf[5..len].copy_from_slice(name);
    Some((buf, len))
}

struct Entry {
    reply: Box<[u8]>,
    /// Where each record's TTL sits in `reply` (OPT excluded).
    ttl_offsets: Box<[usize]>,
    stored: Instant,
    ttl: Duration,
}

/// TTL of a stale answer (RFC 8767 §4).
const STALE_TTL: u32 = 30;

/// Entries leave the cache `stale` after their TTL ran out.
struct ExpireAfterStale {
    stale: Duration,
}

impl moka::Expiry<CacheKey, Arc<Entry>> for ExpireAfterStale {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl + self.stale)
    }
}

#[derive(Clone)]
pub struct AnswerCache {
    entries: Cache<CacheKey, Arc<Entry>, foldhash::fast::RandomState>,
    max_ttl: Duration,
    stale: Duration,
}

impl AnswerCache {
    /// `capacity` in entries of up to 1 KiB (larger answers count for more); expired answers
    /// are kept `stale` longer for [`AnswerCache::get_stale`].
    pub fn new(capacity: u64, max_ttl: Duration, stale: Duration) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_: &CacheKey, e: &Arc<Entry>| 1 + (e.reply.len() / 1024) as u32)
            .expire_after(ExpireAfterStale { stale })
            // Seeded per process; SipHash was a third of a cache hit's cost.
            .build_with_hasher(foldhash::fast::RandomState::default());
        AnswerCache {
            entries,
            max_ttl,
            stale,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Writes the cached answer to `req` into `out`, with the client's ID and question and the
    /// TTLs counted down. False on a miss.
    pub fn get(&self, req: &Request, out: &mut Vec<u8>) -> bool {
        self.answer(req, out, false)
    }

    /// Like [`AnswerCache::get`], also for an answer whose TTL ran out less than the stale
    /// window ago; such an answer carries a TTL of 30 s. For when the upstreams fail.
    pub fn get_stale(&self, req: &Request, out: &mut Vec<u8>) -> bool {
        !self.stale.is_zero() && self.answer(req, out, true)
    }

    fn answer(&self, req: &Request, out: &mut Vec<u8>, stale_ok: bool) -> bool {
        let Some((key, len)) = pack(req) else {
            return false;
        };
        let Some(entry) = self.entries.get(&key[..len]) else {
            return false;
        };
        let elapsed = entry.stored.elapsed();
        let fresh = elapsed < entry.ttl;
        let usable = fresh || (stale_ok && elapsed < entry.ttl + self.stale);
        if !usable {
            return false;
        }
        out.clear();
        out.extend_from_slice(&entry.reply);
        readdress(out, req);
        let spent = elapsed.as_secs() as u32;
        for &at in entry.ttl_offsets.iter() {
            let ttl = u32::from_be_bytes(out[at..at + 4].try_into().expect("4 bytes"));
            let ttl = if fresh {
                ttl.saturating_sub(spent)
            } else {
                STALE_TTL
            };
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        true
    }

    /// Keeps `reply` if it may be cached.
    pub fn insert(&self, key: CacheKey, reply: &[u8]) {
        let Some((ttl, ttl_offsets)) = cacheable(reply) else {
            return;
        };
        let ttl = ttl.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        let entry = Arc::new(Entry {
            reply: reply.into(),
            ttl_offsets: ttl_offsets.into(),
            stored: Instant::now(),
            ttl,
        });
        self.entries.insert(key, entry);
    }
}

/// How long `reply` may be cached, and where its TTLs are; `None` if it may not be.
fn cacheable(reply: &[u8]) -> Option<(Duration, Vec<usize>)> {
    if reply.len() < HEADER_LEN || is_truncated(reply) {
        return None;
    }
    let rcode = rcode(reply)?;
    let counts = [
        u16_at(reply, 4)?,
        u16_at(reply, 6)?,
        u16_at(reply, 8)?,
        u16_at(reply, 10)?,
    ];
    if counts[0] != 1 || !(rcode == 0 || rcode == 3) {
        return None;
    }
    skip_name(reply, HEADER_LEN)?;
    let mut offsets = Vec::new();
    let mut answer_ttl: Option<u32> = None;
    let mut negative_ttl: Option<u32> = None;
    for record in records(reply) {
        let record = record?;
        let (ttl, rdata) = (record.ttl, &record.rdata);
        if record.rtype != TYPE_OPT {
            offsets.push(record.ttl_at);
        }
        if record.section == 1 {
            answer_ttl = Some(answer_ttl.map_or(ttl, |t| t.min(ttl)));
        }
        if record.section == 2 && record.rtype == TYPE_SOA && rdata.len() >= 4 {
            let minimum = u32_at(reply, rdata.end - 4)?;
            negative_ttl = Some(ttl.min(minimum));
        }
    }
    let ttl = match (rcode, answer_ttl) {
        (0, Some(ttl)) => ttl,
        // NXDOMAIN, or NOERROR without answers (NODATA): only with an SOA to say how long.
        _ => negative_ttl?,
    };
    Some((Duration::from_secs(ttl.into()), offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::TC;
    use crate::wire::request::{Parsed, parse};
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn request(name: &str) -> (Request, Message) {
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let Parsed::Query(req) = parse(&msg.to_vec().unwrap()) else {
            panic!()
        };
        (req, msg)
    }

    fn reply(
        to: &Message,
        rcode: ResponseCode,
        answers: &[(u32, [u8; 4])],
        soa: Option<(u32, u32)>,
    ) -> Vec<u8> {
        let mut r = to.clone();
        r.metadata.message_type = MessageType::Response;
        r.metadata.response_code = rcode;
        let name = to.queries[0].name().clone();
        for (ttl, ip) in answers {
            r.add_answer(Record::from_rdata(
                name.clone(),
                *ttl,
                RData::A(std::net::Ipv4Addr::from(*ip).into()),
            ));
        }
        if let Some((ttl, minimum)) = soa {
            let apex = Name::from_ascii("example.").unwrap();
            let data = SOA::new(apex.clone(), apex.clone(), 1, 1, 1, 1, minimum);
            r.add_authority(Record::from_rdata(apex, ttl, RData::SOA(data)));
        }
        r.to_vec().unwrap()
    }

    #[test]
    fn positive_answers_live_for_their_smallest_ttl_and_count_down() {
        let cache = AnswerCache::new(100, Duration::from_secs(3600), Duration::ZERO);
        let (req, msg) = request("www.example.");
        let key = CacheKey::of(&req).unwrap();
        cache.insert(
            key.clone(),
            &reply(
                &msg,
                ResponseCode::NoError,
                &[(300, [1, 2, 3, 4]), (60, [1, 2, 3, 5])],
                None,
            ),
        );
        let (mixed, _) = request("WWW.Example.");
        let mut out = Vec::new();
        assert!(cache.get(&mixed, &mut out));
        let decoded = Message::from_vec(&out).unwrap();
        assert_eq!(
            decoded.queries[0].name().to_ascii(),
            "WWW.Example.",
            "the client's case"
        );
        assert_eq!(decoded.metadata.id, mixed.id);
        assert_eq!(decoded.answers.len(), 2);
        assert_eq!(
            cacheable(&reply(
                &msg,
                ResponseCode::NoError,
                &[(300, [1, 2, 3, 4]), (60, [1, 2, 3, 5])],
                None
            ))
            .unwrap()
            .0,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn negative_answers_use_the_soa_minimum_and_servfail_is_not_kept() {
        let (_, msg) = request("nope.example.");
        let nx = reply(&msg, ResponseCode::NXDomain, &[], Some((3600, 45)));
        assert_eq!(cacheable(&nx).unwrap().0, Duration::from_secs(45));
        let nodata = reply(&msg, ResponseCode::NoError, &[], Some((20, 45)));
        assert_eq!(cacheable(&nodata).unwrap().0, Duration::from_secs(20));
        assert!(
            cacheable(&reply(&msg, ResponseCode::NXDomain, &[], None)).is_none(),
            "no SOA, no caching"
        );
        assert!(cacheable(&reply(&msg, ResponseCode::ServFail, &[], Some((60, 60)))).is_none());
        let mut truncated = reply(&msg, ResponseCode::NoError, &[(60, [1, 1, 1, 1])], None);
        truncated[2] |= TC;
        assert!(cacheable(&truncated).is_none());
        assert!(cacheable(&truncated[..20]).is_none());
    }

    #[test]
    fn max_ttl_caps_and_zero_ttl_skips() {
        let cache = AnswerCache::new(100, Duration::from_secs(10), Duration::ZERO);
        let (req, msg) = request("a.example.");
        let key = CacheKey::of(&req).unwrap();
        cache.insert(
            key.clone(),
            &reply(&msg, ResponseCode::NoError, &[(0, [1, 1, 1, 1])], None),
        );
        assert!(!cache.get(&req, &mut Vec::new()));
        cache.insert(
            key.clone(),
            &reply(&msg, ResponseCode::NoError, &[(86400, [1, 1, 1, 1])], None),
        );
        assert!(cache.get(&req, &mut Vec::new()));
        assert_eq!(cache.entries.policy().time_to_live(), None);
    }
}
