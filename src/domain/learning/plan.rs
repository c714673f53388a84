//! The planner: builds a scope's plans (shared, per team, per workflow and family) from the
//! calibration and the evidence, pricing the bar on the scope's traffic. A plan is made in
//! named stages ([`Planner::plan_level`]): the slots (`slots`: the allowed tiers and what each
//! starts from), every level's curves (`levels`), the traffic sample, the target and the price
//! of quality (`pricing`), then the plan assembled from them ([`Assembly`], here).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::estimate::Curves;
use super::evidence::{Level, ScopeEvidence};
use super::levels::{LevelCurves, PlanCurves, Reuse};
use super::params::REPLAN_TEAMS;
use super::pricing::{Pricing, Sample, bar, target};
use super::scope_plan::{ScopePlan, TierPlan, WorkflowPlan};
use super::slots::{Slots, Typical};
use crate::domain::classifier::Calibration;
use crate::domain::clusters::ClusterModel;
use crate::domain::labels::family_of;
use crate::domain::policy::{Policy, ScopePolicy};

/// Builds the plan of one scope from the calibration and its evidence: the shared plan, and one
/// plan per team with evidence of its own, which starts from the shared plan's curves where the
/// shared one starts from the calibration. A team's outcomes move its own plan in full and the
/// shared one by a bounded share ([`ScopeEvidence::observe_from`]), so one team cannot move the
/// routing of another beyond that share; each team's plan meets the bar on its own traffic.
/// Every curve is computed afresh (`previous` only dates threshold moves).
pub fn plan_scope(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
) -> ScopePlan {
    plan_scope_with(policy, scope, cal, evidence, previous, false)
}

/// [`plan_scope`] after new outcomes, at a cost bounded whatever the scope's size: the price of
/// quality is solved again on the new curves, but of the levels below the scope only those with
/// new outcomes, and the [`REPLAN_LEVELS`](super::REPLAN_LEVELS) recomputed longest ago, get new curves (the rest keep
/// `previous`'s, computed on an earlier parent); of the team plans, those of teams with new
/// outcomes and the [`REPLAN_TEAMS`] re-planned longest ago. A plan of at most that many levels
/// and teams is the same as [`plan_scope`]'s; a larger one lags it by at most one sweep of its
/// levels (`levels / REPLAN_LEVELS` Feedbacks). Without a `previous` plan of the same scope
/// policy, every curve is computed.
pub fn replan_scope(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
) -> ScopePlan {
    plan_scope_with(policy, scope, cal, evidence, previous, true)
}

/// Plans a scope: the shared plan from `evidence` (or the calibration alone), then each team's.
/// `incremental`: a re-plan that may keep curves of `previous` ([`replan_scope`]).
fn plan_scope_with(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
    incremental: bool,
) -> ScopePlan {
    let round = Round {
        planner: Planner { policy, scope, cal },
        // Only a plan of the same scope policy has curves worth keeping.
        incremental: incremental && previous.is_some_and(|p| Arc::ptr_eq(&p.policy, scope)),
        // The clusters every plan of the scope routes unlabelled tasks by (the shared
        // evidence's); a plan made under other clusters has stale discovered levels.
        model: evidence.and_then(|e| e.clusters.model.clone()),
        shared_tokens: evidence.and_then(ScopeEvidence::typical_tokens),
    };
    let mut plan = round.planner.plan_level(
        evidence,
        previous,
        round.reuse(previous),
        None,
        round.shared_tokens,
    );
    plan.clusters.clone_from(&round.model);
    plan.lengths = evidence.map(|e| Arc::clone(&e.clusters.lengths));
    if let Some(e) = evidence {
        plan.base_at = e.feedbacks();
        plan.teams = round.team_plans(e, &plan, previous);
    }
    plan
}

/// One planning of a scope: what its shared plan and its team plans have in common.
struct Round<'p> {
    planner: Planner<'p>,
    /// Whether plans may keep curves of the previous plan (a re-plan of the same scope policy).
    incremental: bool,
    /// The scope's clusters now.
    model: Option<Arc<ClusterModel>>,
    /// The typical task's tokens in the shared evidence.
    shared_tokens: Option<(u64, u64)>,
}

