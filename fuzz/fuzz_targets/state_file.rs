//! Any text as a state file: refused with an error, or read into a state that writes back to
//! the same state. The same bytes as the state file's journal: replayed onto that state (or an
//! empty one) without a panic, into a state that passes the checks of a stored one.
#![no_main]

use globaldns::alloc::AllocState;
use globaldns::alloc::store::journal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = AllocState::default();
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(read) = AllocState::from_json(text)
    {
        let again = AllocState::from_json(&read.to_json()).expect("what we write reads back");
        assert_eq!(again, read);
        state = read;
    }
    if let Ok(replayed) = journal::replay(&mut state, data) {
        assert!(replayed.applied <= data.len() as u64);
        state.validate().expect("a replayed state is checked");
    }
});
