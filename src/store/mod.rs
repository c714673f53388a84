//! Shared learned state behind one interface: an ordered log of accepted outcomes plus the
//! ledger of spent decision nonces. In memory by default, Redis when replicas must share.
//!
//! Every replica folds the same log in the same order into its local evidence, so replicas
//! converge on identical thresholds; the nonce ledger is what makes feedback exactly-once across
//! replicas. Implementations know nothing above this trait.

mod buffer;
pub mod config;
mod memory;
mod redis;

pub use buffer::{FileKeys, OutageBuffer};
pub use config::{Password, RawStore, StoreConfig, StoreConfigError, StoreKind};
pub use memory::MemoryStore;
pub use redis::RedisStore;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One accepted outcome, as stored and replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    /// Decision nonce (unique per decision).
    pub nonce: u64,
    /// When the decision id expires (ms since epoch): the nonce is remembered until then.
    pub expires_ms: u64,
    /// Scope key.
    pub scope: String,
    /// Tier name that ran: the one that served the task (Feedback's `served_tier`), which
    /// learning credits the outcome to and the books billed.
    pub tier: String,
    /// The tier Route chose, where the caller fell back from it to another (`tier`); empty: the
    /// tier Route chose is `tier` (no fallback, or an event recorded before fallbacks were
    /// reported).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub routed_tier: String,
    /// Complexity band.
    pub band: u8,
    /// Outcome score in [0, 1].
    pub score: f64,
    /// Actual input tokens.
    pub input_tokens: u64,
    /// Actual output tokens.
    pub output_tokens: u64,
    /// Of `input_tokens`, those billed at the cached input price; absent (events recorded
    /// before the books priced token kinds): 0.
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub cached_input_tokens: u64,
    /// Of `output_tokens`, the reasoning tokens, billed at the reasoning price; absent: 0.
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub reasoning_tokens: u64,
    /// Workflow label of the caller.
    #[serde(default)]
    pub workflow: String,
    /// Team of the caller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// Complexity of the task (what-if replays re-decide with it).
    #[serde(default)]
    pub complexity: f32,
    /// Premium gap of the task (learning and what-if use it); absent = 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gap: f32,
    /// The discovered cluster Route placed the (unlabelled) task in; absent: none. Learning
    /// files the outcome under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<u32>,
    /// The unlabelled task's text sketch, which the scope's clusters are fitted on; absent:
    /// none (a labelled task, or an id issued before v4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sketch: Vec<u16>,
    /// The probability that the decision got the tier it got (Route's propensity); absent: an
    /// id issued before propensities were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f32>,
    /// The probability that the decision would have got the scope's premium tier; absent as
    /// `propensity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub premium_propensity: Option<f32>,
    /// The shadow pair posted with the outcome: the same task run on the decision's shadow
    /// tier; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowOutcome>,
    /// Accounting this outcome settles (spend reconciliation, outcome counts), applied in the
    /// same atomic step as the nonce so it counts exactly once. Not kept in the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<CounterAdd>,
    /// A mark that only settles accounting (a reuse of a decision's output): it spends its
    /// nonce and applies its counters exactly once, like an outcome, but never enters the
    /// learning log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counters_only: bool,
    /// The limits a reuse event is recorded under, checked in the same atomic step as its nonce
    /// (`None` for everything else). Not kept in the log, and dropped when an outage buffer
    /// takes the event: what was accepted is recorded.
    #[serde(skip)]
    pub quota: Option<ReuseQuota>,
}

/// The other half of a shadow pair: the decision's task, run on its shadow tier too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowOutcome {
    /// The shadow tier.
    pub tier: String,
    /// Its outcome score in [0, 1].
    pub score: f64,
    /// Input tokens booked for it.
    pub input_tokens: u64,
    /// Output tokens booked for it.
    pub output_tokens: u64,
}

/// The limits of one reuse event: the reuse ids its team may have remembered at once, and the
/// reuse events its decision may accumulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReuseQuota {
    /// The team the event's id counts against.
    pub team: String,
    /// Most unexpired reuse ids the team may hold.
    pub team_ids: u64,
    /// The decision's nonce.
    pub decision: u64,
    /// Most reuse events the decision may accumulate.
    pub decision_events: u64,
    /// The reuse events this one stands for.
    pub events: u64,
}

/// Reuse ids the memory store remembers at once, all teams together (apart from the decision
/// nonces Feedback needs, so a flood of reuse ids never refuses Feedback).
pub const MAX_REUSE_IDS: usize = 1_000_000;

