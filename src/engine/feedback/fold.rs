//! The read path: fold the store's outcome log into local evidence in order (so every replica
//! computes the same state), re-plan the touched scopes, publish the table; refresh and shutdown.

use super::*;
use crate::domain::learning::cluster_label;

impl Learner {
    /// Folds every store event not yet seen into local evidence and republishes the plans of
    /// the scopes they touched. Returns how many events were folded.
    pub async fn sync(&self, router: &Router) -> Result<usize, crate::store::StoreError> {
        self.sync_after(router, None).await
    }

    /// [`Learner::sync`], or nothing when a sync that started after record ticket `ticket` has
    /// already folded it in: under concurrent feedback one store read serves every feedback
    /// that was waiting for the fold lock, instead of one read each (on Redis that read, made
    /// under the lock, capped Feedback at one round trip per call).
    pub(super) async fn sync_after(
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
                let (ok, failed) = &self.cluster_fits;
                ok.fetch_add(ev.clusters.fits - before.0, Ordering::Relaxed);
                failed.fetch_add(ev.clusters.failed_fits - before.1, Ordering::Relaxed);
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
}
