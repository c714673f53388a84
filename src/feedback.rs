//! Outcome feedback: issue signed decision ids, validate feedback, apply each decision's
//! outcome exactly once to its scope's evidence, re-plan that scope and publish the new table.
//!
//! Route never waits on this: it reads the published table, while feedback holds the learner's
//! lock only to update evidence and swap the table.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::classifier::Calibration;
use crate::decision::{DecisionClaims, Signer, TokenError};
use crate::learning::{BANDS, ScopeEvidence, TaskShape};
use crate::routing::{Decision, Router};

/// Default lifetime of a decision id: feedback later than this is refused.
pub const DEFAULT_DECISION_TTL_MS: u64 = 24 * 3600 * 1000;

/// One outcome report.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackInput<'a> {
    /// Decision id from Route.
    pub decision_id: &'a str,
    /// Outcome score in [0, 1].
    pub score: f64,
    /// Actual input tokens.
    pub input_tokens: i64,
    /// Actual output tokens.
    pub output_tokens: i64,
    /// Whether the output was reused.
    pub reused: bool,
}

/// Why feedback was refused. Nothing changes on any of these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    /// A field is out of range.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The decision id does not verify.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The decision id is older than the TTL.
    #[error("decision_id expired: issued {age_s} s ago, feedback is accepted for {ttl_s} s")]
    Expired {
        /// Age of the decision.
        age_s: u64,
        /// The TTL.
        ttl_s: u64,
    },
    /// Feedback for this decision was already applied.
    #[error("feedback for this decision_id was already recorded")]
    AlreadyRecorded,
}

/// What accepted feedback did.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackAck {
    /// Scope updated.
    pub scope: String,
    /// Tier that ran.
    pub tier: String,
    /// Actual cost in USD (0 if the tier is no longer in the policy).
    pub actual_cost_usd: f64,
}

#[derive(Default)]
struct LearnerState {
    evidence: HashMap<String, ScopeEvidence>,
    /// Nonces of decisions whose feedback was applied, until they expire.
    spent: HashSet<u64>,
    /// (expiry ms, nonce) in expiry order, to forget spent nonces once they can no longer come.
    expiries: BTreeSet<(u64, u64)>,
}

/// Issues decision ids and learns from feedback.
pub struct Learner {
    signer: Signer,
    ttl_ms: u64,
    learning: bool,
    calibration: Calibration,
    state: Mutex<LearnerState>,
}

impl Learner {
    /// A learner. With `learning` off, feedback is validated and ledgered but thresholds stay at
    /// their cold-start values (the replay baseline).
    pub fn new(signer: Signer, ttl_ms: u64, calibration: Calibration, learning: bool) -> Self {
        Self {
            signer,
            ttl_ms,
            learning,
            calibration,
            state: Mutex::new(LearnerState::default()),
        }
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
        self.signer.sign(&DecisionClaims {
            scope: d.scope.clone(),
            tier: d.tier().name.clone(),
            band: d.band.min(BANDS - 1) as u8,
            complexity: d.complexity as f32,
            explored: d.explored,
            team: team.to_string(),
            workflow: workflow.to_string(),
            policy_version: d.policy_version.clone(),
            issued_ms: now_ms,
            nonce,
        })
    }

    /// Validates and applies one outcome; on any error nothing changes.
    pub fn feedback(
        &self,
        router: &Router,
        input: &FeedbackInput<'_>,
        now_ms: u64,
    ) -> Result<FeedbackAck, FeedbackError> {
        if !(0.0..=1.0).contains(&input.score) {
            return Err(FeedbackError::InvalidArgument {
                field: "score",
                reason: format!("must be a number in [0, 1], got {}", input.score),
            });
        }
        for (field, v) in [
            ("input_tokens", input.input_tokens),
            ("output_tokens", input.output_tokens),
        ] {
            if v < 0 {
                return Err(FeedbackError::InvalidArgument {
                    field,
                    reason: format!("must be ≥ 0, got {v}"),
                });
            }
        }
        if input.decision_id.is_empty() {
            return Err(FeedbackError::InvalidArgument {
                field: "decision_id",
                reason: "must not be empty".into(),
            });
        }
        let claims = self.signer.verify(input.decision_id)?;
        let expiry = claims.issued_ms.saturating_add(self.ttl_ms);
        if now_ms > expiry {
            return Err(FeedbackError::Expired {
                age_s: (now_ms - claims.issued_ms) / 1000,
                ttl_s: self.ttl_ms / 1000,
            });
        }
        let table = router.table();
        let actual_cost_usd = table
            .policy
            .tier_index(&claims.tier)
            .map(|i| {
                table.policy.tiers[i]
                    .cost_usd(input.input_tokens as u64, input.output_tokens as u64)
            })
            .unwrap_or(0.0);

        // A poisoned lock only means another feedback panicked mid-update; the maps stay usable.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(exp, nonce)) = state.expiries.first() {
            if exp >= now_ms {
                break;
            }
            state.expiries.pop_first();
            state.spent.remove(&nonce);
        }
        if !state.spent.insert(claims.nonce) {
            return Err(FeedbackError::AlreadyRecorded);
        }
        state.expiries.insert((expiry, claims.nonce));
        let evidence = state.evidence.entry(claims.scope.clone()).or_default();
        let shape = TaskShape {
            band: claims.band,
            input_tokens: input.input_tokens as u64,
            output_tokens: input.output_tokens as u64,
        };
        evidence.observe(&claims.tier, shape, input.score);
        evidence.observe_output(&claims.workflow, shape.output_tokens);
        if self.learning {
            // Re-plan under the lock so concurrent feedbacks publish in order.
            let next = router
                .table()
                .with_scope(&claims.scope, &self.calibration, evidence);
            router.publish(next);
        }
        Ok(FeedbackAck {
            scope: claims.scope,
            tier: claims.tier,
            actual_cost_usd,
        })
    }

    /// A copy of the evidence of every scope (for views and tests).
    pub fn evidence(&self) -> HashMap<String, ScopeEvidence> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evidence
            .clone()
    }

    /// Whether thresholds learn from feedback.
    pub fn is_learning(&self) -> bool {
        self.learning
    }
}

/// The router and the learner that feeds it: what `serve` and `replay` both run.
pub struct Engine {
    /// Decides.
    pub router: Router,
    /// Learns.
    pub learner: Learner,
}

impl Engine {
    /// Builds an engine from a model and a policy with no evidence yet.
    pub fn new(
        model: Arc<crate::classifier::ComplexityModel>,
        policy: Arc<crate::policy::Policy>,
        limits: crate::routing::Limits,
        signer: Signer,
        ttl_ms: u64,
        learning: bool,
    ) -> Self {
        let table =
            crate::learning::RoutingTable::build(policy, &model.calibration, &HashMap::new(), None);
        let learner = Learner::new(signer, ttl_ms, model.calibration.clone(), learning);
        Self {
            router: Router::new(model, table, limits),
            learner,
        }
    }
}
