//! Domain names in DNS wire format, as the query path sees them.
//!
//! The name table is keyed by the lower-cased wire form of a name, so a query name is looked up
//! without building a `Name`: every suffix of a wire name starts at a label boundary and is itself
//! a valid key.

use hickory_proto::rr::Name;

/// Longest domain name in wire format (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;

/// Lower-cased wire encoding of `name` (fully qualified, no compression).
pub fn lower_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Start offsets of every suffix of a wire name, longest first, ending with the root (`[0]`).
pub fn suffix_offsets(wire: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut next = Some(0usize);
    std::iter::from_fn(move || {
        let at = next?;
        let len = *wire.get(at)? as usize;
        next = if len == 0 { None } else { Some(at + 1 + len) };
        Some(at)
    })
}

/// True when the first label of a wire name is `*`.
pub fn is_wildcard(wire: &[u8]) -> bool {
    wire.len() >= 2 && wire[0] == 1 && wire[1] == b'*'
}

/// Offset just past the (possibly compressed) name starting at `at` in message `p`: after its
/// root label, or after the pointer that ends it. `None` for a name running off the end, a
/// reserved label type, or more labels than a name can have.
pub fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..=MAX_NAME_LEN / 2 {
        let len = *p.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return (at + 2 <= p.len()).then_some(at + 2),
            l if l & 0xC0 == 0 => at += 1 + l as usize,
            _ => return None,
        }
    }
    None
}

/// The wire name without its first label (`None` for the root).
pub fn parent(wire: &[u8]) -> Option<&[u8]> {
    let len = *wire.first()? as usize;
    (len != 0).then(|| &wire[1 + len..])
}

/// Presentation form of an uncompressed wire name, for logs and messages.
pub fn to_text(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at).filter(|&&l| l > 0) {
        out.push_str(&String::from_utf8_lossy(
            &wire[at + 1..at + 1 + len as usize],
        ));
        out.push('.');
        at += 1 + len as usize;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_wire_folds_case_and_terminates() {
        let name = Name::from_ascii("ReViews.Default.GLOBAL.").unwrap();
        assert_eq!(lower_wire(&name), b"\x07reviews\x07default\x06global\x00");
    }

    #[test]
    fn suffixes_walk_to_root() {
        let wire = b"\x01a\x02bc\x00";
        let got: Vec<&[u8]> = suffix_offsets(wire).map(|o| &wire[o..]).collect();
        assert_eq!(got, vec![&wire[..], &b"\x02bc\x00"[..], &b"\x00"[..]]);
    }

    #[test]
    fn skip_name_stops_after_the_root_or_a_pointer() {
        let msg = b"\x01a\x02bc\x00\x01x\xC0\x00";
        assert_eq!(skip_name(msg, 0), Some(6));
        assert_eq!(skip_name(msg, 6), Some(10));
        assert_eq!(skip_name(&msg[..9], 6), None, "half a pointer");
        assert_eq!(skip_name(b"\x05ab", 0), None, "runs off the end");
        assert_eq!(skip_name(b"\x41a\x00", 0), None, "reserved label type");
        assert_eq!(
            skip_name(&[1, b'a'].repeat(200), 0),
            None,
            "too many labels"
        );
    }

    #[test]
    fn parent_and_wildcard() {
        assert!(is_wildcard(b"\x01*\x03foo\x00"));
        assert!(!is_wildcard(b"\x02*a\x00"));
        assert_eq!(parent(b"\x01*\x03foo\x00"), Some(&b"\x03foo\x00"[..]));
        assert_eq!(parent(b"\x00"), None);
    }
}
