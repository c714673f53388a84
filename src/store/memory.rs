//! The in-memory store: the embedded default, and what `replay` runs on.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use super::{
    CounterAdd, MAX_LOG_EVENTS, MAX_REUSE_IDS, OutcomeEvent, PolicyChange, Recorded, StateStore,
    StoreError, quota_refusal,
};

#[derive(Default)]
struct Inner {
    /// Spent nonces; a reuse event's names the team whose quota it counts against.
    spent: HashMap<u64, Option<String>>,
    /// (expiry, nonce), to forget spent nonces once their ids can no longer come back.
    expiries: BTreeSet<(u64, u64)>,
    /// Unexpired reuse ids, all teams together and per team.
    reuse_ids: usize,
    reuse_ids_by_team: HashMap<String, u64>,
    /// Reuse events per decision nonce (until the decision's reuse window ends), and (end,
    /// decision) to forget them.
    decision_events: HashMap<u64, u64>,
    decision_expiries: BTreeSet<(u64, u64)>,
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

/// Unexpired spent nonces the memory store remembers (~60 bytes each with their expiry index,
/// so ~120 MB at the cap). A nonce is forgotten once its decision id has expired; at the cap,
/// new feedback is refused (RESOURCE_EXHAUSTED) until some expire, rather than growing without
/// bound: at 1,000 feedbacks/s and a 24 h TTL the ledger would need 86 M entries (~5 GB). Use
/// Redis, or a shorter `--decision-ttl-secs`, for more.
pub const MAX_SPENT_NONCES: usize = 2_000_000;

impl Inner {
    /// Forgets the nonces whose ids have expired (giving their reuse quota back), and the
    /// reuse counts of decisions past their reuse window.
    fn forget_expired(&mut self, now_ms: u64) {
        while let Some(&(exp, nonce)) = self.expiries.first() {
            if exp >= now_ms {
                break;
            }
            self.expiries.pop_first();
            if let Some(Some(team)) = self.spent.remove(&nonce) {
                self.reuse_ids -= 1;
                if let Some(n) = self.reuse_ids_by_team.get_mut(&team) {
                    *n -= 1;
                    if *n == 0 {
                        self.reuse_ids_by_team.remove(&team);
                    }
                }
            }
        }
        while let Some(&(exp, decision)) = self.decision_expiries.first() {
            if exp >= now_ms {
                break;
            }
            self.decision_expiries.pop_first();
            self.decision_events.remove(&decision);
        }
    }

    fn add(&mut self, adds: &[CounterAdd]) {
        for a in adds {
            let v = self
                .counters
                .entry(a.hash.clone())
                .or_default()
                .entry(a.field.clone())
                .or_default();
            // As Redis does (see its store): saturate, never wrap.
            *v = v.saturating_add(a.delta);
        }
    }
}

/// State held in this process only.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_spent: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_nonce_limit(MAX_SPENT_NONCES)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the policy history, as a Redis without persistence does when it restarts (for
    /// tests of what replicas do about it).
    #[cfg(test)]
    pub(crate) fn lose_policy_history(&self) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .policy
            .clear();
    }

    /// An empty store that remembers at most `max_spent` unexpired nonces.
    pub fn with_nonce_limit(max_spent: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_spent,
        }
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn record(&self, event: &OutcomeEvent, now_ms: u64) -> Result<Recorded, StoreError> {
        // A poisoned lock only means a panic elsewhere mid-update; the collections stay valid.
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.forget_expired(now_ms);
        if s.spent.contains_key(&event.nonce) {
            return Ok(Recorded::Duplicate);
        }
        match &event.quota {
            // Reuse ids have a pool of their own, and each team its share of it.
            Some(q) => {
                let held = s.reuse_ids_by_team.get(&q.team).copied().unwrap_or(0);
                if held >= q.team_ids {
                    return Err(quota_refusal(q, true));
                }
                if s.reuse_ids >= MAX_REUSE_IDS {
                    return Err(StoreError::Full(format!(
                        "the memory store remembers {MAX_REUSE_IDS} reuse event ids of all teams, \
                         its limit; reuse is refused until some leave their window (Feedback is \
                         not: its ids are kept apart); use the Redis store for more"
                    )));
                }
                let events = s.decision_events.get(&q.decision).copied().unwrap_or(0);
                if events.saturating_add(q.events) > q.decision_events {
                    return Err(quota_refusal(q, false));
                }
                if events == 0 {
                    s.decision_expiries.insert((event.expires_ms, q.decision));
                }
                s.decision_events.insert(q.decision, events + q.events);
                *s.reuse_ids_by_team.entry(q.team.clone()).or_default() += 1;
                s.reuse_ids += 1;
            }
            None => {
                let decisions = s.spent.len() - s.reuse_ids;
                if decisions >= self.max_spent {
                    return Err(StoreError::Full(format!(
                        "the memory store remembers {decisions} unexpired decision ids, its \
                         limit; feedback is refused until some expire (use the Redis store or a \
                         shorter --decision-ttl-secs)"
                    )));
                }
            }
        }
        let team = event.quota.as_ref().map(|q| q.team.clone());
        s.spent.insert(event.nonce, team);
        s.expiries.insert((event.expires_ms, event.nonce));
        s.add(&event.counters);
        if !event.counters_only {
            s.log.push_back(event.for_log());
            if s.log.len() as u64 > MAX_LOG_EVENTS {
                s.log.pop_front();
                s.base += 1;
            }
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
        if change.seq != seq {
            return Err(StoreError::Conflict(format!(
                "the policy log holds {seq} entries, not {}",
                change.seq
            )));
        }
        s.policy.push(change.clone());
        Ok(seq)
    }

    async fn policy_log_len(&self) -> Result<u64, StoreError> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(s.policy.len() as u64)
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

    mod contract {
        use super::*;
        use std::sync::Arc;

        crate::store_contract_tests!(async {
            let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
            Some(((), store))
        });
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

    #[tokio::test]
    async fn a_full_nonce_ledger_refuses_until_ids_expire() {
        let store = MemoryStore::with_nonce_limit(2);
        let at = |n: u64| {
            let mut e = super::super::contract::event(n);
            e.expires_ms = 100;
            e
        };
        assert_eq!(store.record(&at(1), 0).await.unwrap(), Recorded::New);
        assert_eq!(store.record(&at(2), 0).await.unwrap(), Recorded::New);
        assert!(matches!(
            store.record(&at(3), 0).await,
            Err(StoreError::Full(_))
        ));
        // A duplicate is still a duplicate, not a refusal.
        assert_eq!(store.record(&at(1), 0).await.unwrap(), Recorded::Duplicate);
        // Nothing of the refused one was kept.
        assert_eq!(store.events_since(0, 10).await.unwrap().0.len(), 2);
        // Once the first ids expire there is room again.
        assert_eq!(store.record(&at(3), 101).await.unwrap(), Recorded::New);
    }
}
