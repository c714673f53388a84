//! The sample report the views' tests render: two teams (one without outcomes, with a label to
//! escape), two budgets, and six hours of series with an hour without quality; and variants of
//! it: one day with traffic in three hours, long workflow names, team / workflow pairs, two
//! weeks of traffic. Test support (`examples/report_pages.rs` writes them as pages to look at).

use crate::domain::calendar::HOUR_MS;
use crate::report::{BudgetStatus, GroupBy, GroupReport, Report, SeriesPoint, TierShare};

/// 2025-03-04 00:00 UTC.
pub const T0: u64 = 1_741_046_400_000;

/// Decisions on `small`, `medium` and `frontier`, each tier at its own price per decision.
fn tiers(small: u64, medium: u64, frontier: u64) -> Vec<TierShare> {
    vec![
        TierShare {
            tier: "small".into(),
            tasks: small,
            spend_micros: small as i64 * 400,
        },
        TierShare {
            tier: "medium".into(),
            tasks: medium,
            spend_micros: medium as i64 * 3_000,
        },
        TierShare {
            tier: "frontier".into(),
            tasks: frontier,
            spend_micros: frontier as i64 * 25_000,
        },
    ]
}

/// Teams `search` and `team<x>` (no outcomes), two budgets, six hours of series from 02:00.
pub fn sample() -> Report {
    let search = GroupReport {
        key: "search".into(),
        spend_micros: 12_345_678,
        tasks: 1_000,
        outcomes: 400,
        completed: 330,
        cost_per_completed_micros: Some(37_411),
        realized_quality: Some(0.82),
        quality_bar: Some(0.75),
        tier_mix: tiers(600, 300, 100),
        premium_micros: 32_000_000,
        savings_micros: 19_654_322,
        value_micros: 33_000_000,
        // 330 completed × 1 minute at $70/h.
        human_hours: 5.5,
        human_value_micros: 385_000_000,
        net_value_micros: 405_654_322,
        reused: 160,
        reuse_events: 200,
        // Reused ÷ tasks: 160 of 1,000.
        reuse_rate: Some(0.16),
        budget_downgrades: 7,
        budget_rejections: 0,
        explored: 100,
        exploration_cost_micros: -41_000,
        clipped_outcomes: 3,
        fallbacks: 9,
    };
    let odd = GroupReport {
        key: "team<x>".into(),
        spend_micros: 2_500_000,
        tasks: 120,
        outcomes: 0,
        completed: 0,
        cost_per_completed_micros: None,
        realized_quality: None,
        quality_bar: None,
        tier_mix: tiers(20, 60, 40),
        premium_micros: 3_100_000,
        savings_micros: 600_000,
        value_micros: 0,
        human_hours: 0.0,
        human_value_micros: 0,
        net_value_micros: -2_500_000,
        reused: 0,
        reuse_events: 0,
        reuse_rate: None,
        budget_downgrades: 0,
        budget_rejections: 2,
        explored: 12,
        exploration_cost_micros: 60_000,
        clipped_outcomes: 0,
        fallbacks: 2,
    };
    let total = GroupReport {
        key: "total".into(),
        spend_micros: 14_845_678,
        tasks: 1_120,
        outcomes: 400,
        completed: 330,
        cost_per_completed_micros: Some(44_987),
        realized_quality: Some(0.82),
        quality_bar: Some(0.75),
        tier_mix: tiers(620, 360, 140),
        premium_micros: 35_100_000,
        savings_micros: 20_254_322,
        value_micros: 33_000_000,
        human_hours: 5.5,
        human_value_micros: 385_000_000,
        net_value_micros: 403_154_322,
        reused: 160,
        reuse_events: 200,
        // Reused ÷ tasks: 160 of 1,120.
        reuse_rate: Some(160.0 / 1120.0),
        budget_downgrades: 7,
        budget_rejections: 2,
        explored: 112,
        exploration_cost_micros: 19_000,
        clipped_outcomes: 3,
        fallbacks: 11,
    };
    let qualities = [
        Some(0.8),
        Some(0.85),
        None,
        Some(0.7),
        Some(0.9),
        Some(0.78),
    ];
    let series = qualities
        .iter()
        .enumerate()
        .map(|(i, q)| SeriesPoint {
            start_ms: T0 + (i as u64 + 2) * HOUR_MS,
            spend_micros: 1_000_000 + i as i64 * 700_000,
            tasks: 100 + i as u64 * 20,
            outcomes: if q.is_some() { 40 } else { 0 },
            realized_quality: *q,
        })
        .collect();
    Report {
        since_ms: T0,
        until_ms: T0 + 12 * HOUR_MS,
        group_by: GroupBy::Team,
        groups: vec![search, odd],
        total,
        budgets: vec![
            BudgetStatus {
                id: "team:search/month".into(),
                team: "search".into(),
                workflow: String::new(),
                period: "month".into(),
                period_start_ms: 1_740_787_200_000,
                soft_limit_micros: Some(80_000_000),
                hard_limit_micros: Some(100_000_000),
                used_micros: 85_000_000,
                left_micros: Some(15_000_000),
                state: "soft".into(),
            },
            BudgetStatus {
                id: "global/day".into(),
                team: String::new(),
                workflow: String::new(),
                period: "day".into(),
                period_start_ms: T0,
                soft_limit_micros: None,
                hard_limit_micros: Some(50_000_000),
                used_micros: 14_845_678,
                left_micros: Some(35_154_322),
                state: "ok".into(),
            },
        ],
        series,
        policy_version: "v12".into(),
        generated_ms: T0 + 12 * HOUR_MS + 60_000,
        quality: Vec::new(),
    }
}

