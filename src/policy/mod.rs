//! Tier catalogue and routing policies: TOML parsed into raw structs (unknown keys rejected),
//! then validated into typed values with errors that quote the key path.
//!
//! Scopes, most specific first: team+workflow, workflow, team, default. A scope's unset fields
//! come from `[default]`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::config::StoreConfigError;
/// The `[store]` table's types, validated by [`crate::store::config`]; re-exported so existing
/// `crate::policy::StoreConfig` / `StoreKind` paths keep working.
pub use crate::store::config::{StoreConfig, StoreKind};

/// The example policy, embedded so `serve` needs no file (same text as `deploy/policy.toml`).
pub const EMBEDDED_POLICY: &str = include_str!("../deploy/policy.toml");

/// Exploration rate when a policy does not set one.
pub const DEFAULT_EXPLORATION_RATE: f64 = 0.05;

/// First 12 hex digits of the SHA-256 of `text`: content versions of policies and models.
pub fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// A policy that failed validation: where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{path}`: {reason}")]
pub struct PolicyError {
    /// Key path, e.g. `policies[1].quality_bar`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Longest reason or path an error carries: a parse error quotes the offending line, and a
/// 5 KB line quoted twice made a gRPC status too big to send (the client saw RESOURCE_EXHAUSTED
/// "Stream removed" instead of INVALID_ARGUMENT); a 200 KB value must not be echoed back.
const MAX_ERROR_TEXT: usize = 300;

/// `s` cut to [`MAX_ERROR_TEXT`] bytes (on a character boundary), saying how long it was.
fn clipped(s: String) -> String {
    if s.len() <= MAX_ERROR_TEXT {
        return s;
    }
    let mut end = MAX_ERROR_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

impl PolicyError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: clipped(path.into()),
            reason: clipped(reason.into()),
        }
    }
}

impl From<StoreConfigError> for PolicyError {
    /// A `[store]` table error reads like any other policy error (and is clipped like one).
    fn from(e: StoreConfigError) -> Self {
        Self::new(e.path, e.reason)
    }
}

// ---- raw file format ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyFile {
    tiers: Vec<RawTier>,
    #[serde(default)]
    default: RawScope,
    #[serde(default)]
    policies: Vec<RawScope>,
    #[serde(default)]
    store: Option<crate::store::config::RawStore>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    team: Option<String>,
    workflow: Option<String>,
    period: String,
    soft_limit_usd: Option<f64>,
    hard_limit_usd: Option<f64>,
    on_exhausted: Option<String>,
    on_store_unavailable: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    model: String,
    input_usd_per_mtok: f64,
    output_usd_per_mtok: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    team: Option<String>,
    workflow: Option<String>,
    quality_bar: Option<f64>,
    allowed_tiers: Option<Vec<String>>,
    thresholds: Option<BTreeMap<String, f64>>,
    exploration_rate: Option<f64>,
    value_per_success_usd: Option<f64>,
    human_minutes_per_success: Option<f64>,
    loaded_cost_per_hour_usd: Option<f64>,
    bar_mode: Option<String>,
    quality_bar_relative: Option<f64>,
    max_output_tokens: Option<u64>,
    reuse_retention_days: Option<u32>,
}

// ---- validated types ----

/// A rung on the price ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// Tier name, unique.
    pub name: String,
    /// Model id bound to the tier.
    pub model: String,
    /// Price per 1M input tokens in micro-USD.
    pub input_micros_per_mtok: u64,
    /// Price per 1M output tokens in micro-USD.
    pub output_micros_per_mtok: u64,
}

impl Tier {
    /// Cost in micro-USD of a call with these token counts, rounded to the nearest micro-dollar:
    /// the unit every total is summed in, so totals never drift.
    pub fn cost_micros(&self, input_tokens: u64, output_tokens: u64) -> i64 {
        let pico = u128::from(input_tokens) * u128::from(self.input_micros_per_mtok)
            + u128::from(output_tokens) * u128::from(self.output_micros_per_mtok);
        ((pico + 500_000) / 1_000_000).min(i64::MAX as u128) as i64
    }

    /// Cost in USD of a call with these token counts.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_micros_per_mtok as f64
            + output_tokens as f64 * self.output_micros_per_mtok as f64)
            / 1e12
    }
}

/// The resolved policy of one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopePolicy {
    /// Scope key: `default`, `team:T`, `workflow:W` or `team:T/workflow:W`.
    pub key: String,
    /// Average outcome score the scope must reach, in [0, 1].
    pub quality_bar: f64,
    /// Indices into [`Policy::tiers`], ascending price.
    pub allowed: Vec<usize>,
    /// Pinned thresholds, one per allowed tier (the top one is 1): when set, learning does not
    /// move them.
    pub pinned_thresholds: Option<Vec<f64>>,
    /// Share of decisions that explore one tier cheaper than the safe choice.
    pub exploration_rate: f64,
    /// Revenue or risk value of one output that meets the bar, in USD (for the report).
    pub value_per_success_usd: Option<f64>,
    /// Minutes of a person's work one output that meets the bar saves (for the report).
    pub human_minutes_per_success: Option<f64>,
    /// What an hour of that person's work costs, loaded, in USD (prices the minutes saved).
    pub loaded_cost_per_hour_usd: Option<f64>,
    /// What the bar constrains: the scope's average, or every task.
    pub bar_mode: BarMode,
    /// When set, the bar is this fraction of what the scope's most expensive allowed tier is
    /// estimated to deliver on the same traffic (per task in `per_task` mode), instead of
    /// `quality_bar`.
    pub quality_bar_relative: Option<f64>,
    /// Cap on output tokens assumed for a task: a larger client hint or learned length is cut
    /// to it.
    pub max_output_tokens: u64,
    /// How long after a decision its output's reuse may be recorded (RecordReuse), in days;
    /// never shorter than the decision TTL.
    pub reuse_retention_days: u32,
}

