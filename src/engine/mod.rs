//! The engine: the one façade the faces (gRPC, CLI, replay, benches) call, with one method per
//! use case: route, feedback, reuse, report, thresholds, policy administration, refresh, shutdown.
//!
//! It owns the router (the live table), the three pieces of the feedback path (decision ids,
//! the exactly-once recorder, the fold from evidence to plans), the books (spend and budgets)
//! and the policy administration, and tells its [`Telemetry`] what it counts. Its fields are
//! private: what production runs is what tests and benches call.

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod books_tests;
mod builder;
mod error;
pub mod feedback;
mod policy_admin;
#[cfg(test)]
mod shadow_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod what_if;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::books::Books;
use crate::domain::classifier::ComplexityModel;
use crate::domain::clusters::TermNames;
use crate::domain::learning::{RoutingTable, ScopeEvidence, ThresholdRow};
use crate::domain::policy::Policy;
use crate::domain::routing::{self, Decision, Router};
use crate::engine::feedback::{
    Committed, DEFAULT_DECISION_TTL_MS, DecisionIds, FeedbackAck, FeedbackError, FeedbackInput,
    Fold, Pricing, Recorder, ReuseAck, ReuseInput,
};
use crate::report::Report;
use crate::report::build::ReportQuery;
use crate::store::{PolicyChange, StateStore, StoreError};

pub use builder::{EngineBuilder, Telemetry};
pub use error::{Error, ErrorKind, Violation};
use policy_admin::{Live, PolicyAdmin};
pub use what_if::{WhatIf, WhatIfScope, what_if};

/// The router, the feedback path that feeds it and the books: what `serve` and `replay` both run.
pub struct Engine {
    /// Decides.
    router: Router,
    /// Signs decision ids at Route, verifies them at Feedback.
    ids: DecisionIds,
    /// Records accepted outcomes exactly once (the store, or the outage buffer).
    recorder: Recorder,
    /// Learns: folds the store's log into evidence and publishes the plans.
    fold: Fold,
    /// The shared-state store.
    store: Arc<dyn StateStore>,
    /// Counts spend and enforces budgets.
    books: Books,
    /// Told of the books' counts and each feedback's lag (the metrics face, or nothing).
    telemetry: Arc<dyn Telemetry>,
    /// Policy versions, hot reload, audit.
    policy_admin: PolicyAdmin,
    /// Whether route accounting carried over from the previous run still waits in its file.
    carry_over_pending: AtomicBool,
    /// The store's deployment id this replica signs with, if it has one.
    deployment: Option<String>,
    /// When the books were last checkpointed to the carry-over file (during an outage).
    last_checkpoint_ms: std::sync::atomic::AtomicU64,
    /// Names of the term buckets seen in this replica's unlabelled tasks (a sample of them), to
    /// name discovered clusters in `thresholds`. Per replica and best effort: the fold that
    /// fits the clusters has no texts, and a busy lock skips the sample.
    names: Mutex<TermNames>,
}

/// One unlabelled task in this many lends its words to the cluster names.
const NAME_SAMPLE: u64 = 16;
/// How often, during an outage, unsent route accounting is checkpointed to disk.
const CHECKPOINT_MS: u64 = 1_000;

/// A proposed policy, checked against the live one.
#[derive(Debug, Clone)]
pub struct PolicyCheck {
    /// The proposal's version (hash of its text).
    pub version: String,
    /// What it changes, one line each.
    pub changes: Vec<String>,
    /// The recent window replayed under both, when asked for.
    pub what_if: Option<WhatIf>,
}

/// The learned thresholds of the live table.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// One row per (scope, team plan, workflow level, tier).
    pub rows: Vec<ThresholdRow>,
    /// The live policy's version.
    pub policy_version: String,
}

