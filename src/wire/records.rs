//! Walking the resource records of a message in place, after its one question: where each
//! record's type, TTL and data sit, without decoding anything else.

use std::ops::Range;

use super::header::{HEADER_LEN, u16_at, u32_at};
use super::name::skip_name;

/// One record, located in the message.
pub struct Located {
    /// 1 answer, 2 authority, 3 additional.
    pub section: usize,
    pub rtype: u16,
    pub ttl: u32,
    /// Where the TTL is, to rewrite it.
    pub ttl_at: usize,
    pub rdata: Range<usize>,
}

/// The records of a one-question message in order; an item is `None` where a record runs off
/// the end or its name does not read (and nothing after it can be located).
pub fn records(msg: &[u8]) -> impl Iterator<Item = Option<Located>> + '_ {
    let counts = [6, 8, 10].map(|at| u16_at(msg, at).unwrap_or(0));
    let mut at = skip_name(msg, HEADER_LEN).map(|end| end + 4);
    (1..=3usize)
        .flat_map(move |section| (0..counts[section - 1]).map(move |_| section))
        .map(move |section| {
            let start = skip_name(msg, at?)?;
            let rdlen = u16_at(msg, start + 8)? as usize;
            let rdata = start + 10..start + 10 + rdlen;
            if rdata.end > msg.len() {
                at = None;
                return None;
            }
            at = Some(rdata.end);
            Some(Located {
                section,
                rtype: u16_at(msg, start)?,
                ttl: u32_at(msg, start + 4)?,
                ttl_at: start + 4,
                rdata,
            })
        })
}
