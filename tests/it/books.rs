//! The books through the real server: every number of the report checked against a hand
//! computation, budgets (soft downgrade, hard `cheapest` and `reject`), and the overshoot bound
//! of two replicas racing on one Redis for the last of a budget.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::TestServer;
use crate::common::redis::RedisServer;
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::grpc::pb::{
    FeedbackRequest, GetReportRequest, GetReportResponse, GroupReport, RouteHints, RouteRequest,
    RouteResponse,
};
use tonic::Code;

fn policy(extra: &str) -> Policy {
    Policy::parse(&format!(
        "{}\n{extra}",
        crate::common::two_tier_policy("cheap", "rich")
    ))
    .unwrap()
}

/// A task of `tokens` estimated input tokens (4 bytes each) with an output hint.
fn task(team: &str, workflow: &str, tokens: usize, out: u32) -> RouteRequest {
    RouteRequest {
        task: "word ".repeat(tokens * 4 / 5),
        workflow: workflow.into(),
        team: team.into(),
        hints: Some(RouteHints {
            expected_output_tokens: out,
            task_type: String::new(),
        }),
    }
}

/// `n` decisions for `team`'s 200-token `workflow` tasks expecting 50 output tokens, each on
/// the premium tier.
async fn routed_to_premium(
    server: &TestServer,
    team: &str,
    workflow: &str,
    n: usize,
) -> Vec<RouteResponse> {
    let mut c = server.router().await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = c
            .route(task(team, workflow, 200, 50))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.tier, "premium");
        out.push(d);
    }
    out
}

fn fb(d: &RouteResponse, score: f64, input: i64, output: i64, reused: bool) -> FeedbackRequest {
    FeedbackRequest {
        decision_id: d.decision_id.clone(),
        score,
        input_tokens: Some(input),
        output_tokens: Some(output),
        cached_input_tokens: None,
        reasoning_tokens: None,
        served_tier: String::new(),
        reused,
        ..Default::default()
    }
}

