//! Shadow pairs through the engine: Route names a shadow tier for the scope's share of tasks,
//! Feedback takes the pair exactly once, refuses what it cannot take without recording
//! anything, books the shadow run as shadow spend, apart from spend, and teaches every
//! replica the shadow tier's outcome once.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::HashMap;
use std::sync::Arc;

use super::test_support::two_tier_engine;
use crate::domain::books::*;
use crate::domain::routing::{Decision, RouteRequest, shadow_draw};
use crate::engine::feedback::{FeedbackError, FeedbackInput};
use crate::engine::{Engine, Error, ErrorKind};
use crate::store::{MemoryStore, OutageBuffer, StateStore};

/// Beside [`TWO_TIERS`]: every task goes to `small` (pinned), and a fifth of them name
/// `premium` as shadow tier.
const POLICY: &str = r#"
[default]
exploration_rate = 0.0
thresholds = { small = 1.0 }
shadow_rate = 0.2
"#;

const NOW: u64 = 1_795_996_000_000;

fn engine() -> Engine {
    replica(&(Arc::new(MemoryStore::new()) as Arc<dyn StateStore>))
}

/// A replica of a deployment whose replicas share `store`.
fn replica(store: &Arc<dyn StateStore>) -> Engine {
    two_tier_engine(POLICY)
        .store(store.clone(), OutageBuffer::in_memory(0))
        .build()
}

/// A decision whose draw does (or does not) fall in the shadow share.
fn route(e: &Engine, shadowed: bool, nonce: u64) -> (Decision, String) {
    let draw = (0..1000)
        .map(|k| f64::from(k) / 1000.0)
        .find(|&u| (shadow_draw(u) < 0.2) == shadowed)
        .unwrap();
    e.route(
        &RouteRequest {
            task: "Summarise the attached quarterly report in three bullet points.",
            expected_output_tokens: 50,
            ..Default::default()
        },
        draw,
        NOW,
        nonce,
    )
    .unwrap()
}

fn feedback<'a>(id: &'a str, shadow: Option<f64>) -> FeedbackInput<'a> {
    FeedbackInput {
        decision_id: id,
        score: 0.5,
        input_tokens: Some(100),
        output_tokens: Some(40),
        shadow_score: shadow,
        shadow_input_tokens: shadow.map(|_| 100),
        shadow_output_tokens: shadow.map(|_| 60),
        ..Default::default()
    }
}

async fn ledger(e: &Engine) -> HashMap<(String, String), i64> {
    let table = e.router.table();
    e.books.flush(&table.policy, e.store(), NOW).await.unwrap();
    let read = e.store().read_counters(&[ledger_hash(NOW)]).await.unwrap();
    read[0]
        .iter()
        .filter_map(|(f, v)| {
            let (m, _, _, tier) = parse_ledger_field(f)?;
            Some(((m.to_string(), tier.to_string()), *v))
        })
        .collect()
}

#[test]
fn a_share_of_decisions_names_the_top_tier_as_shadow_and_never_the_chosen_one() {
    let e = engine();
    let (d, _) = route(&e, true, 1);
    assert_eq!(d.tier().name, "small");
    assert_eq!(
        d.shadow.map(|s| d.candidates[s].name.as_str()),
        Some("premium")
    );
    // Pinned thresholds, no exploration: the tier is certain, premium impossible.
    assert_eq!((d.propensity, d.premium_propensity), (1.0, 0.0));
    let (d, _) = route(&e, false, 2);
    assert_eq!(d.shadow, None);
}

