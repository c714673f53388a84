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

use crate::books::Books;
use crate::classifier::Calibration;
use crate::decision::{ClaimsRef, Signer, TokenError};
use crate::learning::{BANDS, ScopeEvidence, TaskShape};
use crate::routing::{Decision, Router};
use crate::store::{OutageBuffer, OutcomeEvent, Recorded, StateStore};

/// Default lifetime of a decision id: feedback later than this is refused.
pub const DEFAULT_DECISION_TTL_MS: u64 = 24 * 3600 * 1000;
/// Largest token count accepted in feedback (no call is this large; sums stay far from overflow).
pub const MAX_TOKENS: i64 = 1_000_000_000;
/// Events read from the store per round trip while catching up.
const SYNC_PAGE: usize = 2000;

/// One outcome report.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackInput<'a> {
    /// Decision id from Route.
    pub decision_id: &'a str,
    /// Outcome score in [0, 1].
    pub score: f64,
    /// Actual input tokens.
    pub input_tokens: i64,
    /// Actual output tokens.
    pub output_tokens: i64,
    /// Whether the output was reused.
    pub reused: bool,
    /// With authentication on and a service key: the caller's team, which must be the team the
    /// decision was made for. `None`: auth off or an admin.
    pub caller_team: Option<&'a str>,
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
    /// Tier that ran.
    pub tier: String,
    /// Actual cost in USD (the estimate if the tier is no longer in the policy).
    pub actual_cost_usd: f64,
    /// The same in micro-USD.
    pub actual_cost_micros: i64,
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

