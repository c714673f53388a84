//! Decision ids: arbitrary text never verifies and never panics the decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|id: &str| {
    let signer = tokenwise::domain::decision::Signer::new(b"fuzz-secret-fuzz-secret-fuzz-secret").unwrap();
    assert!(signer.verify(id).is_err());
});
