//! Decision ids: Route signs one per decision, Feedback and RecordReuse verify it. The id is the
//! decision (its claims travel in it), so verifying it is all the state a report needs; what
//! this piece keeps besides the signer is the TTL and the store's data-since instant.

use std::sync::atomic::{AtomicU64, Ordering};

use super::FeedbackError;
use crate::domain::decision::{ClaimsRef, DecisionClaims, NO_CLUSTER, Signer};
use crate::domain::learning::BANDS;
use crate::domain::routing::Decision;
use crate::store::{StateStore, StoreError};

/// Clock difference between replicas tolerated when comparing a decision's issue time (one
/// replica's clock) with the store's data-since instant (another's).
pub const CLOCK_SKEW_MS: u64 = 1_000;

/// Signs and verifies decision ids: who owns a decision, how long it takes feedback (the TTL),
/// and whether the store can still tell if it was reported before (its data-since instant).
pub struct DecisionIds {
    signer: Signer,
    /// Lifetime of a decision id: feedback later than this is refused.
    ttl_ms: u64,
    /// The store's data-since instant (ms), as last read: decisions issued before it (less
    /// [`CLOCK_SKEW_MS`]) are refused.
    data_since_ms: AtomicU64,
    /// The first data-since instant this process read.
    first_data_since_ms: AtomicU64,
}

impl DecisionIds {
    /// Ids signed with `signer` that take feedback for `ttl_ms`; no data-since instant read yet.
    pub fn new(signer: Signer, ttl_ms: u64) -> Self {
        Self {
            signer,
            ttl_ms,
            data_since_ms: AtomicU64::new(0),
            first_data_since_ms: AtomicU64::new(0),
        }
    }

    /// How long a decision id takes feedback, ms.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Signs the id of a decision.
    pub fn issue(
        &self,
        d: &Decision,
        team: &str,
        workflow: &str,
        now_ms: u64,
        nonce: u64,
    ) -> String {
        self.signer.sign(&ClaimsRef {
            scope: &d.scope,
            tier: &d.tier().name,
            band: d.band.min(BANDS - 1) as u8,
            complexity: d.complexity as f32,
            gap: d.gap as f32,
            explored: d.explored,
            pair: Some(d.exploration_pair().is_some()),
            team,
            workflow,
            policy_version: &d.policy_version,
            issued_ms: now_ms,
            nonce,
            estimate_micros: d.tier().cost_micros.max(0) as u64,
            premium_micros: d.premium_micros().max(0) as u64,
            input_tokens: u32::try_from(d.input_tokens).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(d.output_tokens).unwrap_or(u32::MAX),
            cluster: d.cluster.unwrap_or(NO_CLUSTER),
            sketch: &d.sketch,
            propensity: Some(d.propensity as f32),
            premium_propensity: Some(d.premium_propensity as f32),
            shadow_tier: d.shadow.map_or("", |s| d.candidates[s].name.as_str()),
        })
    }

    /// [`DecisionIds::verify`], and that the decision is within its TTL at `now_ms`: what
    /// Feedback accepts.
    pub fn verify_unexpired(
        &self,
        decision_id: &str,
        caller_team: Option<&str>,
        now_ms: u64,
    ) -> Result<DecisionClaims, FeedbackError> {
        let claims = self.verify(decision_id, caller_team)?;
        if now_ms > claims.issued_ms.saturating_add(self.ttl_ms) {
            return Err(FeedbackError::Expired {
                age_s: (now_ms - claims.issued_ms) / 1000,
                ttl_s: self.ttl_ms / 1000,
            });
        }
        Ok(claims)
    }

    /// Verifies a decision id and that the caller (a service key's team, if any) owns it, and
    /// that the store can still tell whether it was reported before.
    pub fn verify(
        &self,
        decision_id: &str,
        caller_team: Option<&str>,
    ) -> Result<DecisionClaims, FeedbackError> {
        let claims = self.signer.verify(decision_id)?;
        if let Some(team) = caller_team
            && team != claims.team
        {
            return Err(FeedbackError::PermissionDenied {
                owner: claims.team,
                caller: team.to_string(),
            });
        }
        // A verified id still names a scope and a team; one team's id never reaches another
        // team's private scope, whoever signed it.
        if !crate::domain::policy::scope_admits(&claims.scope, &claims.team) {
            return Err(FeedbackError::ScopeMismatch {
                scope: claims.scope,
                team: claims.team,
            });
        }
        if claims.issued_ms.saturating_add(CLOCK_SKEW_MS)
            < self.data_since_ms.load(Ordering::Relaxed)
        {
            return Err(FeedbackError::BeforeStoreReset);
        }
        Ok(claims)
    }

    /// Reads the store's data-since instant: decisions issued before it are refused from now
    /// on. Read on every refresh, not only when the log looks shorter than the fold's cursor:
    /// after a loss, other replicas' new outcomes can outgrow the old cursor before this one
    /// folds.
    pub async fn read_data_since(
        &self,
        store: &dyn StateStore,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let ms = store.data_since_ms(now_ms).await?;
        let before = self.data_since_ms.swap(ms, Ordering::Relaxed);
        if before == 0 {
            self.first_data_since_ms.store(ms, Ordering::Relaxed);
        } else if ms > before {
            tracing::warn!(
                data_since_ms = ms,
                "the store lost its data: feedback for decisions issued before now is refused"
            );
        }
        Ok(())
    }

    /// Whether the store's data began after this process first read it (it lost its data since).
    pub fn data_reset_seen(&self) -> bool {
        let first = self.first_data_since_ms.load(Ordering::Relaxed);
        first != 0 && self.data_since_ms.load(Ordering::Relaxed) > first
    }
}
