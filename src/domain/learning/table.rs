//! The routing table: the live policy and one plan per scope, immutable and swapped whole.

use std::collections::HashMap;
use std::sync::Arc;

use super::evidence::{ScopeEvidence, cluster_id};
use super::plan::{plan_scope, replan_scope};
use super::scope_plan::{ScopePlan, TierPlan, WorkflowPlan};
use crate::domain::classifier::Calibration;
use crate::domain::policy::Policy;

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

    /// Re-plans one scope after new evidence ([`replan_scope`]: at a bounded cost), sharing
    /// every other plan.
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
            let plan = replan_scope(&self.policy, &scope, cal, Some(evidence), prev);
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

    /// The learned thresholds as rows: per scope (all, or only `scope`), the shared plan then
    /// each team's, and in each the scope-wide level, then families (`name/*`) and workflows
    /// by name.
    /// `names` names a discovered cluster's top terms.
    pub fn threshold_rows(
        &self,
        scope: &str,
        names: &crate::domain::clusters::TermNames,
    ) -> Vec<ThresholdRow> {
        let mut keys: Vec<&String> = self
            .plans
            .keys()
            .filter(|k| scope.is_empty() || **k == scope)
            .collect();
        keys.sort();
        let mut rows = Vec::new();
        for key in keys {
            let shared = &self.plans[key];
            let mut teams: Vec<(&String, &ScopePlan)> =
                shared.teams.iter().map(|(t, p)| (t, p.as_ref())).collect();
            teams.sort_by(|a, b| a.0.cmp(b.0));
            let plans = std::iter::once((None, shared.as_ref()))
                .chain(teams.into_iter().map(|(t, p)| (Some(t), p)));
            for (team, plan) in plans {
                let mut levels: Vec<(String, &[TierPlan], f64)> =
                    vec![(String::new(), &plan.tiers[..], plan.realized_quality)];
                let mut named: Vec<(String, &WorkflowPlan)> = plan
                    .families
                    .iter()
                    .map(|(f, p)| (format!("{f}/*"), p.as_ref()))
                    .chain(plan.workflows.iter().map(|(w, p)| (w.clone(), p.as_ref())))
                    .collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                levels.extend(
                    named
                        .into_iter()
                        .map(|(w, p)| (w, &p.tiers[..], p.realized_quality)),
                );
                for (workflow, tiers, quality) in levels {
                    let terms = cluster_id(&workflow)
                        .zip(shared.clusters.as_ref())
                        .map(|(id, m)| m.top_terms(id, names))
                        .unwrap_or_default();
                    for t in tiers {
                        rows.push(ThresholdRow {
                            scope: key.clone(),
                            tier: self.policy.tiers[t.tier].name.clone(),
                            threshold: t.threshold,
                            evidence: t.evidence,
                            observed_quality: t.observed_quality,
                            last_move: t.last_move,
                            bar: plan.bar,
                            target: plan.target,
                            scope_quality: quality,
                            workflow: workflow.clone(),
                            pinned: plan.policy.pinned_thresholds.is_some(),
                            team: team.cloned(),
                            terms: terms.clone(),
                            explore_by: plan.explores_by(),
                        });
                    }
                }
            }
        }
        rows
    }
}

/// One tier's learned threshold at one level of one plan (what `GetThresholds` lists).
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRow {
    /// Scope key.
    pub scope: String,
    /// Tier name.
    pub tier: String,
    /// Highest complexity the tier admits.
    pub threshold: f64,
    /// Outcomes behind its estimate (decayed).
    pub evidence: f64,
    /// Its observed mean score.
    pub observed_quality: f64,
    /// Threshold change at the last re-plan that moved it.
    pub last_move: f64,
    /// The scope's bar, absolute ([`ScopePlan::bar`]).
    pub bar: f64,
    /// What the plan aims at: the bar, raised while realized quality runs below it.
    pub target: f64,
    /// The level's realized quality.
    pub scope_quality: f64,
    /// The level: empty for scope-wide, `name/*` for a family, else the workflow.
    pub workflow: String,
    /// Whether the policy pins the scope's thresholds.
    pub pinned: bool,
    /// `None` for the scope's shared plan, else the team whose own plan this is.
    pub team: Option<String>,
    /// On a discovered cluster's rows, its most telling terms; else empty.
    pub terms: Vec<String>,
    /// How the plan explores now ([`ScopePlan::explores_by`]).
    pub explore_by: crate::domain::policy::ExploreBy,
}
