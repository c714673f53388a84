//! The port to shared state: the [`StateStore`] interface the domain reads and writes through,
//! and the types it speaks (outcome events, policy changes, counter increments, store errors).
//! The store adapters (the `store` module: memory, Redis, the outage buffer) implement it from
//! below; nothing here knows them.
//!
//! The state is an ordered log of accepted outcomes plus the ledger of spent decision nonces.
//! Every replica folds the same log in the same order into its local evidence, so replicas
//! converge on identical thresholds; the nonce ledger is what makes feedback exactly-once
//! across replicas.

mod outcome;
mod policy_log;

pub use outcome::{OutcomeEvent, ReuseQuota, ShadowOutcome};
pub use policy_log::{ChangeSource, PolicyChange};

use serde::{Deserialize, Serialize};

/// Reuse ids the memory store remembers at once, all teams together (apart from the decision
/// nonces Feedback needs, so a flood of reuse ids never refuses Feedback). Part of the port
/// because policy validation bounds a team's `reuse_ids_per_team` by it.
pub const MAX_REUSE_IDS: usize = 1_000_000;

/// An increment of one shared integer counter: `field` of the counter hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CounterAdd {
    /// Counter hash, e.g. `ledger:493315` or `budget:team:search/month`.
    pub hash: String,
    /// Field within the hash.
    pub field: String,
    /// Signed amount to add.
    pub delta: i64,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First outcome for this nonce: appended to the log.
    New,
    /// The nonce was already spent: nothing changed.
    Duplicate,
}

/// A store failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or timed out: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something this build cannot read.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The store is at a documented capacity limit and refuses more until entries expire.
    #[error("store full: {0}")]
    Full(String),
    /// The store cannot be set up as configured (e.g. its spill file belongs to another
    /// process).
    #[error("store configuration: {0}")]
    Config(String),
    /// A conditional write found the store moved on (another replica wrote first): read again
    /// and retry.
    #[error("store moved on: {0}")]
    Conflict(String),
}

/// The shared-state interface.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Atomically spends the event's nonce and appends the event, unless the nonce is spent.
    async fn record(&self, event: &OutcomeEvent, now_ms: u64) -> Result<Recorded, StoreError>;

    /// Events with log position ≥ `cursor` (at most `max`), and the position after the last one
    /// returned. Positions are absolute; when old events were trimmed the read starts at the
    /// oldest one kept.
    async fn events_since(
        &self,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<OutcomeEvent>, u64), StoreError>;

    /// The deployment's id: set once, to `proposed`, by the first replica that asks (a new
    /// deployment, or one whose store lost its data, where the replicas propose the id they
    /// had), and the same for every replica after. Decision ids are signed with a key derived
    /// from it, so two deployments that share a secret and a prefix on different stores do
    /// not accept each other's ids. A store of one process has no one to share it with.
    async fn deployment_id(&self, proposed: &str) -> Result<String, StoreError> {
        Ok(proposed.to_string())
    }

    /// Events of the shared log that could not be read and were skipped since this process
    /// started (a poison event must not stop learning on every replica).
    fn skipped_events(&self) -> u64 {
        0
    }

    /// Adds each delta to its counter, all or nothing, once per `batch` id: sending the same
    /// batch again (after a timeout that may have landed) changes nothing. Ids are remembered
    /// for a day.
    async fn add_counters(&self, batch: u64, adds: &[CounterAdd]) -> Result<(), StoreError>;

    /// Every field of each named counter hash (empty for a hash never written), in order.
    async fn read_counters(
        &self,
        hashes: &[String],
    ) -> Result<Vec<std::collections::HashMap<String, i64>>, StoreError>;

    /// Appends a policy change at position `change.seq` (0-based) of the policy log, only if
    /// the log holds exactly that many entries (else [`StoreError::Conflict`], nothing written),
    /// and returns that position. An entry is sealed for its position, so appending at a known
    /// one is what lets a replica seal it before it is written.
    async fn append_policy_change(&self, change: &PolicyChange) -> Result<u64, StoreError>;

    /// How many entries the policy log holds (the position of the next one).
    async fn policy_log_len(&self) -> Result<u64, StoreError> {
        Ok(self.policy_changes(0).await?.len() as u64)
    }

    /// Policy changes from position `from` on, in order, with `seq` set.
    async fn policy_changes(&self, from: u64) -> Result<Vec<PolicyChange>, StoreError>;

    /// Cheap liveness check.
    async fn ping(&self) -> Result<(), StoreError>;

    /// When this store's shared data began, ms: set to `now_ms` the first time it is asked,
    /// and again the first time after the store lost its data. A decision issued before it
    /// cannot be checked for a spent nonce (the ledger that held it is gone). The memory store
    /// answers 0: it lives and dies with its process, and so do its decision ids.
    async fn data_since_ms(&self, now_ms: u64) -> Result<u64, StoreError> {
        let _ = now_ms;
        Ok(0)
    }

    /// `memory` or `redis`, for logs and health.
    fn kind(&self) -> &'static str;
}
