//! The fold: the store's outcome log folded into local evidence in order (so every replica
//! computes the same state), the touched scopes re-planned and the table published; the recent
//! window what-if replays, and policy swaps re-plan on the same evidence.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::classifier::Calibration;
use crate::domain::learning::{ScopeEvidence, TaskShape, cluster_label};
use crate::domain::routing::Router;
use crate::store::{OutcomeEvent, StateStore, StoreError};

/// Events read from the store per round trip while catching up.
const SYNC_PAGE: usize = 2000;

/// Outcomes kept for what-if replays of a proposed policy.
pub const WHAT_IF_WINDOW: usize = 5000;

/// Local view of the store's log.
#[derive(Default)]
struct Folded {
    evidence: HashMap<String, ScopeEvidence>,
    /// Position in the store's log up to which events are folded in.
    cursor: u64,
    /// The most recent outcomes (at most [`WHAT_IF_WINDOW`]), oldest first.
    recent: VecDeque<OutcomeEvent>,
    /// Every outcome whose ticket is up to this one is folded in (see [`Fold::tickets`]).
    synced_upto: u64,
}

/// Folds the store's outcome log into evidence and publishes the plans it moves.
pub struct Fold {
    store: Arc<dyn StateStore>,
    /// Whether outcomes move the plans; off, they are folded (for what-if) but thresholds stay
    /// at their cold-start values (the replay baseline).
    learning: bool,
    /// The calibration the planner uses.
    calibration: Calibration,
    folded: tokio::sync::Mutex<Folded>,
    /// Outcomes this replica recorded in the store (a ticket each, taken once recorded): a
    /// sync that starts after ticket `n` was taken reads a log that holds that outcome, so
    /// feedbacks queued behind one sync need no read of their own.
    tickets: AtomicU64,
    /// Cluster fits this replica's fold ran: (succeeded, failed and kept the previous).
    cluster_fits: (AtomicU64, AtomicU64),
}

impl Fold {
    /// A fold of `store`'s log, with no evidence yet. With `learning` off, outcomes are folded
    /// but the plans stay at their cold-start values.
    pub fn new(store: Arc<dyn StateStore>, calibration: Calibration, learning: bool) -> Self {
        Self {
            store,
            learning,
            calibration,
            folded: tokio::sync::Mutex::new(Folded::default()),
            tickets: AtomicU64::new(0),
            cluster_fits: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    /// Folds every store event not yet seen into local evidence and republishes the plans of
    /// the scopes they touched. Returns how many events were folded.
    pub async fn sync(&self, router: &Router) -> Result<usize, StoreError> {
        self.sync_after(router, None).await
    }

    /// Folds in an outcome this replica just recorded in the store, and what else the log
    /// holds. A failed read is logged: the outcome is recorded, and this replica learns it on
    /// the next refresh.
    pub async fn fold_recorded(&self, router: &Router) {
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        if let Err(e) = self.sync_after(router, Some(ticket)).await {
            tracing::warn!(error = %e, "store read failed after recording feedback");
        }
    }

    /// [`Fold::sync`], or nothing when a sync that started after ticket `ticket` has
    /// already folded it in: under concurrent feedback one store read serves every feedback
    /// that was waiting for the fold lock, instead of one read each (on Redis that read, made
    /// under the lock, capped Feedback at one round trip per call).
    async fn sync_after(&self, router: &Router, ticket: Option<u64>) -> Result<usize, StoreError> {
        let mut folded = self.folded.lock().await;
        if ticket.is_some_and(|t| folded.synced_upto >= t) {
            return Ok(0);
        }
        // Every outcome with a ticket up to here was recorded before the log is read below.
        let covered = self.tickets.load(Ordering::Acquire);
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
                touched.insert(e.scope.clone());
                self.fold_event(&mut folded, e);
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

    /// Folds one event of the log into its scope's evidence and the recent window.
    fn fold_event(&self, folded: &mut Folded, e: OutcomeEvent) {
        let ev = folded.evidence.entry(e.scope.clone()).or_default();
        // An unlabelled task learns under the cluster Route placed it in.
        let workflow = match e.cluster {
            Some(c) => Arc::from(cluster_label(c).as_str()),
            None => Arc::from(e.workflow.as_str()),
        };
        let shape = TaskShape {
            workflow,
            band: e.band,
            gap: e.gap,
            input_tokens: e.input_tokens,
            output_tokens: e.output_tokens,
        };
        let before = (ev.clusters.fits, ev.clusters.failed_fits);
        // A shadow pair teaches the shadow tier too: the same task, from the same
        // event, so exactly once and in log order on every replica.
        let shadow = e.shadow.as_ref().map(|s| (s.tier.as_str(), s.score));
        ev.observe_task(&e.team, &e.tier, shape, e.score, &e.sketch, shadow);
        if e.shadow_asked {
            ev.observe_shadow_answer(&e.team, e.shadow.is_some());
        }
        let (ok, failed) = &self.cluster_fits;
        ok.fetch_add(ev.clusters.fits - before.0, Ordering::Relaxed);
        failed.fetch_add(ev.clusters.failed_fits - before.1, Ordering::Relaxed);
        if folded.recent.len() == WHAT_IF_WINDOW {
            folded.recent.pop_front();
        }
        folded.recent.push_back(e);
    }

    /// Replaces the live policy: re-plans every scope of `policy` from the evidence so far and
    /// publishes the table. Under the fold lock, so a concurrent sync cannot republish the old
    /// policy.
    pub async fn swap_policy(&self, router: &Router, policy: Arc<crate::domain::policy::Policy>) {
        let folded = self.folded.lock().await;
        let current = router.table();
        let evidence = if self.learning {
            folded.evidence.clone()
        } else {
            HashMap::new()
        };
        let table = crate::domain::learning::RoutingTable::build(
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

    /// A copy of the folded evidence of every scope (for views and tests).
    pub async fn evidence(&self) -> HashMap<String, ScopeEvidence> {
        self.folded.lock().await.evidence.clone()
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
}
