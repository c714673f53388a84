//! Tier catalogue and routing policies: the typed policy the router reads (tiers by price, scopes,
//! budgets), parsed from TOML and validated with errors that quote the key path.

mod budget;
mod deprecated;
mod diff;
mod raw;
mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use budget::{Budget, OnExhausted, OnStoreUnavailable, Period};
pub use deprecated::{Split, split_store};
pub use diff::diff;
pub(crate) use validate::toml_at;

/// The example policy, embedded so `serve` needs no file (same text as `deploy/policy.toml`).
pub const EMBEDDED_POLICY: &str = include_str!("../../../deploy/policy.toml");

/// Exploration rate when a policy does not set one: at most this share of a scope's tasks is
/// routed by posterior draws instead of the plan. Chosen on the development data (the four-tier
/// set, shuffled, and the bundled training split): on seeds 1–5 of the four-tier set, 0.05
/// spent up to 1.81× the hindsight mix and 0.1 up to 1.04× (0.2: 1.53×), the training split
/// moving within noise (quality −0.001, saving +0.007); over seeds 1–10 the four-tier set is a
/// wash with labels (mean 1.06× → 1.12×, worst quality 0.7638 → 0.7662) and better without
/// them (1.77× → 1.65×, worst quality 0.7333 → 0.7465).
pub const DEFAULT_EXPLORATION_RATE: f64 = 0.1;

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

/// Longest path an error carries: a parse error quotes the offending line, and a 5 KB line
/// quoted twice made a gRPC status too big to send (the client saw RESOURCE_EXHAUSTED "Stream
/// removed" instead of INVALID_ARGUMENT); a 200 KB value must not be echoed back.
const MAX_ERROR_PATH: usize = 300;
/// Longest reason: room for the whole list of keys an unknown one is compared with (the
/// caller's own text in it is cut to a few dozen characters first), and path and reason
/// together stay under 1 KB.
const MAX_ERROR_REASON: usize = 600;

/// `s` cut to `max` bytes (on a character boundary), saying how long it was.
fn clipped(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..end], s.len())
}

impl PolicyError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: clipped(path.into(), MAX_ERROR_PATH),
            reason: clipped(reason.into(), MAX_ERROR_REASON),
        }
    }
}

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
    /// Price per 1M cached input tokens (input the provider served from its prompt cache) in
    /// micro-USD; the input price unless the policy sets `cached_input_usd_per_mtok`.
    pub cached_input_micros_per_mtok: u64,
    /// Price per 1M reasoning tokens in micro-USD; the output price unless the policy sets
    /// `reasoning_usd_per_mtok` (providers bill reasoning tokens as output).
    pub reasoning_micros_per_mtok: u64,
}

/// The tokens of one call by the kind a provider bills them as. `cached_input` is the part of
/// `input` served from the provider's prompt cache and `reasoning` the part of `output` the
/// model spent reasoning (the convention of OpenAI's usage report); a part larger than its
/// total is priced as the whole total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenKinds {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Of `input`, the tokens billed at the cached input price.
    pub cached_input: u64,
    /// Output tokens, reasoning ones included.
    pub output: u64,
    /// Of `output`, the tokens billed at the reasoning price.
    pub reasoning: u64,
}

impl Tier {
    /// Cost in micro-USD of a call with these input and output tokens, none of them cached or
    /// reasoning, rounded to the nearest micro-dollar: the unit every total is summed in, so
    /// totals never drift.
    pub fn cost_micros(&self, input_tokens: u64, output_tokens: u64) -> i64 {
        self.bill_micros(&TokenKinds {
            input: input_tokens,
            output: output_tokens,
            ..TokenKinds::default()
        })
    }

