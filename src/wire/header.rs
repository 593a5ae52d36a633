//! The fixed twelve-byte message header (RFC 1035 §4.1.1), read in place, and the big-endian
//! integers every section is made of.

/// Length of the header; the question starts right after it.
pub const HEADER_LEN: usize = 12;

/// QR in byte 2: the message is a response.
pub const QR: u8 = 0x80;
/// AA in byte 2: the answer comes from an authority for the name.
pub const AA: u8 = 0x04;
/// TC in byte 2: the message was truncated to fit its transport.
pub const TC: u8 = 0x02;
/// RD in byte 2: the client asks for recursion.
pub const RD: u8 = 0x01;
/// RA in byte 3: the server recurses for this client.
pub const RA: u8 = 0x80;
/// CD in byte 3: the client does its own DNSSEC checking (RFC 4035 §3.2.2).
pub const CD: u8 = 0x10;
/// RCODE, the low four bits of byte 3.
const RCODE_MASK: u8 = 0x0F;

/// The big-endian u16 at `at`, if `p` is long enough.
pub fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// The big-endian u32 at `at`, if `p` is long enough.
pub fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

/// The header's response code (without the EDNS extension bits), if it has a header.
pub fn rcode(msg: &[u8]) -> Option<u8> {
    msg.get(3).map(|b| b & RCODE_MASK)
}

/// Whether the message has TC set.
pub fn is_truncated(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & TC != 0)
}

/// Whether the message has QR set.
pub fn is_response(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & QR != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flags_and_integers_in_place() {
        let msg = [0xAB, 0xCD, 0x82, 0x83, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(u16_at(&msg, 0), Some(0xABCD));
        assert_eq!(u16_at(&msg, 11), None);
        assert_eq!(u32_at(&msg, 0), Some(0xABCD_8283));
        assert_eq!(u32_at(&msg, 9), None);
        assert_eq!(rcode(&msg), Some(3));
        assert!(is_truncated(&msg) && is_response(&msg));
        assert_eq!(rcode(&msg[..3]), None);
        assert!(!is_truncated(&msg[..2]) && !is_response(&[]));
    }
}
