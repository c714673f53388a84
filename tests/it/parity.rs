//! The served path and the in-process proof agree: the same records, seed and policy replayed
//! through `replay` (in process) and through `replay --addr` against a running server end with
//! the same tier counts, in both bar modes, with the records' token counts and without them (a
//! client that reports only a score: proto3 would send 0, which once priced a scope's traffic
//! at nothing and sent it to the cheapest tier on a server while in-process replay looked fine);
//! and with exploration by pairs on, the server's draws seeded as the in-process replay's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::offline::dataset::{self, Split};
use tokenwise::offline::replay::{ReplayOptions, replay};

use crate::common::TestServer;

/// Two tiers at the recorded models' prices, exploring `exploration_rate` of tasks (by the
/// default `explore_by`; the server's draws are seeded as the in-process replay's).
fn policy(bar_mode: &str, exploration_rate: f64) -> Policy {
    Policy::parse(&format!(
        r#"
[[tiers]]
name = "cheap"
model = "mixtral-8x7b-instruct"
input_usd_per_mtok = 0.24
output_usd_per_mtok = 0.24

[[tiers]]
name = "premium"
model = "gpt-4-1106-preview"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[default]
quality_bar = 0.77
bar_mode = "{bar_mode}"
exploration_rate = {exploration_rate}
"#
    ))
    .unwrap()
}

/// The sample file, or a copy of it whose outcomes carry no token counts.
fn data(with_tokens: bool) -> std::path::PathBuf {
    let src = std::path::Path::new("tests/data/replay-sample.jsonl");
    if with_tokens {
        return src.to_path_buf();
    }
    let text = std::fs::read_to_string(src).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        for o in v["outcomes"].as_object_mut().unwrap().values_mut() {
            let o = o.as_object_mut().unwrap();
            o.remove("input_tokens");
            o.remove("output_tokens");
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    let path = std::env::temp_dir().join(format!("tokenwise-parity-{}.jsonl", std::process::id()));
    std::fs::write(&path, out).unwrap();
    path
}

fn in_process(bar_mode: &str, rate: f64, file: &std::path::Path) -> BTreeMap<String, usize> {
    let records = dataset::load(file.to_str().unwrap(), Split::All).unwrap();
    let model = Arc::new(ComplexityModel::bundled().unwrap());
    let opts = ReplayOptions {
        learning: true,
        seed: 1,
        ..Default::default()
    };
    let r = replay(model, policy(bar_mode, rate), &records, &opts).unwrap();
    r.tier_share
        .iter()
        .map(|(t, s)| (t.clone(), (s * r.tasks as f64).round() as usize))
        .filter(|(_, n)| *n > 0)
        .collect()
}

async fn served(bar_mode: &str, rate: f64, file: &std::path::Path) -> BTreeMap<String, usize> {
    // Draws seeded as the in-process replay's (seed 1), one call at a time.
    let server = TestServer::with_config(policy(bar_mode, rate), Limits::default(), |c| {
        c.draw_seed = Some(1)
    })
    .await;
    let addr = server.addr.to_string();
    let file = file.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokenwise"))
            .args(["replay", "--addr", &addr, "--data"])
            .arg(&file)
            .args(["--team", "", "--concurrency", "1", "--seed", "1", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["refused"], serde_json::json!({}), "{summary}");
    serde_json::from_value(summary["tiers"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_and_in_process_replays_route_alike_in_both_bar_modes_with_and_without_tokens() {
    for with_tokens in [true, false] {
        let file = data(with_tokens);
        for mode in ["average", "per_task"] {
            let (m, f) = (mode.to_string(), file.clone());
            let local = tokio::task::spawn_blocking(move || in_process(&m, 0.0, &f))
                .await
                .unwrap();
            let remote = served(mode, 0.0, &file).await;
            assert_eq!(
                local, remote,
                "{mode}, token counts {with_tokens}: in process vs served"
            );
            // Neither sends the whole scope to the cheapest tier.
            assert!(
                local.get("premium").copied().unwrap_or(0) > 30,
                "{mode} {local:?}"
            );
        }
    }
}

/// With exploration on, by the default `explore_by` (pairs, which both replays' callers run:
/// each posts the drawn tier's recorded outcome as the pair's shadow score), the served and
/// in-process replays still end with the same tier counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_exploration_pairs_served_and_in_process_replays_route_alike() {
    let file = data(true);
    for mode in ["average", "per_task"] {
        let (m, f) = (mode.to_string(), file.clone());
        let local = tokio::task::spawn_blocking(move || in_process(&m, 0.2, &f))
            .await
            .unwrap();
        let remote = served(mode, 0.2, &file).await;
        assert_eq!(local, remote, "{mode}, exploring 0.2: in process vs served");
    }
}
