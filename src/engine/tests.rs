//! Engine tests: the feedback and reuse use cases end to end on the in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::test_support::TWO_TIERS;
use super::*;
use crate::domain::decision::Signer;
use crate::engine::feedback::*;
use crate::report::build::{ReportQuery, build};

use crate::domain::calendar::{DAY_MS as DAY, HOUR_MS as HOUR};
const T0: u64 = 1_800_000_000_000;

/// Team `ads` keeps reuse for 2 days; decisions live 1 hour.
fn engine() -> Engine {
    engine_with("")
}

/// The same, with `extra` lines in ads' policy.
fn engine_with(extra: &str) -> Engine {
    let policy = crate::domain::policy::Policy::parse(&format!(
        r#"{TWO_TIERS}
[default]
quality_bar = 0.5

[[policies]]
team = "ads"
reuse_retention_days = 2
{extra}
"#,
    ))
    .unwrap();
    Engine::builder(
        Arc::new(crate::domain::classifier::ComplexityModel::bundled().unwrap()),
        Arc::new(policy),
        Signer::new(b"test-secret-test-secret-test-secret").unwrap(),
    )
    .decision_ttl_ms(HOUR)
    .build()
}

fn route(e: &Engine, nonce: u64) -> String {
    route_decision(e, nonce).1
}

/// A support task of team `ads`, routed without exploring.
fn route_decision(e: &Engine, nonce: u64) -> (Decision, String) {
    let req = crate::domain::routing::RouteRequest {
        task: "Summarise this support ticket for the weekly report.",
        workflow: "support/macros",
        team: "ads",
        expected_output_tokens: 100,
        task_type: "",
    };
    e.route(&req, 0.99, T0, nonce).unwrap()
}

/// The report of the two hours around T0, after the books flush at `now`.
async fn report_of_hour(e: &Engine, now: u64) -> crate::report::Report {
    let table = e.router.table();
    e.books.flush(&table.policy, e.store(), now).await.unwrap();
    let q = ReportQuery {
        since_ms: T0 - HOUR,
        until_ms: T0 + HOUR,
        ..Default::default()
    };
    build(&table.policy, &e.books, e.store(), &q, now)
        .await
        .unwrap()
}

fn reuse<'a>(id: &'a str, count: u32, event_id: &'a str, team: Option<&'a str>) -> ReuseInput<'a> {
    ReuseInput {
        decision_id: id,
        count,
        event_id,
        note: "dashboard",
        caller_team: team,
    }
}

async fn feedback(e: &Engine, id: &str, reused: bool) {
    let input = FeedbackInput {
        decision_id: id,
        score: 1.0,
        input_tokens: Some(100),
        output_tokens: Some(50),
        reused,
        caller_team: Some("ads"),
        ..Default::default()
    };
    e.feedback(&input, T0 + 1_000).await.unwrap();
}

/// The probe of the hardening issue (item 7), on the example policy and the bundled model:
/// 300 outcomes from team `ads` saying every answer was perfect must leave team `search`'s
/// routing as it was, while ads' own routing follows its outcomes. Ads' easy tasks run on
/// `medium`, whose model the calibration never measured: its shared curve moves only as far as
/// a measured tier's would (`SHARED_PRIOR_MIN`).
#[tokio::test]
async fn one_teams_feedback_does_not_move_another_teams_routing() {
    let e = Engine::builder(
        Arc::new(crate::domain::classifier::ComplexityModel::bundled().unwrap()),
        Arc::new(crate::domain::policy::Policy::embedded().unwrap()),
        Signer::new(b"test-secret-test-secret-test-secret").unwrap(),
    )
    .decision_ttl_ms(HOUR)
    .build();
    let ask = |team: &'static str, task: &'static str, nonce: u64| {
        let req = crate::domain::routing::RouteRequest {
            task,
            team,
            ..Default::default()
        };
        e.route(&req, 0.99, T0, nonce).unwrap()
    };
    let hard = [
        "Design a multi-region event store with exactly-once delivery, prove its ordering \
         guarantees under partitions, and implement the replication protocol in Rust.",
        "Prove that every planar graph is five-colourable, then analyse the running time of \
         the algorithm your proof implies.",
        "Analyse the trade-offs of three consensus protocols for a ledger with 500 replicas, \
         with failure cases, message complexity and a migration plan.",
    ];
    let tiers = |team: &'static str| -> Vec<usize> {
        hard.iter().map(|t| ask(team, t, 1).0.tier().tier).collect()
    };
    let before = tiers("search");
    assert!(before.iter().all(|&t| t != 0), "{before:?}");
    for i in 0..300u64 {
        let task = if i % 2 == 0 {
            hard[(i as usize / 2) % 3]
        } else {
            "What is 2 + 2?"
        };
        let (_, id) = ask("ads", task, 1_000 + i);
        let input = FeedbackInput {
            decision_id: &id,
            score: 1.0,
            input_tokens: Some(100),
            output_tokens: Some(50),
            caller_team: Some("ads"),
            ..Default::default()
        };
        e.feedback(&input, T0 + 1_000).await.unwrap();
    }
    assert_eq!(tiers("search"), before, "search's routing moved");
    // Ads' own routing follows its outcomes: its hard tasks move down to a cheaper tier (the
    // cheapest one ads has seen succeed: its easy tasks ran on a tier below the top).
    let after = tiers("ads");
    assert!(
        after.iter().zip(&before).all(|(a, b)| a < b),
        "ads' own outcomes move its routing: {after:?} (before {before:?})"
    );
}

