//! Builds a [`Report`] from the shared ledger: hourly counter hashes that every replica adds to
//! (see [`crate::domain::books`]), summed per group: each summed field of a group from its
//! ledger metric as `group.rs` declares it, the rest derived here.

use std::collections::{BTreeMap, HashMap};

use super::field::sums;
use super::{
    BudgetState, BudgetStatus, GroupBy, GroupReport, QualityKept, Report, SeriesPoint, TierShare,
};
use crate::domain::books::{Books, metric, parse_ledger_field};
use crate::domain::calendar::HOUR_MS;
use crate::domain::policy::Policy;
use crate::store::{StateStore, StoreError};

/// Longest period a report covers (the ledger keeps hours for 400 days).
pub const MAX_REPORT_HOURS: u64 = 400 * 24;
/// Ledger hours read per store round trip.
const READ_PAGE: usize = 240;

/// What to report on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportQuery {
    /// Start, ms since the epoch (rounded down to the hour).
    pub since_ms: u64,
    /// End, ms (exclusive).
    pub until_ms: u64,
    /// Only this team (empty: all).
    pub team: String,
    /// Only this workflow (empty: all).
    pub workflow: String,
    /// How to group.
    pub group_by: GroupBy,
}

/// Sums of the ledger metrics of one group, by metric name, and the decisions and spend per
/// tier.
#[derive(Debug, Default, Clone)]
struct Acc {
    sums: HashMap<String, i64>,
    /// The `report_interval_width` of the group's scope (set by its first cell).
    width: Option<f64>,
    /// (tasks, spend) per tier.
    tiers: BTreeMap<String, (i64, i64)>,
}

impl Acc {
    fn add(&mut self, m: &str, tier: &str, v: i64) {
        match self.sums.get_mut(m) {
            // Sums saturate: a ledger at the limits reads as the limit, never wraps negative.
            Some(sum) => *sum = sum.saturating_add(v),
            None => {
                self.sums.insert(m.to_string(), v);
            }
        }
        if m == metric::TASKS || m == metric::SPEND {
            let (tasks, spend) = self.tiers.entry(tier.to_string()).or_default();
            let x = if m == metric::TASKS { tasks } else { spend };
            *x = x.saturating_add(v);
        }
    }

    /// The sum of metric `m` (0 when the group has none).
    fn sum(&self, m: &str) -> i64 {
        self.sums.get(m).copied().unwrap_or(0)
    }

    /// The group's report: each summed field from its metric (as declared in `group.rs`), then
    /// what the report derives from the sums.
    fn finish(&self, key: String, policy: &Policy) -> GroupReport {
        let s = |m: &str| self.sum(m);
        let (spend, outcomes, completed) =
            (s(metric::SPEND), s(metric::OUTCOMES), s(metric::COMPLETED));
        let per_outcome = |sum: i64| (outcomes > 0).then(|| sum as f64 / outcomes as f64);
        let mut tier_mix: Vec<TierShare> = self
            .tiers
            .iter()
            .filter(|(t, (n, s))| !t.is_empty() && (*n != 0 || *s != 0))
            .map(|(t, (n, s))| TierShare {
                tier: t.clone(),
                tasks: sums::count(*n),
                spend_micros: *s,
            })
            .collect();
        tier_mix.sort_by_key(|s| policy.tier_index(&s.tier).unwrap_or(usize::MAX));
        GroupReport {
            key,
            cost_per_completed_micros: (completed > 0)
                .then(|| (spend as f64 / completed as f64).round() as i64),
            realized_quality: per_outcome(s(metric::SCORE)).map(|q| q / 1e6),
            quality_bar: per_outcome(s(metric::BAR)).map(|q| q / 1e6),
            tier_mix,
            savings_micros: s(metric::PREMIUM) - spend,
            net_value_micros: s(metric::VALUE) + s(metric::HUMAN_VALUE) - spend,
            reuse_rate: {
                let tasks = s(metric::TASKS);
                (tasks > 0).then(|| (s(metric::REUSED) as f64 / tasks as f64).min(1.0))
            },
            ..GroupReport::from_sums(s)
        }
    }
}

