//! What Route reads of a plan: the plans of a scope (shared, per team, per workflow and family),
//! and the choice rules that turn a task's complexity and cost into a tier.

use std::collections::HashMap;
use std::sync::Arc;

use super::odds::shift_quality;
use super::params::{BANDS, EXPLORE_DRAWS};
use crate::domain::labels::{family_of, workflow_key};
use crate::domain::policy::{BarMode, ExploreBy, Policy, ScopePolicy};

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
    /// What the estimate stands on, in outcomes: the level's own plus its prior's worth. The
    /// posterior's spread, which exploration samples from, is `√(q(1−q)/strength)`.
    pub strength: f64,
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

    /// A draw from the tier's posterior for a task in `band` with premium gap `gap`: the
    /// estimate plus `z` of its standard deviations.
    pub fn sampled_for(&self, band: usize, gap: f64, z: f64) -> f64 {
        let q = self.predicted_for(band, gap);
        let sd = (q * (1.0 - q)).max(0.01).sqrt() / self.strength.max(1.0).sqrt();
        (q + z * sd).clamp(0.0, 1.0)
    }
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
    /// The owning evidence's outcome count ([`ScopeEvidence::feedbacks`]) when these curves
    /// were computed: a re-plan keeps them while the level has had no outcome since
    /// ([`super::replan_scope`]).
    pub planned_at: u64,
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
    /// The scope's bar, absolute: the policy's `quality_bar`, or `quality_bar_relative` × what
    /// the top tier is expected to reach on the scope's traffic. What outcomes are held to in
    /// the books, `/metrics`, what-if and `thresholds` ([`ScopePlan::bar_for`]).
    pub bar: f64,
    /// What the plan aims at: the bar, raised while the scope's realized quality runs below it
    /// (the catch-up).
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
    /// The clusters discovered in the scope's unlabelled traffic (the shared plan's; a team's
    /// plan routes by them too).
    pub clusters: Option<Arc<crate::domain::clusters::ClusterModel>>,
    /// How an unlabelled task's words move its output length (the shared evidence's).
    pub lengths: Option<Arc<crate::domain::lengths::LengthModel>>,
    /// Whether the callers of this plan (the scope's, or the team's for a team's plan) answer
    /// the shadow runs Route names ([`ShadowAnswers`](super::evidence::ShadowAnswers)): under
    /// `explore_by = "auto"`, exploration pairs while they do and substitutes while they do
    /// not.
    pub pairs_answered: bool,
    /// The outcome count of the evidence this plan was made from (a team's own, for a team's
    /// plan).
    pub planned_at: u64,
    /// The shared evidence's outcome count when this plan was made (for the shared plan, its
    /// `planned_at`): a team plan re-planned longest ago is re-planned first.
    pub base_at: u64,
}

impl ScopePlan {
    /// How the plan explores now: its policy's `explore_by`, with "auto" resolved to pairs
    /// while its callers answer them ([`ScopePlan::pairs_answered`]), else substitution.
    pub fn explores_by(&self) -> ExploreBy {
        match self.policy.explore_by {
            ExploreBy::Auto if self.pairs_answered => ExploreBy::Pairs,
            ExploreBy::Auto => ExploreBy::Substitution,
            by => by,
        }
    }

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

    /// The bar one task is held to, under `curves` (its workflow's): in `per_task` mode with a
    /// relative bar, `quality_bar_relative` × the top tier's estimate for the task; else
    /// `None`, and the plan's bar holds for every task. Route's reason and the books read this
    /// one rule.
    pub fn task_bar(&self, curves: &[TierPlan], band: usize, gap: f64) -> Option<f64> {
        let per_task =
            self.policy.pinned_thresholds.is_none() && self.policy.bar_mode == BarMode::PerTask;
        let r = self.policy.quality_bar_relative.filter(|_| per_task)?;
        curves.last().map(|t| r * t.quality_for(band, gap))
    }