#[tokio::test]
async fn reuse_counts_each_decision_once_and_each_event_id_once_within_its_window() {
    let e = engine();
    let (a, b) = (route(&e, 1), route(&e, 2));
    feedback(&e, &a, false).await;
    // An early reuse mark at grading time: one event, decision b reused.
    feedback(&e, &b, true).await;

    // Another team's key may not report on ads' decisions.
    let err = e
        .reuse(&reuse(&a, 1, "", Some("search")), T0 + 2 * HOUR)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::PermissionDenied { .. })),
        "{err}"
    );

    // After the decision TTL (1 h) but inside the 2-day window: accepted, first reuse.
    let ack = e
        .reuse(
            &reuse(&a, 400, "macro-sent-2026-w48", Some("ads")),
            T0 + 2 * HOUR,
        )
        .await
        .unwrap();
    assert_eq!(
        (ack.count, ack.first, ack.workflow.as_str()),
        (400, true, "support/macros")
    );
    // The same event id again: counted once.
    let err = e
        .reuse(&reuse(&a, 400, "macro-sent-2026-w48", None), T0 + 3 * HOUR)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Feedback(FeedbackError::ReuseRecorded(id)) if id == "macro-sent-2026-w48"),
        "{err}"
    );
    // Another event: more uses, not a second reused decision.
    let ack = e.reuse(&reuse(&a, 0, "", None), T0 + DAY).await.unwrap();
    assert_eq!((ack.count, ack.first), (1, false));
    // b was marked reused by its feedback: a later reuse is not its first.
    let ack = e.reuse(&reuse(&b, 2, "", None), T0 + DAY).await.unwrap();
    assert!(!ack.first);
    // Outside the window: refused, nothing counted.
    let err = e
        .reuse(&reuse(&a, 5, "late", None), T0 + 2 * DAY + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Feedback(FeedbackError::OutsideReuseWindow {
                age_days: 2,
                window_days: 2
            })
        ),
        "{err}"
    );
    // Bad input changes nothing.
    for bad in [
        reuse(&a, MAX_REUSE_COUNT + 1, "", None),
        reuse(&a, 1, "x\ny", None),
        reuse("", 1, "", None),
    ] {
        assert!(matches!(
            e.reuse(&bad, T0 + DAY).await,
            Err(Error::Feedback(FeedbackError::InvalidArgument { .. }))
        ));
    }

    // The books, by hand: 2 completed outputs, both reused (a once, b once);
    // events 400 + 1 (a) + 1 (b's mark) + 2 (b) = 404.
    let r = report_of_hour(&e, T0 + 3 * DAY).await;
    assert_eq!(
        (r.total.completed, r.total.reused, r.total.reuse_events),
        (2, 2, 404)
    );
    assert_eq!(r.total.reuse_rate, Some(1.0));
    // Nothing entered the learning log but the two outcomes.
    let (log, _) = e.store().events_since(0, 100).await.unwrap();
    assert_eq!(log.len(), 2);
}

