//! Outcome feedback: issue signed decision ids, validate feedback, record each decision's
//! outcome exactly once in the [`StateStore`], fold the store's outcome log into local evidence,
//! re-plan the touched scopes and publish the new table.
//!
//! Route never waits on any of this: it reads the published table. When the store is
//! unreachable, accepted outcomes wait in an [`OutageBuffer`] and are recorded when it returns;
//! the store's nonce ledger keeps that exactly-once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::books::Books;
use crate::domain::classifier::Calibration;
use crate::domain::decision::{ClaimsRef, NO_CLUSTER, Signer, TokenError};
use crate::domain::learning::{BANDS, ScopeEvidence, TaskShape};
use crate::domain::routing::{Decision, Router};
use crate::store::{OutageBuffer, OutcomeEvent, Recorded, StateStore};

mod fold;
mod record;

/// Default lifetime of a decision id: feedback later than this is refused.
pub const DEFAULT_DECISION_TTL_MS: u64 = crate::domain::calendar::DAY_MS;
/// Largest token count accepted in feedback (no call is this large; sums stay far from overflow).
pub const MAX_TOKENS: i64 = 1_000_000_000;
/// Events read from the store per round trip while catching up.
const SYNC_PAGE: usize = 2000;

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

/// How a store write was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// Recorded in the store.
    Stored,
    /// Held in the outage buffer (and its spill file) until the store returns.
    Buffered,
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

/// Outcomes kept for what-if replays of a proposed policy.
pub const WHAT_IF_WINDOW: usize = 5000;

/// Local view of the store's log.
#[derive(Default)]
struct Folded {
    evidence: HashMap<String, ScopeEvidence>,
    /// Position in the store's log up to which events are folded in.
    cursor: u64,
    /// The most recent outcomes (at most [`WHAT_IF_WINDOW`]), oldest first.
    recent: std::collections::VecDeque<OutcomeEvent>,
    /// Every record this replica completed up to this count is folded in (see
    /// [`Learner::records_done`]).
    synced_upto: u64,
}

/// Clock difference between replicas tolerated when comparing a decision's issue time (one
/// replica's clock) with the store's data-since instant (another's).
pub const CLOCK_SKEW_MS: u64 = 1_000;

/// Nonces accepted into the outage buffer and not yet recorded: duplicates of these are caught
/// locally while the store is down.
#[derive(Default)]
struct Pending {
    nonces: HashSet<u64>,
}

/// Issues decision ids and learns from feedback.
pub struct Learner {
    /// The store's data-since instant (ms), as last read: decisions issued before it (less
    /// [`CLOCK_SKEW_MS`]) are refused.
    data_since_ms: AtomicU64,
    /// The first data-since instant this process read.
    first_data_since_ms: AtomicU64,
    signer: Signer,
    ttl_ms: u64,
    learning: bool,
    calibration: Calibration,
    store: Arc<dyn StateStore>,
    buffer: OutageBuffer,
    folded: tokio::sync::Mutex<Folded>,
    /// Records this replica completed in the store (a ticket each): a sync that starts after
    /// ticket `n` was taken reads a log that holds that record, so feedbacks queued behind one
    /// sync need no read of their own.
    records_done: AtomicU64,
    pending: Mutex<Pending>,
    degraded: AtomicBool,
    /// Cluster fits this replica's fold ran: (succeeded, failed and kept the previous).
    cluster_fits: (AtomicU64, AtomicU64),
    /// Keys that seal the shared policy log's entries (the first seals, any verifies).
    policy_keys: Vec<[u8; 32]>,
    /// Policy log entries refused (they do not verify); each is logged once.
    policy_refused: Mutex<HashSet<u64>>,
    /// Whether the last verified policy entry read was sealed with the previous secret.
    policy_head_old_key: AtomicBool,
}

