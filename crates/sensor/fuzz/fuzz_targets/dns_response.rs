//! Coverage-guided fuzzing of the DNS response parser:
//! `cargo +nightly fuzz run dns_response` from `crates/sensor`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = picket_sensor::dns::parse_response(data) {
        assert!(message.answers.len() <= picket_sensor::dns::MAX_ANSWERS);
    }
});
