//! The adapters of the domain's shared-state port ([`crate::domain::state`]): in memory by
//! default, Redis (single or cluster) when replicas must share, and the outage buffer in front of
//! Redis; their deployment config, and `open`, which picks one. The interface and the types it
//! speaks live in the domain and are re-exported here; the adapters know nothing above it.

mod buffer;
pub mod config;
mod memory;
mod redis;

pub use buffer::{FileKeys, OutageBuffer};
pub use config::{Password, RawStore, StoreConfig, StoreConfigError, StoreKind};
pub use memory::MemoryStore;
pub use redis::RedisStore;

pub use crate::domain::state::{
    ChangeSource, CounterAdd, MAX_REUSE_IDS, OutcomeEvent, PolicyChange, Recorded, ReuseQuota,
    ShadowOutcome, StateStore, StoreError,
};

use std::path::PathBuf;
use std::sync::Arc;

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

/// Counter hashes are kept this long after their last change (ledger hours, budget periods).
pub const COUNTER_RETENTION_MS: u64 = 400 * crate::domain::calendar::DAY_MS;

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
