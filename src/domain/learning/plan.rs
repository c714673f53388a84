//! The planner: builds a scope's plans (shared, per team, per workflow and family) from the
//! calibration and the evidence, pricing the bar on the scope's traffic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::estimate::{Curves, Start, curves, expected_mix, prior_curve};
use super::evidence::{Level, ScopeEvidence, is_discovered};
use super::odds::shift_quality;
use super::params::{
    BAND_PRIOR, BANDS, CATCH_UP, CATCH_UP_GAIN, DEFAULT_TYPICAL_INPUT_TOKENS,
    DEFAULT_TYPICAL_OUTPUT_TOKENS, FAMILY_PRIOR, LABEL_BAND_PRIOR_PER_TASK, LAMBDA_MAX, LAMBDA_MIN,
    MIN_TRAFFIC_SAMPLE, NOISE_SHRINK, OUT_OF_REACH_SLACK, PRIOR_KNOWN_MODEL, PRIOR_OTHER_MODEL,
    REPLAN_LEVELS, REPLAN_TEAMS, WORKFLOW_PRIOR,
};
use super::scope_plan::{ScopePlan, TierPlan, WorkflowPlan, choose, per_task};
use crate::domain::classifier::Calibration;
use crate::domain::clusters::ClusterModel;
use crate::domain::labels::{DEFAULT_WORKFLOW, family_of, workflow_key};
use crate::domain::policy::{BarMode, Policy, ScopePolicy, Tier};

/// One task of the traffic the plan is priced on.
struct SampleTask {
    weight: f64,
    band: usize,
    /// The task's premium gap.
    gap: f64,
    /// Index of the curves that apply.
    curves: usize,
    costs: Vec<f64>,
}

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
/// new outcomes, and the [`REPLAN_LEVELS`] recomputed longest ago, get new curves (the rest keep
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

/// What a re-plan may keep of `plan` (none unless `on`), now that the scope's clusters are
/// `model`.
fn reuse_of<'p>(
    on: bool,
    plan: Option<&'p ScopePlan>,
    model: Option<&Arc<ClusterModel>>,
) -> Option<Reuse<'p>> {
    let plan = plan.filter(|_| on)?;
    let clusters_changed = match (plan.clusters.as_ref(), model) {
        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
        (a, b) => a.is_some() != b.is_some(),
    };
    Some(Reuse {
        plan,
        clusters_changed,
    })
}

/// What a re-plan may keep of the previous plan of a level.
#[derive(Clone, Copy)]
struct Reuse<'a> {
    plan: &'a ScopePlan,
    /// The plan was made under other clusters than the scope's now: its discovered levels were
    /// rebuilt since.
    clusters_changed: bool,
}

