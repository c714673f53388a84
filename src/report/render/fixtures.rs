//! The sample report the views' tests render: two teams (one without outcomes, with a label to
//! escape), two budgets, and six hours of series with an hour without quality.

use super::chart::HOUR_MS;
use crate::report::{BudgetStatus, GroupBy, GroupReport, Report, SeriesPoint, TierShare};

/// 2025-03-04 00:00 UTC.
pub(super) const T0: u64 = 1_741_046_400_000;

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
pub(super) fn sample() -> Report {
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
        reuse_rate: Some(0.4),
        budget_downgrades: 7,
        budget_rejections: 0,
        explored: 100,
        exploration_cost_micros: -41_000,
        clipped_outcomes: 3,
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
        reuse_rate: Some(0.4),
        budget_downgrades: 7,
        budget_rejections: 2,
        explored: 112,
        exploration_cost_micros: 19_000,
        clipped_outcomes: 3,
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
    }
}