/// What a scope's quality bar constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BarMode {
    /// The scope's mean score must reach the bar, at the lowest total cost: a cheap tier may
    /// take tasks it is expected to fail while an expensive one lifts the average elsewhere.
    #[default]
    Average,
    /// Every task goes to the cheapest tier predicted to reach the bar on it (the top tier when
    /// none does).
    PerTask,
}

impl BarMode {
    /// The policy file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BarMode::Average => "average",
            BarMode::PerTask => "per_task",
        }
    }
}

/// Output tokens a scope assumes at most unless its policy says otherwise.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 32_768;

/// Length of a budget period; periods are calendar-aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// From 00:00 UTC.
    Day,
    /// From Monday 00:00 UTC (ISO week).
    Week,
    /// From the 1st of the month, 00:00 UTC.
    Month,
}

const DAY_MS: u64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day number (inverse of [`days_from_civil`], day of month dropped).
fn year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

impl Period {
    /// Name as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// Start (ms since the epoch) of the period that contains `now_ms`.
    pub fn start_ms(self, now_ms: u64) -> u64 {
        let days = (now_ms / DAY_MS) as i64;
        let start_day = match self {
            Period::Day => days,
            // 1970-01-01 was a Thursday: Monday-based weeks start 3 days after day 0 - 7.
            Period::Week => days - (days + 3).rem_euclid(7),
            Period::Month => {
                let (y, m) = year_month(days);
                days_from_civil(y, m, 1)
            }
        };
        start_day.max(0) as u64 * DAY_MS
    }

    /// Start of the period after the one that contains `now_ms`.
    pub fn next_start_ms(self, now_ms: u64) -> u64 {
        let start = self.start_ms(now_ms);
        match self {
            Period::Day => start + DAY_MS,
            Period::Week => start + 7 * DAY_MS,
            Period::Month => self.start_ms(start + 32 * DAY_MS),
        }
    }
}

/// What Route does once a hard limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Route to the cheapest allowed tier (keeps serving at the lowest cost).
    Cheapest,
    /// Refuse with RESOURCE_EXHAUSTED naming the budget.
    Reject,
}

/// What Route assumes about a budget while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreUnavailable {
    /// Enforce on this replica's last view plus its own reservations.
    FailOpen,
    /// Treat the hard limit as reached.
    FailClosed,
}

/// A spend budget over the decisions of a team, a workflow, both, or everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// `scope-key/period`, e.g. `team:search/month`; unique.
    pub id: String,
    /// Team it covers; empty = every team.
    pub team: String,
    /// Workflow it covers; empty = every workflow.
    pub workflow: String,
    /// Calendar period.
    pub period: Period,
    /// Above this, only tiers cheaper than the usual choice are used (micro-USD).
    pub soft_limit_micros: Option<i64>,
    /// At this, `on_exhausted` applies (micro-USD).
    pub hard_limit_micros: Option<i64>,
    /// Action at the hard limit.
    pub on_exhausted: OnExhausted,
    /// Behaviour while the store is unreachable.
    pub on_store_unavailable: OnStoreUnavailable,
}

impl Budget {
    /// Whether the budget covers calls of this team and workflow.
    pub fn covers(&self, team: &str, workflow: &str) -> bool {
        (self.team.is_empty() || self.team == team)
            && (self.workflow.is_empty() || self.workflow == workflow)
    }
}

fn validate_budgets(raw: &[RawBudget]) -> Result<Vec<Arc<Budget>>, PolicyError> {
    let mut out: Vec<Arc<Budget>> = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let path = |k: &str| format!("budgets[{i}].{k}");
        let period = match b.period.as_str() {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            other => {
                return Err(PolicyError::new(
                    path("period"),
                    format!("must be \"day\", \"week\" or \"month\", got {other:?}"),
                ));
            }
        };
        let limit = |k: &str, v: Option<f64>| -> Result<Option<i64>, PolicyError> {
            match v {
                None => Ok(None),
                Some(usd) if usd.is_finite() && usd > 0.0 && usd <= 1e9 => {
                    Ok(Some((usd * 1e6).round() as i64))
                }
                Some(usd) => Err(PolicyError::new(
                    path(k),
                    format!("must be a dollar amount in (0, 1e9], got {usd}"),
                )),
            }
        };
        let soft = limit("soft_limit_usd", b.soft_limit_usd)?;
        let hard = limit("hard_limit_usd", b.hard_limit_usd)?;
        match (soft, hard) {
            (None, None) => {
                return Err(PolicyError::new(
                    format!("budgets[{i}]"),
                    "needs soft_limit_usd, hard_limit_usd or both",
                ));
            }
            (Some(s), Some(h)) if s > h => {
                return Err(PolicyError::new(
                    path("soft_limit_usd"),
                    "must not be above hard_limit_usd",
                ));
            }
            _ => {}
        }
        let on_exhausted = match b.on_exhausted.as_deref() {
            None | Some("cheapest") => OnExhausted::Cheapest,
            Some("reject") => OnExhausted::Reject,
            Some(other) => {
                return Err(PolicyError::new(
                    path("on_exhausted"),
                    format!("must be \"cheapest\" or \"reject\", got {other:?}"),
                ));
            }
        };
        let on_store_unavailable = match b.on_store_unavailable.as_deref() {
            None | Some("fail_open") => OnStoreUnavailable::FailOpen,
            Some("fail_closed") => OnStoreUnavailable::FailClosed,
            Some(other) => {
                return Err(PolicyError::new(
                    path("on_store_unavailable"),
                    format!("must be \"fail_open\" or \"fail_closed\", got {other:?}"),
                ));
            }
        };
        let team = b.team.clone().unwrap_or_default();
        let workflow = b.workflow.clone().unwrap_or_default();
        let id = format!("{}/{}", scope_key(&team, &workflow), period.as_str());
        if out.iter().any(|o| o.id == id) {
            return Err(PolicyError::new(
                format!("budgets[{i}]"),
                format!("duplicate budget {id}"),
            ));
        }
        out.push(Arc::new(Budget {
            id,
            team,
            workflow,
            period,
            soft_limit_micros: soft,
            hard_limit_micros: hard,
            on_exhausted,
            on_store_unavailable,
        }));
    }
    Ok(out)
}

