//! Policy administration: versioned changes with an audit trail, hot reload of the policy file,
//! rollback, and what-if replays of a proposed policy.
//!
//! Every change — at startup, from the file (on change or SIGHUP), from `ApplyPolicy` or
//! `RollbackPolicy` — is validated first (an invalid one changes nothing and names the key path),
//! then appended to the store's policy log, then made live. The log is the version history and
//! the audit trail in one; every replica follows it on refresh, so a change made on one replica
//! reaches all of them. At startup a replica's file wins only if it differs from the file the
//! log last saw (a new deployment); otherwise the log's latest version wins (an API change
//! survives restarts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::feedback::Engine;
use crate::learning::RoutingTable;
use crate::policy::{Policy, PolicyError};
use crate::store::{OutcomeEvent, PolicyChange, StoreError};

/// Why a policy change was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    /// The text is not a valid policy.
    #[error("invalid policy: {0}")]
    Invalid(#[from] PolicyError),
    /// The version is already live.
    #[error("policy version {0} is already live")]
    AlreadyLive(String),
    /// No such version in the log.
    #[error("policy version {0:?} is not in the version history")]
    UnknownVersion(String),
    /// The store could not record the change.
    #[error("policy change not recorded: {0}")]
    Store(#[from] StoreError),
}

#[derive(Default)]
struct AdminState {
    /// Position in the store's policy log up to which changes are seen.
    cursor: u64,
    /// The policy file being watched, with the stamp (mtime, length) last loaded.
    file: Option<(PathBuf, Option<(SystemTime, u64)>)>,
    /// Whether the startup reconciliation with the shared history has run (it waits for the
    /// store if it was down at startup).
    initialized: bool,
}

/// Per-replica policy administration state.
#[derive(Default)]
pub struct PolicyAdmin {
    state: tokio::sync::Mutex<AdminState>,
    replica: std::sync::Mutex<String>,
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Projected outcome of the recent window in one scope.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WhatIfScope {
    /// Scope key under the proposed policy.
    pub scope: String,
    /// Outcomes in the window that fall in this scope.
    pub tasks: u64,
    /// What those tasks actually cost (their tokens on the tier that ran), micro-USD.
    pub actual_spend_micros: i64,
    /// Their observed average score.
    pub actual_quality: f64,
    /// The live policy re-deciding the same tasks now, micro-USD.
    pub live_spend_micros: i64,
    /// Its projected quality.
    pub live_quality: f64,
    /// The proposed policy deciding the same tasks, micro-USD.
    pub proposed_spend_micros: i64,
    /// Its projected quality.
    pub proposed_quality: f64,
    /// The scope's bar under the live policy.
    pub live_bar: f64,
    /// The scope's bar under the proposal.
    pub proposed_bar: f64,
    /// Tier → tasks, as they ran.
    pub actual_mix: BTreeMap<String, u64>,
    /// Tier → tasks, under the proposal.
    pub proposed_mix: BTreeMap<String, u64>,
}

/// What-if result: per scope, and everything.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WhatIf {
    /// Per scope, by key.
    pub scopes: Vec<WhatIfScope>,
    /// All scopes together (key `total`; bars averaged over tasks).
    pub total: WhatIfScope,
}

/// Re-decides one recorded outcome under a table: (tier, projected quality, cost micros). The
/// observed score stands where the tier is the one that ran; elsewhere the plan's prediction.
fn project(table: &RoutingTable, e: &OutcomeEvent) -> (String, f64, i64, f64) {
    let policy = &table.policy;
    let scope = policy.resolve(&e.team, &e.workflow);
    let plan = table.plan(&scope.key).for_team(&e.team);
    let band = usize::from(e.band).min(crate::learning::BANDS - 1);
    let costs: Vec<i64> = plan
        .tiers
        .iter()
        .map(|t| policy.tiers[t.tier].cost_micros(e.input_tokens, e.output_tokens))
        .collect();
    let usd: Vec<f64> = costs.iter().map(|c| *c as f64 / 1e6).collect();
    let curves = plan.tiers_for(&e.workflow);
    let slot = plan.slot_in(curves, f64::from(e.complexity), band, &usd);
    let tier = &policy.tiers[curves[slot].tier];
    let quality = if tier.name == e.tier {
        e.score
    } else {
        curves[slot].predicted[band]
    };
    (tier.name.clone(), quality, costs[slot], scope.quality_bar)
}

/// Replays `window` under the live and the proposed tables.
pub fn what_if(live: &RoutingTable, proposed: &RoutingTable, window: &[OutcomeEvent]) -> WhatIf {
    #[derive(Default)]
    struct Acc {
        s: WhatIfScope,
        actual_q: f64,
        live_q: f64,
        proposed_q: f64,
        live_bar: f64,
        proposed_bar: f64,
    }
    let mut by: BTreeMap<String, Acc> = BTreeMap::new();
    let mut total = Acc::default();
    // Outcomes logged before events carried team and complexity cannot be re-decided.
    for e in window.iter().filter(|e| e.complexity > 0.0) {
        let actual_cost = live.policy.tier_index(&e.tier).map_or(0, |i| {
            live.policy.tiers[i].cost_micros(e.input_tokens, e.output_tokens)
        });
        let (_, lq, lc, lbar) = project(live, e);
        let (pt, pq, pc, pbar) = project(proposed, e);
        let key = proposed.policy.resolve(&e.team, &e.workflow).key.clone();
        for acc in [by.entry(key).or_default(), &mut total] {
            acc.s.tasks += 1;
            acc.s.actual_spend_micros += actual_cost;
            acc.s.live_spend_micros += lc;
            acc.s.proposed_spend_micros += pc;
            acc.actual_q += e.score;
            acc.live_q += lq;
            acc.proposed_q += pq;
            acc.live_bar += lbar;
            acc.proposed_bar += pbar;
            *acc.s.actual_mix.entry(e.tier.clone()).or_default() += 1;
            *acc.s.proposed_mix.entry(pt.clone()).or_default() += 1;
        }
    }
    let finish = |key: String, a: Acc| {
        let n = a.s.tasks.max(1) as f64;
        WhatIfScope {
            scope: key,
            actual_quality: a.actual_q / n,
            live_quality: a.live_q / n,
            proposed_quality: a.proposed_q / n,
            live_bar: a.live_bar / n,
            proposed_bar: a.proposed_bar / n,
            ..a.s
        }
    };
    WhatIf {
        scopes: by.into_iter().map(|(k, a)| finish(k, a)).collect(),
        total: finish("total".into(), total),
    }
}

impl Engine {
    /// Names this replica in the audit trail of file changes, and sets the policy file to watch
    /// (`None`: the embedded policy, nothing to watch).
    pub async fn set_policy_source(&self, replica: &str, file: Option<PathBuf>) {
        let mut st = self.policy_admin.state.lock().await;
        st.file = file.map(|f| {
            let s = stamp(&f);
            (f, s)
        });
        *self
            .policy_admin
            .replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = replica.to_string();
    }

    fn replica(&self) -> String {
        self.policy_admin
            .replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Startup: reconcile the policy this replica was started with and the shared log.
    pub async fn init_policy(&self, now_ms: u64) -> Result<(), StoreError> {
        let mut st = self.policy_admin.state.lock().await;
        self.init_locked(&mut st, now_ms).await
    }

    async fn init_locked(&self, st: &mut AdminState, now_ms: u64) -> Result<(), StoreError> {
        let store = self.learner.store();
        let log = store.policy_changes(0).await?;
        st.cursor = log.len() as u64;
        let mine = self.router.table().policy.clone();
        let last_file = log
            .iter()
            .rev()
            .find(|c| c.source == "startup" || c.source == "file");
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
                    match Policy::parse(&h.text) {
                        Ok(p) if p.store == mine.store => {
                            tracing::info!(version = %h.version, "policy from the shared log");
                            self.learner.swap_policy(&self.router, Arc::new(p)).await;
                        }
                        Ok(_) => {
                            tracing::warn!(version = %h.version, "shared policy has another [store] section; keeping the file's")
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
                match self.validate_policy(&h.text) {
                    Ok(p) => {
                        tracing::warn!(file = %mine.version, live = %h.version, "this replica's policy file is an older version; following the shared history");
                        self.learner.swap_policy(&self.router, Arc::new(p)).await;
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
                    Some(prev) => crate::policy::diff(&prev, &mine),
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
            source: "startup".into(),
            author: self.replica(),
            reason: reason.into(),
            at_ms: now_ms,
            summary,
            text: policy.source.to_string(),
        };
        let seq = self.learner.store().append_policy_change(&change).await?;
        st.cursor = seq + 1;
        Ok(())
    }

    /// Validates `text` and makes it the live policy on every replica. On error nothing changes.
    pub async fn apply_policy(
        &self,
        text: &str,
        source: &str,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, AdminError> {
        let _one = self.policy_admin.state.lock().await;
        self.apply_locked(text, source, author, reason, now_ms)
            .await
    }

    async fn apply_locked(
        &self,
        text: &str,
        source: &str,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, AdminError> {
        let new = self.validate_policy(text)?;
        let live = self.router.table().policy.clone();
        if new.version == live.version {
            return Err(AdminError::AlreadyLive(new.version));
        }
        let change = PolicyChange {
            seq: 0,
            version: new.version.clone(),
            source: source.into(),
            author: author.into(),
            reason: reason.into(),
            at_ms: now_ms,
            summary: crate::policy::diff(&live, &new),
            text: text.into(),
        };
        let seq = self.learner.store().append_policy_change(&change).await?;
        self.learner.swap_policy(&self.router, Arc::new(new)).await;
        tracing::info!(version = %change.version, %source, %author, changes = ?change.summary, "policy applied");
        Ok(PolicyChange { seq, ..change })
    }

    /// Parses `text` as a replacement of the live policy. The `[store]` section cannot change
    /// while running.
    pub fn validate_policy(&self, text: &str) -> Result<Policy, PolicyError> {
        let new = Policy::parse(text)?;
        if new.store != self.router.table().policy.store {
            return Err(PolicyError {
                path: "store".into(),
                reason: "the [store] section cannot change while running; restart with it".into(),
            });
        }
        Ok(new)
    }

    /// Makes an earlier version live again (`None`: the one before the live one).
    pub async fn rollback_policy(
        &self,
        version: Option<&str>,
        author: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<PolicyChange, AdminError> {
        let _one = self.policy_admin.state.lock().await;
        let log = self.learner.store().policy_changes(0).await?;
        let live = self.router.table().policy.version.clone();
        let target = match version {
            Some(v) => log.iter().rev().find(|c| c.version == v),
            None => log.iter().rev().find(|c| c.version != live),
        }
        .ok_or_else(|| AdminError::UnknownVersion(version.unwrap_or("previous").into()))?;
        let text = target.text.clone();
        self.apply_locked(&text, "rollback", author, reason, now_ms)
            .await
    }

    /// The version history and audit trail, oldest first.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyChange>, StoreError> {
        self.learner.store().policy_changes(0).await
    }

    /// Background duty: follow changes other replicas made, then reload the policy file if it
    /// changed (or `force`, on SIGHUP). An invalid file is logged with its key path and the
    /// live policy stays.
    pub async fn refresh_policy(&self, force_reload: bool, now_ms: u64) -> Result<(), StoreError> {
        let mut st = self.policy_admin.state.lock().await;
        if !st.initialized {
            self.init_locked(&mut st, now_ms).await?;
        }
        // Read from the last change already seen: if even that is gone, the store lost its data
        // (a Redis without persistence restarted); record the live policy again and go on.
        let mut changes = self
            .learner
            .store()
            .policy_changes(st.cursor.saturating_sub(1))
            .await?;
        if st.cursor > 0 {
            if changes.is_empty() {
                tracing::warn!(
                    cursor = st.cursor,
                    "policy history is shorter than seen: the store lost it; recording the live policy again"
                );
                let live = self.router.table().policy.clone();
                let why = "policy history lost by the store; live policy recorded again";
                self.record_live(
                    &mut st,
                    &live,
                    why,
                    vec!["history restarted".into()],
                    now_ms,
                )
                .await?;
                return Ok(());
            }
            changes.remove(0);
        }
        if let Some(last) = changes.last() {
            st.cursor = last.seq + 1;
            if last.version != self.router.table().policy.version {
                match self.validate_policy(&last.text) {
                    Ok(p) => {
                        tracing::info!(version = %last.version, author = %last.author, "policy changed on another replica");
                        self.learner.swap_policy(&self.router, Arc::new(p)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, version = %last.version, "shared policy change is not usable here; keeping the live one")
                    }
                }
            }
        }
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
        match self.apply_locked(&text, "file", &author, why, now_ms).await {
            Ok(_) | Err(AdminError::AlreadyLive(_)) => Ok(()),
            Err(AdminError::Store(e)) => {
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

    /// Replays the recent window under the live policy and under `proposed`.
    pub async fn what_if(&self, proposed: Arc<Policy>) -> WhatIf {
        let (window, evidence) = self.learner.window().await;
        let live = self.router.table();
        let proposed_table =
            RoutingTable::build(proposed, self.learner.calibration(), &evidence, Some(&live));
        what_if(&live, &proposed_table, &window)
    }
}