    /// Cost in micro-USD of a call's tokens, each kind at its price, rounded once to the
    /// nearest micro-dollar: (input − cached) × input price + cached × cached input price +
    /// (output − reasoning) × output price + reasoning × reasoning price.
    pub fn bill_micros(&self, t: &TokenKinds) -> i64 {
        let cached = t.cached_input.min(t.input);
        let reasoning = t.reasoning.min(t.output);
        let pico = u128::from(t.input - cached) * u128::from(self.input_micros_per_mtok)
            + u128::from(cached) * u128::from(self.cached_input_micros_per_mtok)
            + u128::from(t.output - reasoning) * u128::from(self.output_micros_per_mtok)
            + u128::from(reasoning) * u128::from(self.reasoning_micros_per_mtok);
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
    /// Share of decisions routed by posterior draws instead of the plan (exploration).
    pub exploration_rate: f64,
    /// How an explored decision tries the drawn tier: in place of the plan's, or a cheaper one
    /// beside it ([`ExploreBy`]).
    pub explore_by: ExploreBy,
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
    /// Most reuse events one decision may accumulate (the sum of its RecordReuse counts): one
    /// output's flood cannot swamp the report's reuse figures.
    pub reuse_events_per_decision: u64,
    /// Most reuse event ids one team may have remembered at once (each is kept for the reuse
    /// window, for exactly-once): one team's flood of ids fills its own quota, never the
    /// store's memory that other teams' Feedback needs.
    pub reuse_ids_per_team: u64,
    /// Share of routed tasks whose Route answer also names [`ScopePolicy::shadow_tier`], for
    /// the caller to run there too and post the score as a shadow pair (quality kept vs
    /// premium); in [0, [`MAX_SHADOW_RATE`]], default 0.
    pub shadow_rate: f64,
    /// Index into [`Policy::tiers`] of the tier shadow pairs run on: the scope's
    /// `shadow_tier`, else its top allowed tier.
    pub shadow_tier: usize,
    /// The report prints an estimate (quality kept, always-premium quality, saving) only once
    /// its 95% interval is narrower than this; until then "not enough evidence".
    pub report_interval_width: f64,
}

/// Largest `shadow_rate`: shadow pairs cost a second model call each.
pub const MAX_SHADOW_RATE: f64 = 0.2;
/// Default `report_interval_width`.
pub const DEFAULT_REPORT_INTERVAL_WIDTH: f64 = 0.05;

/// What a scope's quality bar constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// How an explored decision tries the tier a posterior draw picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExploreBy {
    /// The task is served by the drawn tier instead of the plan's: what exploration learns is
    /// paid for in the quality of the explored tasks.
    Substitution,
    /// A draw of a tier cheaper than the plan's: the task is served by the plan's tier, and the
    /// Route answer names the drawn tier as its shadow tier for the caller to run the task
    /// there too and post the score as a shadow pair. Exploring cheaper tiers then costs their
    /// calls and no quality, so every task draws for one, not only the `exploration_rate`
    /// share: a cheaper tier is paired about as often as its posterior says it may be the
    /// right choice (a rate of 0 still turns exploration off). It needs a caller that runs
    /// shadow pairs (a caller that does not teaches the router nothing by exploring). A draw of
    /// a dearer tier serves the task, as by substitution, within the rate's share only: it
    /// risks no quality, and a pair would pay both calls.
    Pairs,
    /// Pairs while the callers answer them, substitution while they do not: as `Pairs` until
    /// most of the recent shadow runs a plan asked its callers for came back without a shadow
    /// score; then within the rate's share a cheaper draw serves the task (as by substitution),
    /// and pairs are asked for on the next rate's share of draws only (an answer turns pairs
    /// back on). The default: a caller that runs pairs learns at no cost in quality, and one
    /// that ignores them still learns by substitution.
    #[default]
    Auto,
}

impl ExploreBy {
    /// The policy file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExploreBy::Substitution => "substitution",
            ExploreBy::Pairs => "pairs",
            ExploreBy::Auto => "auto",
        }
    }
}

/// Output tokens a scope assumes at most unless its policy says otherwise.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 32_768;

/// How long reuse of an output may be recorded after its decision, by default: a quarter and
/// then some, so "opened again next quarter" still counts.
pub const DEFAULT_REUSE_RETENTION_DAYS: u32 = 90;
/// Default `reuse_events_per_decision`.
pub const DEFAULT_REUSE_EVENTS_PER_DECISION: u64 = 100_000;
/// Default `reuse_ids_per_team`: over a 90-day window, about 1,100 distinct reuse events a day.
pub const DEFAULT_REUSE_IDS_PER_TEAM: u64 = 100_000;

/// A validated policy: tiers ordered by price and the scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Content hash of the source text.
    pub version: String,
    /// The source text (what `GetPolicy` returns and versions keep), without a deprecated
    /// `[store]` table (deployment settings are not policy: see [`split_store`]).
    pub source: Arc<str>,
    /// Tiers, cheapest first.
    pub tiers: Vec<Tier>,
    /// The default scope.
    pub default: Arc<ScopePolicy>,
    /// Specific scopes by key.
    pub scopes: HashMap<String, Arc<ScopePolicy>>,
    /// Spend budgets (`[[budgets]]`), in file order.
    pub budgets: Vec<Arc<Budget>>,
}

/// What separates the team from the workflow in a scope key: no team label may contain it.
pub const TEAM_WORKFLOW_SEP: &str = "/workflow:";

/// Key of the default scope (no team, no workflow): the policy's `[default]`.
pub const DEFAULT_SCOPE: &str = "default";

/// Key of the scope for a team and a workflow (either may be empty).
pub fn scope_key(team: &str, workflow: &str) -> String {
    match (team.is_empty(), workflow.is_empty()) {
        (true, true) => DEFAULT_SCOPE.to_string(),
        (false, true) => format!("team:{team}"),
        (true, false) => format!("workflow:{workflow}"),
        (false, false) => format!("team:{team}{TEAM_WORKFLOW_SEP}{workflow}"),
    }
}