async fn report(server: &TestServer, group_by: &str) -> GetReportResponse {
    server
        .admin()
        .await
        .get_report(GetReportRequest {
            period: "day".into(),
            group_by: group_by.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn group<'a>(r: &'a GetReportResponse, key: &str) -> &'a GroupReport {
    r.groups
        .iter()
        .find(|g| g.key == key)
        .unwrap_or_else(|| panic!("no group {key} in {:?}", r.groups))
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test]
async fn the_report_matches_a_hand_computed_script() {
    let server = TestServer::with_policy(policy(""), Limits::default()).await;
    let mut c = server.router().await;

    // Team cheap, workflow faq: three 100-token tasks expecting 100 output tokens on small:
    // estimate 100×1 + 100×2 = 300 µ$ each; on premium 100×10 + 100×30 = 4,000 µ$.
    let mut cheap = Vec::new();
    for _ in 0..3 {
        let d = c
            .route(task("cheap", "faq", 100, 100))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.tier, "small");
        assert!((d.estimated_cost_usd - 0.000300).abs() < 1e-12, "{d:?}");
        cheap.push(d);
    }
    // Actual 120 in, 80 out: 120 + 160 = 280 µ$ (premium 1,200 + 2,400 = 3,600); met, reused.
    let ack = c
        .feedback(fb(&cheap[0], 1.0, 120, 80, true))
        .await
        .unwrap()
        .into_inner();
    assert!((ack.actual_cost_usd - 0.000280).abs() < 1e-12);
    // 100 in, 50 out: 200 µ$ (premium 2,500); score 0.2 misses the bar 0.5.
    c.feedback(fb(&cheap[1], 0.2, 100, 50, false))
        .await
        .unwrap();
    // cheap[2] never gets feedback: it stays at its 300 µ$ estimate (premium 4,000).

    // Refused feedback changes nothing: a duplicate, a score out of range.
    let dup = c
        .feedback(fb(&cheap[0], 1.0, 999, 999, true))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = c
        .feedback(fb(&cheap[2], 1.5, 1, 1, false))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Team rich, workflow code: two 200-token tasks expecting 50 output tokens on premium:
    // estimate 2,000 + 1,500 = 3,500 µ$.
    let rich = routed_to_premium(&server, "rich", "code", 2).await;
    // 250 in, 100 out: 2,500 + 3,000 = 5,500 µ$; 200 in, 50 out: 3,500 µ$. Both meet 0.5.
    c.feedback(fb(&rich[0], 0.9, 250, 100, false))
        .await
        .unwrap();
    c.feedback(fb(&rich[1], 0.7, 200, 50, false)).await.unwrap();

    let r = report(&server, "team").await;
    assert_eq!(r.group_by, "team");
    assert_eq!(r.groups.len(), 2);
    // Highest spend first.
    assert_eq!(r.groups[0].key, "rich");

    let g = group(&r, "cheap");
    assert_eq!(g.spend_micros, 280 + 200 + 300);
    assert_eq!(g.tasks, 3);
    assert_eq!(g.outcomes, 2);
    assert_eq!(g.completed, 1);
    assert_eq!(g.cost_per_completed_micros, Some(780));
    assert!(close(g.realized_quality, 0.6));
    assert!(close(g.quality_bar, 0.5));
    assert_eq!(g.premium_micros, 3_600 + 2_500 + 4_000);
    assert_eq!(g.savings_micros, 10_100 - 780);
    assert_eq!(g.value_micros, 10_000);
    assert_eq!(g.net_value_micros, 10_000 - 780);
    // One output marked reused at grading (one use), of three decisions.
    assert_eq!((g.reused, g.reuse_events), (1, 1));
    assert!(close(g.reuse_rate, 1.0 / 3.0));
    assert_eq!(g.tier_mix.len(), 1);
    assert_eq!(
        (g.tier_mix[0].tier.as_str(), g.tier_mix[0].tasks),
        ("small", 3)
    );
    assert_eq!(g.tier_mix[0].spend_micros, 780);

    let g = group(&r, "rich");
    assert_eq!(g.spend_micros, 5_500 + 3_500);
    assert_eq!((g.tasks, g.outcomes, g.completed), (2, 2, 2));
    assert_eq!(g.cost_per_completed_micros, Some(4_500));
    assert!(close(g.realized_quality, 0.8));
    assert_eq!(g.premium_micros, 9_000);
    assert_eq!(g.savings_micros, 0);
    assert_eq!(g.value_micros, 20_000);
    assert_eq!(g.net_value_micros, 11_000);
    assert!(close(g.reuse_rate, 0.0));

    let t = r.total.as_ref().unwrap();
    assert_eq!(t.key, "total");
    assert_eq!(t.spend_micros, 9_780);
    assert_eq!((t.tasks, t.outcomes, t.completed), (5, 4, 3));
    assert_eq!(t.cost_per_completed_micros, Some(3_260));
    assert!(close(t.realized_quality, 0.7));
    assert_eq!(t.premium_micros, 19_100);
    assert_eq!(t.savings_micros, 19_100 - 9_780);
    assert_eq!(t.value_micros, 30_000);
    assert_eq!(t.net_value_micros, 30_000 - 9_780);
    assert!(close(t.reuse_rate, 1.0 / 5.0));
    assert_eq!((t.budget_downgrades, t.budget_rejections), (0, 0));
    // The hourly series sums to the total.
    let series_spend: i64 = r.series.iter().map(|p| p.spend_micros).sum();
    assert_eq!(series_spend, 9_780);
    assert_eq!(r.series.iter().map(|p| p.tasks).sum::<u64>(), 5);

    // The same books by workflow and by tier, and filtered to one team.
    let r = report(&server, "workflow").await;
    assert_eq!(group(&r, "faq").spend_micros, 780);
    assert_eq!(group(&r, "code").spend_micros, 9_000);
    let r = report(&server, "tier").await;
    assert_eq!(group(&r, "small").spend_micros, 780);
    assert_eq!(group(&r, "premium").spend_micros, 9_000);
    let only = server
        .admin()
        .await
        .get_report(GetReportRequest {
            team: "cheap".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.groups.len(), 1);
    assert_eq!(only.total.unwrap().spend_micros, 780);

    // A bad request names its field.
    let err = server
        .admin()
        .await
        .get_report(GetReportRequest {
            group_by: "planet".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("group_by"), "{}", err.message());
}

/// A tier whose four token kinds each have their own price (per 1M tokens: input $3, cached
/// input $0.75, output $15, reasoning $60), and a budget over the team that uses it.
const KINDS_POLICY: &str = r#"
[[tiers]]
name = "small"
model = "s"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[tiers]]
name = "premium"
model = "p"
input_usd_per_mtok = 3.0
cached_input_usd_per_mtok = 0.75
output_usd_per_mtok = 15.0
reasoning_usd_per_mtok = 60.0

[default]
quality_bar = 0.5
exploration_rate = 0.0
thresholds = { small = 0.0 }

[[budgets]]
team = "bill"
period = "day"
hard_limit_usd = 100.0
"#;

/// Feedback with every token kind given (`None`: left out).
fn fb_kinds(
    d: &RouteResponse,
    input: i64,
    cached: Option<i64>,
    output: i64,
    reasoning: Option<i64>,
) -> FeedbackRequest {
    FeedbackRequest {
        cached_input_tokens: cached,
        reasoning_tokens: reasoning,
        ..fb(d, 1.0, input, output, false)
    }
}

#[tokio::test]
async fn each_token_kind_is_billed_at_its_own_price_to_the_micro_dollar() {
    let server =
        TestServer::with_policy(Policy::parse(KINDS_POLICY).unwrap(), Limits::default()).await;
    let mut c = server.router().await;
    let ds = routed_to_premium(&server, "bill", "agent", 5).await;
    // The provider's arithmetic, in µ$ (the price per 1M tokens is the µ$ per token): cached
    // input is a part of the input, reasoning a part of the output.
    let bills: [(FeedbackRequest, i64); 5] = [
        // (400 − 300) × 3 + 300 × 0.75 + (100 − 60) × 15 + 60 × 60
        // = 300 + 225 + 600 + 3,600 = 4,725.
        (fb_kinds(&ds[0], 400, Some(300), 100, Some(60)), 4_725),
        // Neither kind reported: 200 × 3 + 50 × 15 = 600 + 750 = 1,350.
        (fb_kinds(&ds[1], 200, None, 50, None), 1_350),
        // All input cached, all output reasoning: 120 × 0.75 + 80 × 60 = 90 + 4,800 = 4,890.
        (fb_kinds(&ds[2], 120, Some(120), 80, Some(80)), 4_890),
        // 93 × 3 + 7 × 0.75 + 7 × 15 + 3 × 60 = 279 + 5.25 + 105 + 180 = 569.25, billed 569.
        (fb_kinds(&ds[3], 100, Some(7), 10, Some(3)), 569),
        // Parts over their totals are clipped to them (and counted): 50 cached of 50 input, 20
        // reasoning of 20 output: 50 × 0.75 + 20 × 60 = 37.5 + 1,200 = 1,237.5, billed 1,238.
        (fb_kinds(&ds[4], 50, Some(80), 20, Some(30)), 1_238),
    ];
    let mut total = 0;
    for (req, micros) in bills {
        let ack = c.feedback(req).await.unwrap().into_inner();
        assert!(
            (ack.actual_cost_usd - micros as f64 / 1e6).abs() < 1e-12,
            "{ack:?} ≠ {micros} µ$"
        );
        total += micros;
    }
    // 4,725 + 1,350 + 4,890 + 569 + 1,238.
    assert_eq!(total, 12_772);

    let r = report(&server, "team").await;
    let g = group(&r, "bill");
    assert_eq!((g.tasks, g.outcomes), (5, 5));
    assert_eq!(g.spend_micros, 12_772);
    // The premium tier is the one that ran: the counterfactual is the same bill.
    assert_eq!(g.premium_micros, 12_772);
    assert_eq!(g.clipped_outcomes, 1);
    assert_eq!(r.total.as_ref().unwrap().spend_micros, 12_772);
    // The budget is charged the same amount.
    crate::common::eventually("the budget is charged 12,772 µ$", || async {
        budget_seen(&server) == 12_772
    })
    .await;
}

/// Three tiers, the default scope allowing two of them: `mid` is in the policy but not
/// allowed there. Every task routes to `premium`.
const FALLBACK_POLICY: &str = r#"
[[tiers]]
name = "small"
model = "s"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[tiers]]
name = "mid"
model = "m"
input_usd_per_mtok = 4.0
output_usd_per_mtok = 8.0
[[tiers]]
name = "premium"
model = "p"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[default]
quality_bar = 0.5
exploration_rate = 0.0
allowed_tiers = ["small", "premium"]
thresholds = { small = 0.0 }

