//! Policy administration: versioned changes with an audit trail, hot reload of the policy file,
//! rollback (the what-if replay of a proposal is [`super::what_if`]).
//!
//! Every change — at startup, from the file (on change or SIGHUP), from `ApplyPolicy` or
//! `RollbackPolicy` — is validated first (an invalid one changes nothing and names the key path),
//! then appended to the store's policy log, then made live. The log is the version history and
//! the audit trail in one; every replica follows it on refresh, so a change made on one replica
//! reaches all of them. At startup a replica's file wins only if it differs from the file the
//! log last saw (a new deployment); otherwise the log's latest version wins (an API change
//! survives restarts).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::Error;
use crate::domain::policy::{Policy, PolicyError};
use crate::domain::routing::Router;
use crate::engine::feedback::Fold;
use crate::store::{ChangeSource, PolicyChange, StateStore, StoreError};

/// What policy administration acts on: the live table, and the fold that re-plans it.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    /// Holds the live policy (in its table).
    pub router: &'a Router,
    /// Swaps policies in, re-planning on the folded evidence.
    pub fold: &'a Fold,
}

/// The store's shared policy log, sealed with the deployment's policy keys: an entry that does
/// not verify (written straight into the store by anyone without the secret) never becomes live.
struct PolicyLog {
    store: Arc<dyn StateStore>,
    /// Keys that seal the log's entries (the first seals, any verifies).
    keys: Vec<[u8; 32]>,
    /// Entries refused (they do not verify); each is logged once.
    refused: Mutex<HashSet<u64>>,
    /// Whether the last verified entry read was sealed with the previous secret.
    head_old_key: AtomicBool,
}

impl PolicyLog {
    /// Appends a policy change, sealed with the deployment's policy key for the position it
    /// lands at (read first; retried if another replica wrote there first).
    async fn append(&self, change: &PolicyChange) -> Result<u64, StoreError> {
        let key = self.keys.first().copied().unwrap_or_default();
        let mut tries = 0;
        loop {
            let seq = self.store.policy_log_len().await?;
            let sealed = PolicyChange {
                seq,
                ..change.clone()
            }
            .seal(&key);
            match self.store.append_policy_change(&sealed).await {
                Err(StoreError::Conflict(_)) if tries < 8 => tries += 1,
                other => return other,
            }
        }
    }

    /// The log from position `from`, without the entries that do not verify (each logged once).
    async fn changes(&self, from: u64) -> Result<Vec<PolicyChange>, StoreError> {
        let mut log = self.store.policy_changes(from).await?;
        log.retain(|c| {
            let sealed_by = c.sealed_by(&self.keys);
            // Sealed with the secret being rotated out: seal the head again with the current
            // one (see `reseal_head`), or the history would vanish once that secret is gone.
            if let Some(k) = sealed_by {
                self.head_old_key.store(k > 0, Ordering::Relaxed);
            }
            let ok = sealed_by.is_some();
            if !ok
                && self
                    .refused
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(c.seq)
            {
                tracing::error!(
                    seq = c.seq,
                    version = %crate::domain::labels::shown(&c.version),
                    "policy log entry does not verify (written to the store without this deployment's secret): refused"
                );
            }
            ok
        });
        Ok(log)
    }

