//! What Route reads of a plan: the plans of a scope (shared, per team, per workflow and family),
//! and the choice rules that turn a task's complexity and cost into a tier.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::domain::policy::{BarMode, Policy, ScopePolicy};

/// One tier's place in a plan (of a scope, a family or a workflow).
#[derive(Debug, Clone, PartialEq)]
pub struct TierPlan {
    /// Index into [`Policy::tiers`].
    pub tier: usize,
    /// Complexity up to which the tier (or a cheaper one) is chosen for a typical task; 1 for
    /// the top tier.
    pub threshold: f64,
    /// Quality per band the plan counts on: the estimate less a confidence margin that shrinks
    /// with evidence.
    pub quality: [f64; BANDS],
    /// Estimated (expected) quality per band.
    pub predicted: [f64; BANDS],
    /// Effective outcomes observed for this tier at this level.
    pub evidence: f64,
    /// Observed average score of the tier at this level (0 without evidence).
    pub observed_quality: f64,
    /// Threshold change at the last re-plan that moved it.
    pub last_move: f64,
    /// How a task's premium gap moves this tier's success log-odds: −1 for the calibration's
    /// cheap model, +1 for its premium one, by price rank in between (`2·rank − 1`).
    pub gap_sign: f64,
}

impl TierPlan {
    /// Quality the plan counts on for a task in `band` whose premium gap is `gap`.
    pub fn quality_for(&self, band: usize, gap: f64) -> f64 {
        shift_quality(self.quality[band], self.gap_sign * gap)
    }

    /// Estimated quality for a task in `band` whose premium gap is `gap`.
    pub fn predicted_for(&self, band: usize, gap: f64) -> f64 {
        shift_quality(self.predicted[band], self.gap_sign * gap)
    }
}

/// `q` moved by `delta` in log-odds (unchanged for a zero shift, so a model without a gap term
/// routes exactly as before).
pub(super) fn shift_quality(q: f64, delta: f64) -> f64 {
    if delta == 0.0 {
        return q;
    }
    super::estimate::shift_log_odds(q, delta)
}

/// The learned state of one workflow (or family) inside a scope's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowPlan {
    /// Allowed tiers, cheapest first, with this workflow's curves.
    pub tiers: Vec<TierPlan>,
    /// Effective outcomes of the workflow.
    pub evidence: f64,
    /// Realized (decayed) average score of the workflow.
    pub realized_quality: f64,
    /// Output tokens assumed for its tasks without a hint.
    pub output_tokens: u64,
}

/// A scope's routing plan: what [`crate::domain::routing`] reads on every Route call.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopePlan {
    /// The scope's policy.
    pub policy: Arc<ScopePolicy>,
    /// Allowed tiers, cheapest first, with the scope-wide curves (for workflows it has not seen).
    pub tiers: Vec<TierPlan>,
    /// Price of quality in USD per unit of expected score (`average` mode); `None` when
    /// thresholds are pinned or the bar is per task.
    pub lambda: Option<f64>,
    /// The absolute bar the plan aims at: the policy's, or the relative bar made absolute on
    /// the scope's traffic.
    pub target: f64,
    /// Expected average quality of the plan on the scope's traffic.
    pub expected_quality: f64,
    /// Realized (decayed) average outcome score of the scope, 0 without evidence.
    pub realized_quality: f64,
    /// Effective outcomes observed in the scope.
    pub evidence: f64,
    /// Output tokens assumed for a task of an unseen workflow without a hint.
    pub typical_output_tokens: u64,
    /// Family → its learned state.
    pub families: HashMap<String, Arc<WorkflowPlan>>,
    /// Workflow → its learned state.
    pub workflows: HashMap<String, Arc<WorkflowPlan>>,
    /// Team → the team's own plan, learned from its own outcomes on top of this (shared) one;
    /// a team without one routes on this plan.
    pub teams: HashMap<String, Arc<ScopePlan>>,
}

impl ScopePlan {
    /// The plan a task of `team` routes on: the team's own, or the shared one.
    pub fn for_team(&self, team: &str) -> &ScopePlan {
        self.teams.get(team).map_or(self, Arc::as_ref)
    }

    /// The most specific learned state for `workflow`: its own, its family's, or none.
    pub fn workflow_plan(&self, workflow: &str) -> Option<&WorkflowPlan> {
        let w = workflow_key(workflow);
        self.workflows
            .get(w)
            .or_else(|| family_of(w).and_then(|f| self.families.get(f)))
            .map(Arc::as_ref)
    }

    /// The tier curves that apply to a task of `workflow`.
    pub fn tiers_for(&self, workflow: &str) -> &[TierPlan] {
        self.workflow_plan(workflow)
            .map_or(&self.tiers[..], |p| &p.tiers[..])
    }

    /// Output tokens to assume for a task of `workflow` without a hint.
    pub fn expected_output_tokens(&self, workflow: &str) -> u64 {
        self.workflow_plan(workflow)
            .map_or(self.typical_output_tokens, |p| p.output_tokens)
    }

