//! Outcome feedback, in three pieces: [`DecisionIds`] signs each decision's id at Route and
//! verifies it at Feedback (TTL, owner, the store's data-since instant); the [`Recorder`] records
//! each accepted outcome exactly once in the [`StateStore`](crate::store::StateStore), or in the
//! outage buffer while the store is down; the [`Fold`] folds the store's outcome log into local
//! evidence, re-plans the touched scopes and publishes the new table. Between the first and the
//! second, validation checks a report against its decision and the live policy and prices it into
//! the events to record ([`Outcome`], [`Reuse`]).
//!
//! Route never waits on any of this but the signing: it reads the published table. When the
//! store is unreachable, accepted outcomes wait in the outage buffer and are recorded when it
//! returns; the store's nonce ledger keeps that exactly-once.

mod fold;
mod ids;
mod record;
mod validate;

pub use fold::{Fold, WHAT_IF_WINDOW};
pub use ids::{CLOCK_SKEW_MS, DecisionIds};
pub use record::{Committed, Recorder};
pub use validate::{Outcome, Pricing, Reuse};

use crate::domain::decision::TokenError;

/// Default lifetime of a decision id: feedback later than this is refused.
pub const DEFAULT_DECISION_TTL_MS: u64 = crate::domain::calendar::DAY_MS;
/// Largest token count accepted in feedback (no call is this large; sums stay far from overflow).
pub const MAX_TOKENS: i64 = 1_000_000_000;

/// One outcome report. Only `decision_id` and `score` are required; the rest default to
/// "not reported" (`..Default::default()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedbackInput<'a> {
    /// Decision id from Route.
    pub decision_id: &'a str,
    /// Outcome score in [0, 1].
    pub score: f64,
    /// Actual input tokens; `None` or 0: unknown, Route's measure of the task stands in.
    pub input_tokens: Option<i64>,
    /// Actual output tokens; `None` or 0: unknown, Route's estimate stands in.
    pub output_tokens: Option<i64>,
    /// Of the input tokens, those the provider served from its prompt cache (billed at the
    /// tier's cached input price); `None`: none. More than the input tokens is clipped to them.
    pub cached_input_tokens: Option<i64>,
    /// Of the output tokens, the reasoning tokens (billed at the tier's reasoning price);
    /// `None`: none. More than the output tokens is clipped to them.
    pub reasoning_tokens: Option<i64>,
    /// Whether the output was reused.
    pub reused: bool,
    /// The tier that served the task where the caller fell back from the one Route chose;
    /// empty: the tier Route chose. Any other must be a tier the decision's scope allows under
    /// the live policy. The outcome is billed at its prices, booked and learned under it.
    pub served_tier: &'a str,
    /// With authentication on and a service key: the caller's team, which must be the team the
    /// decision was made for. `None`: auth off or an admin.
    pub caller_team: Option<&'a str>,
    /// The score of the same task run on the decision's shadow tier (a shadow pair), in
    /// [0, 1]; only for a decision whose Route answer named one. Posted with the routed score,
    /// in the same call, so the pair is recorded whole and exactly once.
    pub shadow_score: Option<f64>,
    /// Input tokens of the shadow run; `None` or 0: Route's measure of the task.
    pub shadow_input_tokens: Option<i64>,
    /// Output tokens of the shadow run; `None` or 0: Route's estimate.
    pub shadow_output_tokens: Option<i64>,
}

/// Why feedback was refused. Nothing changes on any of these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    /// A field is out of range.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The decision id does not verify.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The decision id is older than the TTL.
    #[error("decision_id: expired, issued {age_s} s ago; feedback is accepted for {ttl_s} s")]
    Expired {
        /// Age of the decision.
        age_s: u64,
        /// The TTL.
        ttl_s: u64,
    },
    /// The decision belongs to another team.
    #[error("decision_id belongs to team {owner:?}; this key acts for team {caller:?}")]
    PermissionDenied {
        /// Team the decision was made for.
        owner: String,
        /// The caller's team.
        caller: String,
    },
    /// The decision names a team's scope that is not its team's.
    #[error("decision_id names scope {scope:?}, which does not hold team {team:?}'s decisions")]
    ScopeMismatch {
        /// The scope the id names.
        scope: String,
        /// The team the id names.
        team: String,
    },
    /// A shadow score for a decision that cannot take one.
    #[error("shadow_score: {0}")]
    Shadow(String),
    /// Feedback for this decision was already applied.
    #[error("feedback for this decision_id was already recorded")]
    AlreadyRecorded,
    /// The store is down and the outage buffer cannot take more: not accepted, retry.
    #[error("feedback not accepted: {0}")]
    Unavailable(String),
    /// The decision predates the store's data (it lost its data since): its nonce can no longer
    /// be checked, so its feedback is refused rather than risk counting it twice.
    #[error(
        "decision_id: issued before the shared store lost its data; feedback for it can no longer be checked for duplicates"
    )]
    BeforeStoreReset,
    /// The store is at a capacity limit: not accepted until entries expire.
    #[error("feedback not accepted: {0}")]
    Full(String),
    /// This reuse event (its `event_id`) was already recorded for the decision.
    #[error("event_id: reuse event {0:?} of this decision_id was already recorded")]
    ReuseRecorded(String),
    /// The decision is older than its scope's reuse retention window.
    #[error(
        "decision_id: issued {age_days} days ago; reuse is recorded for {window_days} days after a decision (reuse_retention_days)"
    )]
    OutsideReuseWindow {
        /// Age of the decision, whole days.
        age_days: u64,
        /// The scope's window, days.
        window_days: u64,
    },
}

/// One reuse report: the output of a decision was used again (opened, sent, imported).
#[derive(Debug, Clone, Copy)]
pub struct ReuseInput<'a> {
    /// Decision id from Route.
    pub decision_id: &'a str,
    /// Reuse events this report stands for (0 means 1).
    pub count: u32,
    /// The caller's id of this reuse event, for exactly-once: the same id for the same decision
    /// is counted once. Empty: every call counts.
    pub event_id: &'a str,
    /// Free text, e.g. the consumer's name: logged, not counted.
    pub note: &'a str,
    /// As for [`FeedbackInput::caller_team`].
    pub caller_team: Option<&'a str>,
}

/// Most reuse events one call may report.
pub const MAX_REUSE_COUNT: u32 = 1_000_000;
/// Longest reuse `event_id` and `note`, bytes.
pub const MAX_REUSE_TEXT_BYTES: usize = 256;

/// What an accepted reuse did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReuseAck {
    /// Scope of the decision.
    pub scope: String,
    /// Workflow of the decision.
    pub workflow: String,
    /// Reuse events counted.
    pub count: u32,
    /// Whether this was the decision's first recorded reuse (it now counts as reused).
    pub first: bool,
}

/// What accepted feedback did.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackAck {
    /// Scope updated.
    pub scope: String,
    /// Tier that ran: the served tier, or the routed one where none was reported.
    pub tier: String,
    /// Actual cost in USD (the estimate if the tier is no longer in the policy).
    pub actual_cost_usd: f64,
    /// The same in micro-USD.
    pub actual_cost_micros: i64,
    /// Cost of the shadow run, micro-USD (0 without a shadow score): shadow spend.
    pub shadow_cost_micros: i64,
    /// Time from the decision to its feedback, ms.
    pub lag_ms: u64,
}