[[budgets]]
team = "fall"
period = "day"
hard_limit_usd = 100.0
"#;

#[tokio::test]
async fn a_fallback_is_billed_at_the_served_tiers_prices_and_counted() {
    let server =
        TestServer::with_policy(Policy::parse(FALLBACK_POLICY).unwrap(), Limits::default()).await;
    let mut c = server.router().await;
    let ds = routed_to_premium(&server, "fall", "agent", 2).await;
    let served = |d: &RouteResponse, tier: &str, input: i64, output: i64| FeedbackRequest {
        served_tier: tier.into(),
        ..fb(d, 1.0, input, output, false)
    };

    // A tier the scope does not allow, or none the policy has: refused naming the field, and
    // nothing recorded (the books as before, the nonce unspent).
    let before = report(&server, "tier").await;
    for tier in ["mid", "gpt-9"] {
        let err = c.feedback(served(&ds[0], tier, 200, 50)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{tier}: {err:?}");
        assert!(
            err.message().starts_with("served_tier"),
            "{tier}: {}",
            err.message()
        );
    }
    let after = report(&server, "tier").await;
    assert_eq!((after.groups, after.total), (before.groups, before.total));

    // The first fell back to small: 200 × 1 + 50 × 2 = 300 µ$ (premium would bill
    // 200 × 10 + 50 × 30 = 3,500 µ$). The second ran on premium: 100 × 10 + 10 × 30 = 1,300.
    let ack = c
        .feedback(served(&ds[0], "small", 200, 50))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.tier, "small");
    assert!((ack.actual_cost_usd - 300e-6).abs() < 1e-12, "{ack:?}");
    let ack = c
        .feedback(served(&ds[1], "", 100, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.tier, "premium");
    assert!((ack.actual_cost_usd - 1_300e-6).abs() < 1e-12, "{ack:?}");

    // By tier: the decisions and the fallback stay with premium, where Route reserved them;
    // the fallback's outcome and its spend moved to small.
    let r = report(&server, "tier").await;
    let premium = group(&r, "premium");
    assert_eq!((premium.tasks, premium.outcomes), (2, 1));
    assert_eq!(
        (premium.spend_micros, premium.premium_micros),
        (1_300, 1_300)
    );
    assert_eq!(premium.fallbacks, 1);
    let small = group(&r, "small");
    assert_eq!((small.tasks, small.outcomes, small.completed), (0, 1, 1));
    assert_eq!((small.spend_micros, small.premium_micros), (300, 3_500));
    assert_eq!(small.fallbacks, 0);
    let total = r.total.as_ref().unwrap();
    assert_eq!((total.tasks, total.outcomes, total.fallbacks), (2, 2, 1));
    assert_eq!(total.spend_micros, 1_600);
    assert_eq!(group(&report(&server, "team").await, "fall").fallbacks, 1);
    // The budget is charged what was billed.
    crate::common::eventually("the budget is charged 1,600 µ$", || async {
        budget_seen(&server) == 1_600
    })
    .await;
}

#[tokio::test]
async fn budgets_downgrade_cap_and_reject() {
    // Premium tasks estimate 3,500 µ$. soft: over $0.001 only cheaper tiers; capped: at $0.005
    // the cheapest tier; strict: at $0.005 refuse.
    let server = TestServer::with_policy(
        policy(
            r#"
[[budgets]]
team = "rich"
workflow = "soft"
period = "day"
soft_limit_usd = 0.001
[[budgets]]
team = "rich"
workflow = "capped"
period = "day"
hard_limit_usd = 0.005
on_exhausted = "cheapest"
[[budgets]]
team = "rich"
workflow = "strict"
period = "day"
hard_limit_usd = 0.005
on_exhausted = "reject"
"#,
        ),
        Limits::default(),
    )
    .await;
    let c = server.router().await;
    let route = |wf: &'static str| {
        let mut c = c.clone();
        async move { c.route(task("rich", wf, 200, 50)).await }
    };

    // Soft: the first call is under the limit; after it, premium is over it: one tier cheaper.
    assert_eq!(route("soft").await.unwrap().into_inner().tier, "premium");
    let d = route("soft").await.unwrap().into_inner();
    assert_eq!(d.tier, "small");
    assert!(
        d.reason.contains("budget team:rich/workflow:soft/day"),
        "{}",
        d.reason
    );

    // Hard with cheapest: 3,500 fits in 5,000; another 3,500 would not: small instead.
    assert_eq!(route("capped").await.unwrap().into_inner().tier, "premium");
    let capped = route("capped").await.unwrap().into_inner();
    assert_eq!(capped.tier, "small");
    // Past a hard limit there is nothing to escalate to.
    assert_eq!(capped.fallback_tier, "");

    // Hard with reject: RESOURCE_EXHAUSTED naming the budget; nothing reserved for it.
    assert_eq!(route("strict").await.unwrap().into_inner().tier, "premium");
    let err = route("strict").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("team:rich/workflow:strict/day"),
        "{}",
        err.message()
    );

    // Feedback reconciles the budget to actual cost: a cheaper actual frees room.
    let r = report(&server, "workflow").await;
    let strict = r
        .budgets
        .iter()
        .find(|b| b.id == "team:rich/workflow:strict/day")
        .unwrap();
    assert_eq!(strict.used_micros, 3_500);
    assert_eq!(strict.left_micros, Some(1_500));
    assert_eq!(strict.state, "ok");
    assert_eq!(group(&r, "strict").budget_rejections, 1);
    assert_eq!(group(&r, "strict").tasks, 1);
    assert_eq!(group(&r, "soft").budget_downgrades, 1);
    assert_eq!(group(&r, "capped").budget_downgrades, 1);
    let capped = r
        .budgets
        .iter()
        .find(|b| b.id == "team:rich/workflow:capped/day")
        .unwrap();
    // 3,500 on premium, then small: 200 + 100 = 300.
    assert_eq!(capped.used_micros, 3_800);
}