    /// Slot (index into the allowed tiers) for a task of `workflow` and `complexity` whose cost
    /// on each allowed tier is `costs`.
    pub fn slot_for(&self, workflow: &str, complexity: f64, band: usize, costs: &[f64]) -> usize {
        self.slot_in(self.tiers_for(workflow), complexity, band, costs)
    }

    /// The one cost and slot selection (Route and what-if both call it): each allowed tier's
    /// cost for a task of these tokens (micro-USD, slot order) and the slot the plan picks for
    /// a task of `workflow` at `complexity` in `band` with premium gap `gap`.
    #[allow(clippy::too_many_arguments)]
    pub fn choice(
        &self,
        policy: &Policy,
        workflow: &str,
        complexity: f64,
        band: usize,
        gap: f64,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Choice<'_> {
        let curves = self.tiers_for(workflow);
        let costs_micros: Vec<i64> = curves
            .iter()
            .map(|t| policy.tiers[t.tier].cost_micros(input_tokens, output_tokens))
            .collect();
        let slot = self.slot_by(curves, complexity, band, gap, |s| {
            costs_micros[s] as f64 / 1e6
        });
        Choice {
            curves,
            costs_micros,
            slot,
        }
    }

    /// Slot under given curves: pinned thresholds, per-task bar, or cheapest at price λ.
    pub fn slot_in(
        &self,
        tiers: &[TierPlan],
        complexity: f64,
        band: usize,
        costs: &[f64],
    ) -> usize {
        self.slot_by(tiers, complexity, band, 0.0, |s| costs[s])
    }

    /// [`ScopePlan::slot_in`] with each slot's cost (USD) from `cost`: no cost vector to build on
    /// the Route path.
    fn slot_by(
        &self,
        tiers: &[TierPlan],
        complexity: f64,
        band: usize,
        gap: f64,
        cost: impl Fn(usize) -> f64,
    ) -> usize {
        let last = tiers.len() - 1;
        if self.policy.pinned_thresholds.is_some() {
            return tiers[..last]
                .iter()
                .position(|t| complexity < t.threshold)
                .unwrap_or(last);
        }
        match (self.policy.bar_mode, self.lambda) {
            (BarMode::Average, Some(lambda)) => choose(lambda, tiers.len(), cost, |s| {
                tiers[s].quality_for(band, gap)
            }),
            _ => per_task(
                tiers.len(),
                |s| tiers[s].quality_for(band, gap),
                self.policy.quality_bar_relative,
                self.target,
            ),
        }
    }
}

/// What [`ScopePlan::choice`] picked for one task.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    /// The curves it chose under (the workflow's, else its family's, else the scope's).
    pub curves: &'a [TierPlan],
    /// Each allowed tier's cost for the task, micro-USD, in slot order.
    pub costs_micros: Vec<i64>,
    /// The slot chosen (before any exploration).
    pub slot: usize,
}

/// The slot minimising `cost − λ·quality`; the cheaper slot wins ties.
pub(super) fn choose(
    lambda: f64,
    slots: usize,
    cost: impl Fn(usize) -> f64,
    quality: impl Fn(usize) -> f64,
) -> usize {
    if slots == 0 {
        return 0;
    }
    let mut best = 0;
    let mut best_v = cost(0) - lambda * quality(0);
    for s in 1..slots {
        let v = cost(s) - lambda * quality(s);
        // Strictly better by more than rounding noise, so exact ties stay on the cheaper tier.
        if v < best_v - 1e-12 * best_v.abs() {
            best_v = v;
            best = s;
        }
    }
    best
}

/// The cheapest of `k` slots whose quality reaches the bar (`relative` × the top slot's, or
/// `absolute`); the top slot when none does: a task too hard for every tier gets the most
/// capable one, not a guess at which tier fails least.
pub(super) fn per_task(
    k: usize,
    quality: impl Fn(usize) -> f64,
    relative: Option<f64>,
    absolute: f64,
) -> usize {
    let bar = match relative {
        Some(r) => r * quality(k - 1),
        None => absolute,
    };
    (0..k).find(|&s| quality(s) >= bar - 1e-12).unwrap_or(k - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_moves_quality_in_log_odds_and_zero_moves_nothing() {
        for q in [0.0, 0.3, 0.77, 1.0] {
            assert_eq!(shift_quality(q, 0.0), q);
        }
        assert!((shift_quality(0.5, 1.0) - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
        assert!(shift_quality(0.8, 0.5) > 0.8 && shift_quality(0.8, -0.5) < 0.8);
        let mut t = TierPlan {
            tier: 0,
            threshold: 1.0,
            quality: [0.6; BANDS],
            predicted: [0.7; BANDS],
            evidence: 0.0,
            observed_quality: 0.0,
            last_move: 0.0,
            gap_sign: -1.0,
        };
        // The cheap model loses where the premium one gains; a mid tier moves by its rank.
        assert!(t.quality_for(3, 1.0) < 0.6 && t.predicted_for(3, -1.0) > 0.7);
        t.gap_sign = 0.0;
        assert_eq!(t.quality_for(3, 1.0), 0.6);
    }
}