#[tokio::test]
async fn a_shadow_pair_is_recorded_once_and_booked_as_shadow_spend() {
    let e = engine();
    let (_, id) = route(&e, true, 1);
    let ack = e.feedback(&feedback(&id, Some(0.75)), NOW).await.unwrap();
    // 100 in × $10 + 60 out × $30 per Mtok on premium = 2,800 µ$.
    assert_eq!(ack.shadow_cost_micros, 2_800);
    let again = e
        .feedback(&feedback(&id, Some(0.75)), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(again, Error::Feedback(FeedbackError::AlreadyRecorded)),
        "{again:?}"
    );
    assert_eq!(again.kind(), ErrorKind::AlreadyExists);
    let l = ledger(&e).await;
    let get = |m: &str, t: &str| l.get(&(m.into(), t.into())).copied().unwrap_or(0);
    // Spend is the routed call's (100 × $1 + 40 × $2 = 180 µ$); the shadow run is apart.
    assert_eq!(get(metric::SPEND, "small"), 180);
    assert_eq!(get(metric::SPEND, "premium"), 0);
    assert_eq!(get(metric::SHADOW_SPEND, "premium"), 2_800);
    assert_eq!(get(metric::SHADOWED, "small"), 1);
    assert_eq!(get(metric::PAIRS, "small"), 1);
    assert_eq!(get(metric::PAIR_R, "small"), 500_000);
    assert_eq!(get(metric::PAIR_S, "small"), 750_000);
    assert_eq!(get(metric::PAIR_RS, "small"), 375_000);
    assert_eq!(
        (get(metric::PAIR_CR, "small"), get(metric::PAIR_CS, "small")),
        (180, 2_800)
    );
    // Could not have gone to premium: no support for an always-premium estimate.
    assert_eq!(get(metric::IPS_UNSUPPORTED, "small"), 1);
    // The stored outcome keeps the pair and the propensities.
    let (events, _) = e.store().events_since(0, 10).await.unwrap();
    let event = &events[0];
    assert_eq!(
        event.shadow.as_ref().map(|s| (s.tier.as_str(), s.score)),
        Some(("premium", 0.75))
    );
    assert_eq!(
        (event.propensity, event.premium_propensity),
        (Some(1.0), Some(0.0))
    );
}

#[tokio::test]
async fn refused_shadow_scores_record_nothing() {
    let e = engine();
    let (_, plain) = route(&e, false, 1);
    let (_, shadowed) = route(&e, true, 2);
    let refusals = [
        (
            feedback(&plain, Some(0.5)),
            ErrorKind::FailedPrecondition,
            "shadow_score",
        ),
        (
            feedback(&shadowed, Some(1.5)),
            ErrorKind::InvalidArgument,
            "shadow_score",
        ),
        (
            feedback(&shadowed, Some(f64::NAN)),
            ErrorKind::InvalidArgument,
            "shadow_score",
        ),
        (
            FeedbackInput {
                shadow_input_tokens: Some(-1),
                ..feedback(&shadowed, Some(0.5))
            },
            ErrorKind::InvalidArgument,
            "shadow_input_tokens",
        ),
        (
            FeedbackInput {
                shadow_output_tokens: Some(2_000_000_000),
                ..feedback(&shadowed, Some(0.5))
            },
            ErrorKind::InvalidArgument,
            "shadow_output_tokens",
        ),
        (
            FeedbackInput {
                shadow_score: None,
                ..feedback(&shadowed, Some(0.5))
            },
            ErrorKind::InvalidArgument,
            "shadow_input_tokens",
        ),
    ];
    for (input, kind, field) in refusals {
        let err = e.feedback(&input, NOW).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().starts_with(field), "{err}");
    }
    assert!(e.store().events_since(0, 10).await.unwrap().0.is_empty());
    let l = ledger(&e).await;
    assert!(
        !l.keys()
            .any(|(m, _)| m == metric::OUTCOMES || m == metric::SHADOW_SPEND)
    );
    // Both decisions still take their feedback.
    e.feedback(&feedback(&plain, None), NOW).await.unwrap();
    e.feedback(&feedback(&shadowed, Some(0.5)), NOW)
        .await
        .unwrap();
}

#[tokio::test]
async fn replicas_folding_the_same_pairs_agree_and_learn_each_shadow_run_once() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let (a, b) = (replica(&store), replica(&store));
    // Twelve outcomes posted to either replica, eight of them with a shadow pair.
    let mut pairs = 0;
    for i in 0..12u64 {
        let e = if i % 2 == 0 { &a } else { &b };
        let shadowed = i % 3 != 0;
        let (_, id) = route(e, shadowed, i + 1);
        let shadow = shadowed.then_some(0.2 + 0.05 * i as f64);
        pairs += usize::from(shadowed);
        e.feedback(&feedback(&id, shadow), NOW).await.unwrap();
    }
    for _ in 0..2 {
        for e in [&a, &b] {
            e.fold.sync(&e.router).await.unwrap();
        }
    }
    let (ea, eb) = (a.fold.window().await.1, b.fold.window().await.1);
    assert_eq!(ea, eb);
    assert_eq!(ea.len(), 1);
    let ev = ea.values().next().unwrap();
    assert_eq!(ev.feedbacks(), 12);
    let (team, own) = ev.teams.iter().next().unwrap();
    // The team's own evidence takes each shadow run in full, once (decayed by at most the
    // twelve outcomes since): the premium tier, which served nothing, has eight outcomes.
    let premium: f64 = own.evidence.scope.cells["premium"]
        .iter()
        .map(|c| c.n)
        .sum();
    assert!(
        premium <= pairs as f64 && premium > 0.98 * pairs as f64,
        "{team}: {premium} of {pairs}"
    );
    // Realized quality is what was served: every routed score was 0.5.
    for total in [ev.scope.total, own.evidence.scope.total] {
        assert!((total.mean() - 0.5).abs() < 1e-12, "{total:?}");
    }
}