/// Whether the scope `key` may hold `team`'s decisions: a scope named for a team holds that
/// team's only; the default and workflow scopes hold any team's.
pub fn scope_admits(key: &str, team: &str) -> bool {
    match key.strip_prefix("team:") {
        None => true,
        Some(rest) => rest
            .strip_prefix(team)
            .is_some_and(|r| r.is_empty() || r.starts_with(TEAM_WORKFLOW_SEP)),
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

    /// Parses and validates policy text. A deprecated `[store]` table is left out (it must be
    /// TOML; what it says is the deployment config's business, see [`split_store`]): the
    /// version and the kept source are those of the text without it.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let split = split_store(text)?;
        let policy: &str = &split.policy;
        // Errors give the line and column of the file as written, [store] table included.
        let located =
            |e: &toml::de::Error| validate::toml_error_in(text, e, |at| split.to_original(at));
        let de = toml::Deserializer::parse(policy)
            .map_err(|e| PolicyError::new("<file>", located(&e)))?;
        let raw: raw::RawPolicyFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            PolicyError::new(path, located(e.inner()))
        })?;
        let mut p = validate::validate(raw, short_hash(policy))?;
        p.source = Arc::from(policy);
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

    /// The scope of key `key` (a decision's scope), or the default scope where the policy no
    /// longer has it: a decision outlives a policy edit that drops its scope.
    pub fn scope(&self, key: &str) -> &Arc<ScopePolicy> {
        self.scopes.get(key).unwrap_or(&self.default)
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
    fn costs_in_micros_round_to_the_nearest_micro_dollar() {
        let p = Policy::parse(THREE).unwrap();
        let frontier = &p.tiers[p.tier_index("frontier").unwrap()];
        // 1,000 in × $10/M + 500 out × $30/M = $0.01 + $0.015.
        assert_eq!(frontier.cost_micros(1000, 500), 25_000);
        assert_eq!(frontier.cost_micros(0, 0), 0);
        let small = &p.tiers[0];
        assert!(small.cost_micros(3, 0) <= 1);
    }

    #[test]
    fn cached_input_and_reasoning_prices_default_to_input_and_output_and_are_validated() {
        let p = Policy::parse(THREE).unwrap();
        let medium = &p.tiers[p.tier_index("medium").unwrap()];
        assert_eq!(medium.cached_input_micros_per_mtok, 1_000_000);
        assert_eq!(medium.reasoning_micros_per_mtok, 2_000_000);
        // Unset, both kinds cost what plain input and output cost.
        let all = TokenKinds {
            input: 1000,
            cached_input: 400,
            output: 500,
            reasoning: 300,
        };
        assert_eq!(medium.bill_micros(&all), medium.cost_micros(1000, 500));

        let priced = THREE.replace(
            "output_usd_per_mtok = 2.0",
            "output_usd_per_mtok = 2.0\ncached_input_usd_per_mtok = 0.25\nreasoning_usd_per_mtok = 8.0",
        );
        let p2 = Policy::parse(&priced).unwrap();
        let medium2 = &p2.tiers[p2.tier_index("medium").unwrap()];
        assert_eq!(
            (
                medium2.cached_input_micros_per_mtok,
                medium2.reasoning_micros_per_mtok
            ),
            (250_000, 8_000_000)
        );
        // 600 × $1 + 400 × $0.25 + 200 × $2 + 300 × $8 per 1M = 600 + 100 + 400 + 2,400 µ$.
        assert_eq!(medium2.bill_micros(&all), 3_500);
        // A part larger than its total is priced as the whole total.
        let over = TokenKinds {
            input: 100,
            cached_input: 1000,
            output: 10,
            reasoning: 50,
        };
        assert_eq!(medium2.bill_micros(&over), 25 + 80);
        // The audit trail shows the new prices.
        let lines = diff(&p, &p2);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("cached input $0.25") && lines[0].contains("reasoning $8"),
            "{lines:?}"
        );

        for key in ["cached_input_usd_per_mtok", "reasoning_usd_per_mtok"] {
            let e = Policy::parse(&THREE.replace(
                "output_usd_per_mtok = 2.0",
                &format!("output_usd_per_mtok = 2.0\n{key} = -0.5"),
            ))
            .unwrap_err();
            assert_eq!(e.path, format!("tiers[2].{key}"), "{e}");
            assert!(e.reason.contains("≥ 0"), "{e}");
        }
    }

    #[test]
    fn a_teams_scope_admits_that_team_only() {
        assert!(scope_admits("default", "ads"));
        assert!(scope_admits("workflow:triage", "ads"));
        assert!(scope_admits("team:ads", "ads"));
        assert!(scope_admits("team:ads/workflow:triage", "ads"));
        assert!(!scope_admits("team:ads", "search"));
        assert!(!scope_admits("team:ads", ""));
        assert!(!scope_admits("team:adserver", "ads"));
        assert!(!scope_admits("team:ads/workflow:triage", "ad"));
    }

    #[test]
    fn embedded_policy_is_valid_with_three_tiers() {
        let p = Policy::embedded().unwrap();
        assert!(p.tiers.len() >= 3);
    }
}
