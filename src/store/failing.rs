//! A store that fails on cue: wraps another store and makes chosen calls fail, before or after
//! they land, to test what callers do in an outage. Test support, like [`super::contract`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    CounterAdd, MemoryStore, OutcomeEvent, PolicyChange, Recorded, StateStore, StoreError,
};

/// A call of the [`StateStore`] trait, to aim a [`Fault`] at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`StateStore::record`].
    Record,
    /// [`StateStore::events_since`].
    EventsSince,
    /// [`StateStore::deployment_id`].
    DeploymentId,
    /// [`StateStore::add_counters`].
    AddCounters,
    /// [`StateStore::read_counters`].
    ReadCounters,
    /// [`StateStore::append_policy_change`].
    AppendPolicyChange,
    /// [`StateStore::policy_log_len`].
    PolicyLogLen,
    /// [`StateStore::policy_changes`].
    PolicyChanges,
    /// [`StateStore::ping`].
    Ping,
    /// [`StateStore::data_since_ms`].
    DataSinceMs,
}

/// Which calls fail: calls of one kind (or every call), after the first `after` of them pass,
/// `times` in a row; with [`Fault::after_landing`] the call is made and then reported failed
/// (as Redis can time out after EXEC).
#[derive(Debug)]
pub struct Fault {
    op: Option<Op>,
    after: usize,
    times: usize,
    lands: bool,
    message: String,
    calls: AtomicUsize,
}

impl Fault {
    /// Every call of every kind fails.
    pub fn every_call() -> Self {
        Self {
            op: None,
            after: 0,
            times: usize::MAX,
            lands: false,
            message: "down".into(),
            calls: AtomicUsize::new(0),
        }
    }

    /// Every call of `op` fails.
    pub fn on(op: Op) -> Self {
        Self {
            op: Some(op),
            ..Self::every_call()
        }
    }

    /// The first `n` calls pass.
    pub fn after(self, n: usize) -> Self {
        Self { after: n, ..self }
    }

    /// Only `n` calls fail (after those that pass first); later ones pass.
    pub fn times(self, n: usize) -> Self {
        Self { times: n, ..self }
    }

    /// A failing call is made on the wrapped store first: it lands, then reports the error.
    pub fn after_landing(self) -> Self {
        Self {
            lands: true,
            ..self
        }
    }

    /// The error's message (default `down`).
    pub fn saying(self, message: &str) -> Self {
        Self {
            message: message.into(),
            ..self
        }
    }

    /// Counts a call of `op` if this fault is aimed at it; whether that call fails.
    fn strikes(&self, op: Op) -> bool {
        if self.op.is_some_and(|o| o != op) {
            return false;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        n >= self.after && n - self.after < self.times
    }
}

/// A store that passes calls to `inner` except those its [`Fault`]s make fail, with
/// [`StoreError::Unavailable`].
pub struct FailingStore<S = MemoryStore> {
    inner: S,
    faults: Vec<Fault>,
}

impl FailingStore {
    /// A store that is down for every call.
    pub fn down() -> Self {
        Self::new(MemoryStore::new()).fail(Fault::every_call())
    }
}

impl<S: StateStore> FailingStore<S> {
    /// `inner`, failing nothing yet.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Vec::new(),
        }
    }

    /// Adds a fault; the first one aimed at a call decides it.
    pub fn fail(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Runs `call` on the wrapped store unless a fault says otherwise.
    async fn run<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(fault) = self.faults.iter().find(|f| f.op.is_none_or(|o| o == op)) else {
            return call.await;
        };
        if !fault.strikes(op) {
            return call.await;
        }
        if fault.lands {
            call.await?;
        }
        Err(StoreError::Unavailable(fault.message.clone()))
    }
}

#[async_trait::async_trait]
impl<S: StateStore> StateStore for FailingStore<S> {
    async fn record(&self, event: &OutcomeEvent, now_ms: u64) -> Result<Recorded, StoreError> {
        self.run(Op::Record, self.inner.record(event, now_ms)).await
    }
    async fn events_since(
        &self,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<OutcomeEvent>, u64), StoreError> {
        self.run(Op::EventsSince, self.inner.events_since(cursor, max))
            .await
    }
    async fn deployment_id(&self, proposed: &str) -> Result<String, StoreError> {
        self.run(Op::DeploymentId, self.inner.deployment_id(proposed))
            .await
    }
    fn skipped_events(&self) -> u64 {
        self.inner.skipped_events()
    }
    async fn add_counters(&self, batch: u64, adds: &[CounterAdd]) -> Result<(), StoreError> {
        self.run(Op::AddCounters, self.inner.add_counters(batch, adds))
            .await
    }
    async fn read_counters(
        &self,
        hashes: &[String],
    ) -> Result<Vec<HashMap<String, i64>>, StoreError> {
        self.run(Op::ReadCounters, self.inner.read_counters(hashes))
            .await
    }
    async fn append_policy_change(&self, change: &PolicyChange) -> Result<u64, StoreError> {
        self.run(
            Op::AppendPolicyChange,
            self.inner.append_policy_change(change),
        )
        .await
    }
    async fn policy_log_len(&self) -> Result<u64, StoreError> {
        self.run(Op::PolicyLogLen, self.inner.policy_log_len())
            .await
    }
    async fn policy_changes(&self, from: u64) -> Result<Vec<PolicyChange>, StoreError> {
        self.run(Op::PolicyChanges, self.inner.policy_changes(from))
            .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.run(Op::Ping, self.inner.ping()).await
    }
    async fn data_since_ms(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.run(Op::DataSinceMs, self.inner.data_since_ms(now_ms))
            .await
    }
    fn kind(&self) -> &'static str {
        "failing"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn faults_pick_their_calls_and_count_them() {
        // Down: every call fails, ping included.
        assert!(FailingStore::down().ping().await.is_err());
        // Records: the first passes, the next two fail, later ones pass; pings are untouched.
        let s = FailingStore::new(MemoryStore::new()).fail(Fault::on(Op::Record).after(1).times(2));
        let mut results = Vec::new();
        for n in 1..=4 {
            results.push(s.record(&super::super::contract::event(n), 0).await.is_ok());
        }
        assert_eq!(results, [true, false, false, true]);
        assert!(s.ping().await.is_ok());
        // Landed: the counters are added, and the call still reports the error.
        let s = FailingStore::new(MemoryStore::new()).fail(
            Fault::on(Op::AddCounters)
                .times(1)
                .after_landing()
                .saying("timed out"),
        );
        let add = [CounterAdd {
            hash: "h".into(),
            field: "f".into(),
            delta: 5,
        }];
        let err = s.add_counters(1, &add).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            StoreError::Unavailable("timed out".into()).to_string()
        );
        assert_eq!(s.read_counters(&["h".into()]).await.unwrap()[0]["f"], 5);
        s.add_counters(2, &add).await.unwrap();
        assert_eq!(s.read_counters(&["h".into()]).await.unwrap()[0]["f"], 10);
    }
}