fn redis_policy(redis: &RedisServer, prefix: &str) -> crate::common::Deployed {
    crate::common::deployed(&format!(
        "{}\n{}",
        crate::common::two_tier_policy("cheap", "rich"),
        format_args!(
            r#"
[[budgets]]
team = "rich"
period = "month"
hard_limit_usd = 0.07
on_exhausted = "reject"

[store]
kind = "redis"
url = "{}"
prefix = "{prefix}"
refresh_ms = 50
"#,
            redis.url()
        )
    ))
}

/// What `server` itself counts as used of the budget, micro-USD: the view it admits against
/// (its `tokenwise_budget_used_usd` gauge).
fn budget_seen(server: &TestServer) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let text = server.metrics.render_with(&server.engine, now);
    let usd: f64 = text
        .lines()
        .find(|l| l.starts_with("tokenwise_budget_used_usd{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (usd * 1e6).round() as i64
}

/// Waits until both replicas' own views of the budget show `micros` used (a replica sees the
/// other's spend at its next refresh).
async fn until_both_see(a: &TestServer, b: &TestServer, micros: i64) {
    crate::common::eventually(&format!("both replicas see {micros} µ$ used"), || async {
        budget_seen(a) == micros && budget_seen(b) == micros
    })
    .await;
}

/// Routes `n` premium tasks concurrently; returns how many were admitted.
async fn race(server: &TestServer, n: usize) -> usize {
    let c = server.router().await;
    let calls = (0..n).map(|_| {
        let mut c = c.clone();
        async move { c.route(task("rich", "race", 200, 50)).await }
    });
    let results = futures::future::join_all(calls).await;
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
    }
    results.iter().filter(|r| r.is_ok()).count()
}

