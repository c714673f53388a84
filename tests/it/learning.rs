//! Online learning on synthetic streams built from the bundled data (in process, seeded):
//! drift, improvement, and a tier with no training data finding its place.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::decision::Signer;
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::RouteRequest;
use tokenwise::engine::Engine;
use tokenwise::engine::feedback::FeedbackInput;
use tokenwise::offline::dataset::{self, Record, Split};

const CHEAP: &str = "mixtral-8x7b-instruct";
const PREMIUM: &str = "gpt-4-1106-preview";

/// A 5,000-task stream of held-out records (the bundled model never trained on them), each pass
/// shuffled: the file is grouped by subject, a live stream is not.
fn records() -> Vec<Record> {
    let held_out = dataset::load("models/data/routellm-train.jsonl.gz", Split::Holdout).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = Vec::new();
    while out.len() < 5000 {
        let mut pass = held_out.clone();
        pass.shuffle(&mut rng);
        out.extend(pass);
    }
    out.truncate(5000);
    out
}

fn two_tiers(bar: f64) -> String {
    format!(
        r#"
[[tiers]]
name = "cheap"
model = "{CHEAP}"
input_usd_per_mtok = 0.24
output_usd_per_mtok = 0.24
[[tiers]]
name = "premium"
model = "{PREMIUM}"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0
[default]
quality_bar = {bar}
exploration_rate = 0.05
"#
    )
}

struct Sim {
    engine: Engine,
    runtime: tokio::runtime::Runtime,
    rng: StdRng,
    step: u64,
}

impl Sim {
    fn new(policy: &str) -> Self {
        let model = Arc::new(ComplexityModel::bundled().unwrap());
        let policy = Arc::new(Policy::parse(policy).unwrap());
        let engine = Engine::builder(model, policy, Signer::new(b"k").unwrap())
            .decision_ttl_ms(u64::MAX / 4)
            .build();
        Self {
            engine,
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            rng: StdRng::seed_from_u64(42),
            step: 0,
        }
    }

    /// Routes one record, scores it with `score(tier model, record)`, feeds it back.
    fn step(&mut self, r: &Record, score: impl Fn(&str, &Record) -> f64) -> (String, f64) {
        self.step += 1;
        let now = 1_000_000 + self.step * 1000;
        let (d, id) = self
            .engine
            .route(
                &RouteRequest {
                    task: &r.prompt,
                    workflow: &r.workflow,
                    ..Default::default()
                },
                self.rng.random(),
                now,
                self.rng.random(),
            )
            .unwrap();
        let model = d.tier().model.clone();
        let s = score(&model, r);
        let out = r
            .outcomes
            .get(PREMIUM)
            .and_then(|o| o.output_tokens)
            .unwrap_or(10) as i64;
        let input = FeedbackInput {
            decision_id: &id,
            score: s,
            input_tokens: Some(d.input_tokens as i64),
            output_tokens: Some(out),
            ..Default::default()
        };
        self.runtime
            .block_on(self.engine.feedback(&input, now))
            .unwrap();
        (d.tier().name.clone(), s)
    }

    fn threshold(&self, tier: &str) -> f64 {
        let t = self.engine.table();
        // The simulation calls without a team: the anonymous team's own plan is what it
        // routes on (the shared plan holds only a bounded share of its outcomes).
        let plan = t.default.for_team("");
        plan.tiers
            .iter()
            .find(|p| t.policy.tiers[p.tier].name == tier)
            .unwrap()
            .threshold
    }
}

fn recorded(model: &str, r: &Record) -> f64 {
    r.outcomes[model].score
}

fn mean(xs: &[(String, f64)]) -> f64 {
    xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64
}

fn share(xs: &[(String, f64)], tier: &str) -> f64 {
    xs.iter().filter(|x| x.0 == tier).count() as f64 / xs.len() as f64
}

#[test]
fn drift_cheap_tier_turns_bad_and_quality_returns_to_the_bar() {
    let data = records();
    let bar = 0.75;
    let mut sim = Sim::new(&two_tiers(bar));
    let first: Vec<_> = data[..1800].iter().map(|r| sim.step(r, recorded)).collect();
    let before = sim.threshold("cheap");
    assert!(
        mean(&first[1000..]) >= bar - 0.03,
        "settled quality {}",
        mean(&first[1000..])
    );

    // Halfway: the cheap model degrades — half of its answers now fail.
    let mut flip = StdRng::seed_from_u64(9);
    let noise: Vec<f64> = (0..2200).map(|_| flip.random()).collect();
    let second: Vec<_> = data[1800..4000]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            sim.step(r, |m, r| {
                if m == CHEAP && noise[i] < 0.5 {
                    0.0
                } else {
                    recorded(m, r)
                }
            })
        })
        .collect();
    let after = sim.threshold("cheap");
    assert!(after < before, "cheap threshold {before} → {after}");
    assert!(share(&second[1000..], "cheap") < share(&first[1000..], "cheap") / 2.0);
    // Bounded recovery: from 1,000 feedbacks after the drift on, quality is back at the bar.
    let recovered = mean(&second[1000..]);
    assert!(
        recovered >= bar - 0.03,
        "quality after recovery {recovered}"
    );
}

#[test]
fn improvement_cheap_tier_that_beats_its_prior_gets_more_work() {
    let data = records();
    let mut sim = Sim::new(&two_tiers(0.78));
    let first: Vec<_> = data[..2000].iter().map(|r| sim.step(r, recorded)).collect();
    let before = sim.threshold("cheap");
    // The cheap model is upgraded: it now answers like the premium one.
    let second: Vec<_> = data[2000..4500]
        .iter()
        .map(|r| sim.step(r, |_, r| recorded(PREMIUM, r)))
        .collect();
    let after = sim.threshold("cheap");
    assert!(after > before, "cheap threshold {before} → {after}");
    assert!(share(&second[1500..], "cheap") > share(&first[1000..], "cheap") + 0.2);
    assert!(mean(&second[1500..]) >= 0.78 - 0.03);
}

#[test]
fn a_tier_with_no_training_data_learns_its_place_from_feedback() {
    let data = records();
    let policy = format!(
        "{}\n[[tiers]]\nname = \"newcomer\"\nmodel = \"brand-new-model\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 3.0\n",
        two_tiers(0.78).split("[default]").next().unwrap()
    ) + "[default]\nquality_bar = 0.78\nexploration_rate = 0.05\n";
    let mut sim = Sim::new(&policy);
    // The newcomer is as good as premium at a tenth of the price; nothing in the model knows it.
    let start = sim.threshold("newcomer");
    let run: Vec<_> = data[..3000]
        .iter()
        .map(|r| {
            sim.step(r, |m, r| {
                if m == "brand-new-model" {
                    recorded(PREMIUM, r)
                } else {
                    recorded(m, r)
                }
            })
        })
        .collect();
    let late = &run[2000..];
    assert!(
        sim.threshold("newcomer") > start,
        "newcomer threshold {start} → {}",
        sim.threshold("newcomer")
    );
    assert!(
        share(late, "newcomer") > share(late, "premium"),
        "newcomer {} vs premium {}",
        share(late, "newcomer"),
        share(late, "premium")
    );
    assert!(mean(late) >= 0.78 - 0.03, "{}", mean(late));
}
