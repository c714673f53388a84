//! The books as a report: the five numbers (spend by team and by workflow, cost per completed
//! output, value created and savings, reuse rate) plus tier mix, realized quality against the
//! bar and budgets, per group over a period.
//!
//! [`Report`] is the one shape every view shares: the `GetReport` RPC carries it, the CLI
//! prints it as a table, CSV, JSON or an HTML page (see [`render`]). Money is integer
//! micro-dollars (`*_micros`) end to end; only the views turn it into dollars.
//!
//! A group's numbers ([`GroupReport`]) are declared once, in `group.rs`, with what each view and
//! exporter needs to know of them ([`field`]); the struct, the proto conversion, the CSV, the
//! report's sum of the ledger and the exported metrics are made from that declaration.

pub mod build;
pub mod field;
mod group;
pub mod quality;
pub mod render;

pub use group::GroupReport;
pub(crate) use group::group_report_fields;
pub use quality::{Estimate, QualityKept};

use serde::{Deserialize, Serialize};

/// How groups are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One group per team.
    #[default]
    Team,
    /// One group per workflow.
    Workflow,
    /// One group per tier.
    Tier,
    /// One group per team and workflow pair.
    TeamWorkflow,
}

impl GroupBy {
    /// Name as used on the command line and in the RPC.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Workflow => "workflow",
            GroupBy::Tier => "tier",
            GroupBy::TeamWorkflow => "team_workflow",
        }
    }

    /// Parses a name; `None` when unknown.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "team" => GroupBy::Team,
            "workflow" => GroupBy::Workflow,
            "tier" => GroupBy::Tier,
            "team_workflow" | "team,workflow" => GroupBy::TeamWorkflow,
            _ => return None,
        })
    }
}

/// Decisions on one tier within a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TierShare {
    /// Tier name.
    pub tier: String,
    /// Decisions routed to it.
    pub tasks: u64,
    /// Spend on it, micro-USD.
    pub spend_micros: i64,
}

/// State of one budget in its current period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BudgetStatus {
    /// Budget id, e.g. `team:search/month`.
    pub id: String,
    /// Team it covers (empty: every team).
    pub team: String,
    /// Workflow it covers (empty: every workflow).
    pub workflow: String,
    /// `day`, `week` or `month` (calendar-aligned, UTC): a
    /// [`Period`](crate::domain::policy::Period) as the server named it.
    pub period: String,
    /// Start of the current period, ms since the Unix epoch.
    pub period_start_ms: u64,
    /// Soft limit, micro-USD, if set.
    pub soft_limit_micros: Option<i64>,
    /// Hard limit, micro-USD, if set.
    pub hard_limit_micros: Option<i64>,
    /// Used in the current period (reserved estimates reconciled with actuals), micro-USD.
    pub used_micros: i64,
    /// Hard (else soft) limit minus used; `None` without limits.
    pub left_micros: Option<i64>,
    /// `ok`, `soft` (over the soft limit) or `exhausted` (at the hard limit): a [`BudgetState`]
    /// as the server named it (a report read back keeps a name this build does not know).
    pub state: String,
}

/// Where a budget stands against its limits in its current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetState {
    /// Below its limits.
    Ok,
    /// At or over its soft limit, below its hard limit.
    Soft,
    /// At or over its hard limit.
    Exhausted,
}

impl BudgetState {
    /// Every state, from the least spent.
    pub const ALL: [BudgetState; 3] = [BudgetState::Ok, BudgetState::Soft, BudgetState::Exhausted];

    /// The state of `used` against a soft and a hard limit (micro-USD; either may be unset).
    pub fn of(used: i64, soft: Option<i64>, hard: Option<i64>) -> Self {
        match (soft, hard) {
            (_, Some(h)) if used >= h => BudgetState::Exhausted,
            (Some(s), _) if used >= s => BudgetState::Soft,
            _ => BudgetState::Ok,
        }
    }

    /// Name as reports write it.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetState::Ok => "ok",
            BudgetState::Soft => "soft",
            BudgetState::Exhausted => "exhausted",
        }
    }

    /// The state of a name written by [`BudgetState::as_str`]; `None` when unknown.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Spend and quality in one time bucket (one hour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SeriesPoint {
    /// Bucket start, ms since the Unix epoch.
    pub start_ms: u64,
    /// Spend of decisions made in the bucket, micro-USD.
    pub spend_micros: i64,
    /// Decisions made in the bucket.
    pub tasks: u64,
    /// Outcomes received for them.
    pub outcomes: u64,
    /// Their average outcome score; `None` without outcomes.
    pub realized_quality: Option<f64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Report {
    /// Start of the period, ms since the Unix epoch (inclusive, hour-aligned).
    pub since_ms: u64,
    /// End of the period, ms (exclusive).
    pub until_ms: u64,
    /// How groups were formed.
    pub group_by: GroupBy,
    /// One entry per group, highest spend first.
    pub groups: Vec<GroupReport>,
    /// Everything in the period.
    pub total: GroupReport,
    /// Budgets of the live policy that cover the report's filters.
    pub budgets: Vec<BudgetStatus>,
    /// Hourly spend and realized quality over the period, oldest first (empty hours omitted).
    pub series: Vec<SeriesPoint>,
    /// Version of the live policy.
    pub policy_version: String,
    /// When the report was made, ms since the Unix epoch.
    pub generated_ms: u64,
    /// Quality kept, measured: per group, then the total (`total` key), for the groups with
    /// shadow pairs or outcomes recorded with propensities; empty (and left out) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityKept>,
}

/// Micro-USD as dollars, the one display rule of every face (table, HTML, CLI): rounded
/// half up, to the cent with thousands separators from $1 (`$1,234.57`), to four decimals
/// below (`$0.0374`), and exactly below a hundredth of a cent (`$0.000009`), so no non-zero
/// amount shows as `$0.0000`. CSV and JSON carry exact micro-dollars.
pub fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    if m == 0 {
        "$0.00".to_owned()
    } else if m >= 1_000_000 {
        let cents = m.saturating_add(5_000) / 10_000;
        format!("{sign}${}.{:02}", thousands(cents / 100), cents % 100)
    } else if m >= 100 {
        let t = (m + 50) / 100;
        format!("{sign}${}.{:04}", t / 10_000, t % 10_000)
    } else {
        format!("{sign}$0.{m:06}")
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
