//! The engine end to end with arbitrary input: Route, then Feedback and RecordReuse with the
//! id it issued or a mangled one. Each call answers (an error is fine) and never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokenwise::engine::Engine;
use tokenwise::engine::feedback::{FeedbackInput, ReuseInput};

static ENGINE: OnceLock<(Engine, tokio::runtime::Runtime)> = OnceLock::new();

fuzz_target!(|data: (&str, &str, &str, f64, i64, i64, u32, &str, bool)| {
    let (task, workflow, team, score, input_tokens, output_tokens, count, event_id, mangle) = data;
    let (engine, rt) = ENGINE.get_or_init(|| {
        let engine = Engine::builder(
            Arc::new(tokenwise::domain::classifier::ComplexityModel::bundled().unwrap()),
            Arc::new(tokenwise::domain::policy::Policy::embedded().unwrap()),
            tokenwise::domain::decision::Signer::new(b"fuzz-secret-fuzz-secret-fuzz-secret").unwrap(),
        )
        .decision_ttl_ms(60_000)
        .build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (engine, rt)
    });
    let req = tokenwise::domain::routing::RouteRequest {
        task,
        workflow,
        team,
        ..Default::default()
    };
    let Ok((_, mut id)) = engine.route(&req, 0.5, 1_000, rand_nonce(task)) else {
        return;
    };
    if mangle {
        id.push_str(event_id);
    }
    rt.block_on(async {
        let _ = engine
            .feedback(
                &FeedbackInput {
                    decision_id: &id,
                    score,
                    input_tokens: Some(input_tokens),
                    output_tokens: Some(output_tokens),
                    reused: count % 2 == 0,
                    ..Default::default()
                },
                2_000,
            )
            .await;
        let _ = engine
            .reuse(
                &ReuseInput {
                    decision_id: &id,
                    count,
                    event_id,
                    note: workflow,
                    caller_team: Some(team),
                },
                3_000,
            )
            .await;
    });
});

/// A nonce per input (the same input twice is a duplicate decision, which is fine).
fn rand_nonce(task: &str) -> u64 {
    tokenwise::domain::features::fnv1a(task)
}
