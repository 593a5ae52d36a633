//! The allocation-free reader and hickory-proto's general one agree on every packet the fast
//! one takes: same header bits, question (as written and lower-cased) and EDNS.
#![no_main]

use globaldns::wire::request::{Parsed, parse_general, parse_simple};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(fast) = parse_simple(data) else {
        return;
    };
    let Parsed::Query(general) = parse_general(data) else {
        panic!("the fast reader took a packet the general one refuses");
    };
    assert_eq!(fast.id, general.id);
    assert_eq!(fast.opcode, general.opcode);
    assert_eq!(fast.recursion_desired, general.recursion_desired);
    assert_eq!(fast.checking_disabled, general.checking_disabled);
    assert_eq!(fast.edns, general.edns);
    let (f, g) = (fast.question.unwrap(), general.question.unwrap());
    assert_eq!(f.name.wire(), g.name.wire());
    assert_eq!(f.name.lower(), g.name.lower());
    assert_eq!((f.qtype, f.qclass), (g.qtype, g.qclass));
});