/// Issue 35's "which bar": a scope with only `quality_bar_relative` is held to its plan's bar
/// (the relative bar made absolute on its traffic) in the books, as in `/metrics` and
/// what-if, not to the `quality_bar` it inherits from `[default]` (0.5 here).
#[tokio::test]
async fn the_books_hold_a_relative_scope_to_its_plans_bar() {
    let e = engine_with("quality_bar_relative = 0.95");
    let (d, id) = route_decision(&e, 1);
    let bar = e.router.table().plan(&d.scope).for_team("ads").bar;
    assert!(bar > 0.6, "{bar}");
    // Above the inherited 0.5, below the plan's bar: not a completed output.
    let input = FeedbackInput {
        decision_id: &id,
        score: 0.55,
        input_tokens: Some(100),
        output_tokens: Some(50),
        caller_team: Some("ads"),
        ..Default::default()
    };
    e.feedback(&input, T0 + 1_000).await.unwrap();
    let r = report_of_hour(&e, T0 + 2 * HOUR).await;
    assert_eq!((r.total.outcomes, r.total.completed), (1, 0));
    let booked = r.total.quality_bar.unwrap();
    assert!((booked - bar).abs() < 1e-6, "{booked} vs {bar}");
}

/// Before a scope has clusters, an unlabelled task is priced at the output length its words
/// predict, learned from what Feedback reported for tasks like it, not at the scope's median:
/// a worked answer among one-letter ones is not priced as a letter.
#[tokio::test]
async fn unlabelled_tasks_are_priced_at_the_length_their_words_predict() {
    let e = engine();
    let letter =
        |i: usize| format!("Which of these is a prime number? Choice {i}: A) 4 B) 7 C) 9 D) 12");
    let worked = |i: usize| {
        format!(
            "A baker sells {i} loaves at 3 dollars each and buys flour for 40 dollars; explain step by step how much profit she makes."
        )
    };
    let route = |t: &str, nonce| {
        let req = crate::domain::routing::RouteRequest {
            task: t,
            ..Default::default()
        };
        e.route(&req, 0.99, T0, nonce).unwrap()
    };
    // Three letters to each worked answer: the scope's median length is a letter's.
    for i in 0..40 {
        let (text, tokens) = if i % 4 == 3 {
            (worked(i), 400)
        } else {
            (letter(i), 1)
        };
        let (_, id) = route(&text, i as u64 + 1);
        let input = FeedbackInput {
            decision_id: &id,
            score: 1.0,
            input_tokens: Some(40),
            output_tokens: Some(tokens),
            ..Default::default()
        };
        e.feedback(&input, T0 + 1_000).await.unwrap();
    }
    let (short, _) = route(&letter(999), 0);
    let (long, _) = route(&worked(999), 0);
    assert_eq!((short.cluster, long.cluster), (None, None));
    assert!(short.output_tokens < 10, "{}", short.output_tokens);
    assert!(long.output_tokens > 100, "{}", long.output_tokens);
}