fn plan_scope_with<'a>(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&'a ScopePlan>,
    incremental: bool,
) -> ScopePlan {
    // Only a plan of the same scope policy has curves worth keeping.
    let incremental = incremental && previous.is_some_and(|p| Arc::ptr_eq(&p.policy, scope));
    // The clusters every plan of the scope routes unlabelled tasks by (the shared evidence's);
    // a plan made under other clusters has stale discovered levels.
    let model = evidence.and_then(|e| e.clusters.model.clone());
    let reuse = |plan: Option<&'a ScopePlan>| reuse_of(incremental, plan, model.as_ref());
    let shared_tokens = evidence.and_then(ScopeEvidence::typical_tokens);
    let mut plan = plan_level(
        policy,
        scope,
        cal,
        evidence,
        previous,
        reuse(previous),
        None,
        shared_tokens,
    );
    plan.clusters.clone_from(&model);
    if let Some(e) = evidence {
        let now = e.feedbacks();
        plan.base_at = now;
        let mut names: Vec<&String> = e.teams.keys().collect();
        names.sort();
        let before_of = |team: &str| previous.and_then(|p| p.teams.get(team));
        // Team plans whose team has no new outcomes: only the first REPLAN_TEAMS of them are
        // re-planned, those made under other clusters first, then the oldest.
        let mut idle: Vec<(bool, u64, &str)> = names
            .iter()
            .filter_map(|team| {
                let b = before_of(team)?;
                let r = reuse(Some(b))?;
                let quiet = b.planned_at == e.teams[*team].evidence.feedbacks();
                quiet.then_some((!r.clusters_changed, b.base_at, team.as_str()))
            })
            .collect();
        idle.sort_unstable();
        let keep: HashSet<&str> = idle
            .into_iter()
            .skip(REPLAN_TEAMS)
            .map(|(_, _, t)| t)
            .collect();
        let mut teams = HashMap::with_capacity(e.teams.len());
        for team in names {
            let before = before_of(team);
            if let Some(b) = before.filter(|_| keep.contains(team.as_str())) {
                teams.insert(team.clone(), b.clone());
                continue;
            }
            let own = &e.teams[team].evidence;
            let before = before.map(Arc::as_ref);
            let tokens = own.typical_tokens().or(shared_tokens);
            let mut p = plan_level(
                policy,
                scope,
                cal,
                Some(own),
                before,
                reuse(before),
                Some(&plan),
                tokens,
            );
            p.base_at = now;
            p.clusters.clone_from(&model);
            teams.insert(team.clone(), Arc::new(p));
        }
        plan.teams = teams;
    }
    plan
}

/// The family and the workflow levels of `e` that keep `reuse`'s curves: none while the levels
/// with new outcomes (which never keep theirs) and the others recomputed longest ago fit in
/// [`REPLAN_LEVELS`].
fn kept_levels<'a>(reuse: Reuse<'_>, e: &'a ScopeEvidence) -> [HashSet<&'a str>; 2] {
    let mut dirty = 0;
    let mut quiet: Vec<(u64, usize, &'a str)> = Vec::new();
    let levels = [
        (&e.families, &reuse.plan.families),
        (&e.workflows, &reuse.plan.workflows),
    ];
    for (kind, (levels, before)) in levels.into_iter().enumerate() {
        for (name, level) in levels {
            match before.get(name) {
                Some(p)
                    if level.last_seen <= p.planned_at
                        && !(reuse.clusters_changed && is_discovered(name)) =>
                {
                    quiet.push((p.planned_at, kind, name.as_str()));
                }
                _ => dirty += 1,
            }
        }
    }
    let mut kept = [HashSet::new(), HashSet::new()];
    let budget = REPLAN_LEVELS.saturating_sub(dirty);
    if quiet.len() > budget {
        quiet.sort_unstable();
        for (_, kind, name) in quiet.into_iter().skip(budget) {
            kept[kind].insert(name);
        }
    }
    kept
}

/// A level's curves in a plan being made: computed now, or kept from the previous plan.
enum LevelCurves<'a> {
    Fresh(Curves),
    Kept(&'a Arc<WorkflowPlan>),
}

impl LevelCurves<'_> {
    fn quality(&self, s: usize, b: usize) -> f64 {
        match self {
            Self::Fresh(c) => c.quality[s][b],
            Self::Kept(p) => p.tiers[s].quality[b],
        }
    }

    fn predicted(&self, s: usize) -> [f64; BANDS] {
        match self {
            Self::Fresh(c) => c.predicted[s],
            Self::Kept(p) => p.tiers[s].predicted,
        }
    }

    fn strengths(&self) -> Vec<f64> {
        match self {
            Self::Fresh(c) => c.strength.clone(),
            Self::Kept(p) => p.tiers.iter().map(|t| t.strength).collect(),
        }
    }
}