#[tokio::test]
async fn two_replicas_racing_for_the_last_of_a_budget_overshoot_at_most_what_is_in_flight() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("budget-race-{}", std::process::id());
    let a = TestServer::with_policy(redis_policy(&redis, &prefix), Limits::default()).await;
    let b = TestServer::with_policy(redis_policy(&redis, &prefix), Limits::default()).await;

    // Budget $0.07 = 20 premium tasks of 3,500 µ$. Spend 16 on A and let both replicas see it.
    assert_eq!(race(&a, 16).await, 16);
    until_both_see(&a, &b, 16 * 3_500).await;

    // Four tasks' worth left. Both replicas race 20 calls each before either refreshes.
    let (won_a, won_b) = tokio::join!(race(&a, 20), race(&b, 20));
    eprintln!("racing for the last 4: A admitted {won_a}, B admitted {won_b}");
    // Each replica alone never passes the limit it sees...
    assert!(won_a <= 4 && won_b <= 4, "{won_a} / {won_b}");
    // ...so together they overshoot by at most the other replica's in-flight reservations:
    // (replicas - 1) × what was left at the last refresh.
    let admitted = 16 + won_a + won_b;
    assert!(admitted >= 20, "the budget was not used up: {admitted}");
    let overshoot = (admitted as i64 - 20) * 3_500;
    assert!(overshoot <= 4 * 3_500, "overshoot {overshoot} µ$");

    // Once both have refreshed, neither admits anything, and the shared books hold every
    // reservation.
    until_both_see(&a, &b, admitted as i64 * 3_500).await;
    assert_eq!(race(&a, 3).await + race(&b, 3).await, 0);
    // A flushes its refusal counts at its next refresh; B flushes when asked for the report.
    let rejections = 40 + 6 - won_a - won_b;
    crate::common::eventually("A's refusal counts reach the shared books", || async {
        group(&report(&b, "team").await, "rich").budget_rejections as usize == rejections
    })
    .await;
    let r = report(&b, "team").await;
    let budget = &r.budgets[0];
    assert_eq!(budget.used_micros, admitted as i64 * 3_500);
    assert_eq!(budget.state, "exhausted");
    assert_eq!(group(&r, "rich").tasks, admitted as u64);
    assert_eq!(
        group(&r, "rich").budget_rejections as usize,
        40 + 6 - won_a - won_b
    );
}