/// Unlabelled traffic end to end: Route sketches each task, the decision id carries the sketch,
/// the fold fits the scope's clusters on what Feedback reports, and from then on Route places
/// each unlabelled task in a cluster, whose outcomes learn as a workflow of its own.
#[tokio::test]
async fn unlabelled_tasks_are_clustered_and_learn_under_their_cluster() {
    let e = engine();
    let kinds = [
        "If Tom has {i} apples and buys 3 more apples at the market, how many apples does he have in total?",
        "SELECT name, total FROM orders WHERE customer_id = {i} ORDER BY created_at DESC; explain the index usage",
        "Dear support team, my parcel {i} arrived damaged and the refund form keeps failing, please reply with the next steps",
    ];
    let task = |k: usize, i: usize| kinds[k].replace("{i}", &i.to_string());
    let mut nonce = 1;
    // Past the first fit's start, and long enough for its Lloyd steps (one per outcome) to end.
    for i in 0..(crate::domain::learning::CLUSTER_FIRST_FIT / 3 + 20) {
        for k in 0..3 {
            let t = task(k, i);
            let req = crate::domain::routing::RouteRequest {
                task: &t,
                ..Default::default()
            };
            let (d, id) = e.route(&req, 0.99, T0, nonce).unwrap();
            nonce += 1;
            assert!(!d.sketch.is_empty());
            let input = FeedbackInput {
                decision_id: &id,
                score: if k == 0 { 1.0 } else { 0.0 },
                ..Default::default()
            };
            e.feedback(&input, T0 + 1_000).await.unwrap();
        }
    }
    let clusters: Vec<Option<u32>> = (0..3)
        .map(|k| {
            let t = task(k, 9_999);
            let req = crate::domain::routing::RouteRequest {
                task: &t,
                ..Default::default()
            };
            e.route(&req, 0.99, T0, 0).unwrap().0.cluster
        })
        .collect();
    assert!(clusters.iter().all(Option::is_some), "{clusters:?}");
    assert!(
        clusters[0] != clusters[1] && clusters[0] != clusters[2],
        "{clusters:?}"
    );
    // A labelled task is not clustered, and a featureless one still routes.
    let req = crate::domain::routing::RouteRequest {
        task: "??? !!! ...",
        ..Default::default()
    };
    assert!(e.route(&req, 0.99, T0, 0).is_ok());
    let (labelled, _) = e
        .route(
            &crate::domain::routing::RouteRequest {
                task: &task(0, 1),
                workflow: "math",
                ..Default::default()
            },
            0.99,
            T0,
            0,
        )
        .unwrap();
    assert_eq!((labelled.cluster, labelled.sketch.len()), (None, 0));
    // The outcomes after the fit were learned under the clusters.
    let evidence = e.evidence().await;
    let default = &evidence["default"];
    assert!(
        default
            .workflows
            .keys()
            .any(|w| w.starts_with(crate::domain::learning::CLUSTER_FAMILY)),
        "{:?}",
        default.workflows.keys().collect::<Vec<_>>()
    );
    // The fit is counted (for /metrics).
    let (ok, failed) = e.cluster_fits();
    assert!(ok >= 1 && failed == 0, "{ok} {failed}");
    // `thresholds` names each cluster by its most telling terms, in words this replica saw.
    let rows = e.thresholds("default").unwrap().rows;
    let apples = crate::domain::learning::cluster_label(clusters[0].unwrap());
    let terms = &rows
        .iter()
        .find(|r| r.workflow == apples)
        .expect("the cluster has rows")
        .terms;
    let words = ["apples", "tom", "market", "buys", "many"];
    assert!(
        terms.iter().any(|t| words.contains(&t.as_str())),
        "{terms:?}"
    );
    for r in &rows {
        let clustered = crate::domain::learning::cluster_id(&r.workflow).is_some();
        assert_eq!(clustered, !r.terms.is_empty(), "{r:?}");
    }
}

/// Exploration is booked at Route: how many decisions explored, and what they cost against
/// the plan's own choices on Route's estimates (what the report and /metrics show).
#[tokio::test]
async fn explorations_and_their_cost_against_the_plan_reach_the_report() {
    // The example policy: three tiers, bar 0.7 per task, exploration rate 0.05.
    let e = Engine::builder(
        Arc::new(crate::domain::classifier::ComplexityModel::bundled().unwrap()),
        Arc::new(crate::domain::policy::Policy::embedded().unwrap()),
        Signer::new(b"test-secret-test-secret-test-secret").unwrap(),
    )
    .build();
    let (mut explored, mut extra) = (0u64, 0i64);
    let tasks = [
        "Summarise this support ticket for the weekly report.",
        "What is the capital of France?",
        "Prove that the sum of two odd integers is even, step by step.",
        "Write a SQL query that lists each customer's three latest orders.",
    ];
    for i in 0..40u64 {
        let req = crate::domain::routing::RouteRequest {
            task: tasks[i as usize % tasks.len()],
            workflow: "math",
            team: "ads",
            expected_output_tokens: 200,
            task_type: "",
        };
        // Draws spread inside the exploration rate: each one draws from the posteriors.
        let draw = (i as f64 + 0.5) / 40.0 * 0.05;
        let (d, _) = e.route(&req, draw, T0, i + 1).unwrap();
        if d.explored {
            explored += 1;
            extra += d.tier().cost_micros - d.candidates[d.planned].cost_micros;
        }
    }
    assert!(explored > 0 && extra != 0, "{explored} {extra}");
    let r = report_of_hour(&e, T0 + HOUR).await;
    assert_eq!(
        (
            r.total.tasks,
            r.total.explored,
            r.total.exploration_cost_micros
        ),
        (40, explored, extra)
    );
}