impl Learner {
    /// A learner over a store. With `learning` off, feedback is validated and recorded but
    /// thresholds stay at their cold-start values (the replay baseline).
    pub fn new(
        signer: Signer,
        ttl_ms: u64,
        calibration: Calibration,
        learning: bool,
        store: Arc<dyn StateStore>,
        buffer: OutageBuffer,
    ) -> Self {
        Self {
            policy_keys: signer.policy_keys(),
            policy_refused: Mutex::new(HashSet::new()),
            policy_head_old_key: AtomicBool::new(false),
            signer,
            ttl_ms,
            learning,
            calibration,
            store,
            // Outcomes a previous run left in the spill file stay guarded against duplicates.
            pending: Mutex::new(Pending {
                nonces: buffer.recovered_nonces().into_iter().collect(),
            }),
            buffer,
            folded: tokio::sync::Mutex::new(Folded::default()),
            records_done: AtomicU64::new(0),
            data_since_ms: AtomicU64::new(0),
            first_data_since_ms: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            cluster_fits: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    /// Signs the id of a decision.
    pub fn issue(
        &self,
        d: &Decision,
        team: &str,
        workflow: &str,
        now_ms: u64,
        nonce: u64,
    ) -> String {
        self.signer.sign(&ClaimsRef {
            scope: &d.scope,
            tier: &d.tier().name,
            band: d.band.min(BANDS - 1) as u8,
            complexity: d.complexity as f32,
            gap: d.gap as f32,
            explored: d.explored,
            team,
            workflow,
            policy_version: &d.policy_version,
            issued_ms: now_ms,
            nonce,
            estimate_micros: d.tier().cost_micros.max(0) as u64,
            premium_micros: d.premium_micros().max(0) as u64,
            input_tokens: u32::try_from(d.input_tokens).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(d.output_tokens).unwrap_or(u32::MAX),
            cluster: d.cluster.unwrap_or(NO_CLUSTER),
            sketch: &d.sketch,
            propensity: Some(d.propensity as f32),
            premium_propensity: Some(d.premium_propensity as f32),
            shadow_tier: d.shadow.map_or("", |s| d.candidates[s].name.as_str()),
        })
    }

    pub(super) fn set_degraded(&self, degraded: bool) {
        let was = self.degraded.swap(degraded, Ordering::Relaxed);
        if was != degraded {
            if degraded {
                tracing::warn!(
                    store = self.store.kind(),
                    "store unreachable: routing on the last snapshot, buffering feedback"
                );
            } else {
                tracing::info!(store = self.store.kind(), "store reachable again");
            }
        }
    }

    /// Whether the store was unreachable at the last attempt.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// The shared-state store.
    pub fn store(&self) -> &dyn StateStore {
        self.store.as_ref()
    }

    /// Appends a policy change to the shared log, sealed with the deployment's policy key for
    /// the position it lands at (read first; retried if another replica wrote there first).
    pub async fn append_policy_change(
        &self,
        change: &crate::store::PolicyChange,
    ) -> Result<u64, crate::store::StoreError> {
        let key = self.policy_keys.first().copied().unwrap_or_default();
        let mut tries = 0;
        loop {
            let seq = self.store.policy_log_len().await?;
            let sealed = crate::store::PolicyChange {
                seq,
                ..change.clone()
            }
            .seal(&key);
            match self.store.append_policy_change(&sealed).await {
                Err(crate::store::StoreError::Conflict(_)) if tries < 8 => tries += 1,
                other => return other,
            }
        }
    }

    /// Whether the head of the policy log, as last read, was sealed with the secret being
    /// rotated out (and should be sealed again with the current one).
    pub fn policy_head_sealed_with_old_key(&self) -> bool {
        self.policy_head_old_key.load(Ordering::Relaxed)
    }

    /// The shared policy log from position `from`, without the entries that do not verify:
    /// one written straight into the store (by anyone without the deployment's secret) never
    /// becomes live, and is logged once.
    pub async fn policy_changes(
        &self,
        from: u64,
    ) -> Result<Vec<crate::store::PolicyChange>, crate::store::StoreError> {
        let mut log = self.store.policy_changes(from).await?;
        log.retain(|c| {
            let sealed_by = c.sealed_by(&self.policy_keys);
            // Sealed with the secret being rotated out: seal the head again with the current
            // one (see `reseal_head`), or the history would vanish once that secret is gone.
            if let Some(k) = sealed_by {
                self.policy_head_old_key.store(k > 0, Ordering::Relaxed);
            }
            let ok = sealed_by.is_some();
            if !ok
                && self
                    .policy_refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(c.seq)
            {
                tracing::error!(
                    seq = c.seq,
                    version = %crate::domain::labels::shown(&c.version),
                    "policy log entry does not verify (written to the store without this deployment's secret): refused"
                );
            }
            ok
        });
        Ok(log)
    }

    /// Outcomes waiting for the store.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The outage buffer (and its carry-over file).
    pub fn buffer(&self) -> &OutageBuffer {
        &self.buffer
    }

    /// Spill-file lines skipped because their checksum did not match (torn or edited).
    pub fn rejected_spill_lines(&self) -> u64 {
        self.buffer.rejected_lines()
    }

    /// Whether the store's data began after this process first read it (it lost its data since).
    pub fn data_reset_seen(&self) -> bool {
        let first = self.first_data_since_ms.load(Ordering::Relaxed);
        first != 0 && self.data_since_ms.load(Ordering::Relaxed) > first
    }

    /// Unreadable events of the shared log skipped so far.
    pub fn skipped_events(&self) -> u64 {
        self.store.skipped_events()
    }

    /// Cluster fits the fold ran since this replica started: (succeeded, failed).
    pub fn cluster_fits(&self) -> (u64, u64) {
        let (ok, failed) = &self.cluster_fits;
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// The calibration the planner uses.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// A copy of the folded evidence of every scope (for views and tests).
    pub async fn evidence(&self) -> HashMap<String, ScopeEvidence> {
        self.folded.lock().await.evidence.clone()
    }
}
