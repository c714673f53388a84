//! The recorder: each accepted event recorded exactly once, in the store, or, while the store is
//! unreachable, in the outage buffer (and its spill file) until it returns. The store's nonce
//! ledger makes a second copy a duplicate; the buffer's pending nonces do the same while the
//! store is down.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::FeedbackError;
use crate::domain::books::Books;
use crate::store::{OutageBuffer, OutcomeEvent, Recorded, StateStore, StoreError};

/// How a store write was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Recorded in the store.
    Stored,
    /// Held in the outage buffer (and its spill file) until the store returns.
    Buffered,
}

/// Records events exactly once through the store, or the outage buffer while it is down, and
/// tells the books of each one taken.
pub struct Recorder {
    store: Arc<dyn StateStore>,
    buffer: OutageBuffer,
    /// Nonces accepted into the outage buffer and not yet recorded: duplicates of these are
    /// caught locally while the store is down.
    pending: Mutex<HashSet<u64>>,
    /// Whether the store was unreachable at the last attempt.
    degraded: AtomicBool,
}

impl Recorder {
    /// A recorder into `store`, buffering into `buffer` while it is down.
    pub fn new(store: Arc<dyn StateStore>, buffer: OutageBuffer) -> Self {
        Self {
            store,
            // Outcomes a previous run left in the spill file stay guarded against duplicates.
            pending: Mutex::new(buffer.recovered_nonces().into_iter().collect()),
            buffer,
            degraded: AtomicBool::new(false),
        }
    }

    /// Records an event exactly once: in the store, or, while it is unreachable, in the outage
    /// buffer; the books observe its counters once it is taken. `Err(None)`: its nonce is
    /// already spent (a duplicate); `Err(Some(_))`: not accepted.
    pub async fn commit(
        &self,
        books: &Books,
        event: OutcomeEvent,
        now_ms: u64,
    ) -> Result<Committed, Option<FeedbackError>> {
        if self.pending().contains(&event.nonce) {
            return Err(None);
        }
        // While the store is known to be down, buffer at once; the refresher probes recovery.
        let recorded = if self.is_degraded() {
            Err(StoreError::Unavailable("store marked unreachable".into()))
        } else {
            self.store.record(&event, now_ms).await
        };
        match recorded {
            Ok(Recorded::New) => {
                books.observe_outcome(&event.counters);
                self.set_degraded(false);
                Ok(Committed::Stored)
            }
            Ok(Recorded::Duplicate) => Err(None),
            // A store at its documented limit is up: refuse, do not buffer.
            Err(StoreError::Full(why)) => Err(Some(FeedbackError::Full(why))),
            Err(e) => self.buffer_event(books, event, e).await,
        }
    }

    /// [`Recorder::commit`] of an event the store could not take (`e`): into the outage buffer.
    async fn buffer_event(
        &self,
        books: &Books,
        event: OutcomeEvent,
        e: StoreError,
    ) -> Result<Committed, Option<FeedbackError>> {
        self.set_degraded(true);
        let nonce = event.nonce;
        let counters = event.counters.clone();
        // Claim the nonce and check it in one step: of two concurrent copies of one event,
        // exactly one is buffered (the check in `commit` is only a shortcut).
        if !self.pending().insert(nonce) {
            return Err(None);
        }
        if let Err(b) = self.buffer.push(event).await {
            self.pending().remove(&nonce);
            return Err(Some(FeedbackError::Unavailable(format!("{e}; {b}"))));
        }
        books.observe_outcome(&counters);
        tracing::debug!(error = %e, "store unreachable: event buffered");
        Ok(Committed::Buffered)
    }

    /// Spends a decision's reuse mark: true if this was its first. A failure here is logged,
    /// not returned: the reuse event itself is already taken, and the mark only decides
    /// whether the decision counts as reused (a retry of the same event would be refused).
    pub async fn mark_reused(&self, books: &Books, mark: OutcomeEvent, now_ms: u64) -> bool {
        match self.commit(books, mark, now_ms).await {
            Ok(_) => true,
            Err(None) => false,
            Err(Some(e)) => {
                tracing::warn!(error = %e, "reuse mark not recorded: the decision may not count as reused");
                false
            }
        }
    }

    /// Replays buffered outcomes into the store, if any. False (and degraded) if it is still
    /// unreachable.
    pub async fn drain(&self, now_ms: u64) -> bool {
        if self.buffer.is_empty() {
            return true;
        }
        match self.buffer.drain(self.store.as_ref(), now_ms).await {
            Ok(drained) => {
                tracing::info!(
                    recorded = drained.len(),
                    "outage buffer replayed into the store"
                );
                // Only what was drained: outcomes buffered meanwhile stay guarded locally.
                let mut pending = self.pending();
                for n in &drained {
                    pending.remove(n);
                }
                true
            }
            Err(e) => {
                self.set_degraded(true);
                tracing::debug!(error = %e, "store still unreachable");
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

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // A poisoned lock only means a panic elsewhere mid-update; the set stays valid.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes whether the store answered, logging each change.
    pub fn set_degraded(&self, degraded: bool) {
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

    /// The outage buffer (and its carry-over file).
    pub fn buffer(&self) -> &OutageBuffer {
        &self.buffer
    }
}