/// Why a store refuses a reuse event under its [`ReuseQuota`].
pub(crate) fn quota_refusal(q: &ReuseQuota, team_full: bool) -> StoreError {
    if team_full {
        StoreError::Full(format!(
            "team {} holds {} unexpired reuse event ids, its limit (reuse_ids_per_team); new \
             ones are refused until some leave the reuse window",
            crate::domain::labels::shown(&q.team),
            q.team_ids
        ))
    } else {
        StoreError::Full(format!(
            "this decision's output has reached its limit of {} reuse events \
             (reuse_events_per_decision)",
            q.decision_events
        ))
    }
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

/// Whether a token count is 0 (left out of the serialized event).
fn is_zero_count(x: &u64) -> bool {
    *x == 0
}

impl OutcomeEvent {
    /// The tier Route chose for the decision (`tier` unless a fallback served it).
    pub fn routed_tier(&self) -> &str {
        if self.routed_tier.is_empty() {
            &self.tier
        } else {
            &self.routed_tier
        }
    }

    /// The event as the log keeps it (without its accounting).
    pub fn for_log(&self) -> OutcomeEvent {
        OutcomeEvent {
            counters: Vec::new(),
            ..self.clone()
        }
    }
}

/// One change of the live policy, as the shared, append-only policy log keeps it: the version
/// history and the audit trail in one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// Position in the log (assigned by the store).
    #[serde(default)]
    pub seq: u64,
    /// Content hash of the policy text.
    pub version: String,
    /// `startup`, `file` (hot reload or SIGHUP), `api` (ApplyPolicy) or `rollback`: a
    /// [`ChangeSource`] as the replica that wrote the entry named it (the name is sealed).
    pub source: String,
    /// Who: the API key's name, or the replica for file changes.
    pub author: String,
    /// Why, as given.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// What changed against the policy it replaced.
    pub summary: Vec<String>,
    /// The full policy text.
    pub text: String,
    /// HMAC of everything above but `seq`, under the deployment's policy key
    /// ([`PolicyChange::seal`]); an entry without a valid one is refused.
    #[serde(default)]
    pub mac: String,
}

/// Where a policy change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// The policy file a replica started with.
    Startup,
    /// The policy file, changed while serving (hot reload or SIGHUP).
    File,
    /// ApplyPolicy.
    Api,
    /// RollbackPolicy.
    Rollback,
}

impl ChangeSource {
    /// Name as the policy log keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Startup => "startup",
            ChangeSource::File => "file",
            ChangeSource::Api => "api",
            ChangeSource::Rollback => "rollback",
        }
    }

    /// Whether a logged change with this `source` name came from a replica's policy file.
    pub fn is_file_name(source: &str) -> bool {
        [ChangeSource::Startup, ChangeSource::File]
            .iter()
            .any(|s| s.as_str() == source)
    }
}

impl PolicyChange {
    fn mac(&self, key: &[u8; 32]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        // The position is sealed too: a sealed entry copied to the end of the log (an old,
        // looser policy replayed by someone who can write to the store) does not verify there.
        let body = (
            self.seq,
            &self.version,
            &self.source,
            &self.author,
            &self.reason,
            self.at_ms,
            &self.summary,
            &self.text,
        );
        // Serialising strings and numbers cannot fail.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&bytes);
        mac
    }

    /// Seals the entry with `key` before it goes into the shared log.
    pub fn seal(mut self, key: &[u8; 32]) -> Self {
        use hmac::Mac;
        self.mac = hex::encode(self.mac(key).finalize().into_bytes());
        self
    }

    /// Which of `keys` sealed the entry, at its position and unchanged since (compared in
    /// constant time); `None`: none did.
    pub fn sealed_by(&self, keys: &[[u8; 32]]) -> Option<usize> {
        use hmac::Mac;
        let tag = hex::decode(&self.mac).ok()?;
        keys.iter()
            .position(|k| self.mac(k).verify_slice(&tag).is_ok())
    }
}

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

/// Counter hashes are kept this long after their last change (ledger hours, budget periods).
pub const COUNTER_RETENTION_MS: u64 = 400 * crate::domain::calendar::DAY_MS;

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

/// Where a replica keeps its spill file when `store.spill_file` is not set: a directory of the
/// service user, never a shared one like `/tmp` (anyone could plant or read outcomes there):
/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else `$XDG_STATE_HOME/tokenwise`, else
/// `~/.local/state/tokenwise`.
fn state_dir() -> Result<PathBuf, StoreError> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("STATE_DIRECTORY") {
        // systemd may list several, separated by ':'; the first is this service's own.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return Ok(PathBuf::from(first));
    }
    var("XDG_STATE_HOME")
        .map(|d| d.join("tokenwise"))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/tokenwise")))
        .ok_or_else(|| {
            StoreError::Config(
                "no state directory (STATE_DIRECTORY, XDG_STATE_HOME or HOME): set store.spill_file"
                    .into(),
            )
        })
}

