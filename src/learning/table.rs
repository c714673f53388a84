//! The routing table: the live policy and one plan per scope, immutable and swapped whole.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::classifier::Calibration;
use crate::policy::Policy;

/// What routing reads: the live policy and one plan per scope. Immutable; swapped whole.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// The live policy.
    pub policy: Arc<Policy>,
    /// Scope key → plan. Every scope of the policy has one.
    pub plans: HashMap<String, Arc<ScopePlan>>,
    /// The default scope's plan (also in `plans`), so a lookup always has an answer.
    pub default: Arc<ScopePlan>,
}

impl RoutingTable {
    /// Plans every scope of `policy` from the calibration and the evidence so far.
    pub fn build(
        policy: Arc<Policy>,
        cal: &Calibration,
        evidence: &HashMap<String, ScopeEvidence>,
        previous: Option<&RoutingTable>,
    ) -> Self {
        let plans = policy
            .all_scopes()
            .into_iter()
            .map(|scope| {
                let prev = previous
                    .and_then(|p| p.plans.get(&scope.key))
                    .map(|p| p.as_ref());
                let plan = plan_scope(&policy, scope, cal, evidence.get(&scope.key), prev);
                (scope.key.clone(), Arc::new(plan))
            })
            .collect::<HashMap<_, _>>();
        // all_scopes() always yields the default scope, so the fallback never runs.
        let default = plans.get("default").cloned().unwrap_or_else(|| {
            Arc::new(plan_scope(
                &policy,
                &policy.default,
                cal,
                evidence.get("default"),
                None,
            ))
        });
        Self {
            policy,
            plans,
            default,
        }
    }

    /// Re-plans one scope after new evidence, sharing every other plan.
    pub fn with_scope(&self, key: &str, cal: &Calibration, evidence: &ScopeEvidence) -> Self {
        let mut plans = self.plans.clone();
        let scope = self
            .policy
            .all_scopes()
            .into_iter()
            .find(|s| s.key == key)
            .cloned();
        if let Some(scope) = scope {
            let prev = self.plans.get(key).map(|p| p.as_ref());
            let plan = plan_scope(&self.policy, &scope, cal, Some(evidence), prev);
            plans.insert(key.to_string(), Arc::new(plan));
        }
        let default = plans
            .get("default")
            .cloned()
            .unwrap_or_else(|| self.default.clone());
        Self {
            policy: self.policy.clone(),
            plans,
            default,
        }
    }

    /// The plan of a scope key; the default plan for a key the policy does not have.
    pub fn plan(&self, key: &str) -> &Arc<ScopePlan> {
        self.plans.get(key).unwrap_or(&self.default)
    }
}