/// A team as a group names it: calls without one are `(no team)`, as in `thresholds`.
fn team_label(s: &str) -> &str {
    if s.is_empty() { "(no team)" } else { s }
}

fn group_key(by: GroupBy, team: &str, workflow: &str, tier: &str) -> String {
    // The empty workflow is `default` everywhere (thresholds, the report, reuse, metrics).
    let workflow = crate::domain::labels::workflow_key(workflow);
    match by {
        GroupBy::Team => team_label(team).to_string(),
        GroupBy::Workflow => workflow.to_string(),
        GroupBy::Tier if tier.is_empty() => "(refused)".to_string(),
        GroupBy::Tier => tier.to_string(),
        GroupBy::TeamWorkflow => format!("{}/{workflow}", team_label(team)),
    }
}

/// Reads the ledger for the query's period and sums it up. Flush the books first to include
/// this replica's latest decisions.
pub async fn build(
    policy: &Policy,
    books: &Books,
    store: &dyn StateStore,
    q: &ReportQuery,
    now_ms: u64,
) -> Result<Report, StoreError> {
    let first = q.since_ms / HOUR_MS;
    let last = q.until_ms.max(q.since_ms + 1).div_ceil(HOUR_MS);
    let first = first.max(last.saturating_sub(MAX_REPORT_HOURS));
    let hours: Vec<u64> = (first..last).collect();
    let mut groups: HashMap<String, Acc> = HashMap::new();
    let mut total = Acc::default();
    let mut series: Vec<SeriesPoint> = Vec::new();
    for page in hours.chunks(READ_PAGE) {
        let names: Vec<String> = page
            .iter()
            .map(|&h| crate::domain::books::ledger_hash_of_hour(h))
            .collect();
        let read = store.read_counters(&names).await?;
        for (hour, fields) in page.iter().zip(read) {
            let mut in_hour = Acc::default();
            for (field, v) in &fields {
                let Some((m, team, workflow, tier)) = parse_ledger_field(field) else {
                    continue;
                };
                if (!q.team.is_empty() && team != q.team)
                    || (!q.workflow.is_empty() && workflow != q.workflow)
                {
                    continue;
                }
                let acc = groups
                    .entry(group_key(q.group_by, team, workflow, tier))
                    .or_default();
                acc.width
                    .get_or_insert_with(|| interval_width(policy, q.group_by, team, workflow));
                acc.add(m, tier, *v);
                total.add(m, tier, *v);
                in_hour.add(m, tier, *v);
            }
            let (tasks, outcomes, spend) = (
                in_hour.sum(metric::TASKS),
                in_hour.sum(metric::OUTCOMES),
                in_hour.sum(metric::SPEND),
            );
            if tasks != 0 || outcomes != 0 || spend != 0 {
                series.push(SeriesPoint {
                    start_ms: hour * HOUR_MS,
                    spend_micros: spend,
                    tasks: sums::count(tasks),
                    outcomes: sums::count(outcomes),
                    realized_quality: (outcomes > 0)
                        .then(|| in_hour.sum(metric::SCORE) as f64 / outcomes as f64 / 1e6),
                });
            }
        }
    }
    let default_width = policy.default.report_interval_width;
    let mut quality: Vec<QualityKept> = groups
        .iter()
        .filter_map(|(k, acc)| {
            QualityKept::from_sums(k, |m| acc.sum(m), acc.width.unwrap_or(default_width))
        })
        .collect();
    quality.sort_by(|a, b| a.key.cmp(&b.key));
    if !quality.is_empty() {
        quality.extend(QualityKept::from_sums(
            "total",
            |m| total.sum(m),
            default_width,
        ));
    }
    let mut groups: Vec<GroupReport> = groups
        .into_iter()
        .map(|(k, acc)| acc.finish(k, policy))
        .collect();
    groups.sort_by(|a, b| b.spend_micros.cmp(&a.spend_micros).then(a.key.cmp(&b.key)));
    let budgets = books
        .budget_usage(policy, now_ms)
        .into_iter()
        .filter(|u| {
            (q.team.is_empty() || u.budget.team.is_empty() || u.budget.team == q.team)
                && (q.workflow.is_empty()
                    || u.budget.workflow.is_empty()
                    || u.budget.workflow == q.workflow)
        })
        .map(|u| {
            let b = &u.budget;
            let state = BudgetState::of(u.used_micros, b.soft_limit_micros, b.hard_limit_micros);
            BudgetStatus {
                id: b.id.clone(),
                team: b.team.clone(),
                workflow: b.workflow.clone(),
                period: b.period.as_str().to_string(),
                period_start_ms: u.period_start_ms,
                soft_limit_micros: b.soft_limit_micros,
                hard_limit_micros: b.hard_limit_micros,
                used_micros: u.used_micros,
                left_micros: b
                    .hard_limit_micros
                    .or(b.soft_limit_micros)
                    .map(|l| l - u.used_micros),
                state: state.as_str().to_string(),
            }
        })
        .collect();
    Ok(Report {
        since_ms: first * HOUR_MS,
        until_ms: q.until_ms,
        group_by: q.group_by,
        groups,
        total: total.finish("total".to_string(), policy),
        budgets,
        series,
        policy_version: policy.version.clone(),
        generated_ms: now_ms,
        quality,
    })
}