/// A validated policy: tiers ordered by price and the scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Content hash of the source text.
    pub version: String,
    /// The source text (what `GetPolicy` returns and versions keep).
    pub source: Arc<str>,
    /// Tiers, cheapest first.
    pub tiers: Vec<Tier>,
    /// The default scope.
    pub default: Arc<ScopePolicy>,
    /// Specific scopes by key.
    pub scopes: HashMap<String, Arc<ScopePolicy>>,
    /// The `[store]` section.
    pub store: StoreConfig,
    /// Spend budgets (`[[budgets]]`), in file order.
    pub budgets: Vec<Arc<Budget>>,
}

/// Key of the scope for a team and a workflow (either may be empty).
pub fn scope_key(team: &str, workflow: &str) -> String {
    match (team.is_empty(), workflow.is_empty()) {
        (true, true) => "default".to_string(),
        (false, true) => format!("team:{team}"),
        (true, false) => format!("workflow:{workflow}"),
        (false, false) => format!("team:{team}/workflow:{workflow}"),
    }
}

impl Policy {
    /// The embedded example policy.
    pub fn embedded() -> Result<Self, PolicyError> {
        Self::parse(EMBEDDED_POLICY)
    }

    /// Reads and validates a policy file.
    pub fn load(path: &str) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::new(path, format!("cannot read policy file: {e}")))?;
        Self::parse(&text)
    }

    /// Parses and validates policy text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| PolicyError::new("<file>", toml_error(text, &e)))?;
        let raw: RawPolicyFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            PolicyError::new(path, toml_error(text, e.inner()))
        })?;
        let mut p = validate(raw, short_hash(text))?;
        p.source = Arc::from(text);
        Ok(p)
    }

    /// Most specific scope for a caller: team+workflow, workflow, team, default.
    pub fn resolve(&self, team: &str, workflow: &str) -> &Arc<ScopePolicy> {
        if self.scopes.is_empty() {
            return &self.default;
        }
        // Most specific first; a key is built only when the one before it is not configured.
        [
            (!team.is_empty() && !workflow.is_empty()).then_some((team, workflow)),
            (!workflow.is_empty()).then_some(("", workflow)),
            (!team.is_empty()).then_some((team, "")),
        ]
        .into_iter()
        .flatten()
        .find_map(|(t, w)| self.scopes.get(&scope_key(t, w)))
        .unwrap_or(&self.default)
    }

    /// Every scope, default first, then by key.
    pub fn all_scopes(&self) -> Vec<&Arc<ScopePolicy>> {
        let mut v: Vec<&Arc<ScopePolicy>> = self.scopes.values().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v.insert(0, &self.default);
        v
    }

    /// Index of a tier by name.
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }
}

