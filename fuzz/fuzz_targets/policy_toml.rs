//! Policy TOML: any text parses or fails with a short, located error; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = tokenwise::domain::policy::Policy::parse(text) {
        assert!(e.to_string().len() < 1_000);
    }
});