/// Self-reported token counts are believed within bounds: a feedback claiming 1e9 tokens each
/// way books input at most 8 × what Route measured and output at most the scope's
/// `max_output_tokens`, and is counted as clipped; an honest one is booked as reported.
#[tokio::test]
async fn absurd_token_counts_are_clipped_booked_within_bounds_and_counted() {
    let e = engine();
    let (d, absurd) = route_decision(&e, 1);
    let honest = route(&e, 2);
    let policy = e.router.table().policy.clone();
    let ack = |id: &str, tokens: i64| {
        let e = &e;
        let id = id.to_string();
        async move {
            let input = FeedbackInput {
                decision_id: &id,
                score: 1.0,
                input_tokens: Some(tokens),
                output_tokens: Some(tokens),
                caller_team: Some("ads"),
                ..Default::default()
            };
            e.feedback(&input, T0 + 1_000).await.unwrap()
        }
    };
    let clipped = ack(&absurd, 1_000_000_000).await;
    let tier = &policy.tiers[d.tier().tier];
    let bound = tier.cost_micros(
        d.input_tokens * crate::domain::books::REPORTED_INPUT_FACTOR,
        policy.default.max_output_tokens,
    );
    assert_eq!(clipped.actual_cost_micros, bound);
    assert!(clipped.actual_cost_usd < 1.0, "{}", clipped.actual_cost_usd);
    let fine = ack(&honest, 40).await;
    assert_eq!(fine.actual_cost_micros, tier.cost_micros(40, 40));
    let r = report_of_hour(&e, T0 + HOUR).await;
    assert_eq!((r.total.outcomes, r.total.clipped_outcomes), (2, 1));
    // What the fold learned is the clipped count, not 1e9.
    let (log, _) = e.store().events_since(0, 10).await.unwrap();
    assert!(
        log.iter()
            .all(|ev| ev.output_tokens <= policy.default.max_output_tokens)
    );
}

/// Cached input and reasoning tokens are parts of the input and output: reported without
/// their totals they are clipped to Route's figures (and counted), never billed beyond them;
/// within their totals they are booked as reported, and the stored outcome carries them.
#[tokio::test]
async fn cached_and_reasoning_parts_over_their_totals_are_clipped_and_counted() {
    let e = engine();
    let (d, over) = route_decision(&e, 1);
    let within = route(&e, 2);
    let feed = |id: String, cached: i64, reasoning: i64, input: Option<i64>| {
        let e = &e;
        async move {
            let input = FeedbackInput {
                decision_id: &id,
                score: 1.0,
                input_tokens: input,
                output_tokens: input,
                cached_input_tokens: Some(cached),
                reasoning_tokens: Some(reasoning),
                caller_team: Some("ads"),
                ..Default::default()
            };
            e.feedback(&input, T0 + 1_000).await.unwrap()
        }
    };
    // No totals reported: Route's figures stand in, and the parts are cut to them.
    let clipped = feed(over, 1_000_000, 1_000_000, None).await;
    let policy = e.router.table().policy.clone();
    let tier = &policy.tiers[d.tier().tier];
    let all = crate::domain::policy::TokenKinds {
        input: d.input_tokens,
        cached_input: d.input_tokens,
        output: d.output_tokens,
        reasoning: d.output_tokens,
    };
    assert_eq!(clipped.actual_cost_micros, tier.bill_micros(&all));
    let fine = feed(within, 10, 5, Some(40)).await;
    let kinds = crate::domain::policy::TokenKinds {
        input: 40,
        cached_input: 10,
        output: 40,
        reasoning: 5,
    };
    assert_eq!(fine.actual_cost_micros, tier.bill_micros(&kinds));
    let r = report_of_hour(&e, T0 + HOUR).await;
    assert_eq!((r.total.outcomes, r.total.clipped_outcomes), (2, 1));
    let (log, _) = e.store().events_since(0, 10).await.unwrap();
    let mut parts: Vec<(u64, u64, u64, u64)> = log
        .iter()
        .map(|ev| {
            (
                ev.input_tokens,
                ev.cached_input_tokens,
                ev.output_tokens,
                ev.reasoning_tokens,
            )
        })
        .collect();
    parts.sort_unstable();
    let mut want = vec![
        (
            d.input_tokens,
            d.input_tokens,
            d.output_tokens,
            d.output_tokens,
        ),
        (40, 10, 40, 5),
    ];
    want.sort_unstable();
    assert_eq!(parts, want);
}