    /// Whether the head of the log, as last read, was sealed with the secret being rotated out
    /// (and should be sealed again with the current one).
    fn head_sealed_with_old_key(&self) -> bool {
        self.head_old_key.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct AdminState {
    /// The last change seen in the store's policy log (`None`: none yet). Reading resumes at its
    /// position; if the log holds another change there, the store lost its history and another
    /// replica started it again.
    last_seen: Option<Seen>,
    /// The policy file being watched, with the stamp (mtime, length) last loaded.
    file: Option<(PathBuf, Option<(SystemTime, u64)>)>,
    /// Whether the startup reconciliation with the shared history has run (it waits for the
    /// store if it was down at startup).
    initialized: bool,
}

/// What identifies one recorded change: its position, and what it was (the position alone does
/// not survive a loss).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    seq: u64,
    version: String,
    source: String,
    author: String,
    at_ms: u64,
}

impl AdminState {
    /// Position in the log up to which changes are seen.
    fn cursor(&self) -> u64 {
        self.last_seen.as_ref().map_or(0, |s| s.seq + 1)
    }
}

impl Seen {
    fn of(c: &PolicyChange) -> Self {
        Self {
            seq: c.seq,
            version: c.version.clone(),
            source: c.source.clone(),
            author: c.author.clone(),
            at_ms: c.at_ms,
        }
    }
}

/// Per-replica policy administration state, and the shared log it follows.
pub struct PolicyAdmin {
    state: tokio::sync::Mutex<AdminState>,
    replica: Mutex<String>,
    log: PolicyLog,
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl PolicyAdmin {
    /// Administration of the policy log in `store`, sealed with `keys` (the first seals, any
    /// verifies); no replica name or policy file yet.
    pub fn new(store: Arc<dyn StateStore>, keys: Vec<[u8; 32]>) -> Self {
        Self {
            state: tokio::sync::Mutex::default(),
            replica: Mutex::default(),
            log: PolicyLog {
                store,
                keys,
                refused: Mutex::default(),
                head_old_key: AtomicBool::new(false),
            },
        }
    }

    /// The version history and audit trail, oldest first (the entries that verify).
    pub async fn versions(&self) -> Result<Vec<PolicyChange>, StoreError> {
        self.log.changes(0).await
    }

    /// Names this replica in the audit trail of file changes, and sets the policy file to watch
    /// (`None`: the embedded policy, nothing to watch).
    pub async fn set_source(&self, replica: &str, file: Option<PathBuf>) {
        let mut st = self.state.lock().await;
        st.file = file.map(|f| {
            let s = stamp(&f);
            (f, s)
        });
        *self.replica.lock().unwrap_or_else(PoisonError::into_inner) = replica.to_string();
    }

    fn replica(&self) -> String {
        self.replica
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Startup: reconcile the policy this replica was started with and the shared log.
    pub async fn init(&self, live: Live<'_>, now_ms: u64) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        self.init_locked(live, &mut st, now_ms).await
    }

    async fn init_locked(
        &self,
        live: Live<'_>,
        st: &mut AdminState,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let log = self.log.changes(0).await?;
        st.last_seen = log.last().map(Seen::of);
        let mine = live.router.table().policy.clone();
        let last_file = log
            .iter()
            .rev()
            .find(|c| ChangeSource::is_file_name(&c.source));
        let head = log.last();
        match (last_file, head) {
            // Another replica just recorded this very policy.
            (_, Some(h)) if h.version == mine.version => {
                st.initialized = true;
                Ok(())
            }
            (Some(f), Some(h)) if f.version == mine.version => {
                if h.version != mine.version {
                    // Changed through the API since this file was loaded: the log wins.
                    match parse_next(&h.text) {
                        Ok(p) => {
                            tracing::info!(version = %h.version, "policy from the shared log");
                            live.fold.swap_policy(live.router, Arc::new(p)).await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "shared policy log head is invalid; keeping the file's")
                        }
                    }
                }
                st.initialized = true;
                Ok(())
            }
            // A file the history has seen before (e.g. an old pod restarting mid-rollout) does
            // not take the fleet back: follow the history's head.
            (_, Some(h)) if log.iter().any(|c| c.version == mine.version) => {
                match parse_next(&h.text) {
                    Ok(p) => {
                        tracing::warn!(file = %mine.version, live = %h.version, "this replica's policy file is an older version; following the shared history");
                        live.fold.swap_policy(live.router, Arc::new(p)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "shared policy head is not usable here; keeping the file's")
                    }
                }
                st.initialized = true;
                Ok(())
            }
            _ => {
                let summary = match head.and_then(|h| Policy::parse(&h.text).ok()) {
                    Some(prev) => crate::domain::policy::diff(&prev, &mine),
                    None => vec!["first policy of this deployment".into()],
                };
                self.record_live(st, &mine, "policy loaded at startup", summary, now_ms)
                    .await?;
                st.initialized = true;
                Ok(())
            }
        }
    }

    /// Records `policy` (already live here) in the shared history as this replica's `startup`
    /// change, and moves the cursor past it.
    async fn record_live(
        &self,
        st: &mut AdminState,
        policy: &Policy,
        reason: &str,
        summary: Vec<String>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let change = PolicyChange {
            seq: 0,
            version: policy.version.clone(),
            source: ChangeSource::Startup.as_str().into(),
            author: self.replica(),
            reason: reason.into(),
            at_ms: now_ms,
            summary,
            text: policy.source.to_string(),
            mac: String::new(),
        };
        let seq = self.log.append(&change).await?;
        st.last_seen = Some(Seen::of(&PolicyChange { seq, ..change }));
        Ok(())
    }

    /// Validates `text` and makes it the live policy on every replica. On error nothing changes.
    pub async fn apply(
        &self,
        live: Live<'_>,
        text: &str,
        source: ChangeSource,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, Error> {
        let _one = self.state.lock().await;
        self.apply_locked(live, text, source, author, reason, now_ms)
            .await
    }

    async fn apply_locked(
        &self,
        live: Live<'_>,
        text: &str,
        source: ChangeSource,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, Error> {
        let new = parse_next(text)?;
        let current = live.router.table().policy.clone();
        if new.version == current.version {
            return Err(Error::AlreadyLive(new.version));
        }
        let change = PolicyChange {
            seq: 0,
            version: new.version.clone(),
            source: source.as_str().into(),
            author: author.into(),
            reason: reason.into(),
            at_ms: now_ms,
            summary: crate::domain::policy::diff(&current, &new),
            // The text the version is of: a deprecated [store] table stays out of the history.
            text: new.source.to_string(),
            mac: String::new(),
        };
        let seq = self
            .log
            .append(&change)
            .await
            .map_err(Error::store("policy change not recorded"))?;
        live.fold.swap_policy(live.router, Arc::new(new)).await;
        tracing::info!(version = %change.version, source = %source.as_str(), %author, changes = ?change.summary, "policy applied");
        Ok(PolicyChange { seq, ..change })
    }

    /// Makes an earlier version live again (`None`: the one before the live one).
    pub async fn rollback(
        &self,
        live: Live<'_>,
        version: Option<&str>,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, Error> {
        let _one = self.state.lock().await;
        let log = self
            .log
            .changes(0)
            .await
            .map_err(Error::store("policy change not recorded"))?;
        let current = live.router.table().policy.version.clone();
        let target = match version {
            Some(v) => log.iter().rev().find(|c| c.version == v),
            None => log.iter().rev().find(|c| c.version != current),
        }
        .ok_or_else(|| Error::UnknownVersion(version.unwrap_or("previous").into()))?;
        let text = target.text.clone();
        self.apply_locked(live, &text, ChangeSource::Rollback, author, reason, now_ms)
            .await
    }

    /// Background duty: follow changes other replicas made, then reload the policy file if it
    /// changed (or `force`, on SIGHUP). An invalid file is logged with its key path and the
    /// live policy stays.
    pub async fn refresh(
        &self,
        live: Live<'_>,
        force_reload: bool,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        if !st.initialized {
            self.init_locked(live, &mut st, now_ms).await?;
        }
        let Some(changes) = self.unseen_changes(live, &mut st, now_ms).await? else {
            return Ok(());
        };
        if let Some(last) = changes.last() {
            st.last_seen = Some(Seen::of(last));
            if last.version != live.router.table().policy.version {
                match parse_next(&last.text) {
                    Ok(p) => {
                        tracing::info!(version = %last.version, author = %last.author, "policy changed on another replica");
                        live.fold.swap_policy(live.router, Arc::new(p)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, version = %last.version, "shared policy change is not usable here; keeping the live one")
                    }
                }
            }
        }
        if self.log.head_sealed_with_old_key() {
            self.reseal_head(&mut st).await?;
        }
        self.reload_file(live, &mut st, force_reload, now_ms).await
    }

    /// The changes in the log after the last one seen. `None`: the store lost the history and
    /// nobody had started it again, so this replica recorded its live policy as the first entry
    /// (nothing more to follow this round).
    async fn unseen_changes(
        &self,
        live: Live<'_>,
        st: &mut AdminState,
        now_ms: u64,
    ) -> Result<Option<Vec<PolicyChange>>, StoreError> {
        // Read from the last change already seen: if even that is gone, the store lost its data
        // (a Redis without persistence restarted); record the live policy again and go on.
        let mut changes = self.log.changes(st.cursor().saturating_sub(1)).await?;
        let Some(seen) = st.last_seen.clone() else {
            return Ok(Some(changes));
        };
        // Shorter than seen, or another change where the last seen one was: the store lost it.
        // If another replica has already started the history again (and perhaps changed the
        // policy since), follow that history; recording this replica's policy over it would
        // undo a change made after the loss.
        if changes.first().is_some_and(|c| Seen::of(c) == seen) {
            changes.remove(0);
            return Ok(Some(changes));
        }
        let restarted = self.log.changes(0).await?;
        if restarted.is_empty() {
            tracing::warn!(
                cursor = st.cursor(),
                "policy history is shorter than seen: the store lost it; recording the live policy again"
            );
            let current = live.router.table().policy.clone();
            let why = "policy history lost by the store; live policy recorded again";
            let summary = vec!["history restarted".into()];
            self.record_live(st, &current, why, summary, now_ms).await?;
            return Ok(None);
        }
        tracing::warn!(
            cursor = st.cursor(),
            entries = restarted.len(),
            "policy history was lost by the store and started again by another replica; following it"
        );
        Ok(Some(restarted))
    }

    /// A rotation of the decision secret: the head was sealed with the secret going away.
    /// Sealed again with the current one, the live policy (and the API changes in it) outlives
    /// the old secret; the entries before stay readable only while it is kept.
    async fn reseal_head(&self, st: &mut AdminState) -> Result<(), StoreError> {
        // The head, and before it the last file-loaded entry (startup reconciliation tells a
        // new rollout from a restart by it), copied as they are.
        let log = self.log.changes(0).await?;
        let head = log.last().cloned();
        let last_file = log
            .iter()
            .rev()
            .find(|c| ChangeSource::is_file_name(&c.source))
            .filter(|f| head.as_ref().is_some_and(|h| h.seq != f.seq))
            .cloned();
        for c in last_file.into_iter().chain(head) {
            let again = PolicyChange {
                reason: format!(
                    "{} (sealed again after a decision secret rotation)",
                    c.reason
                ),
                mac: String::new(),
                ..c
            };
            let seq = self.log.append(&again).await?;
            st.last_seen = Some(Seen::of(&PolicyChange { seq, ..again }));
        }
        tracing::info!("policy log head sealed again after a decision secret rotation");
        Ok(())
    }

    /// Reloads the watched policy file if its stamp changed (or `force_reload`). An unreadable
    /// or invalid file is logged and the live policy stays; a store failure is returned, and
    /// the file tried again next time.
    async fn reload_file(
        &self,
        live: Live<'_>,
        st: &mut AdminState,
        force_reload: bool,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some((path, seen)) = st.file.clone() else {
            return Ok(());
        };
        let now_stamp = stamp(&path);
        if !force_reload && now_stamp == seen {
            return Ok(());
        }
        if let Some((_, s)) = st.file.as_mut() {
            *s = now_stamp;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "policy file unreadable; keeping the live policy");
                return Ok(());
            }
        };
        let why = if force_reload {
            "SIGHUP"
        } else {
            "file changed"
        };
        let author = self.replica();
        match self
            .apply_locked(live, &text, ChangeSource::File, &author, why, now_ms)
            .await
        {
            Ok(_) | Err(Error::AlreadyLive(_)) => Ok(()),
            Err(Error::Store { source: e, .. }) => {
                // Try again next time.
                if let Some((_, s)) = st.file.as_mut() {
                    *s = seen;
                }
                Err(e)
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "policy file rejected; keeping the live policy");
                Ok(())
            }
        }
    }
}

/// Parses `text` as this replica's next policy: submitted here (the API, its policy file) or
/// read from the shared history (another replica's change, the history's head at start). A
/// deprecated `[store]` table in it is ignored with a warning: deployment settings are read
/// once at start and a policy never changes the running store (nor, being left out of the
/// version, tells replicas with different store settings apart).
pub fn parse_next(text: &str) -> Result<Policy, PolicyError> {
    let split = crate::domain::policy::split_store(text)?;
    let policy = Policy::parse(text)?;
    if split.store.is_some() {
        tracing::warn!(
            version = %policy.version,
            "a policy's [store] table is deprecated and ignored once running: the store is deployment config, read at startup"
        );
    }
    Ok(policy)
}