/// One calendar day as `--since day` reports it at 22:25: traffic in three hours only (19:00,
/// 20:00 and 21:00, the last one under way).
pub fn one_day() -> Report {
    let mut r = sample();
    r.until_ms = T0 + 22 * HOUR_MS + 25 * 60_000;
    r.generated_ms = r.until_ms;
    let hours = [19, 20, 21];
    r.series = hours
        .iter()
        .zip(&r.series)
        .map(|(h, p)| SeriesPoint {
            start_ms: T0 + h * HOUR_MS,
            ..p.clone()
        })
        .collect();
    r
}

/// Workflow names as real deployments spell them: long, dotted, with slashes.
pub const LONG_WORKFLOWS: [&str; 6] = [
    "support.ticket_summarization_with_long_context",
    "mmlu/high_school_european_history",
    "billing/invoice_dispute_classification_v2",
    "search.query_rewrite",
    "legal.contract_clause_extraction_multilingual",
    "default",
];

/// The sample grouped by workflow at a hundred times its traffic (thousands of dollars, a
/// hundred thousand tasks), one group per [`LONG_WORKFLOWS`] name (highest spend first), the
/// groups summing up to the total.
pub fn by_workflow() -> Report {
    const SCALE: f64 = 100.0;
    let mut r = sample();
    r.group_by = GroupBy::Workflow;
    let shares = [0.34, 0.22, 0.17, 0.12, 0.09, 0.06];
    let model = r.groups[0].clone();
    r.groups = LONG_WORKFLOWS
        .iter()
        .zip(shares)
        .map(|(name, share)| {
            let part = |v: i64| (v as f64 * SCALE * share).round() as i64;
            let count = |v: u64| (v as f64 * SCALE * share).round() as u64;
            GroupReport {
                key: (*name).into(),
                spend_micros: part(r.total.spend_micros),
                tasks: count(r.total.tasks),
                outcomes: count(r.total.outcomes),
                completed: count(r.total.completed),
                premium_micros: part(r.total.premium_micros),
                savings_micros: part(r.total.savings_micros),
                value_micros: part(r.total.value_micros),
                human_hours: r.total.human_hours * SCALE * share,
                human_value_micros: part(r.total.human_value_micros),
                net_value_micros: part(r.total.net_value_micros),
                reused: count(r.total.reused),
                reuse_events: count(r.total.reuse_events),
                cost_per_completed_micros: Some(
                    part(r.total.spend_micros) / count(r.total.completed).max(1) as i64,
                ),
                ..model.clone()
            }
        })
        .collect();
    let total = r.total.clone();
    let sum = |f: fn(&GroupReport) -> i64| r.groups.iter().map(f).sum::<i64>();
    let count = |f: fn(&GroupReport) -> u64| r.groups.iter().map(f).sum::<u64>();
    r.total = GroupReport {
        spend_micros: sum(|g| g.spend_micros),
        tasks: count(|g| g.tasks),
        outcomes: count(|g| g.outcomes),
        completed: count(|g| g.completed),
        premium_micros: sum(|g| g.premium_micros),
        savings_micros: sum(|g| g.savings_micros),
        value_micros: sum(|g| g.value_micros),
        human_hours: r.groups.iter().map(|g| g.human_hours).sum(),
        human_value_micros: sum(|g| g.human_value_micros),
        net_value_micros: sum(|g| g.net_value_micros),
        reused: count(|g| g.reused),
        reuse_events: count(|g| g.reuse_events),
        ..total
    };
    r.total.cost_per_completed_micros =
        Some(r.total.spend_micros / r.total.completed.max(1) as i64);
    for p in &mut r.series {
        p.spend_micros *= SCALE as i64;
        p.tasks *= SCALE as u64;
    }
    r
}

/// The sample grouped by team and workflow: keys `team/workflow`, two teams over three
/// workflows.
pub fn by_team_workflow() -> Report {
    let mut r = by_workflow();
    r.group_by = GroupBy::TeamWorkflow;
    let teams = [
        "search", "support", "search", "support", "search", "support",
    ];
    for (g, team) in r.groups.iter_mut().zip(teams) {
        g.key = format!("{team}/{}", g.key);
    }
    r
}

/// Two weeks of hourly traffic (every hour from 06:00 to 22:00, a quiet weekend), as `--since
/// 14d` reports it.
pub fn many_days() -> Report {
    let mut r = sample();
    r.since_ms = T0;
    r.until_ms = T0 + 14 * 24 * HOUR_MS;
    r.generated_ms = r.until_ms;
    r.series = (0..14 * 24u64)
        .filter(|h| (6..22).contains(&(h % 24)))
        .filter_map(|h| {
            let day = h / 24;
            // 2025-03-04 is a Tuesday: days 4 and 5 are the weekend.
            let weekend = matches!(day % 7, 4 | 5);
            let busy = if weekend { 1 } else { 6 + (day % 3) as i64 };
            (!weekend || h % 24 == 12).then(|| SeriesPoint {
                start_ms: T0 + h * HOUR_MS,
                spend_micros: busy * (40_000 + (h % 24) as i64 * 3_000),
                tasks: busy as u64 * 10,
                outcomes: busy as u64 * 4,
                realized_quality: Some(0.74 + (day % 5) as f64 * 0.02),
            })
        })
        .collect();
    r
}