#[tokio::test]
async fn an_id_naming_another_teams_scope_is_refused_even_when_signed() {
    let e = engine();
    let (d, _) = route_decision(&e, 7);
    assert_eq!(d.scope, "team:ads", "the test needs ads' own scope");
    // Signed with the deployment's real key, but for team `search`: a scope/team mismatch no
    // correct Route issues (a leaked key, a bug), refused before anything is recorded.
    let forged = e.ids.issue(&d, "search", "", T0, 8);
    let input = FeedbackInput {
        decision_id: &forged,
        score: 1.0,
        input_tokens: Some(100),
        output_tokens: Some(50),
        ..Default::default()
    };
    let err = e.feedback(&input, T0 + 1_000).await.unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::ScopeMismatch { .. })),
        "{err}"
    );
    let err = e
        .reuse(&reuse(&forged, 1, "", None), T0 + 1_000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::ScopeMismatch { .. })),
        "{err}"
    );
    // The same decision under its own team is accepted.
    let own = e.ids.issue(&d, "ads", "support/macros", T0, 9);
    e.feedback(
        &FeedbackInput {
            decision_id: &own,
            ..input
        },
        T0 + 1_000,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_flood_of_reuse_events_is_bounded_per_decision_and_per_team() {
    // The probe of the hardening issue: millions of event ids (or of counted events) on one
    // decision. Each decision holds at most reuse_events_per_decision events, each team at most
    // reuse_ids_per_team remembered ids; a refusal is RESOURCE_EXHAUSTED and changes nothing.
    let e = engine_with("reuse_events_per_decision = 5\nreuse_ids_per_team = 3");
    let (a, b) = (route(&e, 1), route(&e, 2));
    let at = T0 + HOUR / 2;
    e.reuse(&reuse(&a, 3, "e1", None), at).await.unwrap();
    let err = e.reuse(&reuse(&a, 3, "e2", None), at).await.unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::Full(_))),
        "{err}"
    );
    assert!(
        err.to_string().contains("reuse_events_per_decision"),
        "{err}"
    );
    e.reuse(&reuse(&a, 2, "e3", None), at).await.unwrap();
    // Three ids remembered for ads: its fourth is refused, whatever the decision.
    e.reuse(&reuse(&b, 1, "e4", None), at).await.unwrap();
    let err = e.reuse(&reuse(&b, 1, "e5", None), at).await.unwrap_err();
    assert!(err.to_string().contains("reuse_ids_per_team"), "{err}");
    // Feedback is never refused for it.
    feedback(&e, &b, false).await;
    let r = report_of_hour(&e, at).await;
    assert_eq!(r.total.reuse_events, 5 + 1, "{:?}", r.total);
}

/// Learning credits an outcome to the tier that served it: after a fallback, the score is
/// evidence of the served tier and none of the routed one, and the log keeps the routed tier.
#[tokio::test]
async fn a_fallback_is_learned_under_the_tier_that_served() {
    let e = engine();
    let (d, id) = route_decision(&e, 1);
    let routed = d.tier().name.clone();
    let served = if routed == "small" {
        "premium"
    } else {
        "small"
    };
    let input = FeedbackInput {
        decision_id: &id,
        score: 1.0,
        input_tokens: Some(100),
        output_tokens: Some(50),
        served_tier: served,
        caller_team: Some("ads"),
        ..Default::default()
    };
    let ack = e.feedback(&input, T0 + 1_000).await.unwrap();
    assert_eq!(ack.tier, served);
    let evidence = e.evidence().await;
    let scope = &evidence[&ack.scope];
    let outcomes = |level: &crate::domain::learning::Level, tier: &str| {
        level
            .cells
            .get(tier)
            .map_or(0.0, |bands| bands.iter().map(|c| c.n).sum::<f64>())
    };
    let own = &scope.teams["ads"].evidence.scope;
    assert!(outcomes(own, served) > 0.0, "{:?}", own.cells.keys());
    assert_eq!(outcomes(own, &routed), 0.0);
    assert!(outcomes(&scope.scope, served) > 0.0);
    assert_eq!(outcomes(&scope.scope, &routed), 0.0);
    // The log holds the outcome under the served tier and remembers the routed one.
    let (events, _) = e.store().events_since(0, 10).await.unwrap();
    let event = events.iter().find(|ev| !ev.counters_only).unwrap();
    assert_eq!(
        (event.tier.as_str(), event.routed_tier()),
        (served, routed.as_str())
    );
}
