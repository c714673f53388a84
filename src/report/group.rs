//! The numbers of one group, declared once: each field's doc, type and kind, its CSV place and
//! columns, the ledger metric it sums (and the Prometheus family that exports it), and, for a
//! field no view lays out by hand, its label in the table and the page.
//!
//! A new report counter is one field here and its number in the proto's `GroupReport`; a number
//! the books do not count yet is also a ledger metric (its name in `domain/books/ledger.rs`, the
//! line that counts it in the books). The struct, its JSON, the proto conversion
//! (`grpc/convert.rs`), the CSV, the report's sum of the ledger (`build.rs`), the exported metric
//! (`metrics.rs`, with `prometheus`) and a column in the table and the page (with `column`)
//! follow. The views' tests render a
//! sample (`render/fixtures.rs`, which names every field) and pin the output: give the new field a
//! value there and rewrite the pins with `TOKENWISE_BLESS=1` (see `render/pinned.rs`).
//!
//! Each field reads `name: Type { kind, csv(place: "column", …), sum(METRIC),
//! prometheus("family", "help"), column("label") }`; the last three are optional, in that
//! order, and `prometheus` only follows a `sum`. Kinds: [`Kind`](super::field::Kind) (`key`,
//! `money`, `opt_money`, `count`, `ratio`, `hours`, `tiers`). Fields without `sum` are derived
//! by `build.rs` from the sums. The JSON's field order is the order here and the CSV's is
//! `place`, so a new field goes last in both (the proto's order is its own field numbers).
//! Give a new field `#[serde(default)]`, so report JSON saved before it still reads.

use super::TierShare;
use super::field::define_group_report;