/// An engine whose scope explores half its decisions by pairs, and its first decision (of
/// draws below the rate) that explored: a pair.
fn paired() -> (Engine, Decision, String) {
    let e = two_tier_engine(
        "[default]\nquality_bar = 0.7\nexploration_rate = 0.5\nexplore_by = \"pairs\"\n",
    )
    .build();
    let task = RouteRequest {
        task: "Summarise the attached quarterly report in three bullet points.",
        expected_output_tokens: 50,
        ..Default::default()
    };
    let (d, id) = (0..500)
        .map(|k| e.route(&task, f64::from(k) / 1000.0, NOW, 7).unwrap())
        .find(|(d, _)| d.explored)
        .expect("a draw below the rate that picks the other tier");
    (e, d, id)
}

#[tokio::test]
async fn an_exploration_pair_is_served_by_the_plan_and_booked_as_shadow_spend_only() {
    // Half the decisions explore, as pairs: the plan's tier serves, the drawn one is the shadow.
    let (e, d, id) = paired();
    assert_eq!(d.chosen, d.planned);
    let shadow = d.shadow.expect("the drawn tier is the shadow tier");
    assert_ne!(shadow, d.chosen);
    let ack = e.feedback(&feedback(&id, Some(1.0)), NOW).await.unwrap();
    assert!(ack.shadow_cost_micros > 0);
    let l = ledger(&e).await;
    let get = |m: &str, t: &str| l.get(&(m.into(), t.into())).copied().unwrap_or(0);
    let (served, drawn) = (&d.tier().name, &d.candidates[shadow].name);
    assert_eq!(get(metric::SHADOW_SPEND, drawn), ack.shadow_cost_micros);
    assert_eq!(get(metric::SPEND, drawn), 0);
    // Not a measurement of quality kept: that needs a pair on the scope's shadow tier.
    assert_eq!(get(metric::PAIRS, served), 0);
    assert_eq!(get(metric::PAIR_S, served), 0);
    // Counted as exploration once run, at what the run cost, not as a shadowed decision.
    assert_eq!(get(metric::SHADOWED, served), 0);
    assert_eq!(get(metric::EXPLORED, served), 1);
    assert_eq!(get(metric::EXPLORE_COST, served), ack.shadow_cost_micros);
}

#[tokio::test]
async fn an_exploration_pair_the_caller_ignores_explores_nothing_in_the_books() {
    let (e, d, id) = paired();
    let ack = e.feedback(&feedback(&id, None), NOW).await.unwrap();
    assert_eq!(ack.shadow_cost_micros, 0);
    let l = ledger(&e).await;
    let served = &d.tier().name;
    let get = |m: &str| l.get(&(m.into(), served.clone())).copied().unwrap_or(0);
    assert_eq!((get(metric::TASKS), get(metric::OUTCOMES)), (1, 1));
    assert_eq!((get(metric::EXPLORED), get(metric::EXPLORE_COST)), (0, 0));
    assert_eq!(get(metric::SHADOWED), 0);
}

