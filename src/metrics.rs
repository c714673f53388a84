//! Prometheus metrics, served as OpenMetrics text on `/metrics` of a separate HTTP port.
//!
//! Spend, decisions and outcomes come from the same counter increments the books send to the
//! store (they are its [`Observer`]), so the metrics and the report agree; each replica exports what
//! it counted (sum across replicas in queries). Which ledger metrics are exported, under what name
//! and help, is declared on the report's fields ([`GroupReport::FIELDS`]); a count becomes a
//! counter, an amount a gauge in USD or hours. Labels are the books' labels, whose cardinality
//! is capped there. Quality per scope, budgets and store health are read at scrape time.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::books::{Counted, Observer};
use crate::engine::{Engine, Telemetry};
use crate::report::GroupReport;
use crate::report::field::{Kind, sums};

/// Labels of a ledger cell.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CellLabels {
    /// Team (empty when the caller gave none).
    pub team: String,
    /// Workflow.
    pub workflow: String,
    /// Tier.
    pub tier: String,
}

/// Labels of a served call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// RPC name, e.g. `Route`.
    pub rpc: String,
    /// `ok` or `error`.
    pub outcome: String,
}

/// Labels of a call answered with an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// RPC name, e.g. `Route`.
    pub rpc: &'static str,
    /// The status code in snake case, e.g. `invalid_argument` ([`code_label`]).
    pub kind: &'static str,
}

/// Labels of a call shed at admission.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// Whose concurrency budget was full: `rpc` (`--max-concurrent-requests`), `probe` (health
    /// checks and reflection) or `team` (`--max-concurrent-requests-per-team`).
    pub budget: &'static str,
}

/// A gRPC status code as a metric label: its name in snake case.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "cancelled",
        C::Unknown => "unknown",
        C::InvalidArgument => "invalid_argument",
        C::DeadlineExceeded => "deadline_exceeded",
        C::NotFound => "not_found",
        C::AlreadyExists => "already_exists",
        C::PermissionDenied => "permission_denied",
        C::ResourceExhausted => "resource_exhausted",
        C::FailedPrecondition => "failed_precondition",
        C::Aborted => "aborted",
        C::OutOfRange => "out_of_range",
        C::Unimplemented => "unimplemented",
        C::Internal => "internal",
        C::Unavailable => "unavailable",
        C::DataLoss => "data_loss",
        C::Unauthenticated => "unauthenticated",
    }
}

/// Labels of a policy scope.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    /// Scope key.
    pub scope: String,
}

/// Labels of an outcome of some work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// Labels of a budget.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// Budget id.
    pub budget: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A family of the books' counts by cell.