/// Calls `$then!` with every field of [`GroupReport`](super::GroupReport) in the grammar above:
/// the one list that the struct (here) and the proto conversion (`grpc/convert.rs`) are made
/// from.
macro_rules! group_report_fields {
    ($then:ident) => {
        $then! {
            /// Group label, e.g. the team name; `(no team)` for calls without one, `default`
            /// for the empty workflow, `other` for
            /// labels over the cardinality cap; `total` for the whole report.
            key: String { key, csv(1: "group") },
            /// Spend, micro-USD: actual cost of decisions with feedback, the estimate of the rest.
            spend_micros: i64 {
                money, csv(2: "spend_micros", "spend_usd"), sum(SPEND),
                prometheus(
                    "spend_usd",
                    "Spend in USD: estimates at Route reconciled to actual cost at Feedback (can go down)"
                )
            },
            /// Decisions routed.
            tasks: u64 {
                count, csv(3: "tasks"), sum(TASKS),
                prometheus("decisions", "Decisions routed, by team, workflow and tier")
            },
            /// Outcomes received (feedback calls accepted).
            outcomes: u64 {
                count, csv(4: "outcomes"), sum(OUTCOMES),
                prometheus("outcomes", "Outcomes received, by team, workflow and tier")
            },
            /// Outcomes whose score met the scope's quality bar.
            completed: u64 {
                count, csv(5: "completed"), sum(COMPLETED),
                prometheus("outcomes_completed", "Outcomes that met the scope's quality bar")
            },
            /// Spend / completed, micro-USD; `None` when nothing completed.
            cost_per_completed_micros: Option<i64> {
                opt_money, csv(6: "cost_per_completed_micros", "cost_per_completed_usd")
            },
            /// Average outcome score; `None` without outcomes.
            realized_quality: Option<f64> { ratio, csv(7: "realized_quality") },
            /// Average quality bar over the outcomes (groups may span scopes); `None` without
            /// outcomes.
            quality_bar: Option<f64> { ratio, csv(8: "quality_bar") },
            /// Decisions per tier, cheapest tier first.
            tier_mix: Vec<TierShare> { tiers, csv(17: "tier_mix", "tier_spend_micros") },
            /// What the same tokens would have cost on each scope's premium (most expensive
            /// allowed) tier, micro-USD.
            premium_micros: i64 {
                money, csv(9: "premium_micros", "premium_usd"), sum(PREMIUM),
                prometheus(
                    "premium_counterfactual_usd",
                    "What the same tokens would cost on each scope's premium tier, USD"
                )
            },
            /// `premium_micros - spend_micros`.
            savings_micros: i64 { money, csv(10: "savings_micros", "savings_usd") },
            /// Revenue or risk impact: completed outcomes × the policy's
            /// `value_per_success_usd`, micro-USD.
            value_micros: i64 { money, csv(11: "value_micros", "value_usd"), sum(VALUE) },
            /// Human time displaced: completed outcomes × the policy's
            /// `human_minutes_per_success`, in hours.
            #[serde(default)]
            human_hours: f64 {
                hours, csv(18: "human_hours"), sum(HUMAN_SECONDS),
                prometheus(
                    "human_hours_displaced",
                    "Hours of human work displaced: completed outputs × the scope's human_minutes_per_success"
                )
            },
            /// Those hours at the policy's `loaded_cost_per_hour_usd`, micro-USD.
            #[serde(default)]
            human_value_micros: i64 {
                money, csv(19: "human_value_micros", "human_value_usd"), sum(HUMAN_VALUE)
            },
            /// `value_micros + human_value_micros - spend_micros`.
            net_value_micros: i64 { money, csv(12: "net_value_micros", "net_value_usd") },
            /// Decisions whose output was reused at least once (RecordReuse or Feedback's early
            /// mark), each counted once, in the hour of the decision.
            reused: u64 {
                count, csv(13: "reused"), sum(REUSED),
                prometheus(
                    "reused_outputs",
                    "Decisions whose output was reused at least once (each counted once)"
                )
            },
            /// Reuse events of those decisions: RecordReuse counts plus Feedback's reused marks.
            #[serde(default)]
            reuse_events: u64 {
                count, csv(20: "reuse_events"), sum(REUSE_EVENTS),
                prometheus(
                    "reuse_events",
                    "Reuse events of AI outputs (RecordReuse counts, Feedback's reused mark)"
                )
            },
            /// `reused / tasks`: the share of the period's decisions whose output was reused so
            /// far (numerator and denominator count the same decisions, so it never passes 1;
            /// it did as reused / completed, when outputs below the bar were reused too);
            /// `None` without tasks.
            reuse_rate: Option<f64> { ratio, csv(14: "reuse_rate") },
            /// Decisions whose tier a budget lowered (soft limit or hard limit with `cheapest`).
            budget_downgrades: u64 {
                count, csv(15: "budget_downgrades"), sum(DOWNGRADED),
                prometheus(
                    "budget_actions",
                    "Decisions a budget downgraded (tier set) or refused (tier empty)"
                )
            },
            /// Route calls a hard budget refused.
            budget_rejections: u64 {
                count, csv(16: "budget_rejections"), sum(REJECTED),
                prometheus("budget_actions")
            },
            /// Decisions an exploration draw routed instead of the plan (the policy's
            /// `exploration_rate`).
            #[serde(default)]
            explored: u64 {
                count, csv(21: "explored"), sum(EXPLORED),
                prometheus(
                    "explored_decisions",
                    "Decisions an exploration draw routed instead of the plan, and exploration pairs run"
                )
            },
            /// What those explorations cost against the plan's own choices, micro-USD: a
            /// substitution priced on Route's estimates (negative where it tried a cheaper
            /// tier), a pair at what its run cost.
            #[serde(default)]
            exploration_cost_micros: i64 {
                money, csv(22: "exploration_cost_micros", "exploration_cost_usd"),
                sum(EXPLORE_COST),
                prometheus(
                    "exploration_cost_usd",
                    "Cost of exploration against the plan's own choices (substitutions at Route's estimates, pairs at what their runs cost), USD (can be negative)"
                )
            },
            /// Outcomes whose reported token counts were over their bounds (input: 8 × what
            /// Route measured; output: the scope's `max_output_tokens`) and were booked clipped.
            #[serde(default)]
            clipped_outcomes: u64 {
                count, csv(23: "clipped_outcomes"), sum(CLIPPED),
                prometheus(
                    "clipped_token_reports",
                    "Outcomes whose reported token counts were over their bounds and were booked clipped"
                )
            },
            /// Outcomes another tier served than Route chose (Feedback's `served_tier`: the
            /// caller fell back), counted under the tier Route chose.
            #[serde(default)]
            fallbacks: u64 {
                count, csv(24: "fallbacks"), sum(FALLBACKS),
                prometheus(
                    "fallbacks",
                    "Outcomes served by another tier than Route chose, by the tier Route chose"
                ),
                column("fallbacks")
            },
        }
    };
}

pub(crate) use group_report_fields;

group_report_fields!(define_group_report);

#[cfg(test)]
mod tests {
    use super::super::GroupReport;

    #[test]
    fn csv_places_are_distinct_and_each_family_has_one_help() {
        let mut places: Vec<u32> = GroupReport::FIELDS.iter().map(|f| f.csv).collect();
        places.sort_unstable();
        places.dedup();
        assert_eq!(
            places.len(),
            GroupReport::FIELDS.len(),
            "two fields share a CSV place"
        );
        // The help text on a family's first field, and only there.
        let mut seen: Vec<&str> = Vec::new();
        for e in GroupReport::FIELDS.iter().filter_map(|f| f.export) {
            let first = !seen.contains(&e.name);
            assert_eq!(
                e.help.is_some(),
                first,
                "{}: help on its first field only",
                e.name
            );
            seen.push(e.name);
        }
    }

    #[test]
    fn from_sums_sets_each_summed_field_from_its_metric() {
        use crate::domain::books::metric;
        let g = GroupReport::from_sums(|m| match m {
            metric::TASKS => 3,
            metric::SPEND => -7,
            metric::REJECTED => -2,
            metric::HUMAN_SECONDS => 5_400,
            _ => 0,
        });
        assert_eq!((g.tasks, g.spend_micros, g.budget_rejections), (3, -7, 0));
        assert_eq!(g.human_hours, 1.5);
        assert_eq!((g.key.as_str(), g.reuse_rate), ("", None));
    }
}