#[tokio::test]
async fn auto_exploration_substitutes_once_callers_leave_pairs_unanswered_and_pairs_once_they_answer()
 {
    // The default explore_by ("auto"): pairs until a pair comes back unanswered.
    let e = two_tier_engine("[default]\nquality_bar = 0.7\nexploration_rate = 0.5\n").build();
    let task = RouteRequest {
        task: "Summarise the attached quarterly report in three bullet points.",
        expected_output_tokens: 50,
        ..Default::default()
    };
    let answers = |e: &Engine| {
        let table = e.table();
        let plan = table.plan("default");
        (plan.pairs_answered, plan.for_team("").pairs_answered)
    };
    // Draws below the rate (0.5) that pick the cheaper tier, and draws beyond it that do.
    let cheaper_draws = |e: &Engine, range: std::ops::Range<u32>| {
        range
            .map(|k| f64::from(k) / 1000.0)
            .find(|&u| {
                let (d, _) = e.route(&task, u, NOW, 1).unwrap();
                d.exploration_pair().is_some() || d.chosen < d.planned
            })
            .expect("a draw of the cheaper tier")
    };
    assert_eq!(answers(&e), (true, true));
    let within = cheaper_draws(&e, 0..500);
    let (d, id) = e.route(&task, within, NOW, 2).unwrap();
    assert_eq!(d.chosen, d.planned, "a pair: the plan's tier serves");
    e.feedback(&feedback(&id, None), NOW).await.unwrap();
    assert_eq!(answers(&e), (false, false));
    // Now the same draw serves the cheaper tier, as by substitution ...
    let (d, _) = e.route(&task, within, NOW, 3).unwrap();
    assert!(d.chosen < d.planned && d.shadow.is_none(), "{}", d.reason);
    // ... while a draw beyond the rate still asks for a pair; answering it turns pairs back on.
    let beyond = cheaper_draws(&e, 500..1000);
    let (d, id) = e.route(&task, beyond, NOW, 4).unwrap();
    assert!(d.exploration_pair().is_some() && d.chosen == d.planned);
    e.feedback(&feedback(&id, Some(1.0)), NOW).await.unwrap();
    assert_eq!(answers(&e), (true, true));
}

#[tokio::test]
async fn a_budget_that_drops_an_exploration_pair_leaves_no_exploration_behind() {
    // Over the soft limit after the first call: premium is lowered to small, and the pair a
    // draw would have named goes with it (no second call under a biting budget).
    let e = two_tier_engine(
        "[default]\nquality_bar = 0.7\nexploration_rate = 0.5\nexplore_by = \"pairs\"\n\
         [[budgets]]\nperiod = \"day\"\nsoft_limit_usd = 0.000001\n",
    )
    .build();
    let task = RouteRequest {
        task: "Summarise the attached quarterly report in three bullet points.",
        expected_output_tokens: 50,
        ..Default::default()
    };
    let (first, _) = e.route(&task, 0.99, NOW, 1).unwrap();
    assert_eq!(first.chosen, first.planned);
    let mut downgraded = 0;
    for k in 0..200u32 {
        let (d, _) = e
            .route(&task, f64::from(k) / 200.0, NOW, 2 + u64::from(k))
            .unwrap();
        downgraded += usize::from(d.chosen < d.planned);
        assert!(d.shadow.is_none() && !d.explored, "{}", d.reason);
        assert!(!d.reason.contains("exploring"), "{}", d.reason);
    }
    assert!(downgraded > 0);
    let l = ledger(&e).await;
    let explored: i64 = l
        .iter()
        .filter(|((m, _), _)| m == metric::EXPLORED || m == metric::EXPLORE_COST)
        .map(|(_, v)| v)
        .sum();
    assert_eq!(explored, 0);
}

#[tokio::test]
async fn a_measurement_shadow_on_a_decision_that_explored_upward_counts_as_quality_kept() {
    // Pairs, and a measurement shadow on a fifth of the decisions: a decision that explored by
    // serving the dearer tier may be shadowed on the scope's shadow tier, and its id says it
    // is no pair, so the books count it as a pair measuring quality kept.
    let e = two_tier_engine(
        "[default]\nquality_bar = 0.6\nbar_mode = \"per_task\"\nexploration_rate = 0.5\n\
         explore_by = \"pairs\"\nshadow_rate = 0.2\nshadow_tier = \"small\"\n",
    )
    .build();
    let task = RouteRequest {
        task: "What is 2+2?",
        expected_output_tokens: 5,
        ..Default::default()
    };
    let (d, id) = (0..1000)
        .map(|k| e.route(&task, f64::from(k) / 1000.0, NOW, 9).unwrap())
        .find(|(d, _)| d.explored && d.exploration_pair().is_none() && d.shadow.is_some())
        .expect("an upward exploration with a measurement shadow");
    assert!(d.chosen > d.planned);
    e.feedback(&feedback(&id, Some(1.0)), NOW).await.unwrap();
    let l = ledger(&e).await;
    let get = |m: &str| {
        l.get(&(m.into(), d.tier().name.clone()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(get(metric::PAIRS), 1);
    assert!(get(metric::PAIR_S) > 0);
}
