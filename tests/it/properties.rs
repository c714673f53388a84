//! Property tests over the parsers and scorers that take outside input (the in-repo stand-in
//! for fuzzing: each runs a few hundred arbitrary inputs in `cargo test`). Every one must
//! answer (an error is fine) without a panic, and keep its invariants.

use proptest::prelude::*;
use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::decision::Signer;
use tokenwise::domain::features::{TaskInput, visit_features};
use tokenwise::domain::policy::{EMBEDDED_POLICY, Policy};
use tokenwise::grpc::auth::{hash_key, parse_keys};

/// Arbitrary text, biased towards what the parsers look for.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\[\\]=\"a-z_.0-9 \n{}#,-]{0,200}",
        // The embedded policy with a slice of it mangled.
        (0usize..EMBEDDED_POLICY.len(), any::<String>()).prop_map(|(at, junk)| {
            let mut at = at;
            while !EMBEDDED_POLICY.is_char_boundary(at) {
                at -= 1;
            }
            format!("{}{junk}{}", &EMBEDDED_POLICY[..at], &EMBEDDED_POLICY[at..])
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn policy_parsing_never_panics_and_errors_stay_short(t in text()) {
        if let Err(e) = Policy::parse(&t) {
            prop_assert!(e.to_string().len() < 1_000);
        }
    }

    #[test]
    fn key_files_never_panic(t in text(), key in any::<String>()) {
        if let Ok(ring) = parse_keys(&t) {
            prop_assert!(ring.len() < 10_000);
        }
        prop_assert_eq!(hash_key(&key).len(), 64);
    }

    #[test]
    fn decision_ids_never_verify_by_accident(id in any::<String>(), dotted in "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}") {
        let s = Signer::new(b"property-test-secret").unwrap();
        prop_assert!(s.verify(&id).is_err());
        prop_assert!(s.verify(&dotted).is_err());
    }

    #[test]
    fn features_and_complexity_are_finite_for_any_text(t in any::<String>(), workflow in any::<String>(), out in any::<u32>()) {
        let input = TaskInput { text: &t, workflow: &workflow, expected_output_tokens: out, ..TaskInput::default() };
        let mut ok = true;
        visit_features(&input, |i, v| ok &= (i as usize) < tokenwise::domain::features::DIMS && v.is_finite());
        prop_assert!(ok);
        let c = ComplexityModel::bundled().unwrap().complexity(&input);
        prop_assert!((0.0..=1.0).contains(&c), "{}", c);
    }
}
