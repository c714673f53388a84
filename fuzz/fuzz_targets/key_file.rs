//! API key files and keys: parse or refuse, never panic; a key hashes to 64 hex digits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = tokenwise::grpc::auth::parse_keys(text);
    assert_eq!(tokenwise::grpc::auth::hash_key(text).len(), 64);
});