    /// The bar an outcome of a task of `workflow` (band `band`, premium gap `gap`) is held
    /// to: [`ScopePlan::task_bar`] where the bar is per task, else the plan's
    /// [`bar`](ScopePlan::bar). Never the catch-up target: a scope's books, `/metrics` and
    /// what-if all count an output complete against the same bar the policy set.
    pub fn bar_for(&self, workflow: &str, band: usize, gap: f64) -> f64 {
        self.task_bar(self.tiers_for(workflow), band, gap)
            .unwrap_or(self.bar)
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
        let slot = self.slot_by(
            curves,
            complexity,
            |s| costs_micros[s] as f64 / 1e6,
            |s| curves[s].quality_for(band, gap),
        );
        Choice {
            curves,
            costs_micros,
            slot,
        }
    }

    /// Exploration (Thompson sampling with resampling): the slot the plan's own rule picks
    /// when every allowed tier's quality is one draw from its posterior instead of its
    /// planning bound; while that is the plan's own choice, it draws again, up to
    /// [`EXPLORE_DRAWS`] times. A tier whose estimate stands on few outcomes spreads wide, so
    /// it wins a draw (cheaper or dearer, whatever the price order) about as often as the
    /// evidence allows it to be the right one, and a tier known to be wrong for the task almost
    /// never does: an alternative with chance `p` of being right is tried with chance
    /// `1 − (1 − p)^EXPLORE_DRAWS`. Returns the plan's choice when no draw picks another. `u`
    /// is a uniform number in [0, 1) that seeds the draws: the same inputs explore the same way.
    pub fn explore(&self, choice: &Choice<'_>, band: usize, gap: f64, u: f64) -> usize {
        let (curves, planned) = (choice.curves, choice.slot);
        if curves.len() < 2 || self.policy.pinned_thresholds.is_some() {
            return planned;
        }
        let mut normals = Normals::new(u);
        let mut sampled = vec![0.0; curves.len()];
        for _ in 0..EXPLORE_DRAWS {
            for (q, t) in sampled.iter_mut().zip(curves) {
                *q = t.sampled_for(band, gap, normals.next_normal());
            }
            let s = self.slot_by(
                curves,
                0.0,
                |s| choice.costs_micros[s] as f64 / 1e6,
                |s| sampled[s],
            );
            if s != planned {
                return s;
            }
        }
        planned
    }

    /// Slot under given curves: pinned thresholds, per-task bar, or cheapest at price λ.
    pub fn slot_in(
        &self,
        tiers: &[TierPlan],
        complexity: f64,
        band: usize,
        costs: &[f64],
    ) -> usize {
        self.slot_by(
            tiers,
            complexity,
            |s| costs[s],
            |s| tiers[s].quality_for(band, 0.0),
        )
    }

    /// [`ScopePlan::slot_in`] with each slot's cost (USD) from `cost` and the quality it is
    /// held to from `quality`: no vector to build on the Route path.
    fn slot_by(
        &self,
        tiers: &[TierPlan],
        complexity: f64,
        cost: impl Fn(usize) -> f64,
        quality: impl Fn(usize) -> f64,
    ) -> usize {
        let last = tiers.len() - 1;
        if self.policy.pinned_thresholds.is_some() {
            return tiers[..last]
                .iter()
                .position(|t| complexity < t.threshold)
                .unwrap_or(last);
        }
        match (self.policy.bar_mode, self.lambda) {
            (BarMode::Average, Some(lambda)) => choose(lambda, tiers.len(), cost, quality),
            _ => per_task(
                tiers.len(),
                quality,
                self.policy.quality_bar_relative,
                self.target,
            ),
        }
    }
}

/// Standard normal draws from one uniform seed (splitmix64, then Box–Muller): deterministic,
/// no allocation, no RNG state to share between Route calls.
struct Normals {
    state: u64,
}