/// What changed from `old` to `new`, one line per change, for the audit trail.
pub fn diff(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let price = |t: &Tier| {
        format!(
            "${}/${} per 1M",
            t.input_micros_per_mtok as f64 / 1e6,
            t.output_micros_per_mtok as f64 / 1e6
        )
    };
    for t in &new.tiers {
        match old.tiers.iter().find(|o| o.name == t.name) {
            None => out.push(format!("tier {} added ({}, {})", t.name, t.model, price(t))),
            Some(o) if o != t => out.push(format!(
                "tier {}: {} {} → {} {}",
                t.name,
                o.model,
                price(o),
                t.model,
                price(t)
            )),
            _ => {}
        }
    }
    for o in &old.tiers {
        if new.tier_index(&o.name).is_none() {
            out.push(format!("tier {} removed", o.name));
        }
    }
    let names = |p: &Policy, s: &ScopePolicy| -> Vec<String> {
        s.allowed.iter().map(|&i| p.tiers[i].name.clone()).collect()
    };
    let old_scopes = old.all_scopes();
    let new_scopes = new.all_scopes();
    for s in &new_scopes {
        match old_scopes.iter().find(|o| o.key == s.key) {
            None => out.push(format!("scope {} added (bar {})", s.key, s.quality_bar)),
            Some(o) => {
                if o.quality_bar != s.quality_bar {
                    out.push(format!(
                        "scope {}: quality_bar {} → {}",
                        s.key, o.quality_bar, s.quality_bar
                    ));
                }
                if names(old, o) != names(new, s) {
                    out.push(format!(
                        "scope {}: allowed_tiers {:?} → {:?}",
                        s.key,
                        names(old, o),
                        names(new, s)
                    ));
                }
                if o.exploration_rate != s.exploration_rate {
                    out.push(format!(
                        "scope {}: exploration_rate {} → {}",
                        s.key, o.exploration_rate, s.exploration_rate
                    ));
                }
                if o.pinned_thresholds != s.pinned_thresholds {
                    out.push(format!("scope {}: pinned thresholds changed", s.key));
                }
                if o.bar_mode != s.bar_mode {
                    out.push(format!(
                        "scope {}: bar_mode {} → {}",
                        s.key,
                        o.bar_mode.as_str(),
                        s.bar_mode.as_str()
                    ));
                }
                if o.quality_bar_relative != s.quality_bar_relative {
                    out.push(format!(
                        "scope {}: quality_bar_relative {:?} → {:?}",
                        s.key, o.quality_bar_relative, s.quality_bar_relative
                    ));
                }
                if o.reuse_retention_days != s.reuse_retention_days {
                    out.push(format!(
                        "scope {}: reuse_retention_days {} → {}",
                        s.key, o.reuse_retention_days, s.reuse_retention_days
                    ));
                }
                if o.max_output_tokens != s.max_output_tokens {
                    out.push(format!(
                        "scope {}: max_output_tokens {} → {}",
                        s.key, o.max_output_tokens, s.max_output_tokens
                    ));
                }
                if o.value_per_success_usd != s.value_per_success_usd {
                    out.push(format!(
                        "scope {}: value_per_success_usd {:?} → {:?}",
                        s.key, o.value_per_success_usd, s.value_per_success_usd
                    ));
                }
                if o.human_minutes_per_success != s.human_minutes_per_success
                    || o.loaded_cost_per_hour_usd != s.loaded_cost_per_hour_usd
                {
                    out.push(format!(
                        "scope {}: human time {:?} min at {:?} USD/h → {:?} min at {:?} USD/h",
                        s.key,
                        o.human_minutes_per_success,
                        o.loaded_cost_per_hour_usd,
                        s.human_minutes_per_success,
                        s.loaded_cost_per_hour_usd
                    ));
                }
            }
        }
    }
    for o in &old_scopes {
        if !new_scopes.iter().any(|s| s.key == o.key) {
            out.push(format!("scope {} removed", o.key));
        }
    }
    let usd = |m: Option<i64>| m.map_or("none".to_string(), |m| format!("${}", m as f64 / 1e6));
    for b in &new.budgets {
        match old.budgets.iter().find(|o| o.id == b.id) {
            None => out.push(format!(
                "budget {} added (soft {}, hard {})",
                b.id,
                usd(b.soft_limit_micros),
                usd(b.hard_limit_micros)
            )),
            Some(o) if o != b => out.push(format!(
                "budget {}: soft {} → {}, hard {} → {}",
                b.id,
                usd(o.soft_limit_micros),
                usd(b.soft_limit_micros),
                usd(o.hard_limit_micros),
                usd(b.hard_limit_micros)
            )),
            _ => {}
        }
    }
    for o in &old.budgets {
        if !new.budgets.iter().any(|b| b.id == o.id) {
            out.push(format!("budget {} removed", o.id));
        }
    }
    if old.store != new.store {
        out.push("store section changed (takes effect at restart)".into());
    }
    if out.is_empty() && old.version != new.version {
        out.push("no effective change (comments or formatting)".into());
    }
    out
}

/// A toml error as one short line: `line L, column C: what is wrong`. toml's own rendering
/// quotes the offending source line under a caret, which flattened into one line read badly
/// and echoed whatever the line held (a 200 KB value included).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    toml_at(text, e, message.join(" "))
}