impl Round<'_> {
    /// What a re-plan may keep of `plan` (none unless incremental), now that the scope's
    /// clusters are `model`.
    fn reuse<'a>(&self, plan: Option<&'a ScopePlan>) -> Option<Reuse<'a>> {
        let plan = plan.filter(|_| self.incremental)?;
        let clusters_changed = match (plan.clusters.as_ref(), self.model.as_ref()) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (a, b) => a.is_some() != b.is_some(),
        };
        Some(Reuse {
            plan,
            clusters_changed,
        })
    }

    /// Each team's plan on top of `shared`: planned from the team's own evidence, or kept from
    /// `previous` for the teams [`Round::idle_teams_kept`] names.
    fn team_plans(
        &self,
        e: &ScopeEvidence,
        shared: &ScopePlan,
        previous: Option<&ScopePlan>,
    ) -> HashMap<String, Arc<ScopePlan>> {
        let now = e.feedbacks();
        let mut names: Vec<&String> = e.teams.keys().collect();
        names.sort();
        let before_of = |team: &str| previous.and_then(|p| p.teams.get(team));
        let keep = self.idle_teams_kept(e, &names, before_of);
        let mut teams = HashMap::with_capacity(e.teams.len());
        for team in names {
            let before = before_of(team);
            if let Some(b) = before.filter(|_| keep.contains(team.as_str())) {
                teams.insert(team.clone(), b.clone());
                continue;
            }
            let own = &e.teams[team].evidence;
            let before = before.map(Arc::as_ref);
            let tokens = own.typical_tokens().or(self.shared_tokens);
            let mut p = self.planner.plan_level(
                Some(own),
                before,
                self.reuse(before),
                Some(shared),
                tokens,
            );
            p.base_at = now;
            p.clusters.clone_from(&self.model);
            p.lengths = Some(Arc::clone(&own.clusters.lengths));
            teams.insert(team.clone(), Arc::new(p));
        }
        teams
    }

    /// The teams (of `names`) whose previous plan (`before_of`) is kept: of the teams without
    /// new outcomes, all but the first [`REPLAN_TEAMS`] to re-plan, those made under other
    /// clusters first, then the oldest.
    fn idle_teams_kept<'n, 'a>(
        &self,
        e: &ScopeEvidence,
        names: &[&'n String],
        before_of: impl Fn(&str) -> Option<&'a Arc<ScopePlan>>,
    ) -> HashSet<&'n str> {
        let mut idle: Vec<(bool, u64, &str)> = names
            .iter()
            .filter_map(|team| {
                let b = before_of(team)?;
                let r = self.reuse(Some(b))?;
                let quiet = b.planned_at == e.teams[*team].evidence.feedbacks();
                quiet.then_some((!r.clusters_changed, b.base_at, team.as_str()))
            })
            .collect();
        idle.sort_unstable();
        idle.into_iter()
            .skip(REPLAN_TEAMS)
            .map(|(_, _, t)| t)
            .collect()
    }
}

/// What every plan of one scope is made from: the policy, the scope's own, the calibration.
#[derive(Clone, Copy)]
struct Planner<'p> {
    policy: &'p Policy,
    scope: &'p Arc<ScopePolicy>,
    cal: &'p Calibration,
}

impl Planner<'_> {
    /// One plan from `evidence`, in its stages: the slots (the allowed tiers and what each
    /// starts from), every level's curves, the traffic sample, the target, the price of
    /// quality, and the plan assembled from them. The scope's curves start from `base`'s (a
    /// team's plan on the shared one) or, without a base, from the calibration; `tokens` are
    /// the typical task's, and `previous` dates threshold moves.
    fn plan_level(
        &self,
        evidence: Option<&ScopeEvidence>,
        previous: Option<&ScopePlan>,
        reuse: Option<Reuse<'_>>,
        base: Option<&ScopePlan>,
        tokens: Option<(u64, u64)>,
    ) -> ScopePlan {
        let scope = self.scope;
        let typical = Typical::new(tokens, scope.max_output_tokens);
        let pooled = base.is_none() && evidence.is_some_and(|e| !e.teams.is_empty());
        let slots = Slots::new(self.policy, scope, self.cal, &typical, (base, pooled));
        let curves = PlanCurves::build(&slots, evidence, reuse);
        let sample = Sample::new(evidence, &slots, &curves, &typical);
        let bar = bar(scope, || sample.top_quality());
        let target = target(bar, evidence.map(|e| e.scope.total));
        let pricing = Pricing::solve(scope, &sample, target);
        Assembly {
            scope,
            bar,
            slots: &slots,
            pricing: &pricing,
            now: evidence.map_or(0, ScopeEvidence::feedbacks),
            cap: typical.cap,
        }
        .plan(&curves, evidence, previous, typical.output)
    }
}

/// The last stage: a level's plan from its curves, the pricing's thresholds and its evidence.
struct Assembly<'x> {
    scope: &'x Arc<ScopePolicy>,
    /// The scope's bar, made absolute on its traffic ([`bar`]).
    bar: f64,
    slots: &'x Slots<'x>,
    pricing: &'x Pricing,
    /// The evidence's outcome count, which every level's plan is dated by.
    now: u64,
    /// The scope's `max_output_tokens`.
    cap: u64,
}