impl Normals {
    fn new(u: f64) -> Self {
        Self {
            state: u.to_bits() ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits in (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn next_normal(&mut self) -> f64 {
        let (a, b) = (self.next_unit(), self.next_unit());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
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
            strength: 4.0,
            observed_quality: 0.0,
            last_move: 0.0,
            gap_sign: -1.0,
        };
        // The cheap model loses where the premium one gains; a mid tier moves by its rank.
        assert!(t.quality_for(3, 1.0) < 0.6 && t.predicted_for(3, -1.0) > 0.7);
        t.gap_sign = 0.0;
        assert_eq!(t.quality_for(3, 1.0), 0.6);
    }

    #[test]
    fn choose_takes_the_cheapest_slot_until_quality_is_worth_its_price() {
        // Slot 1 costs 1 more for 0.25 more quality: worth it from λ = 4 on.
        let (cost, quality) = ([1.0, 2.0], [0.5, 0.75]);
        let pick = |l: f64| choose(l, 2, |s| cost[s], |s| quality[s]);
        assert_eq!(pick(0.0), 0);
        assert_eq!(pick(3.9), 0);
        // Exactly at the crossing both cost the same: the cheaper slot keeps the task.
        assert_eq!(pick(4.0), 0);
        assert_eq!(pick(4.1), 1);
        // A dearer slot that is no better is never bought, at any price.
        let flat = [0.5, 0.5];
        assert_eq!(choose(1e6, 2, |s| cost[s], |s| flat[s]), 0);
        // No slots: slot 0.
        assert_eq!(choose(1.0, 0, |_| 0.0, |_| 0.0), 0);
    }

    #[test]
    fn choose_never_buys_less_quality_at_a_higher_price() {
        let cost = [0.001, 0.002, 0.0035, 0.01];
        let quality = [0.55, 0.7, 0.74, 0.9];
        let mut last = 0.0;
        for i in 0..80 {
            let l = 1e-5 * 1.3f64.powi(i);
            let q = quality[choose(l, 4, |s| cost[s], |s| quality[s])];
            assert!(q >= last, "λ = {l}: {q} after {last}");
            last = q;
        }
        assert_eq!(last, 0.9);
    }

    #[test]
    fn per_task_takes_the_cheapest_slot_reaching_the_bar_else_the_top() {
        let quality = [0.6, 0.75, 0.9];
        let q = |s: usize| quality[s];
        assert_eq!(per_task(3, q, None, 0.5), 0);
        assert_eq!(per_task(3, q, None, 0.7), 1);
        assert_eq!(per_task(3, q, None, 0.75), 1);
        // Rounding below the bar still reaches it.
        assert_eq!(per_task(3, q, None, 0.75 + 1e-13), 1);
        // Out of every slot's reach: the most capable one, not the one failing least.
        assert_eq!(per_task(3, q, None, 0.95), 2);
        // A relative bar is a share of the top slot's quality (0.8 × 0.9 = 0.72, 0.6 × 0.9 = 0.54),
        // and the absolute bar is then ignored.
        assert_eq!(per_task(3, q, Some(0.8), 0.99), 1);
        assert_eq!(per_task(3, q, Some(0.6), 0.99), 0);
        assert_eq!(per_task(3, q, Some(1.0), 0.0), 2);
    }

    #[test]
    fn exploration_takes_the_first_of_four_draws_that_picks_another_slot() {
        let p = crate::domain::learning::tests::plan(0.8, None);
        let policy = crate::domain::learning::tests::policy(0.8);
        let band = 8;
        let choice = p.choice(&policy, "", 0.42, band, 0.0, 500, 256);
        // The slot each successive draw picks for seed `u`, as `explore` draws them.
        let draws = |u: f64, n: usize| -> Vec<usize> {
            let mut normals = Normals::new(u);
            (0..n)
                .map(|_| {
                    let sampled: Vec<f64> = choice
                        .curves
                        .iter()
                        .map(|t| t.sampled_for(band, 0.0, normals.next_normal()))
                        .collect();
                    let costs = |s: usize| choice.costs_micros[s] as f64 / 1e6;
                    p.slot_by(choice.curves, 0.0, costs, |s| sampled[s])
                })
                .collect()
        };
        let seeds = (0..20_000).map(|i| i as f64 / 20_000.0);
        let (mut fourth, mut fifth) = (0, 0);
        for u in seeds {
            let d = draws(u, 5);
            let first_other = d.iter().position(|&s| s != choice.slot);
            let explored = p.explore(&choice, band, 0.0, u);
            match first_other {
                Some(i) if i < 4 => assert_eq!(explored, d[i], "u = {u}: {d:?}"),
                _ => assert_eq!(explored, choice.slot, "u = {u}: {d:?}"),
            }
            fourth += usize::from(first_other == Some(3));
            fifth += usize::from(first_other == Some(4));
        }
        // Both cases occur: a fourth draw is taken, a fifth never is.
        assert!(fourth > 0 && fifth > 0, "{fourth} {fifth}");
    }
}