/// `message` prefixed with where `e` points in `text`: `line L, column C: message` (the policy
/// and the key file both report toml errors this way, without quoting the source line).
pub(crate) fn toml_at(text: &str, e: &toml::de::Error, message: String) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Largest `value_per_success_usd`. The books add values up in signed 64-bit micro-dollars (at
/// most $9.2 × 10¹² in all), so one outcome must be a tiny share of that; a million dollars per
/// completed output is far above any real one (an unbounded value saturated the conversion and
/// overflowed the store's counter).
const MAX_VALUE_PER_SUCCESS_USD: f64 = 1e6;
/// How long reuse of an output may be recorded after its decision, by default: a quarter and
/// then some, so "opened again next quarter" still counts.
pub const DEFAULT_REUSE_RETENTION_DAYS: u32 = 90;
/// Longest reuse retention: ten years.
const MAX_REUSE_RETENTION_DAYS: u32 = 3650;
/// Largest `human_minutes_per_success`: about two working years per output.
const MAX_HUMAN_MINUTES: f64 = 200_000.0;
/// Largest `loaded_cost_per_hour_usd`.
const MAX_LOADED_COST_PER_HOUR_USD: f64 = 100_000.0;

fn usd_to_micros(path: &str, usd: f64) -> Result<u64, PolicyError> {
    if !usd.is_finite() || usd < 0.0 {
        return Err(PolicyError::new(
            path,
            format!("must be a finite price ≥ 0, got {usd}"),
        ));
    }
    if usd > 1e6 {
        return Err(PolicyError::new(
            path,
            format!("{usd} USD per 1M tokens is not a plausible price"),
        ));
    }
    Ok((usd * 1e6).round() as u64)
}

fn validate(raw: RawPolicyFile, version: String) -> Result<Policy, PolicyError> {
    if raw.tiers.len() < 2 {
        return Err(PolicyError::new(
            "tiers",
            format!("needs at least 2 tiers, got {}", raw.tiers.len()),
        ));
    }
    let mut tiers = Vec::with_capacity(raw.tiers.len());
    for (i, t) in raw.tiers.iter().enumerate() {
        let path = |k: &str| format!("tiers[{i}].{k}");
        if t.name.trim().is_empty() {
            return Err(PolicyError::new(path("name"), "must not be empty"));
        }
        if t.model.trim().is_empty() {
            return Err(PolicyError::new(path("model"), "must not be empty"));
        }
        if raw.tiers[..i].iter().any(|o| o.name == t.name) {
            return Err(PolicyError::new(
                path("name"),
                format!("duplicate tier name {:?}", t.name),
            ));
        }
        tiers.push(Tier {
            name: t.name.clone(),
            model: t.model.clone(),
            input_micros_per_mtok: usd_to_micros(
                &path("input_usd_per_mtok"),
                t.input_usd_per_mtok,
            )?,
            output_micros_per_mtok: usd_to_micros(
                &path("output_usd_per_mtok"),
                t.output_usd_per_mtok,
            )?,
        });
    }
    // Order the ladder by price (input + output), stable for equal prices.
    tiers.sort_by_key(|t| t.input_micros_per_mtok + t.output_micros_per_mtok);

    let default = resolve_scope("default", &raw.default, None, &tiers)?;
    if raw.default.team.is_some() || raw.default.workflow.is_some() {
        return Err(PolicyError::new(
            "default",
            "the default scope takes no team or workflow",
        ));
    }
    let mut scopes = HashMap::new();
    for (i, s) in raw.policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        let team = s.team.as_deref().unwrap_or("");
        let workflow = s.workflow.as_deref().unwrap_or("");
        // A label Route would refuse can never match a request.
        for (key, v) in [("team", team), ("workflow", workflow)] {
            if v.len() > crate::routing::MAX_LABEL_BYTES {
                return Err(PolicyError::new(
                    format!("{at}.{key}"),
                    format!(
                        "is {} bytes; labels are at most {} bytes",
                        v.len(),
                        crate::routing::MAX_LABEL_BYTES
                    ),
                ));
            }
        }
        if team.is_empty() && workflow.is_empty() {
            return Err(PolicyError::new(
                at,
                "a policy needs a team, a workflow or both (use [default] for the rest)",
            ));
        }
        let key = scope_key(team, workflow);
        let scope = resolve_scope(&at, s, Some(&raw.default), &tiers)?;
        let scope = ScopePolicy {
            key: key.clone(),
            ..scope
        };
        if scopes.insert(key.clone(), Arc::new(scope)).is_some() {
            return Err(PolicyError::new(at, format!("duplicate scope {key}")));
        }
    }
    let store = crate::store::config::validate_store(raw.store)?;
    let budgets = validate_budgets(&raw.budgets)?;
    Ok(Policy {
        version,
        source: Arc::from(""),
        store,
        budgets,
        tiers,
        default: Arc::new(ScopePolicy {
            key: "default".into(),
            ..default
        }),
        scopes,
    })
}

