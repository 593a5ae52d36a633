//! Any text as a state file: refused with an error, or read into a state that writes back to
//! the same state.
#![no_main]

use globaldns::alloc::AllocState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(state) = AllocState::from_json(text) {
        let again = AllocState::from_json(&state.to_json()).expect("what we write reads back");
        assert_eq!(again, state);
    }
});