#[tokio::test]
async fn reuse_recorded_on_another_replica_counts_each_output_once_and_each_event_id_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("reuse-{}", std::process::id());
    let a = TestServer::with_policy(redis_policy(&redis, &prefix), Limits::default()).await;
    let b = TestServer::with_policy(redis_policy(&redis, &prefix), Limits::default()).await;
    let (mut ra, mut rb) = (a.router().await, b.router().await);
    // Two outputs of team cheap, graded on A (score 1 meets the bar 0.5); the second was
    // already reused when graded.
    let d1 = ra
        .route(task("cheap", "macros", 100, 10))
        .await
        .unwrap()
        .into_inner();
    let d2 = ra
        .route(task("cheap", "macros", 100, 10))
        .await
        .unwrap()
        .into_inner();
    ra.feedback(fb(&d1, 1.0, 100, 10, false)).await.unwrap();
    ra.feedback(fb(&d2, 1.0, 100, 10, true)).await.unwrap();
    let reuse =
        |d: &RouteResponse, count: u32, event_id: &str| tokenwise::grpc::pb::RecordReuseRequest {
            decision_id: d.decision_id.clone(),
            count,
            event_id: event_id.into(),
            note: "support-bot".into(),
        };
    // Later, on B: the macro of d1 was sent 400 times this week, then 2 more times.
    let ack = rb
        .record_reuse(reuse(&d1, 400, "week-48"))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.first_reuse, "{ack:?}");
    // The same event id, retried on A: counted once.
    let e = ra
        .record_reuse(reuse(&d1, 400, "week-48"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let ack = ra
        .record_reuse(reuse(&d1, 2, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.first_reuse, "{ack:?}");
    // d2 was marked reused by its feedback: one more use, not a second reused output.
    let ack = rb
        .record_reuse(reuse(&d2, 1, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.first_reuse, "{ack:?}");

    // By hand: 2 completed outputs, both reused; uses 400 + 2 (d1) + 1 + 1 (d2) = 404.
    for server in [&a, &b] {
        let r = report(server, "workflow").await;
        let g = group(&r, "macros");
        assert_eq!(
            (g.completed, g.reused, g.reuse_events),
            (2, 2, 404),
            "{g:?}"
        );
        assert!(close(g.reuse_rate, 1.0), "{g:?}");
    }
}

/// `GET path` over plain HTTP/1.1; the whole response.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    crate::common::http_get(addr, path, &[]).await
}

#[tokio::test]
async fn the_metrics_port_serves_the_report_page_and_names_a_bad_parameter() {
    let port = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::spare_port()));
    let server = TestServer::with_config(policy(""), Limits::default(), |c| {
        c.metrics_addr = Some(port)
    })
    .await;
    let mut c = server.router().await;
    let d = c
        .route(task("search", "faq", 100, 100))
        .await
        .unwrap()
        .into_inner();
    c.feedback(fb(&d, 1.0, 120, 80, false)).await.unwrap();
    let page = http_get(port, "/report?since=7d&by=workflow").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("text/html") && page.contains("no-store"),
        "{page}"
    );
    assert!(
        page.contains("Model spend report") && page.contains("faq"),
        "{page}"
    );
    assert!(http_get(port, "/report").await.starts_with("HTTP/1.1 200"));
    for (path, named) in [
        ("/report?by=colour", "group_by"),
        ("/report?since=yesterday", "since:"),
        ("/report?until=soon", "until:"),
        ("/report?colour=blue", "\"colour\": unknown parameter"),
        ("/report?by=team&by=tier", "by: given more than once"),
        ("/report?since=2020-01-02&until=2020-01-01", "since_ms"),
    ] {
        let r = http_get(port, path).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{path}: {r}");
        assert!(r.contains(named), "{path} should name {named}: {r}");
    }
}

