//! The in-process replay, the product's headline proof, on a small recorded file
//! (`tests/data/replay-sample.jsonl`: every 30th record of the bundled RouteLLM data, 303 tasks,
//! two models): its accounting against figures computed by hand from the file, determinism,
//! and its exact figures with learning off and on (a change to the model, the planner or the
//! learning loop moves them: update them deliberately, with the reason in the commit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::policy::ExploreBy;
use tokenwise::offline::dataset::{self, Record, Split};
use tokenwise::offline::replay::{ReplayOptions, ReplayReport, policy_from_models, replay};

const CHEAP: &str = "mixtral-8x7b-instruct";
const PREMIUM: &str = "gpt-4-1106-preview";

fn records() -> Vec<Record> {
    dataset::load("tests/data/replay-sample.jsonl", Split::All).unwrap()
}

fn run(records: &[Record], learning: bool, seed: u64) -> ReplayReport {
    let models = [CHEAP.to_string(), PREMIUM.to_string()];
    let policy = policy_from_models(records, &models, 0.77).unwrap();
    let model = Arc::new(ComplexityModel::bundled().unwrap());
    let opts = ReplayOptions {
        bar: None,
        learning,
        seed,
        ..Default::default()
    };
    replay(model, policy, records, &opts).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn the_accounting_matches_the_file_by_hand() {
    let records = records();
    assert_eq!(records.len(), 303);
    let r = run(&records, true, 1);
    assert_eq!(r.tasks + r.skipped, records.len());
    assert_eq!(r.skipped, 0, "every record has both models");
    // Always-premium, from the file.
    let premium: Vec<_> = records.iter().map(|r| &r.outcomes[PREMIUM]).collect();
    let q = premium.iter().map(|o| o.score).sum::<f64>() / premium.len() as f64;
    let cost: f64 = premium.iter().map(|o| o.cost_usd.unwrap()).sum();
    assert!(close(r.premium_quality, q), "{} vs {q}", r.premium_quality);
    assert!(
        close(r.premium_cost_usd, cost),
        "{} vs {cost}",
        r.premium_cost_usd
    );
    assert!(close(r.saving_vs_premium, 1.0 - r.cost_usd / cost));
    assert!(close(r.tier_share.values().sum::<f64>(), 1.0));
    assert_eq!(r.bar_met, r.quality >= r.bar);
    // Per workflow adds up to the whole.
    let tasks: usize = r.by_workflow.values().map(|w| w.tasks).sum();
    let spent: f64 = r.by_workflow.values().map(|w| w.cost_usd).sum();
    assert_eq!(tasks, r.tasks);
    assert!(close(spent, r.cost_usd));
}

#[test]
fn a_replay_is_deterministic_for_its_seed() {
    let records = records();
    assert_eq!(run(&records, true, 7), run(&records, true, 7));
}

#[test]
fn the_exact_figures_with_learning_off_and_on() {
    let records = records();
    let frozen = run(&records, false, 1);
    let learned = run(&records, true, 1);
    let figures = |r: &ReplayReport| {
        (
            r.tasks,
            (r.quality * 1e6).round() / 1e6,
            (r.cost_usd * 1e9).round() / 1e9,
            (r.saving_vs_premium * 1e6).round() / 1e6,
            (r.tier_share.get(CHEAP).copied().unwrap_or(0.0) * 1e6).round() / 1e6,
        )
    };
    eprintln!("frozen  {:?}", figures(&frozen));
    eprintln!("learned {:?}", figures(&learned));
    assert_eq!(figures(&frozen), FROZEN);
    assert_eq!(figures(&learned), LEARNED);
    // The cold plan is cautious (its confidence margins): outcomes show the cheap tier is
    // good on much of this traffic, and learning moves work to it.
    assert!(learned.saving_vs_premium > frozen.saving_vs_premium + 0.2);
    // Learning off keeps the cold thresholds; on, outcomes move them.
    assert!(!frozen.learning && learned.learning);
    assert_ne!(frozen.final_thresholds, learned.final_thresholds);
}

/// (tasks, quality, cost USD, saving vs premium, cheap tier share) with learning off, under the
/// default exploration ("auto", pairs while the caller runs them: the replay's caller runs
/// every shadow tier, and its cost counts; learning off, nothing teaches the plan otherwise).
const FROZEN: (usize, f64, f64, f64, f64) = (303, 0.828383, 0.37743408, 0.122899, 0.118812);
/// The same with learning on (each tier of a workflow fitting its own slope since the ninth
/// session on issue 34: 0.768977 / 0.551299 before).
const LEARNED: (usize, f64, f64, f64, f64) = (303, 0.772277, 0.1968824, 0.542474, 0.429043);

/// The default exploration ("auto") pairs while the caller runs the pairs, and substitutes
/// once it leaves them unanswered: a replay whose caller runs every shadow tier is the pairs
/// replay, and one whose caller runs none is the substitution replay, figure for figure.
#[test]
fn auto_exploration_is_pairs_for_a_caller_that_runs_them_and_substitution_for_one_that_does_not() {
    let records = records();
    let models = [CHEAP.to_string(), PREMIUM.to_string()];
    let policy = policy_from_models(&records, &models, 0.77).unwrap();
    let model = Arc::new(ComplexityModel::bundled().unwrap());
    let by = |explore_by, no_shadow_runs| {
        let opts = ReplayOptions {
            learning: true,
            seed: 5,
            explore_by,
            no_shadow_runs,
            ..Default::default()
        };
        replay(model.clone(), policy.clone(), &records, &opts).unwrap()
    };
    let auto = by(None, false);
    assert_eq!(auto, by(Some(ExploreBy::Pairs), false));
    let ignored = by(None, true);
    let sub = by(Some(ExploreBy::Substitution), false);
    assert_eq!(ignored, sub);
    assert_ne!(auto, sub);
}

#[test]
fn exploring_by_pairs_serves_the_plan_on_cheaper_draws_and_pays_the_drawn_tiers_call() {
    let records = records();
    let models = [CHEAP.to_string(), PREMIUM.to_string()];
    let policy = policy_from_models(&records, &models, 0.77).unwrap();
    let model = Arc::new(ComplexityModel::bundled().unwrap());
    // Learning off: both replays make the same draws against the same plan.
    let by = |explore_by| {
        let opts = ReplayOptions {
            seed: 3,
            explore_by: Some(explore_by),
            ..Default::default()
        };
        replay(model.clone(), policy.clone(), &records, &opts).unwrap()
    };
    let (sub, pairs) = (by(ExploreBy::Substitution), by(ExploreBy::Pairs));
    assert!(sub.explored_share > 0.0);
    // Pairs also draw on the tasks beyond the rate, for a cheaper tier only.
    assert!(pairs.explored_share > sub.explored_share);
    // A cheaper draw loses no quality with pairs (the plan's tier serves it); a dearer one
    // serves either way within the rate, and never beyond it. The quality apart is what
    // substitution's cheaper draws scored apart.
    let n = sub.tasks as f64;
    assert!(pairs.exploration_score_delta != sub.exploration_score_delta);
    assert!(close(
        pairs.quality - sub.quality,
        (pairs.exploration_score_delta - sub.exploration_score_delta) / n
    ));
    // Both pay the drawn tier's calls within the rate; pairs pay the plan's calls on those
    // cheaper draws too, and the drawn tier's on the pairs beyond the rate.
    let planned_on_explored = pairs.exploration_cost_usd - sub.exploration_cost_usd;
    assert!(planned_on_explored > 0.0);
    assert!(close(pairs.cost_usd - sub.cost_usd, planned_on_explored));
    let spent: f64 = pairs.by_workflow.values().map(|w| w.cost_usd).sum();
    assert!(close(spent, pairs.cost_usd));
}