fn resolve_scope(
    at: &str,
    s: &RawScope,
    base: Option<&RawScope>,
    tiers: &[Tier],
) -> Result<ScopePolicy, PolicyError> {
    let field_path = |k: &str| format!("{at}.{k}");
    // A field set on the scope wins; else [default]'s; else the built-in default.
    let pick = |own: Option<f64>, from_base: Option<f64>| own.or(from_base);
    let base_bar = base.and_then(|b| b.quality_bar);
    let bar_path = if s.quality_bar.is_some() || base.is_none() {
        field_path("quality_bar")
    } else {
        "default.quality_bar".into()
    };
    let quality_bar = pick(s.quality_bar, base_bar).unwrap_or(0.9);
    if !(0.0..=1.0).contains(&quality_bar) {
        return Err(PolicyError::new(
            bar_path,
            format!("must be in [0, 1], got {quality_bar}"),
        ));
    }
    let exploration_rate = pick(s.exploration_rate, base.and_then(|b| b.exploration_rate))
        .unwrap_or(DEFAULT_EXPLORATION_RATE);
    if !(0.0..=0.5).contains(&exploration_rate) {
        return Err(PolicyError::new(
            field_path("exploration_rate"),
            format!("must be in [0, 0.5], got {exploration_rate}"),
        ));
    }
    let value_per_success_usd = pick(
        s.value_per_success_usd,
        base.and_then(|b| b.value_per_success_usd),
    );
    // Bounded like budget limits: the books add it up in integer micro-dollars.
    if let Some(v) = value_per_success_usd
        && (!v.is_finite() || !(0.0..=MAX_VALUE_PER_SUCCESS_USD).contains(&v))
    {
        return Err(PolicyError::new(
            field_path("value_per_success_usd"),
            format!("must be a dollar amount in [0, 1e6], got {v}"),
        ));
    }
    // Human time: minutes saved per completed output, priced at a loaded hourly cost. Bounded
    // so a year of outcomes stays far inside the books' 64-bit counters.
    let bounded =
        |key: &str, v: Option<f64>, max: f64, what: &str| -> Result<Option<f64>, PolicyError> {
            match v {
                Some(x) if !x.is_finite() || !(0.0..=max).contains(&x) => Err(PolicyError::new(
                    field_path(key),
                    format!("must be {what} in [0, {max}], got {x}"),
                )),
                other => Ok(other),
            }
        };
    let human_minutes_per_success = bounded(
        "human_minutes_per_success",
        pick(
            s.human_minutes_per_success,
            base.and_then(|b| b.human_minutes_per_success),
        ),
        MAX_HUMAN_MINUTES,
        "minutes",
    )?;
    let loaded_cost_per_hour_usd = bounded(
        "loaded_cost_per_hour_usd",
        pick(
            s.loaded_cost_per_hour_usd,
            base.and_then(|b| b.loaded_cost_per_hour_usd),
        ),
        MAX_LOADED_COST_PER_HOUR_USD,
        "a dollar amount",
    )?;
    let bar_mode = match s
        .bar_mode
        .as_deref()
        .or(base.and_then(|b| b.bar_mode.as_deref()))
    {
        None | Some("average") => BarMode::Average,
        Some("per_task") => BarMode::PerTask,
        Some(other) => {
            return Err(PolicyError::new(
                field_path("bar_mode"),
                format!("must be \"average\" or \"per_task\", got {other:?}"),
            ));
        }
    };
    let quality_bar_relative = pick(
        s.quality_bar_relative,
        base.and_then(|b| b.quality_bar_relative),
    );
    if let Some(r) = quality_bar_relative
        && !(r > 0.0 && r <= 1.0)
    {
        return Err(PolicyError::new(
            field_path("quality_bar_relative"),
            format!("must be in (0, 1], got {r}"),
        ));
    }
    let max_output_tokens = s
        .max_output_tokens
        .or(base.and_then(|b| b.max_output_tokens))
        .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS);
    if !(1..=1_000_000).contains(&max_output_tokens) {
        return Err(PolicyError::new(
            field_path("max_output_tokens"),
            format!("must be in [1, 1000000], got {max_output_tokens}"),
        ));
    }
    let reuse_retention_days = s
        .reuse_retention_days
        .or(base.and_then(|b| b.reuse_retention_days))
        .unwrap_or(DEFAULT_REUSE_RETENTION_DAYS);
    if !(1..=MAX_REUSE_RETENTION_DAYS).contains(&reuse_retention_days) {
        return Err(PolicyError::new(
            field_path("reuse_retention_days"),
            format!("must be in [1, {MAX_REUSE_RETENTION_DAYS}], got {reuse_retention_days}"),
        ));
    }
    let allowed_names = s
        .allowed_tiers
        .as_ref()
        .or(base.and_then(|b| b.allowed_tiers.as_ref()));
    let allowed: Vec<usize> = match allowed_names {
        None => (0..tiers.len()).collect(),
        Some(names) => {
            let mut idx = Vec::new();
            for (j, n) in names.iter().enumerate() {
                let Some(i) = tiers.iter().position(|t| &t.name == n) else {
                    return Err(PolicyError::new(
                        format!("{}[{j}]", field_path("allowed_tiers")),
                        format!("unknown tier {n:?}"),
                    ));
                };
                if idx.contains(&i) {
                    return Err(PolicyError::new(
                        format!("{}[{j}]", field_path("allowed_tiers")),
                        format!("tier {n:?} listed twice"),
                    ));
                }
                idx.push(i);
            }
            idx.sort_unstable();
            idx
        }
    };
    if allowed.is_empty() {
        return Err(PolicyError::new(
            field_path("allowed_tiers"),
            "must allow at least one tier",
        ));
    }
    let pinned_thresholds = match s.thresholds.as_ref() {
        None => None,
        Some(map) => Some(pinned(&field_path("thresholds"), map, &allowed, tiers)?),
    };
    Ok(ScopePolicy {
        key: String::new(),
        quality_bar,
        allowed,
        pinned_thresholds,
        exploration_rate,
        value_per_success_usd,
        human_minutes_per_success,
        loaded_cost_per_hour_usd,
        bar_mode,
        quality_bar_relative,
        max_output_tokens,
        reuse_retention_days,
    })
}