/// A reuse nonce of a decision: `kind` "event" with the caller's event id, or "mark" for the
/// decision's once-only reused mark. SHA-256, so no caller can aim an event id at another
/// decision's nonce.
fn reuse_nonce(decision_nonce: u64, kind: &str, id: &str) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"tokenwise-reuse\0");
    h.update(decision_nonce.to_le_bytes());
    h.update(kind.as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The decision's reused mark, as a counters-only event like `like` (same decision).
fn reuse_mark_event(
    like: &OutcomeEvent,
    decision_nonce: u64,
    issued_ms: u64,
    window_ms: u64,
    counters: Vec<crate::store::CounterAdd>,
) -> OutcomeEvent {
    OutcomeEvent {
        nonce: reuse_nonce(decision_nonce, "mark", ""),
        expires_ms: issued_ms.saturating_add(window_ms),
        score: 0.0,
        input_tokens: 0,
        output_tokens: 0,
        counters,
        counters_only: true,
        ..like.clone()
    }
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
            explored: d.explored,
            team,
            workflow,
            policy_version: &d.policy_version,
            issued_ms: now_ms,
            nonce,
            estimate_micros: d.tier().cost_micros.max(0) as u64,
            premium_micros: d.premium_micros().max(0) as u64,
        })
    }

    /// Validates and records one outcome; on any error nothing changes.
    pub async fn feedback(
        &self,
        router: &Router,
        books: &Books,
        input: &FeedbackInput<'_>,
        now_ms: u64,
    ) -> Result<FeedbackAck, FeedbackError> {
        if !(0.0..=1.0).contains(&input.score) {
            return Err(FeedbackError::InvalidArgument {
                field: "score",
                reason: format!("must be a number in [0, 1], got {}", input.score),
            });
        }
        for (field, v) in [
            ("input_tokens", input.input_tokens),
            ("output_tokens", input.output_tokens),
        ] {
            if !(0..=MAX_TOKENS).contains(&v) {
                return Err(FeedbackError::InvalidArgument {
                    field,
                    reason: format!("must be in [0, {MAX_TOKENS}], got {v}"),
                });
            }
        }
        if input.decision_id.is_empty() {
            return Err(FeedbackError::InvalidArgument {
                field: "decision_id",
                reason: "must not be empty".into(),
            });
        }
        let claims = self.claims_of(input.decision_id, input.caller_team)?;
        let expiry = claims.issued_ms.saturating_add(self.ttl_ms);
        if now_ms > expiry {
            return Err(FeedbackError::Expired {
                age_s: (now_ms - claims.issued_ms) / 1000,
                ttl_s: self.ttl_ms / 1000,
            });
        }
        let table = router.table();
        let (counters, actual_micros) = books.outcome_counters(
            &table.policy,
            &claims,
            input.score,
            input.input_tokens as u64,
            input.output_tokens as u64,
            input.reused,
        );
        let ack = FeedbackAck {
            scope: claims.scope.clone(),
            tier: claims.tier.clone(),
            actual_cost_usd: actual_micros as f64 / 1e6,
            actual_cost_micros: actual_micros,
            lag_ms: now_ms.saturating_sub(claims.issued_ms),
        };
        let marks = input.reused.then(|| books.reuse_counters(&claims, 1).1);
        let event = OutcomeEvent {
            nonce: claims.nonce,
            expires_ms: expiry,
            scope: claims.scope,
            tier: claims.tier,
            band: claims.band,
            score: input.score,
            input_tokens: input.input_tokens as u64,
            output_tokens: input.output_tokens as u64,
            workflow: claims.workflow,
            team: claims.team,
            complexity: claims.complexity,
            counters,
            counters_only: false,
        };
        let reuse_mark = marks.map(|counters| {
            let retention = table
                .policy
                .scopes
                .get(&event.scope)
                .unwrap_or(&table.policy.default);
            reuse_mark_event(
                &event,
                event.nonce,
                claims.issued_ms,
                self.reuse_window_ms(retention),
                counters,
            )
        });
        self.commit(router, books, event, now_ms)
            .await
            .map_err(|e| e.unwrap_or(FeedbackError::AlreadyRecorded))?;
        // The early reuse mark: the decision counts as reused once, whichever report came first.
        if let Some(mark) = reuse_mark {
            self.mark_reused(router, books, mark, now_ms).await;
        }
        Ok(ack)
    }

    /// Verifies a decision id and that the caller (a service key's team, if any) owns it, and
    /// that the store can still tell whether it was reported before.
    fn claims_of(
        &self,
        decision_id: &str,
        caller_team: Option<&str>,
    ) -> Result<crate::decision::DecisionClaims, FeedbackError> {
        let claims = self.signer.verify(decision_id)?;
        if let Some(team) = caller_team
            && team != claims.team
        {
            return Err(FeedbackError::PermissionDenied {
                owner: claims.team,
                caller: team.to_string(),
            });
        }
        if claims.issued_ms.saturating_add(CLOCK_SKEW_MS)
            < self.data_since_ms.load(Ordering::Relaxed)
        {
            return Err(FeedbackError::BeforeStoreReset);
        }
        Ok(claims)
    }

    /// A scope's reuse window: its `reuse_retention_days`, never shorter than the decision TTL.
    fn reuse_window_ms(&self, scope: &crate::policy::ScopePolicy) -> u64 {
        (u64::from(scope.reuse_retention_days) * 24 * 3600 * 1000).max(self.ttl_ms)
    }

    /// Records the reuse of a decision's output: `count` reuse events (once per `event_id`),
    /// and the decision as reused if it was not yet. Accepted for the scope's reuse window,
    /// after the decision TTL too; buffered through store outages like feedback.
    pub async fn reuse(
        &self,
        router: &Router,
        books: &Books,
        input: &ReuseInput<'_>,
        now_ms: u64,
    ) -> Result<ReuseAck, FeedbackError> {
        if input.decision_id.is_empty() {
            return Err(FeedbackError::InvalidArgument {
                field: "decision_id",
                reason: "must not be empty".into(),
            });
        }
        if input.count > MAX_REUSE_COUNT {
            return Err(FeedbackError::InvalidArgument {
                field: "count",
                reason: format!(
                    "must be in [1, {MAX_REUSE_COUNT}] (0 means 1), got {}",
                    input.count
                ),
            });
        }
        for (field, text) in [("event_id", input.event_id), ("note", input.note)] {
            if text.len() > MAX_REUSE_TEXT_BYTES || text.chars().any(char::is_control) {
                return Err(FeedbackError::InvalidArgument {
                    field,
                    reason: format!(
                        "must be at most {MAX_REUSE_TEXT_BYTES} bytes without control characters, got {} bytes",
                        text.len()
                    ),
                });
            }
        }
        let claims = self.claims_of(input.decision_id, input.caller_team)?;
        let table = router.table();
        let scope = table
            .policy
            .scopes
            .get(&claims.scope)
            .unwrap_or(&table.policy.default);
        let window = self.reuse_window_ms(scope);
        let age = now_ms.saturating_sub(claims.issued_ms);
        if age > window {
            return Err(FeedbackError::OutsideReuseWindow {
                age_days: age / (24 * 3600 * 1000),
                window_days: window / (24 * 3600 * 1000),
            });
        }
        let count = input.count.max(1);
        let (event_counters, mark_counters) = books.reuse_counters(&claims, count);
        let expires_ms = claims.issued_ms.saturating_add(window);
        // Without an event id every call is its own event.
        let event_nonce = if input.event_id.is_empty() {
            rand::random()
        } else {
            reuse_nonce(claims.nonce, "event", input.event_id)
        };
        let base = OutcomeEvent {
            nonce: event_nonce,
            expires_ms,
            scope: claims.scope.clone(),
            tier: claims.tier.clone(),
            band: claims.band,
            score: 0.0,
            input_tokens: 0,
            output_tokens: 0,
            workflow: claims.workflow.clone(),
            team: claims.team.clone(),
            complexity: claims.complexity,
            counters: event_counters,
            counters_only: true,
        };
        let mark = reuse_mark_event(&base, claims.nonce, claims.issued_ms, window, mark_counters);
        self.commit(router, books, base, now_ms)
            .await
            .map_err(|e| {
                e.unwrap_or_else(|| FeedbackError::ReuseRecorded(input.event_id.into()))
            })?;
        let first = self.mark_reused(router, books, mark, now_ms).await;
        tracing::info!(
            scope = %claims.scope, team = %claims.team, workflow = %claims.workflow,
            count, first, event_id = input.event_id, note = input.note, "reuse recorded"
        );
        Ok(ReuseAck {
            scope: claims.scope,
            workflow: claims.workflow,
            count,
            first,
        })
    }

    /// Spends a decision's reuse mark: true if this was its first. A failure here is logged,
    /// not returned: the reuse event itself is already taken, and the mark only decides
    /// whether the decision counts as reused (a retry of the same event would be refused).
    async fn mark_reused(
        &self,
        router: &Router,
        books: &Books,
        mark: OutcomeEvent,
        now_ms: u64,
    ) -> bool {
        match self.commit(router, books, mark, now_ms).await {
            Ok(_) => true,
            Err(None) => false,
            Err(Some(e)) => {
                tracing::warn!(error = %e, "reuse mark not recorded: the decision may not count as reused");
                false
            }
        }
    }

    /// Records an event exactly once: in the store, or, while it is unreachable, in the outage
    /// buffer. `Err(None)`: its nonce is already spent (a duplicate); `Err(Some(_))`: not
    /// accepted.
    async fn commit(
        &self,
        router: &Router,
        books: &Books,
        event: OutcomeEvent,
        now_ms: u64,
    ) -> Result<Committed, Option<FeedbackError>> {
        if self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .nonces
            .contains(&event.nonce)
        {
            return Err(None);
        }
        // While the store is known to be down, buffer at once; the refresher probes recovery.
        let recorded = if self.is_degraded() {
            Err(crate::store::StoreError::Unavailable(
                "store marked unreachable".into(),
            ))
        } else {
            self.store.record(&event, now_ms).await
        };
        match recorded {
            Ok(Recorded::New) => {
                let ticket = self.records_done.fetch_add(1, Ordering::AcqRel) + 1;
                books.observe_outcome(&event.counters);
                self.set_degraded(false);
                if !event.counters_only
                    && let Err(e) = self.sync_after(router, Some(ticket)).await
                {
                    // Recorded; this replica just learns it on the next refresh.
                    tracing::warn!(error = %e, "store read failed after recording feedback");
                }
                Ok(Committed::Stored)
            }
            Ok(Recorded::Duplicate) => Err(None),
            // A store at its documented limit is up: refuse, do not buffer.
            Err(crate::store::StoreError::Full(why)) => Err(Some(FeedbackError::Full(why))),
            Err(e) => {
                self.set_degraded(true);
                let nonce = event.nonce;
                let counters = event.counters.clone();
                // Claim the nonce and check it in one step: of two concurrent copies of one
                // event, exactly one is buffered (the check at the top is only a shortcut).
                let claimed = self
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .nonces
                    .insert(nonce);
                if !claimed {
                    return Err(None);
                }
                if let Err(b) = self.buffer.push(event).await {
                    self.pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .nonces
                        .remove(&nonce);
                    return Err(Some(FeedbackError::Unavailable(format!("{e}; {b}"))));
                }
                books.observe_outcome(&counters);
                tracing::debug!(error = %e, "store unreachable: event buffered");
                Ok(Committed::Buffered)
            }
        }
    }

    /// Folds every store event not yet seen into local evidence and republishes the plans of
    /// the scopes they touched. Returns how many events were folded.
    pub async fn sync(&self, router: &Router) -> Result<usize, crate::store::StoreError> {
        self.sync_after(router, None).await
    }

    /// [`Learner::sync`], or nothing when a sync that started after record ticket `ticket` has
    /// already folded it in: under concurrent feedback one store read serves every feedback
    /// that was waiting for the fold lock, instead of one read each (on Redis that read, made
    /// under the lock, capped Feedback at one round trip per call).
    async fn sync_after(
        &self,
        router: &Router,
        ticket: Option<u64>,
    ) -> Result<usize, crate::store::StoreError> {
        let mut folded = self.folded.lock().await;
        if ticket.is_some_and(|t| folded.synced_upto >= t) {
            return Ok(0);
        }
        // Every record with a ticket up to here completed before the log is read below.
        let covered = self.records_done.load(Ordering::Acquire);
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut count = 0;
        let mut failure = None;
        loop {
            let (events, next) = match self.store.events_since(folded.cursor, SYNC_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // Publish what was already folded before reporting the failure.
                    failure = Some(e);
                    break;
                }
            };
            if next < folded.cursor {
                // The store's log is shorter than what we read: it lost its data (a Redis
                // without persistence restarted). Start over from its beginning; what we
                // learned so far stays in local evidence.
                tracing::warn!(
                    cursor = folded.cursor,
                    log_end = next,
                    "store log restarted; re-reading from its start"
                );
                folded.cursor = 0;
                continue;
            }
            let n = events.len();
            for e in events {
                let ev = folded.evidence.entry(e.scope.clone()).or_default();
                let shape = TaskShape {
                    workflow: Arc::from(e.workflow.as_str()),
                    band: e.band,
                    input_tokens: e.input_tokens,
                    output_tokens: e.output_tokens,
                };
                ev.observe_from(&e.team, &e.tier, shape, e.score);
                touched.insert(e.scope.clone());
                if folded.recent.len() == WHAT_IF_WINDOW {
                    folded.recent.pop_front();
                }
                folded.recent.push_back(e);
            }
            folded.cursor = next;
            count += n;
            if n < SYNC_PAGE {
                break;
            }
        }
        if self.learning && !touched.is_empty() {
            // Under the fold lock, so concurrent syncs publish in log order.
            let mut table = (*router.table()).clone();
            for scope in &touched {
                if let Some(ev) = folded.evidence.get(scope) {
                    table = table.with_scope(scope, &self.calibration, ev);
                }
            }
            router.publish(table);
        }
        match failure {
            Some(e) => Err(e),
            None => {
                folded.synced_upto = folded.synced_upto.max(covered);
                Ok(count)
            }
        }
    }

    /// Background duty: replay buffered outcomes if any, then catch up with the store. Returns
    /// whether the store is healthy.
    pub async fn refresh(&self, router: &Router, now_ms: u64) -> bool {
        if !self.buffer.is_empty() {
            match self.buffer.drain(self.store.as_ref(), now_ms).await {
                Ok(drained) => {
                    tracing::info!(
                        recorded = drained.len(),
                        "outage buffer replayed into the store"
                    );
                    // Only what was drained: outcomes buffered meanwhile stay guarded locally.
                    let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    for n in &drained {
                        pending.nonces.remove(n);
                    }
                }
                Err(e) => {
                    self.set_degraded(true);
                    tracing::debug!(error = %e, "store still unreachable");
                    return false;
                }
            }
        }
        // Read on every refresh, not only when the log looks shorter than the cursor: after a
        // loss, other replicas' new outcomes can outgrow the old cursor before this one syncs.
        match self.store.data_since_ms(now_ms).await {
            Ok(ms) => {
                let before = self.data_since_ms.swap(ms, Ordering::Relaxed);
                if before == 0 {
                    self.first_data_since_ms.store(ms, Ordering::Relaxed);
                } else if ms > before {
                    tracing::warn!(
                        data_since_ms = ms,
                        "the store lost its data: feedback for decisions issued before now is refused"
                    );
                }
            }
            Err(e) => {
                self.set_degraded(true);
                tracing::debug!(error = %e, "store refresh failed");
                return false;
            }
        }
        match self.sync(router).await {
            Ok(_) => {
                self.set_degraded(false);
                true
            }
            Err(e) => {
                self.set_degraded(true);
                tracing::debug!(error = %e, "store refresh failed");
                false
            }
        }
    }

    /// Shutdown: try once to record what is buffered; the rest is already in the spill file
    /// (written before it was acknowledged) for the next start.
    pub async fn shutdown(&self, now_ms: u64) {
        if self.buffer.is_empty() {
            return;
        }
        if let Err(e) = self.buffer.drain(self.store.as_ref(), now_ms).await {
            tracing::warn!(error = %e, "store unreachable at shutdown");
        }
        let left = self.buffer.len();
        if left > 0 {
            tracing::warn!(
                outcomes = left,
                "buffered feedback left in the spill file for the next start"
            );
        }
    }

    fn set_degraded(&self, degraded: bool) {
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

    /// Replaces the live policy: re-plans every scope of `policy` from the evidence so far and
    /// publishes the table. Under the fold lock, so a concurrent sync cannot republish the old
    /// policy.
    pub async fn swap_policy(&self, router: &Router, policy: Arc<crate::policy::Policy>) {
        let folded = self.folded.lock().await;
        let current = router.table();
        let evidence = if self.learning {
            folded.evidence.clone()
        } else {
            HashMap::new()
        };
        let table = crate::learning::RoutingTable::build(
            policy,
            &self.calibration,
            &evidence,
            Some(&current),
        );
        router.publish(table);
    }

    /// The recent outcomes (oldest first) and the evidence, for what-if replays.
    pub async fn window(&self) -> (Vec<OutcomeEvent>, HashMap<String, ScopeEvidence>) {
        let folded = self.folded.lock().await;
        (
            folded.recent.iter().cloned().collect(),
            if self.learning {
                folded.evidence.clone()
            } else {
                HashMap::new()
            },
        )
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