enum LedgerFamily {
    /// Counts, never lowered (a negative increment adds nothing).
    Count(Family<CellLabels, Counter>),
    /// Amounts in the display unit: the stored increment divided by the unit (micro-USD per
    /// USD, seconds per hour). The exact integer sum is kept beside each gauge and the gauge set
    /// from it, so the export has no float noise of its own (`0.000013`, never
    /// `0.000013000000000000018`).
    Amount(
        Family<CellLabels, FloatGauge>,
        f64,
        std::sync::Mutex<std::collections::HashMap<CellLabels, i64>>,
    ),
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Route handler latency.
    pub route_seconds: Histogram,
    /// Time from a decision to its feedback.
    pub feedback_lag_seconds: Histogram,
    /// The families of the books' counts, as the report's fields declare them.
    ledger: Vec<LedgerFamily>,
    /// Which of them each exported ledger metric feeds.
    by_metric: HashMap<&'static str, usize>,
    calls: Family<CallLabels, Counter>,
    /// Router calls answered with an error, by RPC and kind.
    pub call_errors: Family<ErrorLabels, Counter>,
    /// Calls shed at admission, by budget.
    shed_calls: Family<ShedLabels, Counter>,
    /// Realized quality per scope (set at scrape time).
    pub realized_quality: Family<ScopeLabels, FloatGauge>,
    /// Quality bar per scope (set at scrape time).
    pub quality_bar: Family<ScopeLabels, FloatGauge>,
    /// Budget left in the current period, USD (set at scrape time).
    pub budget_remaining_usd: Family<BudgetLabels, FloatGauge>,
    /// Budget used in the current period, USD (set at scrape time).
    pub budget_used_usd: Family<BudgetLabels, FloatGauge>,
    /// 1 when the store is reachable (set at scrape time).
    pub store_up: Gauge,
    /// Outcomes waiting in the outage buffer (set at scrape time).
    pub buffered_outcomes: Gauge,
    /// Unreadable shared-log events skipped since start (set at scrape time).
    pub skipped_events: Gauge,
    /// Cluster fits of unlabelled traffic since start, by result (`ok`, `failed`).
    pub cluster_fits: Family<ResultLabels, Gauge>,
    /// Spill-file lines rejected by their checksum since start (set at scrape time).
    pub spill_rejected_lines: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenwise");
        // 5 µs … ~80 ms, doubling.
        let route_seconds = Histogram::new(exponential_buckets(5e-6, 2.0, 15));
        // 1 s … ~1.5 days, ×3.
        let feedback_lag_seconds = Histogram::new(exponential_buckets(1.0, 3.0, 12));
        let mut m = Self {
            route_seconds,
            feedback_lag_seconds,
            ledger: Vec::new(),
            by_metric: HashMap::new(),
            calls: Family::default(),
            call_errors: Family::default(),
            shed_calls: Family::default(),
            realized_quality: Family::default(),
            quality_bar: Family::default(),
            budget_remaining_usd: Family::default(),
            budget_used_usd: Family::default(),
            store_up: Gauge::default(),
            buffered_outcomes: Gauge::default(),
            skipped_events: Gauge::default(),
            cluster_fits: Family::default(),
            spill_rejected_lines: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "route_duration_seconds",
            "Route handler latency",
            m.route_seconds.clone(),
        );
        registry.register(
            "feedback_lag_seconds",
            "Time from a decision to its accepted feedback",
            m.feedback_lag_seconds.clone(),
        );
        m.register_ledger(&mut registry);
        registry.register(
            "calls",
            "Router calls served, by RPC and outcome (the server's own count: gRPC errors travel in trailers that HTTP-level load balancers do not see)",
            m.calls.clone(),
        );
        registry.register(
            "call_errors",
            "Router calls answered with an error, by RPC and kind (the status code: invalid_argument, resource_exhausted, unavailable, ...)",
            m.call_errors.clone(),
        );
        registry.register(
            "shed_calls",
            "Calls refused with RESOURCE_EXHAUSTED before any handler because their concurrency budget was full, by budget (rpc: --max-concurrent-requests; probe: health checks and reflection; team: --max-concurrent-requests-per-team); in no other count",
            m.shed_calls.clone(),
        );
        registry.register(
            "realized_quality",
            "Realized average outcome score over the scope's recent feedback",
            m.realized_quality.clone(),
        );
        registry.register(
            "quality_bar",
            "The scope's quality bar",
            m.quality_bar.clone(),
        );
        registry.register(
            "budget_remaining_usd",
            "Hard (else soft) limit minus usage in the current period, USD",
            m.budget_remaining_usd.clone(),
        );
        registry.register(
            "budget_used_usd",
            "Budget usage in the current period, USD",
            m.budget_used_usd.clone(),
        );
        registry.register(
            "store_up",
            "1 when the state store is reachable",
            m.store_up.clone(),
        );
        registry.register(
            "buffered_outcomes",
            "Outcomes waiting in the outage buffer for the store",
            m.buffered_outcomes.clone(),
        );
        registry.register(
            "skipped_events",
            "Unreadable events of the shared log skipped since this replica started",
            m.skipped_events.clone(),
        );
        registry.register(
            "cluster_fits",
            "Workflow-discovery fits of unlabelled traffic this replica's fold ran, by result (a failed fit keeps the previous clusters)",
            m.cluster_fits.clone(),
        );
        registry.register(
            "spill_rejected_lines",
            "Spill-file lines skipped because their checksum did not match (torn or edited)",
            m.spill_rejected_lines.clone(),
        );
        Self { registry, ..m }
    }

    /// Registers a family for each export the report's fields declare (a family named twice is
    /// one family fed by both metrics), in declaration order.
    fn register_ledger(&mut self, registry: &mut Registry) {
        let mut names: Vec<&'static str> = Vec::new();
        for f in GroupReport::FIELDS {
            let (Some(metric), Some(export)) = (f.ledger, f.export) else {
                continue;
            };
            let at = match names.iter().position(|n| *n == export.name) {
                Some(at) => at,
                None => {
                    let family = match f.kind {
                        Kind::Count => LedgerFamily::Count(Family::default()),
                        // Amounts can go down (Feedback reconciles the estimates): gauges.
                        Kind::Money => {
                            LedgerFamily::Amount(Family::default(), 1e6, Default::default())
                        }
                        Kind::Hours => {
                            LedgerFamily::Amount(Family::default(), 3600.0, Default::default())
                        }
                        Kind::Key | Kind::OptMoney | Kind::Ratio | Kind::Tiers => continue,
                    };
                    let help = export.help.unwrap_or_default();
                    match &family {
                        LedgerFamily::Count(c) => registry.register(export.name, help, c.clone()),
                        LedgerFamily::Amount(g, _, _) => {
                            registry.register(export.name, help, g.clone())
                        }
                    }
                    names.push(export.name);
                    self.ledger.push(family);
                    self.ledger.len() - 1
                }
            };
            self.by_metric.insert(metric, at);
        }
        // Shadow pairs are not columns of the group table (they are quality kept's, which only
        // shadowing scopes have), but finance and dashboards see them beside spend: quality
        // kept is `sum(tokenwise_shadow_pair_routed_score) / sum(tokenwise_shadow_pair_shadow_score)`
        // over the pairs, the report's interval aside.
        use crate::domain::books::metric;
        for (key, name, help, scale) in [
            (
                metric::SHADOW_SPEND,
                "shadow_spend_usd",
                "What shadow runs (the second call of a shadow pair) cost, USD: apart from spend and budgets",
                1e6,
            ),
            (
                metric::PAIRS,
                "shadow_pairs",
                "Shadow pairs recorded (a task's routed score and its shadow tier's), in the routed tier's cell",
                1.0,
            ),
            (
                metric::PAIR_R,
                "shadow_pair_routed_score",
                "Sum of the routed scores of the shadow pairs",
                1e6,
            ),
            (
                metric::PAIR_S,
                "shadow_pair_shadow_score",
                "Sum of the shadow tier's scores of the shadow pairs",
                1e6,
            ),
        ] {
            let family = Family::default();
            registry.register(name, help, family.clone());
            self.ledger
                .push(LedgerFamily::Amount(family, scale, Default::default()));
            self.by_metric.insert(key, self.ledger.len() - 1);
        }
    }

    /// The counter of `rpc` calls answered OK (`ok`) or with an error status: a handle the
    /// server keeps, so counting a call is one atomic add.
    pub fn calls(&self, rpc: &str, ok: bool) -> Counter {
        self.calls
            .get_or_create(&CallLabels {
                rpc: rpc.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .clone()
    }

    /// The counter of calls shed at admission for a full `budget` (`rpc`, `probe` or `team`): a handle
    /// the server keeps.
    pub fn shed_calls(&self, budget: &'static str) -> Counter {
        self.shed_calls
            .get_or_create(&ShedLabels { budget })
            .clone()
    }

    /// The metrics as OpenMetrics text, with the scrape-time gauges read from `engine` first.
    pub fn render_with(&self, engine: &Engine, now_ms: u64) -> String {
        let table = engine.table();
        for (scope, plan) in &table.plans {
            let labels = ScopeLabels {
                scope: scope.clone(),
            };
            // No series until there is evidence: a 0.0 for a scope nobody has graded yet
            // reads as a collapse on a dashboard.
            if plan.evidence > 0.0 {
                self.realized_quality
                    .get_or_create(&labels)
                    .set(plan.realized_quality);
            } else {
                self.realized_quality.remove(&labels);
            }
            self.quality_bar.get_or_create(&labels).set(plan.bar);
        }
        for u in engine.budget_usage(now_ms) {
            let labels = BudgetLabels {
                budget: u.budget.id.clone(),
            };
            let limit = u.budget.hard_limit_micros.or(u.budget.soft_limit_micros);
            self.budget_used_usd
                .get_or_create(&labels)
                .set(u.used_micros as f64 / 1e6);
            if let Some(l) = limit {
                self.budget_remaining_usd
                    .get_or_create(&labels)
                    .set((l - u.used_micros) as f64 / 1e6);
            }
        }
        self.store_up.set(i64::from(!engine.is_degraded()));
        self.buffered_outcomes.set(engine.buffered() as i64);
        self.skipped_events
            .set(i64::try_from(engine.skipped_events()).unwrap_or(i64::MAX));
        self.spill_rejected_lines
            .set(i64::try_from(engine.rejected_spill_lines()).unwrap_or(i64::MAX));
        let (ok, failed) = engine.cluster_fits();
        for (result, n) in [("ok", ok), ("failed", failed)] {
            self.cluster_fits
                .get_or_create(&ResultLabels { result })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.render()
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Telemetry for Metrics {
    fn feedback_lag(&self, seconds: f64) {
        self.feedback_lag_seconds.observe(seconds);
    }
}

impl Observer for Metrics {
    /// Counts one ledger increment (the books report every one they send, Route-time and
    /// Feedback-time alike).
    fn counted(&self, c: Counted<'_>) {
        let labels = CellLabels {
            team: c.team.to_string(),
            // One name for the empty workflow everywhere: `default`, as thresholds and the
            // report say.
            workflow: crate::domain::labels::workflow_key(c.workflow).to_string(),
            tier: c.tier.to_string(),
        };
        match self
            .by_metric
            .get(c.metric)
            .and_then(|&i| self.ledger.get(i))
        {
            Some(LedgerFamily::Count(f)) => {
                f.get_or_create(&labels).inc_by(sums::count(c.delta));
            }
            Some(LedgerFamily::Amount(f, unit, exact)) => {
                // Summed exactly, then shown: one lock, so two increments of a cell cannot set
                // its gauge out of order.
                let mut sums = exact
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let sum = sums.entry(labels.clone()).or_default();
                *sum = sum.saturating_add(c.delta);
                f.get_or_create(&labels).set(*sum as f64 / unit);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::books::metric;

    fn count(m: &Metrics, metric: &'static str, tier: &str, delta: i64) {
        m.counted(Counted {
            metric,
            team: "search",
            workflow: "faq",
            tier,
            delta,
        });
    }

    fn line<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(name)).collect()
    }

    #[test]
    fn money_is_exported_without_float_noise() {
        // 0.00001 + 0.000003 in floats is 0.000013000000000000001: the sum is kept exactly.
        let m = Metrics::new();
        count(&m, metric::SPEND, "small", 10);
        count(&m, metric::SPEND, "small", 3);
        let text = m.render();
        let labels = r#"{team="search",workflow="faq",tier="small"}"#;
        assert_eq!(
            line(&text, "tokenwise_spend_usd"),
            [format!("tokenwise_spend_usd{labels} 0.000013").as_str()]
        );
    }

    #[test]
    fn shadow_spend_is_exported_apart_from_spend() {
        let m = Metrics::new();
        count(&m, metric::SHADOW_SPEND, "premium", 2_800);
        let text = m.render();
        let labels = r#"{team="search",workflow="faq",tier="premium"}"#;
        assert_eq!(
            line(&text, "tokenwise_shadow_spend_usd{"),
            [format!("tokenwise_shadow_spend_usd{labels} 0.0028").as_str()]
        );
        assert!(line(&text, "tokenwise_spend_usd{").is_empty());
    }

    #[test]
    fn shadow_pairs_export_what_quality_kept_is_computed_from() {
        let m = Metrics::new();
        count(&m, metric::PAIRS, "small", 2);
        count(&m, metric::PAIR_R, "small", 1_500_000);
        count(&m, metric::PAIR_S, "small", 1_800_000);
        let text = m.render();
        let labels = r#"{team="search",workflow="faq",tier="small"}"#;
        for (name, value) in [
            ("tokenwise_shadow_pairs", "2.0"),
            ("tokenwise_shadow_pair_routed_score", "1.5"),
            ("tokenwise_shadow_pair_shadow_score", "1.8"),
        ] {
            assert_eq!(
                line(&text, &format!("{name}{{")),
                [format!("{name}{labels} {value}").as_str()]
            );
        }
    }

    #[test]
    fn the_books_counts_become_labelled_series() {
        let m = Metrics::new();
        count(&m, metric::TASKS, "small", 2);
        count(&m, metric::TASKS, "small", 1);
        count(&m, metric::SPEND, "small", 1_500_000);
        count(&m, metric::SPEND, "small", -500_000);
        count(&m, metric::HUMAN_SECONDS, "small", 7_200);
        count(&m, metric::REJECTED, "", 1);
        // Counts the metrics do not export leave no series.
        count(&m, metric::SCORE, "small", 900_000);
        let text = m.render();
        let labels = r#"{team="search",workflow="faq",tier="small"}"#;
        assert_eq!(
            line(&text, "tokenwise_decisions_total"),
            [format!("tokenwise_decisions_total{labels} 3").as_str()]
        );
        // Reconciliation at Feedback lowers the spend estimate: a gauge holding the net.
        assert_eq!(
            line(&text, "tokenwise_spend_usd"),
            [format!("tokenwise_spend_usd{labels} 1.0").as_str()]
        );
        assert_eq!(
            line(&text, "tokenwise_human_hours_displaced"),
            [format!("tokenwise_human_hours_displaced{labels} 2.0").as_str()]
        );
        assert_eq!(
            line(&text, "tokenwise_budget_actions_total"),
            [r#"tokenwise_budget_actions_total{team="search",workflow="faq",tier=""} 1"#]
        );
        assert!(!text.contains("score"), "{text}");
    }

    /// Every ledger metric counted once: the exported families, their help and type lines and
    /// their series, as sorted lines (the exposition's family order carries no meaning).
    #[test]
    fn the_exported_ledger_families_are_pinned() {
        let m = Metrics::new();
        for (i, metric) in [
            metric::TASKS,
            metric::SPEND,
            metric::PREMIUM,
            metric::DOWNGRADED,
            metric::REJECTED,
            metric::EXPLORED,
            metric::OUTCOMES,
            metric::COMPLETED,
            metric::SCORE,
            metric::BAR,
            metric::VALUE,
            metric::HUMAN_SECONDS,
            metric::HUMAN_VALUE,
            metric::REUSED,
            metric::REUSE_EVENTS,
            metric::EXPLORE_COST,
            metric::CLIPPED,
            metric::FALLBACKS,
        ]
        .into_iter()
        .enumerate()
        {
            let tier = if metric == metric::REJECTED {
                ""
            } else {
                "small"
            };
            count(&m, metric, tier, 1_800 * (i as i64 + 1));
        }
        let text = m.render();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        if std::env::var_os("TOKENWISE_BLESS").is_some() {
            let path = format!("{}/src/testdata/metrics.txt", env!("CARGO_MANIFEST_DIR"));
            std::fs::write(path, lines.join("\n") + "\n").unwrap();
            return;
        }
        let expected: Vec<&str> = include_str!("testdata/metrics.txt").lines().collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn a_negative_count_never_lowers_a_counter() {
        let m = Metrics::new();
        count(&m, metric::OUTCOMES, "small", 4);
        count(&m, metric::OUTCOMES, "small", -3);
        assert!(
            m.render().contains(
                r#"tokenwise_outcomes_total{team="search",workflow="faq",tier="small"} 4"#
            )
        );
    }
}