/// Opens the store the deployment's store settings ask for, with its outage buffer. `replica` names this
/// replica (its listen address) so its default spill file survives its restarts and differs
/// from other replicas' on the same host.
pub fn open(
    cfg: &StoreConfig,
    replica: &str,
    keys: FileKeys,
) -> Result<(Arc<dyn StateStore>, OutageBuffer), StoreError> {
    let (target, prefix) = match &cfg.kind {
        StoreKind::Memory => {
            return Ok((Arc::new(MemoryStore::new()), OutageBuffer::in_memory(0)));
        }
        StoreKind::Redis { url, prefix } => (redis::Target::Url(url), prefix),
        StoreKind::RedisCluster { nodes, prefix } => (redis::Target::Cluster(nodes), prefix),
    };
    {
        {
            // The password from a file or the environment (read by the deployment config),
            // never the command line or the policy text (which the store's history keeps).
            let password = match (&cfg.password_file, &cfg.password) {
                (Some(f), _) => {
                    let text = std::fs::read_to_string(f)
                        .map_err(|e| StoreError::Config(format!("store.password_file {f}: {e}")))?;
                    Some(text.trim_end_matches(['\n', '\r']).to_string())
                }
                (None, Some(p)) if !p.0.is_empty() => Some(p.0.clone()),
                _ => None,
            };
            let ca = match &cfg.ca_file {
                Some(f) => Some(
                    std::fs::read(f)
                        .map_err(|e| StoreError::Config(format!("store.ca_file {f}: {e}")))?,
                ),
                None => None,
            };
            let store = RedisStore::connect_to(
                target,
                prefix,
                std::time::Duration::from_millis(cfg.timeout_ms),
                cfg.username.as_deref(),
                password.as_deref(),
                ca,
            )?;
            let spill = match &cfg.spill_file {
                Some(f) => PathBuf::from(f),
                None => {
                    let name: String = replica
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .collect();
                    state_dir()?.join(format!("spill-{prefix}-{name}.jsonl"))
                }
            };
            tracing::info!(store = store.kind(), %prefix, spill = %spill.display(), "shared state on redis");
            let buffer = OutageBuffer::new(cfg.buffer_capacity, Some(spill), keys)
                .map_err(|e| StoreError::Config(e.to_string()))?;
            Ok((Arc::new(store), buffer))
        }
    }
}

/// Most events kept in the log. With a 500-feedback half-life per scope, an event 50,000
/// outcomes old weighs nothing measurable, so a fresh replica rebuilds the same state from it.
pub const MAX_LOG_EVENTS: u64 = 50_000;

/// The contract every implementation must pass (test support).
#[cfg(any(test, feature = "testsuite"))]
pub mod contract;
/// A store that fails on cue (test support).
#[cfg(any(test, feature = "testsuite"))]
pub mod failing;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An event as the log held it before the books priced cached input and reasoning tokens
    /// still decodes, with none of either; a new event keeps its counts, and one without them
    /// is written as before.
    #[test]
    fn an_event_recorded_before_token_kinds_decodes_with_none_of_them() {
        let old = r#"{"nonce":7,"expires_ms":10000000,"scope":"default","tier":"small","band":3,"score":1.0,"input_tokens":120,"output_tokens":40,"workflow":"w","team":"ads","complexity":0.5}"#;
        let e: OutcomeEvent = serde_json::from_str(old).unwrap();
        assert_eq!((e.input_tokens, e.output_tokens), (120, 40));
        assert_eq!((e.cached_input_tokens, e.reasoning_tokens), (0, 0));
        let plain = serde_json::to_string(&e).unwrap();
        assert!(
            !plain.contains("cached_input_tokens") && !plain.contains("reasoning_tokens"),
            "{plain}"
        );
        let new = OutcomeEvent {
            cached_input_tokens: 100,
            reasoning_tokens: 30,
            ..e
        };
        let back: OutcomeEvent =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }

    /// An event recorded before fallbacks were reported decodes with no routed tier of its
    /// own: the tier Route chose is the one that ran. A fallback keeps both, and an event
    /// without one is written as before.
    #[test]
    fn an_event_recorded_before_fallbacks_decodes_with_the_routed_tier() {
        let old = r#"{"nonce":7,"expires_ms":10000000,"scope":"default","tier":"small","band":3,"score":1.0,"input_tokens":120,"output_tokens":40,"workflow":"w","team":"ads","complexity":0.5}"#;
        let e: OutcomeEvent = serde_json::from_str(old).unwrap();
        assert_eq!((e.tier.as_str(), e.routed_tier()), ("small", "small"));
        assert!(!serde_json::to_string(&e).unwrap().contains("routed_tier"));
        let fallback = OutcomeEvent {
            tier: "medium".into(),
            routed_tier: "small".into(),
            ..e
        };
        let back: OutcomeEvent =
            serde_json::from_str(&serde_json::to_string(&fallback).unwrap()).unwrap();
        assert_eq!(
            (back.tier.as_str(), back.routed_tier()),
            ("medium", "small")
        );
        assert_eq!(back, fallback);
    }
}