impl Engine {
    fn live(&self) -> Live<'_> {
        Live {
            router: &self.router,
            fold: &self.fold,
        }
    }

    /// Routes one call: decide, apply budgets, reserve the estimate, sign the decision id.
    #[tracing::instrument(level = "debug", name = "route", skip_all, fields(team = req.team, workflow = req.workflow))]
    pub fn route(
        &self,
        req: &crate::domain::routing::RouteRequest<'_>,
        explore_draw: f64,
        now_ms: u64,
        nonce: u64,
    ) -> Result<(Decision, String), Error> {
        let table = self.router.current();
        let mut d = routing::decide(
            self.router.model(),
            &table,
            self.router.limits(),
            req,
            explore_draw,
        )?;
        self.books
            .admit(&table.policy, &mut d, req.team, req.workflow, now_ms)?;
        if !d.sketch.is_empty()
            && nonce.is_multiple_of(NAME_SAMPLE)
            && let Ok(mut names) = self.names.try_lock()
        {
            names.observe(req.task);
        }
        let id = self.ids.issue(&d, req.team, req.workflow, now_ms, nonce);
        Ok((d, id))
    }

    /// Validates and records one outcome exactly once, then learns from it; on any error
    /// nothing changes.
    #[tracing::instrument(level = "debug", name = "feedback", skip_all)]
    pub async fn feedback(
        &self,
        input: &FeedbackInput<'_>,
        now_ms: u64,
    ) -> Result<FeedbackAck, Error> {
        input.check()?;
        let claims = self
            .ids
            .verify_unexpired(input.decision_id, input.caller_team, now_ms)?;
        let outcome = self.pricing(now_ms).outcome(claims, input)?;
        let committed = self
            .recorder
            .commit(&self.books, outcome.event, now_ms)
            .await
            .map_err(|e| e.unwrap_or(FeedbackError::AlreadyRecorded))?;
        if committed == Committed::Stored {
            self.fold.fold_recorded(&self.router).await;
        }
        // The early reuse mark: the decision counts as reused once, whichever report came first.
        if let Some(mark) = outcome.reuse_mark {
            self.recorder.mark_reused(&self.books, mark, now_ms).await;
        }
        self.telemetry
            .feedback_lag(outcome.ack.lag_ms as f64 / 1000.0);
        Ok(outcome.ack)
    }

    /// Records the reuse of a decision's output: `count` reuse events (once per `event_id`),
    /// and the decision as reused if it was not yet. Accepted for the scope's reuse window,
    /// after the decision TTL too; buffered through store outages like feedback.
    #[tracing::instrument(level = "debug", name = "reuse", skip_all)]
    pub async fn reuse(&self, input: &ReuseInput<'_>, now_ms: u64) -> Result<ReuseAck, Error> {
        input.check()?;
        let claims = self.ids.verify(input.decision_id, input.caller_team)?;
        let reuse = self.pricing(now_ms).reuse(claims, input)?;
        self.recorder
            .commit(&self.books, reuse.event, now_ms)
            .await
            .map_err(|e| {
                e.unwrap_or_else(|| FeedbackError::ReuseRecorded(input.event_id.into()))
            })?;
        let first = self
            .recorder
            .mark_reused(&self.books, reuse.mark, now_ms)
            .await;
        let (claims, count) = (reuse.claims, reuse.count);
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

    /// What a verified report is checked and priced against now: the live policy, the books,
    /// the decision TTL.
    fn pricing(&self, now_ms: u64) -> Pricing<'_> {
        Pricing {
            table: self.router.table(),
            books: &self.books,
            ttl_ms: self.ids.ttl_ms(),
            now_ms,
        }
    }

    /// Replays buffered outcomes, reads the store's data-since instant, then folds the log in.
    /// Returns whether the store is healthy.
    async fn catch_up(&self, now_ms: u64) -> bool {
        if !self.recorder.drain(now_ms).await {
            return false;
        }
        let read = match self.ids.read_data_since(self.store.as_ref(), now_ms).await {
            Ok(()) => self.fold.sync(&self.router).await.map(drop),
            Err(e) => Err(e),
        };
        match read {
            Ok(()) => {
                self.recorder.set_degraded(false);
                true
            }
            Err(e) => {
                self.recorder.set_degraded(true);
                tracing::debug!(error = %e, "store refresh failed");
                false
            }
        }
    }

    /// Background duty: replay buffered outcomes, catch up with the store, flush the books.
    /// Returns whether the store is healthy.
    #[tracing::instrument(level = "debug", name = "refresh", skip_all)]
    pub async fn refresh(&self, now_ms: u64) -> bool {
        if let Some(id) = &self.deployment {
            // A store that lost its data gets this id back (every replica proposes the same).
            match self.store.deployment_id(id).await {
                Ok(held) if held != *id => tracing::error!(
                    held = %crate::domain::labels::shown(&held),
                    "the store holds another deployment id than this replica signs with: replicas started since refuse its decision ids; restart it"
                ),
                _ => {}
            }
        }
        let learned = self.catch_up(now_ms).await;
        if let Err(e) = self.policy_admin.refresh(self.live(), false, now_ms).await {
            tracing::debug!(error = %e, "policy log not read");
        }
        let flushed = self
            .books
            .flush(&self.router.table().policy, self.store.as_ref(), now_ms)
            .await;
        if let Err(e) = &flushed {
            tracing::debug!(error = %e, "books not flushed");
            self.checkpoint_books(now_ms);
        }
        // Everything carried over is in the store now: the file has done its job.
        if flushed.is_ok()
            && self.carry_over_pending.swap(false, Ordering::Relaxed)
            && let Err(e) = self
                .recorder
                .buffer()
                .save_carry_over::<crate::domain::books::Batch>(&[])
        {
            tracing::warn!(error = %e, "carry-over file not removed");
        }
        let ok = learned && flushed.is_ok();
        self.books.set_store_down(!ok);
        ok
    }

    /// During an outage, at most once a second: seals the route accounting not yet sent and
    /// appends it to the carry-over file, so a replica killed mid-outage loses at most the last
    /// second of it (a graceful shutdown loses none). Without a spill file it stays in memory.
    fn checkpoint_books(&self, now_ms: u64) {
        let last = self.last_checkpoint_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < CHECKPOINT_MS || !self.recorder.buffer().has_file() {
            return;
        }
        self.last_checkpoint_ms.store(now_ms, Ordering::Relaxed);
        let sealed = self.books.seal();
        if sealed.is_empty() {
            return;
        }
        match self.recorder.buffer().append_carry_over(&sealed) {
            Ok(()) => self.carry_over_pending.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "route accounting not checkpointed to disk"),
        }
    }

    /// Shutdown: flush the books once, then record or persist buffered outcomes.
    #[tracing::instrument(name = "shutdown", skip_all)]
    pub async fn shutdown(&self, now_ms: u64) {
        if let Err(e) = self
            .books
            .flush(&self.router.table().policy, self.store.as_ref(), now_ms)
            .await
        {
            // Kept for the next start (sent then as the same batches, so nothing counts twice).
            let batches = self.books.take_unflushed();
            match self.recorder.buffer().save_carry_over(&batches) {
                Ok(()) => tracing::warn!(
                    error = %e,
                    batches = batches.len(),
                    "route accounting not flushed at shutdown: kept for the next start"
                ),
                Err(b) => tracing::error!(
                    error = %e,
                    batches = batches.len(),
                    keep = %b,
                    "route accounting not flushed at shutdown and not kept"
                ),
            }
        }
        self.recorder.shutdown(now_ms).await;
    }

    /// The books of `query` (spend, quality, savings, budgets), after flushing this replica's
    /// unsent route accounting so the report includes it.
    #[tracing::instrument(name = "report", skip_all)]
    pub async fn report(&self, query: &ReportQuery, now_ms: u64) -> Result<Report, Error> {
        let policy = self.router.table().policy.clone();
        let store = self.store.as_ref();
        let unavailable = Error::store("report needs the store");
        if let Err(e) = self.books.flush(&policy, store, now_ms).await {
            return Err(unavailable(e));
        }
        crate::report::build::build(&policy, &self.books, store, query, now_ms)
            .await
            .map_err(unavailable)
    }

    /// The learned thresholds of every scope, or of one.
    #[tracing::instrument(level = "debug", name = "thresholds", skip_all, fields(scope = scope))]
    pub fn thresholds(&self, scope: &str) -> Result<Thresholds, Error> {
        let table = self.router.table();
        if !scope.is_empty() && !table.plans.contains_key(scope) {
            return Err(Error::UnknownScope(scope.to_string()));
        }
        Ok(Thresholds {
            rows: table.threshold_rows(
                scope,
                &self.names.lock().unwrap_or_else(PoisonError::into_inner),
            ),
            policy_version: table.policy.version.clone(),
        })
    }

    /// Checks `text` as a replacement of the live policy: what it changes and, with `what_if`,
    /// the recent window replayed under both. Nothing changes.
    #[tracing::instrument(name = "check_policy", skip_all, fields(what_if = what_if))]
    pub async fn check_policy(&self, text: &str, what_if: bool) -> Result<PolicyCheck, Error> {
        let proposed = policy_admin::parse_next(text)?;
        let live = self.router.table();
        let changes = crate::domain::policy::diff(&live.policy, &proposed);
        let version = proposed.version.clone();
        let what_if = if what_if {
            Some(self.what_if(Arc::new(proposed)).await)
        } else {
            None
        };
        Ok(PolicyCheck {
            version,
            changes,
            what_if,
        })
    }

    /// Validates `text` and makes it the live policy on every replica. On error nothing changes.
    #[tracing::instrument(name = "apply_policy", skip_all)]
    pub async fn apply_policy(
        &self,
        text: &str,
        source: crate::store::ChangeSource,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, Error> {
        self.policy_admin
            .apply(self.live(), text, source, author, reason, now_ms)
            .await
    }

    /// Makes an earlier version live again (`None`: the one before the live one).
    #[tracing::instrument(name = "rollback_policy", skip_all)]
    pub async fn rollback_policy(
        &self,
        version: Option<&str>,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, Error> {
        self.policy_admin
            .rollback(self.live(), version, author, reason, now_ms)
            .await
    }

    /// The version history and audit trail, oldest first.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyChange>, Error> {
        self.policy_admin
            .versions()
            .await
            .map_err(Error::store("version history needs the store"))
    }

    /// Names this replica in the audit trail of file changes, and sets the policy file to watch
    /// (`None`: the embedded policy, nothing to watch).
    pub async fn set_policy_source(&self, replica: &str, file: Option<PathBuf>) {
        self.policy_admin.set_source(replica, file).await;
    }

    /// Startup: reconcile the policy this replica was started with and the shared log.
    pub async fn init_policy(&self, now_ms: u64) -> Result<(), StoreError> {
        self.policy_admin.init(self.live(), now_ms).await
    }

    /// Follows policy changes other replicas made, then reloads the policy file if it changed
    /// (or `force_reload`, on SIGHUP).
    pub async fn refresh_policy(&self, force_reload: bool, now_ms: u64) -> Result<(), StoreError> {
        self.policy_admin
            .refresh(self.live(), force_reload, now_ms)
            .await
    }

    /// Replays the recent window under the live policy and under `proposed`.
    pub async fn what_if(&self, proposed: Arc<Policy>) -> WhatIf {
        let (window, evidence) = self.fold.window().await;
        let live = self.router.table();
        let proposed_table =
            RoutingTable::build(proposed, self.fold.calibration(), &evidence, Some(&live));
        what_if(&live, &proposed_table, &window)
    }

    /// The live routing table (policy and plans).
    pub fn table(&self) -> Arc<RoutingTable> {
        self.router.table()
    }

    /// The live policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.router.table().policy.clone()
    }

    /// The complexity model.
    pub fn model(&self) -> &Arc<ComplexityModel> {
        self.router.model()
    }

    /// Each budget's usage in its current period, as this replica sees it.
    pub fn budget_usage(&self, now_ms: u64) -> Vec<crate::domain::books::BudgetUse> {
        self.books.budget_usage(&self.router.table().policy, now_ms)
    }

    /// Unreadable events of the shared log skipped since this replica started.
    pub fn skipped_events(&self) -> u64 {
        self.store.skipped_events()
    }

    /// Cluster fits the fold ran since this replica started: (succeeded, failed).
    pub fn cluster_fits(&self) -> (u64, u64) {
        self.fold.cluster_fits()
    }

    /// Spill-file lines skipped because their checksum did not match.
    pub fn rejected_spill_lines(&self) -> u64 {
        self.recorder.buffer().rejected_lines()
    }

    /// The shared store.
    pub fn store(&self) -> &dyn StateStore {
        self.store.as_ref()
    }

    /// Whether the store is unreachable (outcomes buffer meanwhile).
    pub fn is_degraded(&self) -> bool {
        self.recorder.is_degraded()
    }

    /// Outcomes waiting in the outage buffer.
    pub fn buffered(&self) -> usize {
        self.recorder.buffer().len()
    }

    /// Whether the store was seen to lose its data (a restart without persistence).
    pub fn data_reset_seen(&self) -> bool {
        self.ids.data_reset_seen()
    }

    /// A copy of the folded evidence of every scope.
    pub async fn evidence(&self) -> HashMap<String, ScopeEvidence> {
        self.fold.evidence().await
    }
}