fn pinned(
    at: &str,
    map: &BTreeMap<String, f64>,
    allowed: &[usize],
    tiers: &[Tier],
) -> Result<Vec<f64>, PolicyError> {
    for (name, v) in map {
        let path = format!("{at}.{name}");
        let Some(i) = tiers.iter().position(|t| &t.name == name) else {
            return Err(PolicyError::new(path, format!("unknown tier {name:?}")));
        };
        if !allowed.contains(&i) {
            return Err(PolicyError::new(
                path,
                format!("tier {name:?} is not in allowed_tiers"),
            ));
        }
        if !(0.0..=1.0).contains(v) {
            return Err(PolicyError::new(
                path,
                format!("must be in [0, 1], got {v}"),
            ));
        }
    }
    let last = allowed.len() - 1;
    let mut out = Vec::with_capacity(allowed.len());
    for (slot, &i) in allowed.iter().enumerate() {
        let name = &tiers[i].name;
        let v = if slot == last {
            // The top tier takes everything the cheaper ones are not trusted with.
            1.0
        } else {
            *map.get(name).ok_or_else(|| {
                PolicyError::new(format!("{at}.{name}"), "missing: pinned thresholds need a value for every allowed tier below the top one")
            })?
        };
        if let Some(prev) = out.last()
            && v < *prev
        {
            return Err(PolicyError::new(
                format!("{at}.{name}"),
                format!("must be ≥ the cheaper tier's threshold {prev}, got {v}"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Three tiers listed out of price order and three scopes: the policy the tests build on.
    pub(crate) const THREE: &str = r#"
[[tiers]]
name = "frontier"
model = "big"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0
[[tiers]]
name = "small"
model = "tiny"
input_usd_per_mtok = 0.2
output_usd_per_mtok = 0.2
[[tiers]]
name = "medium"
model = "mid"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0

[default]
quality_bar = 0.8

[[policies]]
workflow = "support.reply"
quality_bar = 0.95
allowed_tiers = ["medium", "frontier"]

[[policies]]
team = "search"
exploration_rate = 0.0

[[policies]]
team = "search"
workflow = "support.reply"
thresholds = { small = 0.3, medium = 0.7 }
"#;

    fn err(text: &str) -> PolicyError {
        Policy::parse(text).unwrap_err()
    }

    #[test]
    fn tiers_are_ordered_by_price_and_scopes_resolve_most_specific_first() {
        let p = Policy::parse(THREE).unwrap();
        let names: Vec<&str> = p.tiers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["small", "medium", "frontier"]);
        assert_eq!(p.resolve("", "").key, "default");
        assert_eq!(p.resolve("other", "unknown").key, "default");
        assert_eq!(p.resolve("", "support.reply").key, "workflow:support.reply");
        assert_eq!(
            p.resolve("x", "support.reply").key,
            "workflow:support.reply"
        );
        assert_eq!(p.resolve("search", "other").key, "team:search");
        let both = p.resolve("search", "support.reply");
        assert_eq!(both.key, "team:search/workflow:support.reply");
        assert_eq!(
            both.pinned_thresholds.as_deref(),
            Some(&[0.3, 0.7, 1.0][..])
        );
        // Unset fields come from [default].
        assert_eq!(p.resolve("search", "").quality_bar, 0.8);
        assert_eq!(p.resolve("search", "").exploration_rate, 0.0);
        assert_eq!(p.resolve("", "support.reply").allowed, vec![1, 2]);
        assert_eq!(p.tiers[0].input_micros_per_mtok, 200_000);
        assert!(p.version.len() == 12);
    }

    #[test]
    fn cost_uses_both_prices() {
        let p = Policy::parse(THREE).unwrap();
        let c = p.tiers[2].cost_usd(1_000_000, 1_000_000);
        assert!((c - 40.0).abs() < 1e-9);
    }

    #[test]
    fn validation_errors_name_the_key_path() {
        let e = err(&THREE.replace(
            "allowed_tiers = [\"medium\", \"frontier\"]",
            "allowed_tiers = [\"medium\", \"huge\"]",
        ));
        assert_eq!(e.path, "policies[0].allowed_tiers[1]");
        assert!(e.reason.contains("unknown tier \"huge\""));

        let e = err(&THREE.replace("quality_bar = 0.95", "quality_bar = 1.5"));
        assert_eq!(e.path, "policies[0].quality_bar");

        let e = err(&THREE.replace("input_usd_per_mtok = 1.0", "input_usd_per_mtok = -1.0"));
        assert_eq!(e.path, "tiers[2].input_usd_per_mtok");

        let e = err(&THREE.replace("name = \"medium\"", "name = \"small\""));
        assert_eq!(e.path, "tiers[2].name");
        assert!(e.reason.contains("duplicate"));

        let e = err(&THREE.replace(
            "exploration_rate = 0.0",
            "exploration_rate = 0.0\ncolour = \"red\"",
        ));
        assert_eq!(e.path, "policies[1].colour");
        assert!(e.reason.contains("unknown field"), "{e}");

        let e = err(&THREE.replace("small = 0.3, medium = 0.7", "small = 0.8, medium = 0.7"));
        assert_eq!(e.path, "policies[2].thresholds.medium");

        let e = err(&THREE.replace("small = 0.3, medium = 0.7", "small = 0.3"));
        assert_eq!(e.path, "policies[2].thresholds.medium");

        let e = err(
            "[[tiers]]\nname=\"a\"\nmodel=\"m\"\ninput_usd_per_mtok=1.0\noutput_usd_per_mtok=1.0\n",
        );
        assert_eq!(e.path, "tiers");

        let e = err("this is not toml");
        assert_eq!(e.path, "<file>");
    }

    #[test]
    fn errors_never_echo_more_than_a_few_hundred_bytes() {
        let long_team = format!(
            "{THREE}\n[[policies]]\nteam = \"{}\"\nquality_bar = 0.8\n",
            "x".repeat(200_000)
        );
        let e = Policy::parse(&long_team).unwrap_err();
        assert_eq!(e.path, "policies[3].team");
        assert!(e.reason.contains("200000 bytes"), "{}", e.reason);
        let long_line = format!("{THREE}\nfoo = \"{}\n", "y".repeat(5_000));
        let e = Policy::parse(&long_line).unwrap_err();
        assert!(
            e.to_string().len() < 2 * MAX_ERROR_TEXT,
            "{}",
            e.to_string().len()
        );
        // The offending line is located, not echoed.
        assert!(e.reason.starts_with("line "), "{}", e.reason);
        assert!(!e.reason.contains("yyyy"), "{}", e.reason);
    }

    #[test]
    fn value_per_success_is_a_bounded_dollar_amount() {
        let with = |v: &str| {
            Policy::parse(&THREE.replacen(
                "[default]\n",
                &format!("[default]\nvalue_per_success_usd = {v}\n"),
                1,
            ))
        };
        assert_eq!(
            with("2.5").unwrap().default.value_per_success_usd,
            Some(2.5)
        );
        assert!(with("1e6").is_ok());
        for bad in ["1e7", "1e300", "-1", "nan", "inf"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.path, "default.value_per_success_usd", "{bad}");
        }
    }

    #[test]
    fn embedded_policy_is_valid_with_three_tiers() {
        let p = Policy::embedded().unwrap();
        assert!(p.tiers.len() >= 3);
    }

    #[test]
    fn periods_are_calendar_aligned_in_utc() {
        // 2026-11-29 (a Sunday) 06:41:03 UTC.
        let now = 1_795_934_463_000;
        assert_eq!(Period::Day.start_ms(now), 1_795_910_400_000); // 2026-11-29 00:00
        assert_eq!(Period::Week.start_ms(now), 1_795_392_000_000); // Mon 2026-11-23
        assert_eq!(Period::Month.start_ms(now), 1_793_491_200_000); // 2026-11-01
        assert_eq!(Period::Month.next_start_ms(now), 1_796_083_200_000); // 2026-12-01
        assert_eq!(Period::Day.next_start_ms(now), 1_795_996_800_000);
        // The last millisecond of a period belongs to it; the next one starts the next.
        let dec1 = 1_796_083_200_000;
        assert_eq!(Period::Month.start_ms(dec1 - 1), 1_793_491_200_000);
        assert_eq!(Period::Month.start_ms(dec1), dec1);
        // February of a leap year, and a year boundary.
        let feb29_2028 = days_from_civil(2028, 2, 29) as u64 * DAY_MS;
        assert_eq!(
            Period::Month.start_ms(feb29_2028),
            days_from_civil(2028, 2, 1) as u64 * DAY_MS
        );
        assert_eq!(
            Period::Month.next_start_ms(feb29_2028),
            days_from_civil(2028, 3, 1) as u64 * DAY_MS
        );
        let dec31 = days_from_civil(2026, 12, 31) as u64 * DAY_MS;
        assert_eq!(
            Period::Month.next_start_ms(dec31),
            days_from_civil(2027, 1, 1) as u64 * DAY_MS
        );
        assert_eq!(Period::Week.start_ms(0), 0); // clamped before the first Monday
    }

    #[test]
    fn budgets_parse_and_reject_with_key_paths() {
        let with = |b: &str| Policy::parse(&format!("{THREE}\n{b}"));
        let p = with(
            r#"
[[budgets]]
team = "search"
period = "month"
soft_limit_usd = 800
hard_limit_usd = 1000.5
on_exhausted = "reject"
on_store_unavailable = "fail_closed"
[[budgets]]
period = "day"
hard_limit_usd = 50
"#,
        )
        .unwrap();
        assert_eq!(p.budgets.len(), 2);
        let b = &p.budgets[0];
        assert_eq!(b.id, "team:search/month");
        assert_eq!(b.hard_limit_micros, Some(1_000_500_000));
        assert_eq!(b.on_exhausted, OnExhausted::Reject);
        assert_eq!(b.on_store_unavailable, OnStoreUnavailable::FailClosed);
        assert!(b.covers("search", "anything") && !b.covers("ads", ""));
        assert_eq!(p.budgets[1].id, "default/day");
        assert_eq!(p.budgets[1].on_exhausted, OnExhausted::Cheapest);
        assert!(p.budgets[1].covers("x", "y"));

        let err = |b: &str| with(b).unwrap_err();
        assert_eq!(
            err("[[budgets]]\nperiod = \"year\"\nhard_limit_usd = 1").path,
            "budgets[0].period"
        );
        assert_eq!(err("[[budgets]]\nperiod = \"day\"").path, "budgets[0]");
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = -1").path,
            "budgets[0].hard_limit_usd"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nsoft_limit_usd = 5\nhard_limit_usd = 1").path,
            "budgets[0].soft_limit_usd"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\non_exhausted = \"panic\"").path,
            "budgets[0].on_exhausted"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 1\n[[budgets]]\nperiod = \"day\"\nsoft_limit_usd = 1").path,
            "budgets[1]"
        );
        assert_eq!(
            err("[[budgets]]\nperiod = \"day\"\nlimit = 1").path,
            "budgets[0].limit"
        );
    }

    #[test]
    fn costs_in_micros_round_to_the_nearest_micro_dollar() {
        let p = Policy::parse(THREE).unwrap();
        let frontier = &p.tiers[p.tier_index("frontier").unwrap()];
        // 1,000 in × $10/M + 500 out × $30/M = $0.01 + $0.015.
        assert_eq!(frontier.cost_micros(1000, 500), 25_000);
        assert_eq!(frontier.cost_micros(0, 0), 0);
        let small = &p.tiers[0];
        assert!(small.cost_micros(3, 0) <= 1);
    }
}
