//! Any text as a manifest file: parsed or refused with an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = globaldns::source::file::parse_manifest("fuzz.yaml", text);
    }
});