#[tokio::test]
async fn metrics_export_spend_decisions_outcomes_budgets_latency_and_store_health() {
    let port = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::spare_port()));
    let server = TestServer::with_config(
        policy("[[budgets]]\nteam = \"cheap\"\nperiod = \"month\"\nhard_limit_usd = 1.0\n"),
        Limits::default(),
        |c| c.metrics_addr = Some(port),
    )
    .await;
    let mut c = server.router().await;
    for _ in 0..3 {
        let d = c
            .route(task("cheap", "faq", 100, 100))
            .await
            .unwrap()
            .into_inner();
        c.feedback(fb(&d, 1.0, 120, 80, false)).await.unwrap();
    }
    // Route-time counts reach the metrics when the books flush (the report forces one).
    report(&server, "team").await;
    let text = http_get(port, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("application/openmetrics-text"));
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_string()
    };
    let cell = r#"{team="cheap",workflow="faq",tier="small"}"#;
    assert_eq!(
        line(&format!("tokenwise_decisions_total{cell}")),
        format!("tokenwise_decisions_total{cell} 3")
    );
    assert_eq!(
        line(&format!("tokenwise_outcomes_total{cell}")),
        format!("tokenwise_outcomes_total{cell} 3")
    );
    // 3 × 280 µ$ after reconciliation.
    let spend: f64 = line(&format!("tokenwise_spend_usd{cell}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((spend - 0.00084).abs() < 1e-9, "{spend}");
    assert!(line("tokenwise_route_duration_seconds_count").ends_with(" 3"));
    assert!(line("tokenwise_feedback_lag_seconds_count").ends_with(" 3"));
    assert!(line(r#"tokenwise_budget_used_usd{budget="team:cheap/month"}"#).ends_with(" 0.00084"));
    assert!(
        line(r#"tokenwise_budget_remaining_usd{budget="team:cheap/month"}"#).contains(" 0.99916")
    );
    assert!(line(r#"tokenwise_quality_bar{scope="team:cheap"}"#).ends_with(" 0.5"));
    assert_eq!(line("tokenwise_store_up "), "tokenwise_store_up 1");
    // The server's own call counts, by RPC and outcome.
    assert!(line(r#"tokenwise_calls_total{rpc="Route",outcome="ok"}"#).ends_with(" 3"));
    assert!(line(r#"tokenwise_calls_total{rpc="Feedback",outcome="ok"}"#).ends_with(" 3"));
    // Refused calls by RPC and kind: none yet, then an empty task and an unsigned decision id.
    assert!(!text.contains("tokenwise_call_errors_total{"), "{text}");
    let empty = c.route(task("cheap", "faq", 0, 100)).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty:?}");
    let mut forged = fb(&Default::default(), 1.0, 1, 1, false);
    forged.decision_id = "not-a-decision".into();
    let refused = c.feedback(forged).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let after = http_get(port, "/metrics").await;
    for series in [
        r#"tokenwise_call_errors_total{rpc="Route",kind="invalid_argument"} 1"#,
        r#"tokenwise_call_errors_total{rpc="Feedback",kind="invalid_argument"} 1"#,
        r#"tokenwise_calls_total{rpc="Route",outcome="error"} 1"#,
    ] {
        assert!(
            after.lines().any(|l| l == series),
            "no {series} in\n{after}"
        );
    }
    // Realized quality only where there is evidence: none yet for team rich, and no 0.0.
    assert!(line(r#"tokenwise_realized_quality{scope="team:cheap"}"#).ends_with(" 1.0"));
    assert!(
        !text.contains(r#"tokenwise_realized_quality{scope="team:rich"}"#),
        "{text}"
    );
    assert_eq!(
        line("tokenwise_skipped_events "),
        "tokenwise_skipped_events 0"
    );
    assert_eq!(
        line("tokenwise_spill_rejected_lines "),
        "tokenwise_spill_rejected_lines 0"
    );
    assert_eq!(
        line(r#"tokenwise_cluster_fits{result="failed"}"#),
        r#"tokenwise_cluster_fits{result="failed"} 0"#
    );
}

#[tokio::test]
async fn human_time_displaced_is_counted_per_scope_at_its_own_rate() {
    // Default scope: 10 minutes per completed output at $60/h (team cheap inherits it); team
    // rich: 30 minutes at $120/h.
    let text = crate::common::two_tier_policy("cheap", "rich")
        .replace(
            "value_per_success_usd = 0.01\n",
            "value_per_success_usd = 0.01\nhuman_minutes_per_success = 10\nloaded_cost_per_hour_usd = 60\n",
        )
        .replace(
            "team = \"rich\"\n",
            "team = \"rich\"\nhuman_minutes_per_success = 30\nloaded_cost_per_hour_usd = 120\n",
        );
    let server = TestServer::with_policy(Policy::parse(&text).unwrap(), Limits::default()).await;
    let mut c = server.router().await;
    for (team, score) in [
        ("cheap", 1.0),
        ("cheap", 1.0),
        ("cheap", 1.0),
        ("cheap", 0.0),
        ("rich", 1.0),
        ("rich", 1.0),
    ] {
        let d = c
            .route(task(team, "w", 100, 100))
            .await
            .unwrap()
            .into_inner();
        c.feedback(fb(&d, score, 100, 100, false)).await.unwrap();
    }
    let r = report(&server, "team").await;
    let (cheap, rich) = (group(&r, "cheap"), group(&r, "rich"));
    // cheap: 3 completed × 10 min = 0.5 h, × $60/h = $30; rich: 2 × 30 min = 1 h, $120.
    assert!((cheap.human_hours - 0.5).abs() < 1e-9, "{cheap:?}");
    assert_eq!(cheap.human_value_micros, 30_000_000);
    assert!((rich.human_hours - 1.0).abs() < 1e-9, "{rich:?}");
    assert_eq!(rich.human_value_micros, 120_000_000);
    for g in [cheap, rich] {
        assert_eq!(
            g.net_value_micros,
            g.value_micros + g.human_value_micros - g.spend_micros,
            "{g:?}"
        );
    }
    // Revenue/risk value stays separate: 5 completed × $0.01.
    assert_eq!(cheap.value_micros + rich.value_micros, 50_000);
    let total = r.total.as_ref().unwrap();
    assert!((total.human_hours - 1.5).abs() < 1e-9);
    assert_eq!(total.human_value_micros, 150_000_000);
}

#[tokio::test]
async fn one_teams_absurd_output_lengths_do_not_exhaust_another_teams_budget() {
    // Teams ads and search share the default scope; search has a $1/day hard budget.
    let server = TestServer::with_policy(
        policy("[[budgets]]\nteam = \"search\"\nperiod = \"day\"\nhard_limit_usd = 1.0\n"),
        Limits::default(),
    )
    .await;
    let mut c = server.router().await;
    // Team ads reports the largest output length Feedback accepts, three times.
    for _ in 0..3 {
        let d = c
            .route(task("ads", "w", 100, 0))
            .await
            .unwrap()
            .into_inner();
        c.feedback(fb(&d, 1.0, 100, 1_000_000_000, false))
            .await
            .unwrap();
    }
    // Every Route of team search still fits its budget, at a sane estimate.
    for _ in 0..10 {
        let d = c
            .route(task("search", "w", 100, 0))
            .await
            .expect("search is not refused")
            .into_inner();
        assert!(
            d.estimated_cost_usd < 0.2,
            "estimate {} after another team's absurd reports",
            d.estimated_cost_usd
        );
    }
}
