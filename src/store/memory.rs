//! The in-memory store: the embedded default, and what `replay` runs on.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use super::{
    CounterAdd, MAX_LOG_EVENTS, OutcomeEvent, PolicyChange, Recorded, StateStore, StoreError,
};

#[derive(Default)]
struct Inner {
    spent: HashSet<u64>,
    /// (expiry, nonce), to forget spent nonces once their ids can no longer come back.
    expiries: BTreeSet<(u64, u64)>,
    log: VecDeque<OutcomeEvent>,
    /// Absolute position of `log[0]`.
    base: u64,
    counters: HashMap<String, HashMap<String, i64>>,
    /// Recent counter batch ids (bounded), so a resent batch is applied once.
    batches: HashSet<u64>,
    batch_order: VecDeque<u64>,
    policy: Vec<PolicyChange>,
}

/// Counter batch ids remembered by the memory store.
const MAX_BATCH_IDS: usize = 100_000;

impl Inner {
    fn add(&mut self, adds: &[CounterAdd]) {
        for a in adds {
            *self
                .counters
                .entry(a.hash.clone())
                .or_default()
                .entry(a.field.clone())
                .or_default() += a.delta;
        }
    }
}

/// State held in this process only.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn record(&self, event: &OutcomeEvent, now_ms: u64) -> Result<Recorded, StoreError> {
        // A poisoned lock only means a panic elsewhere mid-update; the collections stay valid.
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(exp, nonce)) = s.expiries.first() {
            if exp >= now_ms {
                break;
            }
            s.expiries.pop_first();
            s.spent.remove(&nonce);
        }
        if !s.spent.insert(event.nonce) {
            return Ok(Recorded::Duplicate);
        }
        s.expiries.insert((event.expires_ms, event.nonce));
        s.add(&event.counters);
        s.log.push_back(event.for_log());
        if s.log.len() as u64 > MAX_LOG_EVENTS {
            s.log.pop_front();
            s.base += 1;
        }
        Ok(Recorded::New)
    }

    async fn events_since(
        &self,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<OutcomeEvent>, u64), StoreError> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let end = s.base + s.log.len() as u64;
        if cursor > end {
            return Ok((Vec::new(), end));
        }
        let start = cursor.max(s.base);
        let events: Vec<OutcomeEvent> = s
            .log
            .iter()
            .skip((start - s.base) as usize)
            .take(max)
            .cloned()
            .collect();
        Ok((events.clone(), start + events.len() as u64))
    }

    async fn add_counters(&self, batch: u64, adds: &[CounterAdd]) -> Result<(), StoreError> {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.batches.insert(batch) {
            return Ok(());
        }
        s.batch_order.push_back(batch);
        if s.batch_order.len() > MAX_BATCH_IDS
            && let Some(old) = s.batch_order.pop_front()
        {
            s.batches.remove(&old);
        }
        s.add(adds);
        Ok(())
    }

    async fn read_counters(
        &self,
        hashes: &[String],
    ) -> Result<Vec<HashMap<String, i64>>, StoreError> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(hashes
            .iter()
            .map(|h| s.counters.get(h).cloned().unwrap_or_default())
            .collect())
    }

    async fn append_policy_change(&self, change: &PolicyChange) -> Result<u64, StoreError> {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = s.policy.len() as u64;
        s.policy.push(PolicyChange {
            seq,
            ..change.clone()
        });
        Ok(seq)
    }

    async fn policy_changes(&self, from: u64) -> Result<Vec<PolicyChange>, StoreError> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(s.policy.iter().skip(from as usize).cloned().collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_contract() {
        let store = MemoryStore::new();
        super::super::contract::check(&store).await.unwrap();
    }

    #[tokio::test]
    async fn spent_nonces_are_forgotten_after_expiry() {
        let store = MemoryStore::new();
        let mut e = super::super::contract::event(1);
        e.expires_ms = 100;
        assert_eq!(store.record(&e, 50).await.unwrap(), Recorded::New);
        assert_eq!(store.record(&e, 99).await.unwrap(), Recorded::Duplicate);
        // After expiry the id itself is refused upstream; the ledger may let go of it.
        assert_eq!(store.record(&e, 101).await.unwrap(), Recorded::New);
    }
}