impl Assembly<'_> {
    /// The scope's plan: its tier plans, each family's and workflow's (kept ones as they
    /// were), with output lengths falling back from a workflow to its family to the scope
    /// (`typical_output` without any report).
    fn plan(
        &self,
        curves: &PlanCurves<'_, '_>,
        evidence: Option<&ScopeEvidence>,
        previous: Option<&ScopePlan>,
        typical_output: u64,
    ) -> ScopePlan {
        let scope_output = evidence
            .and_then(|e| e.scope.output.estimate())
            .unwrap_or(typical_output)
            .min(self.cap);
        let families = self.level_plans(
            evidence.map(|e| &e.families),
            &curves.families,
            previous.map(|p| &p.families),
            |_| scope_output,
        );
        let workflows = self.level_plans(
            evidence.map(|e| &e.workflows),
            &curves.workflows,
            previous.map(|p| &p.workflows),
            |w| {
                family_of(w)
                    .and_then(|f| families.get(f))
                    .map_or(scope_output, |p| p.output_tokens)
            },
        );
        let tiers = match &curves.scope {
            LevelCurves::Fresh(c) => self.tier_plans(
                c,
                evidence.map(|e| &e.scope),
                previous.map(|p| &p.tiers[..]),
            ),
            LevelCurves::Kept(p) => p.tiers.clone(),
        };
        ScopePlan {
            policy: self.scope.clone(),
            tiers,
            lambda: self.pricing.lambda,
            bar: self.bar,
            target: self.pricing.target,
            expected_quality: self.pricing.expected_quality,
            realized_quality: evidence.map(|e| e.scope.total.mean()).unwrap_or(0.0),
            evidence: evidence.map(|e| e.scope.total.n).unwrap_or(0.0),
            typical_output_tokens: scope_output,
            families,
            workflows,
            teams: HashMap::new(),
            // The scope's clusters, which `plan_scope_with` sets on every plan of the scope.
            clusters: None,
            lengths: None,
            pairs_answered: evidence.is_none_or(|e| e.shadow_answers.pairs_answered()),
            planned_at: self.now,
            base_at: self.now,
        }
    }

    /// The plans of `levels` (families or workflows) from their `curves`: a kept level's plan
    /// as it was, a fresh one's from its curves, its evidence and its `before` plan (for
    /// threshold moves), its output length its own or `parent_output`'s.
    fn level_plans(
        &self,
        levels: Option<&HashMap<String, Level>>,
        curves: &HashMap<&str, LevelCurves<'_>>,
        before: Option<&HashMap<String, Arc<WorkflowPlan>>>,
        parent_output: impl Fn(&str) -> u64,
    ) -> HashMap<String, Arc<WorkflowPlan>> {
        let Some(levels) = levels else {
            return HashMap::new();
        };
        levels
            .iter()
            .filter_map(|(name, level)| {
                let c = match curves.get(name.as_str())? {
                    LevelCurves::Fresh(c) => c,
                    LevelCurves::Kept(p) => return Some((name.clone(), Arc::clone(p))),
                };
                let prev = before.and_then(|b| b.get(name)).map(|p| &p.tiers[..]);
                let plan = WorkflowPlan {
                    tiers: self.tier_plans(c, Some(level), prev),
                    evidence: level.total.n,
                    realized_quality: level.total.mean(),
                    output_tokens: level
                        .output
                        .estimate()
                        .unwrap_or_else(|| parent_output(name))
                        .min(self.cap),
                    planned_at: self.now,
                };
                Some((name.clone(), Arc::new(plan)))
            })
            .collect()
    }

    /// One level's tier plans: each slot's curves, its threshold, what the level observed of
    /// it, and the last threshold move (against `before`, the level's previous tier plans).
    fn tier_plans(
        &self,
        c: &Curves,
        level: Option<&Level>,
        before: Option<&[TierPlan]>,
    ) -> Vec<TierPlan> {
        let scope = self.scope;
        let th = self.pricing.thresholds(
            c,
            scope.pinned_thresholds.as_deref(),
            &self.slots.typical_costs,
        );
        (0..self.slots.len())
            .map(|s| {
                let (n, sum) = level
                    .and_then(|l| l.cells.get(&self.slots.tiers[s].name))
                    .map(|cells| {
                        (
                            cells.iter().map(|c| c.n).sum::<f64>(),
                            cells.iter().map(|c| c.sum).sum::<f64>(),
                        )
                    })
                    .unwrap_or((0.0, 0.0));
                let old = before
                    .and_then(|p| p.iter().find(|t| t.tier == scope.allowed[s]))
                    .map(|p| (p.threshold, p.last_move));
                let last_move = match old {
                    Some((o, _)) if (o - th[s]).abs() > 1e-12 => th[s] - o,
                    Some((_, m)) => m,
                    None => 0.0,
                };
                TierPlan {
                    tier: scope.allowed[s],
                    threshold: th[s],
                    quality: c.quality[s],
                    predicted: c.predicted[s],
                    evidence: n,
                    strength: c.strength[s],
                    observed_quality: if n > 0.0 { sum / n } else { 0.0 },
                    last_move,
                    gap_sign: self.slots.gap_signs[s],
                }
            })
            .collect()
    }
}