/// One plan from `evidence`: the scope's curves start from `base`'s (a team's plan on the
/// shared one) or, without a base, from the calibration.
#[allow(clippy::too_many_arguments)]
fn plan_level<'a>(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
    reuse: Option<Reuse<'a>>,
    base: Option<&ScopePlan>,
    tokens: Option<(u64, u64)>,
) -> ScopePlan {
    let now = evidence.map_or(0, ScopeEvidence::feedbacks);
    let [keep_families, keep_workflows] = match (reuse, evidence) {
        (Some(r), Some(e)) => kept_levels(r, e),
        _ => [HashSet::new(), HashSet::new()],
    };
    let tiers: Vec<&Tier> = scope.allowed.iter().map(|&i| &policy.tiers[i]).collect();
    let k = tiers.len();
    let cap = scope.max_output_tokens;
    let (typ_in, typ_out) =
        tokens.unwrap_or((DEFAULT_TYPICAL_INPUT_TOKENS, DEFAULT_TYPICAL_OUTPUT_TOKENS));
    // Never a free typical task: priced at 0 tokens, every tier costs nothing and any price of
    // quality buys the top tier on paper while Route, pricing real tokens, buys the cheapest.
    let (typ_in, typ_out) = (typ_in.max(1), typ_out.clamp(1, cap.max(1)));
    let log_prices: Vec<f64> = tiers
        .iter()
        .map(|t| t.cost_usd(typ_in, typ_out).max(1e-12).ln())
        .collect();
    let (lo, hi) = (log_prices[0], log_prices[k - 1]);
    let ranks: Vec<f64> = tiers
        .iter()
        .enumerate()
        .map(|(s, t)| {
            if t.model == cal.cheap_model {
                0.0
            } else if t.model == cal.premium_model || hi <= lo {
                1.0
            } else {
                (log_prices[s] - lo) / (hi - lo)
            }
        })
        .collect();
    // How a task's premium gap moves each tier (TierPlan::gap_sign), and a slot's quality for
    // one sampled task with it.
    let gap_signs: Vec<f64> = ranks.iter().map(|r| 2.0 * r - 1.0).collect();
    let quality_of = |c: &LevelCurves<'_>, s: usize, b: usize, gap: f64| {
        shift_quality(c.quality(s, b), gap_signs[s] * gap)
    };
    let priors: Vec<[f64; BANDS]> = match base {
        Some(b) if b.tiers.len() == k => b.tiers.iter().map(|t| t.predicted).collect(),
        _ => ranks.iter().map(|&rank| prior_curve(cal, rank)).collect(),
    };
    // A label's log-odds shift for each slot: what training saw of it, per tier by the same
    // rank as the prior.
    let slot_shift = |(dc, dp): (f64, f64), s: usize| dc + ranks[s] * (dp - dc);
    // Whether each slot runs one of the calibration's two (measured) models.
    let known: Vec<bool> = tiers
        .iter()
        .map(|t| t.model == cal.cheap_model || t.model == cal.premium_model)
        .collect();
    // A parent's curves as the prior of one of its labels, shifted by the label's own shift.
    // The parent learned against its outcomes' label-shifted expectations (`expected_mix`), so
    // what it learned is common to its labels and the shift applies in full. Except for a tier
    // on a model the calibration never measured: a caller's workflow (or family) is a kind of
    // work on which such a model may do far better or worse than elsewhere, so the tier starts
    // there from its own prior, not from what other workflows taught its parent. A discovered
    // cluster is provisional (a refit makes new ones) and starts from its parent's curves.
    let shifted = |parent: &LevelCurves<'_>, label: &str| -> Vec<[f64; BANDS]> {
        let own = cal.own_shift(label);
        let discovered = is_discovered(label);
        (0..k)
            .map(|s| {
                let delta = slot_shift(own, s);
                let mut curve = if !known[s] && !discovered {
                    priors[s]
                } else {
                    parent.predicted(s)
                };
                curve.iter_mut().for_each(|q| *q = shift_quality(*q, delta));
                curve
            })
            .collect()
    };
    // What a level's outcomes were expected to score on `base`: its workflows' evidence, each
    // moved by that workflow's shift relative to the level (`shift`).
    let expected = |base: &[[f64; BANDS]],
                    workflows: &[(&String, &Level)],
                    shift: &dyn Fn(&str) -> (f64, f64)|
     -> Vec<[f64; BANDS]> {
        (0..k)
            .map(|s| {
                let children = workflows.iter().filter_map(|(w, l)| {
                    let cells = l.cells.get(&tiers[s].name)?;
                    Some((cells, slot_shift(shift(w), s)))
                });
                expected_mix(&base[s], children)
            })
            .collect()
    };
    // A label the model was trained on had its shifted curve measured on its training tasks:
    // its bands need that many more outcomes of their own before a residual counts.
    let band_prior_of = |label: &str| {
        BAND_PRIOR
            + LABEL_BAND_PRIOR_PER_TASK
                * cal.workflows.get(label).map_or(0.0, |s| f64::from(s.tasks))
    };
    let strengths: Vec<f64> = known
        .iter()
        .map(|&m| {
            if m {
                PRIOR_KNOWN_MODEL
            } else {
                PRIOR_OTHER_MODEL
            }
        })
        .collect();
    let noise: Vec<f64> = known
        .iter()
        .map(|&m| if m { NOISE_SHRINK } else { 0.0 })
        .collect();
    // What a family's or workflow's own outcomes must outweigh of its parent's curve, per slot.
    // For a tier on one of the calibration's models, training measured how far labels move its
    // curve ([`FAMILY_PRIOR`], [`WORKFLOW_PRIOR`]); for any other model nothing did, so its
    // per-label curve is as unknown as its scope-wide one and the label's own outcomes count
    // from the first few ([`PRIOR_OTHER_MODEL`]): a model as good as premium on one workflow
    // only, or worse than a cheaper one on another, is believed within tens of outcomes.
    let child_strengths = |measured: f64| -> Vec<f64> {
        known
            .iter()
            .map(|&m| if m { measured } else { PRIOR_OTHER_MODEL })
            .collect()
    };
    let family_strengths = child_strengths(FAMILY_PRIOR);
    let workflow_strengths = child_strengths(WORKFLOW_PRIOR);

    // Curves: index 0 the scope, then families, then workflows.
    let zero = vec![0.0; k];
    let mut workflow_levels: Vec<(&String, &Level)> = evidence
        .map(|e| e.workflows.iter().collect())
        .unwrap_or_default();
    workflow_levels.sort_by(|a, b| a.0.cmp(b.0));
    let scope_start = Start {
        prior: &priors,
        expect: &expected(&priors, &workflow_levels, &|w| cal.shift_of(w)),
        strength: &strengths,
        band_prior: BAND_PRIOR,
        noise: &noise,
        gap_sign: &gap_signs,
        measured: &known,
        one_kind: false,
    };
    let mut all = vec![LevelCurves::Fresh(curves(
        &tiers,
        scope_start,
        &zero,
        evidence.map(|e| &e.scope),
        None,
    ))];
    let mut family_index: HashMap<&str, usize> = HashMap::new();
    let mut workflow_index: HashMap<&str, usize> = HashMap::new();
    if let Some(e) = evidence {
        let mut names: Vec<&String> = e.families.keys().collect();
        names.sort();
        // Each family's workflows, grouped once (not a scan of every workflow per family).
        let mut members_of: HashMap<&str, Vec<(&String, &Level)>> = HashMap::new();
        for &(w, l) in &workflow_levels {
            if let Some(f) = family_of(w) {
                members_of.entry(f).or_default().push((w, l));
            }
        }
        let kept =
            |map: &'a HashMap<String, Arc<WorkflowPlan>>, keep: &HashSet<&str>, name: &str| {
                keep.contains(name).then(|| map.get(name)).flatten()
            };
        for f in names {
            if let Some(p) = reuse.and_then(|r| kept(&r.plan.families, &keep_families, f)) {
                family_index.insert(f, all.len());
                all.push(LevelCurves::Kept(p));
                continue;
            }
            let prior = shifted(&all[0], f);
            let members = members_of.get(f.as_str()).map_or(&[][..], Vec::as_slice);
            let start = Start {
                prior: &prior,
                expect: &expected(&prior, members, &|w| cal.own_shift(w)),
                strength: &family_strengths,
                band_prior: band_prior_of(f),
                noise: &noise,
                gap_sign: &gap_signs,
                measured: &known,
                one_kind: false,
            };
            let c = curves(
                &tiers,
                start,
                &all[0].strengths(),
                e.families.get(f),
                Some(&e.scope),
            );
            family_index.insert(f, all.len());
            all.push(LevelCurves::Fresh(c));
        }
        for &(w, level) in &workflow_levels {
            if let Some(p) = reuse.and_then(|r| kept(&r.plan.workflows, &keep_workflows, w)) {
                workflow_index.insert(w, all.len());
                all.push(LevelCurves::Kept(p));
                continue;
            }
            let family = family_of(w).and_then(|f| Some((f, *family_index.get(f)?)));
            let parent = family.map_or(0, |(_, i)| i);
            let parent_level = match family {
                Some((f, _)) => e.families.get(f),
                None => Some(&e.scope),
            };
            let prior = shifted(&all[parent], w);
            let start = Start {
                prior: &prior,
                expect: &prior,
                strength: &workflow_strengths,
                band_prior: band_prior_of(w),
                noise: &noise,
                gap_sign: &gap_signs,
                measured: &known,
                // A caller's label names one kind of work; the tasks sent without one, and
                // a discovered cluster (a provisional grouping), are no such thing.
                one_kind: w.as_str() != DEFAULT_WORKFLOW && !is_discovered(w),
            };
            let c = curves(
                &tiers,
                start,
                &all[parent].strengths(),
                Some(level),
                parent_level,
            );
            workflow_index.insert(w, all.len());
            all.push(LevelCurves::Fresh(c));
        }
    }
    let curves_of = |workflow: &str| -> usize {
        let w = workflow_key(workflow);
        workflow_index
            .get(w)
            .or_else(|| family_of(w).and_then(|f| family_index.get(f)))
            .copied()
            .unwrap_or(0)
    };

    // The traffic the plan is priced on: recent tasks, topped up with the prior shape (one
    // typical task per band, scope-wide curves) until it weighs MIN_TRAFFIC_SAMPLE tasks.
    let typical_costs: Vec<f64> = tiers.iter().map(|x| x.cost_usd(typ_in, typ_out)).collect();
    let mut sample: Vec<SampleTask> = Vec::new();
    if let Some(e) = evidence {
        for t in &e.recent {
            // A task recorded without token counts (an id issued before Route's estimates
            // travelled with it) is priced as the typical task, never at zero.
            let (tin, tout) = match (t.input_tokens, t.output_tokens.min(cap)) {
                (0, 0) => (typ_in, typ_out),
                (i, o) => (i.max(1), o.max(1)),
            };
            sample.push(SampleTask {
                weight: 1.0,
                band: usize::from(t.band).min(BANDS - 1),
                gap: f64::from(t.gap),
                curves: curves_of(&t.workflow),
                costs: tiers.iter().map(|x| x.cost_usd(tin, tout)).collect(),
            });
        }
    }
    let missing = MIN_TRAFFIC_SAMPLE.saturating_sub(sample.len());
    if missing > 0 {
        let weight = missing as f64 / BANDS as f64;
        for b in 0..BANDS {
            sample.push(SampleTask {
                weight,
                band: b,
                gap: 0.0,
                curves: 0,
                costs: typical_costs.clone(),
            });
        }
    }
    let sample_weight: f64 = sample.iter().map(|t| t.weight).sum();
    let mean_of = |f: &dyn Fn(&SampleTask) -> f64| -> f64 {
        sample.iter().map(|t| t.weight * f(t)).sum::<f64>() / sample_weight.max(1e-12)
    };
    let top_quality = mean_of(&|t| quality_of(&all[t.curves], k - 1, t.band, t.gap));
    let bar = match scope.quality_bar_relative {
        Some(r) => r * top_quality,
        None => scope.quality_bar,
    };
    // Close the loop on what was delivered: while the scope's realized (decayed) quality runs
    // below the bar, aim above it by CATCH_UP_GAIN × the shortfall (at most CATCH_UP), so a
    // stretch of hard traffic that missed the bar is made up for instead of forgotten.
    let target = match evidence.map(|e| e.scope.total) {
        Some(t) if t.n >= MIN_TRAFFIC_SAMPLE as f64 => {
            bar + (CATCH_UP_GAIN * (bar - t.mean())).clamp(0.0, CATCH_UP)
        }
        _ => bar,
    };
    let rel = scope.quality_bar_relative;
    let per_task_slot = |c: &LevelCurves<'_>, b: usize, gap: f64| {
        per_task(k, |s| quality_of(c, s, b, gap), rel, target)
    };

    let (lambda, expected_quality) = match (&scope.pinned_thresholds, scope.bar_mode) {
        (Some(pinned), _) => {
            let q = mean_of(&|t| {
                let centre = (t.band as f64 + 0.5) / BANDS as f64;
                let s = pinned[..k - 1]
                    .iter()
                    .position(|&x| centre < x)
                    .unwrap_or(k - 1);
                quality_of(&all[t.curves], s, t.band, t.gap)
            });
            (None, q)
        }
        (None, BarMode::PerTask) => {
            let q = mean_of(&|t| {
                let c = &all[t.curves];
                quality_of(c, per_task_slot(c, t.band, t.gap), t.band, t.gap)
            });
            (None, q)
        }
        (None, BarMode::Average) => {
            // Each sampled task's quality per slot does not depend on λ: computed once, not on
            // every step of the bisection.
            let qualities: Vec<f64> = sample
                .iter()
                .flat_map(|t| (0..k).map(|x| quality_of(&all[t.curves], x, t.band, t.gap)))
                .collect();
            let quality_at = |l: f64| {
                let total: f64 = sample
                    .iter()
                    .zip(qualities.chunks_exact(k))
                    .map(|(t, q)| {
                        let s = choose(l, t.costs.len(), |x| t.costs[x], |x| q[x]);
                        t.weight * q[s]
                    })
                    .sum();
                total / sample_weight.max(1e-12)
            };
            // A target the top tier cannot reach on this traffic (a hard stretch, or catching
            // up) is bought only up to OUT_OF_REACH_SLACK below its reach: the last of it costs
            // the most per point, so it is made up later on traffic where quality is cheaper.
            let aim = target.min(quality_at(LAMBDA_MAX) - OUT_OF_REACH_SLACK);
            let lambda = price_of_quality(&quality_at, aim);
            (Some(lambda), quality_at(lambda))
        }
    };

    // Thresholds of a set of curves: where a typical task's choice first climbs above a slot.
    let thresholds = |c: &Curves| -> Vec<f64> {
        if let Some(pinned) = &scope.pinned_thresholds {
            return pinned.clone();
        }
        let slot = |b: usize| match lambda {
            Some(l) => choose(
                l,
                typical_costs.len(),
                |x| typical_costs[x],
                |x| c.quality[x][b],
            ),
            None => per_task(k, |x| shift_quality(c.quality[x][b], 0.0), rel, target),
        };
        let slots: Vec<usize> = (0..BANDS).map(slot).collect();
        (0..k)
            .map(|s| {
                if s == k - 1 {
                    return 1.0;
                }
                slots
                    .iter()
                    .position(|&x| x > s)
                    .map_or(1.0, |b| b as f64 / BANDS as f64)
            })
            .collect()
    };
    let tier_plans = |c: &Curves, level: Option<&Level>, before: Option<&[TierPlan]>| {
        let th = thresholds(c);
        (0..k)
            .map(|s| {
                let (n, sum) = level
                    .and_then(|l| l.cells.get(&tiers[s].name))
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
                    gap_sign: gap_signs[s],
                }
            })
            .collect::<Vec<_>>()
    };
    let scope_output = evidence
        .and_then(|e| e.scope.output.estimate())
        .unwrap_or(typ_out)
        .min(cap);
    let level_plans = |levels: Option<&HashMap<String, Level>>,
                       index: &HashMap<&str, usize>,
                       before: Option<&HashMap<String, Arc<WorkflowPlan>>>,
                       parent_output: &dyn Fn(&str) -> u64|
     -> HashMap<String, Arc<WorkflowPlan>> {
        let Some(levels) = levels else {
            return HashMap::new();
        };
        levels
            .iter()
            .filter_map(|(name, level)| {
                let c = match &all[*index.get(name.as_str())?] {
                    LevelCurves::Fresh(c) => c,
                    LevelCurves::Kept(p) => return Some((name.clone(), Arc::clone(p))),
                };
                let prev = before.and_then(|b| b.get(name)).map(|p| &p.tiers[..]);
                Some((
                    name.clone(),
                    Arc::new(WorkflowPlan {
                        tiers: tier_plans(c, Some(level), prev),
                        evidence: level.total.n,
                        realized_quality: level.total.mean(),
                        output_tokens: level
                            .output
                            .estimate()
                            .unwrap_or_else(|| parent_output(name))
                            .min(cap),
                        planned_at: now,
                    }),
                ))
            })
            .collect()
    };
    let families = level_plans(
        evidence.map(|e| &e.families),
        &family_index,
        previous.map(|p| &p.families),
        &|_| scope_output,
    );
    let workflows = level_plans(
        evidence.map(|e| &e.workflows),
        &workflow_index,
        previous.map(|p| &p.workflows),
        &|w| {
            family_of(w)
                .and_then(|f| families.get(f))
                .map_or(scope_output, |p| p.output_tokens)
        },
    );
    let scope_tiers = match &all[0] {
        LevelCurves::Fresh(c) => tier_plans(
            c,
            evidence.map(|e| &e.scope),
            previous.map(|p| &p.tiers[..]),
        ),
        LevelCurves::Kept(p) => p.tiers.clone(),
    };
    ScopePlan {
        policy: scope.clone(),
        tiers: scope_tiers,
        lambda,
        target,
        expected_quality,
        realized_quality: evidence.map(|e| e.scope.total.mean()).unwrap_or(0.0),
        evidence: evidence.map(|e| e.scope.total.n).unwrap_or(0.0),
        typical_output_tokens: scope_output,
        families,
        workflows,
        teams: HashMap::new(),
        // The scope's clusters, which `plan_scope_with` sets on every plan of the scope.
        clusters: None,
        planned_at: now,
        base_at: now,
    }
}

/// The smallest λ whose expected quality meets `bar`; `LAMBDA_MAX` when none does.
fn price_of_quality(quality_at: &dyn Fn(f64) -> f64, bar: f64) -> f64 {
    let ok = |l: f64| quality_at(l) >= bar;
    if ok(0.0) {
        return 0.0;
    }
    if !ok(LAMBDA_MAX) {
        return LAMBDA_MAX;
    }
    // Bisect in log space: costs span micro-dollars to dollars.
    let (mut lo, mut hi) = (LAMBDA_MIN.ln(), LAMBDA_MAX.ln());
    for _ in 0..48 {
        let mid = (lo + hi) / 2.0;
        if ok(mid.exp()) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi.exp()
}