/// The `report_interval_width` of the scope a group's cell belongs to: its team's and
/// workflow's as far as the grouping names them (the default scope's for tiers).
fn interval_width(policy: &Policy, by: GroupBy, team: &str, workflow: &str) -> f64 {
    let (team, workflow) = match by {
        GroupBy::Team => (team, ""),
        GroupBy::Workflow => ("", workflow),
        GroupBy::TeamWorkflow => (team, workflow),
        GroupBy::Tier => ("", ""),
    };
    policy.resolve(team, workflow).report_interval_width
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::books::{ledger_field, ledger_hash};
    use crate::store::{CounterAdd, MemoryStore};

    const T0: u64 = 1_800_000_000_000;

    fn add(at: u64, m: &str, team: &str, workflow: &str, tier: &str, v: i64) -> CounterAdd {
        CounterAdd {
            hash: ledger_hash(at),
            field: ledger_field(m, team, workflow, tier),
            delta: v,
        }
    }

    /// Two teams over two hours, by hand: search ran 3 tasks (2 small, 1 premium), 2 outcomes
    /// of which 1 completed; ads ran 1 refused call.
    async fn ledger() -> MemoryStore {
        let store = MemoryStore::new();
        let h2 = T0 + HOUR_MS;
        let adds = vec![
            add(T0, metric::TASKS, "search", "faq", "small", 2),
            add(T0, metric::SPEND, "search", "faq", "small", 400),
            add(T0, metric::PREMIUM, "search", "faq", "small", 6_000),
            add(h2, metric::TASKS, "search", "faq", "premium", 1),
            add(h2, metric::SPEND, "search", "faq", "premium", 3_000),
            add(h2, metric::PREMIUM, "search", "faq", "premium", 3_000),
            add(T0, metric::OUTCOMES, "search", "faq", "small", 2),
            add(T0, metric::COMPLETED, "search", "faq", "small", 1),
            add(T0, metric::SCORE, "search", "faq", "small", 1_300_000),
            add(T0, metric::BAR, "search", "faq", "small", 1_400_000),
            add(T0, metric::REUSED, "search", "faq", "small", 1),
            add(T0, metric::REUSE_EVENTS, "search", "faq", "small", 5),
            add(h2, metric::REJECTED, "ads", "", "", 1),
        ];
        store.add_counters(1, &adds).await.unwrap();
        store
    }

    fn query(by: GroupBy) -> ReportQuery {
        ReportQuery {
            since_ms: T0,
            until_ms: T0 + 2 * HOUR_MS,
            group_by: by,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn spend_at_the_limits_saturates_in_the_total_instead_of_wrapping() {
        // Two hours of one team each at the largest spend a counter holds: their sum (the
        // team's group and the total) reads as the limit, not as a negative spend.
        let store = MemoryStore::new();
        let adds =
            [T0, T0 + HOUR_MS].map(|at| add(at, metric::SPEND, "ads", "", "small", i64::MAX));
        store.add_counters(1, &adds).await.unwrap();
        let r = build(
            &Policy::embedded().unwrap(),
            &Books::default(),
            &store,
            &query(GroupBy::Team),
            T0 + 3 * HOUR_MS,
        )
        .await
        .unwrap();
        assert_eq!(r.total.spend_micros, i64::MAX);
        assert_eq!(r.groups[0].spend_micros, i64::MAX);
    }

    #[tokio::test]
    async fn the_reuse_rate_counts_one_set_of_decisions_and_never_passes_one() {
        // The README's own example: two outputs reused, one of them below the bar. As reused ÷
        // completed it read 200%; over the period's decisions it is 100%.
        let store = MemoryStore::new();
        let adds = [
            add(T0, metric::TASKS, "ads", "", "small", 2),
            add(T0, metric::OUTCOMES, "ads", "", "small", 2),
            add(T0, metric::COMPLETED, "ads", "", "small", 1),
            add(T0, metric::REUSED, "ads", "", "small", 2),
        ];
        store.add_counters(1, &adds).await.unwrap();
        let r = build(
            &Policy::embedded().unwrap(),
            &Books::default(),
            &store,
            &query(GroupBy::Team),
            T0 + 3 * HOUR_MS,
        )
        .await
        .unwrap();
        assert_eq!(r.total.reuse_rate, Some(1.0));
    }

    #[tokio::test]
    async fn groups_and_the_total_are_the_ledger_summed_by_hand() {
        let store = ledger().await;
        let policy = Policy::embedded().unwrap();
        let r = build(
            &policy,
            &Books::default(),
            &store,
            &query(GroupBy::Team),
            T0,
        )
        .await
        .unwrap();
        let search = r.groups.iter().find(|g| g.key == "search").unwrap();
        assert_eq!((search.tasks, search.spend_micros), (3, 3_400));
        assert_eq!((search.outcomes, search.completed), (2, 1));
        assert_eq!(search.cost_per_completed_micros, Some(3_400));
        assert_eq!(search.realized_quality, Some(0.65));
        assert_eq!(search.quality_bar, Some(0.7));
        assert_eq!(search.savings_micros, 9_000 - 3_400);
        assert_eq!((search.reused, search.reuse_events), (1, 5));
        assert_eq!(search.reuse_rate, Some(1.0 / 3.0));
        let mix: Vec<(&str, u64)> = search
            .tier_mix
            .iter()
            .map(|t| (t.tier.as_str(), t.tasks))
            .collect();
        // A tier the policy no longer has still counts, after the policy's own tiers.
        assert_eq!(mix, [("small", 2), ("premium", 1)]);
        let ads = r.groups.iter().find(|g| g.key == "ads").unwrap();
        assert_eq!((ads.tasks, ads.budget_rejections), (0, 1));
        assert_eq!(r.total.tasks, 3);
        assert_eq!(r.total.budget_rejections, 1);
        // The biggest spender first; one series point per hour with activity.
        assert_eq!(r.groups[0].key, "search");
        assert_eq!(r.series.len(), 2);
    }

    #[tokio::test]
    async fn a_team_filter_and_other_groupings_see_the_same_ledger() {
        let store = ledger().await;
        let policy = Policy::embedded().unwrap();
        let mut q = query(GroupBy::Tier);
        q.team = "ads".into();
        let r = build(&policy, &Books::default(), &store, &q, T0)
            .await
            .unwrap();
        let keys: Vec<&str> = r.groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["(refused)"]);
        let q = query(GroupBy::TeamWorkflow);
        let r = build(&policy, &Books::default(), &store, &q, T0)
            .await
            .unwrap();
        let mut keys: Vec<&str> = r.groups.iter().map(|g| g.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["ads/default", "search/faq"]);
    }
}
