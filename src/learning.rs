//! Per-scope routing plans from calibration plus outcome evidence: the learning core.
//!
//! **Estimate.** For every scope and tier we keep decayed outcome statistics per complexity band.
//! A tier's expected quality in band `b` is its prior curve (the bundled model's calibration)
//! scaled by a tier-wide ratio learned from all of its outcomes, plus a per-band residual that
//! needs much more evidence to move. Pooling first makes a few feedbacks informative (a model that got
//! worse is noticed everywhere at once) while the band shape still adapts with volume.
//!
//! **Plan.** Routing minimises `cost(tier, task) − λ·quality(tier, band)`: λ is the scope's price
//! of quality in USD. The planner picks the smallest λ whose expected quality on the scope's
//! recent traffic, minus [`CONFIDENCE_Z`] standard errors, meets the bar. Large tasks (costly on
//! every tier) need a bigger expected gain to climb a tier than small ones; the thresholds shown
//! are where the choice switches for a typical task of the scope. A tier with little evidence has
//! a wide error, so the plan starts conservative and earns savings as outcomes arrive.
//!
//! Decay: every feedback in a scope scales its old evidence by `0.5^(1/HALF_LIFE_FEEDBACKS)`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::classifier::Calibration;
use crate::policy::{Policy, ScopePolicy, Tier};

/// Complexity bands used for evidence and planning (band `b` covers `[b/B, (b+1)/B)`).
pub const BANDS: usize = 20;
/// Outcomes the calibration is worth for a tier that runs one of the calibration's own models.
pub const PRIOR_KNOWN_MODEL: f64 = 30.0;
/// Outcomes the calibration is worth for any other model: weak, so such a tier starts cautious.
pub const PRIOR_OTHER_MODEL: f64 = 4.0;
/// Outcomes a single band needs before its own residual counts as much as the pooled estimate.
pub const BAND_PRIOR: f64 = 40.0;
/// Standard errors (of a tier's pooled estimate, σ ≤ 0.5) the plan subtracts from its quality:
/// measured on held-out replays (0 to 0.25 tried), 0.1 keeps quality within 0.01 of the bar
/// across seeds while a tier with little evidence still starts cautious.
pub const CONFIDENCE_Z: f64 = 0.1;
/// Feedbacks in a scope after which old evidence weighs half as much.
pub const HALF_LIFE_FEEDBACKS: f64 = 500.0;
/// Recent tasks per scope that the planner prices its choices on.
const TRAFFIC_SAMPLE: usize = 512;
/// Output tokens assumed for a scope before feedback reports real ones.
pub const DEFAULT_TYPICAL_OUTPUT_TOKENS: u64 = 256;
/// Input tokens of the typical task before feedback reports real ones.
const DEFAULT_TYPICAL_INPUT_TOKENS: u64 = 500;
/// λ large enough that quality dominates any cost (USD per unit of quality).
const LAMBDA_MAX: f64 = 1e6;
const LAMBDA_MIN: f64 = 1e-10;

/// Decayed outcome statistics: effective count and score sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cell {
    /// Effective number of outcomes.
    pub n: f64,
    /// Effective sum of scores.
    pub sum: f64,
}

impl Cell {
    fn scale(&mut self, f: f64) {
        self.n *= f;
        self.sum *= f;
    }
    fn add(&mut self, score: f64) {
        self.n += 1.0;
        self.sum += score;
    }
    /// Mean score, 0 without evidence.
    pub fn mean(&self) -> f64 {
        if self.n > 0.0 { self.sum / self.n } else { 0.0 }
    }
}

/// Size of one observed task: what the planner prices tiers on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskShape {
    /// Complexity band.
    pub band: u8,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// Outcome evidence of one scope, keyed by tier name so it survives policy edits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeEvidence {
    /// Tier name → per-band cells.
    pub cells: HashMap<String, [Cell; BANDS]>,
    /// The most recent tasks of the scope (band and real token counts).
    pub recent: VecDeque<TaskShape>,
    /// Decayed outcomes of the whole scope (realized quality).
    pub total: Cell,
    /// Feedbacks ever applied.
    pub feedbacks: u64,
    /// Workflow → moving average of reported output tokens (at most [`MAX_WORKFLOWS`] entries).
    pub output_tokens_by_workflow: HashMap<String, f64>,
}

/// Distinct workflows per scope whose output lengths are tracked; later ones use the scope mean.
pub const MAX_WORKFLOWS: usize = 1024;
/// Weight of the newest report in a workflow's output-token average.
const OUTPUT_EWMA: f64 = 0.1;

impl ScopeEvidence {
    /// Records the output length a workflow reported.
    pub fn observe_output(&mut self, workflow: &str, output_tokens: u64) {
        let x = output_tokens as f64;
        if let Some(avg) = self.output_tokens_by_workflow.get_mut(workflow) {
            *avg += OUTPUT_EWMA * (x - *avg);
        } else if self.output_tokens_by_workflow.len() < MAX_WORKFLOWS {
            self.output_tokens_by_workflow
                .insert(workflow.to_string(), x);
        }
    }

    /// Applies one outcome of `tier` on a task of `shape`.
    pub fn observe(&mut self, tier: &str, shape: TaskShape, score: f64) {
        let band = usize::from(shape.band).min(BANDS - 1);
        let decay = 0.5f64.powf(1.0 / HALF_LIFE_FEEDBACKS);
        for cells in self.cells.values_mut() {
            cells.iter_mut().for_each(|c| c.scale(decay));
        }
        self.total.scale(decay);
        self.cells
            .entry(tier.to_string())
            .or_insert([Cell::default(); BANDS])[band]
            .add(score);
        self.total.add(score);
        if self.recent.len() == TRAFFIC_SAMPLE {
            self.recent.pop_front();
        }
        self.recent.push_back(shape);
        self.feedbacks += 1;
    }

    /// Mean output tokens of recent tasks, if any.
    fn typical_tokens(&self) -> Option<(u64, u64)> {
        let n = self.recent.len() as u64;
        (n > 0).then(|| {
            let i: u64 = self.recent.iter().map(|t| t.input_tokens).sum();
            let o: u64 = self.recent.iter().map(|t| t.output_tokens).sum();
            (i / n, o / n)
        })
    }
}

/// One tier's place in a scope's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TierPlan {
    /// Index into [`Policy::tiers`].
    pub tier: usize,
    /// Complexity up to which the tier (or a cheaper one) is chosen for a typical task of the
    /// scope; 1 for the top tier.
    pub threshold: f64,
    /// Quality per band the plan counts on: the estimate less a confidence margin that shrinks
    /// with evidence.
    pub quality: [f64; BANDS],
    /// Estimated (expected) quality per band.
    pub predicted: [f64; BANDS],
    /// Effective outcomes observed for this tier in this scope.
    pub evidence: f64,
    /// Observed average score of the tier (0 without evidence).
    pub observed_quality: f64,
    /// Threshold change at the last re-plan that moved it.
    pub last_move: f64,
}

/// A scope's routing plan: what [`crate::routing`] reads on every Route call.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopePlan {
    /// The scope's policy.
    pub policy: Arc<ScopePolicy>,
    /// Allowed tiers, cheapest first.
    pub tiers: Vec<TierPlan>,
    /// Price of quality in USD per unit of expected score; `None` when thresholds are pinned.
    pub lambda: Option<f64>,
    /// Expected average quality of the plan on the scope's traffic.
    pub expected_quality: f64,
    /// Realized (decayed) average outcome score of the scope, 0 without evidence.
    pub realized_quality: f64,
    /// Effective outcomes observed in the scope.
    pub evidence: f64,
    /// Output tokens assumed for a task without a hint (mean of recent feedback).
    pub typical_output_tokens: u64,
    /// Per-workflow output tokens learned from feedback (rounded).
    pub output_tokens_by_workflow: HashMap<String, u64>,
}

impl ScopePlan {
    /// Output tokens to assume for a task of `workflow` without a hint.
    pub fn expected_output_tokens(&self, workflow: &str) -> u64 {
        self.output_tokens_by_workflow
            .get(workflow)
            .copied()
            .unwrap_or(self.typical_output_tokens)
    }

    /// Slot (index into `tiers`) for a task of `complexity` whose cost on each allowed tier is
    /// `costs`: the pinned thresholds, or the cheapest-at-price-λ choice.
    pub fn slot_for(&self, complexity: f64, band: usize, costs: &[f64]) -> usize {
        match self.lambda {
            Some(lambda) => choose(lambda, costs, |s| self.tiers[s].quality[band]),
            None => {
                let last = self.tiers.len() - 1;
                self.tiers[..last]
                    .iter()
                    .position(|t| complexity < t.threshold)
                    .unwrap_or(last)
            }
        }
    }
}

/// The slot minimising `cost − λ·quality`; the cheaper slot wins ties.
fn choose(lambda: f64, costs: &[f64], quality: impl Fn(usize) -> f64) -> usize {
    let mut best = 0;
    let mut best_v = costs.first().map_or(0.0, |c| c - lambda * quality(0));
    for (s, c) in costs.iter().enumerate().skip(1) {
        let v = c - lambda * quality(s);
        // Strictly better by more than rounding noise, so exact ties stay on the cheaper tier.
        if v < best_v - 1e-12 * best_v.abs() {
            best_v = v;
            best = s;
        }
    }
    best
}

/// Prior quality curve of a tier: the calibration's cheap or premium curve when the tier runs
/// that model, else interpolated between them by log price position among the allowed tiers.
fn prior_curve(cal: &Calibration, tier: &Tier, rank: f64) -> [f64; BANDS] {
    let bands = &cal.bands;
    let r = if tier.model == cal.cheap_model {
        0.0
    } else if tier.model == cal.premium_model {
        1.0
    } else {
        rank
    };
    let mut out = [0.0; BANDS];
    for (b, o) in out.iter_mut().enumerate() {
        // Calibration may use a different band count: sample it at this band's centre.
        let centre = (b as f64 + 0.5) / BANDS as f64;
        let cb = &bands[((centre * bands.len() as f64) as usize).min(bands.len() - 1)];
        *o = cb.cheap_quality + r * (cb.premium_quality - cb.cheap_quality);
    }
    out
}

/// Pooled estimate: prior × a tier-wide ratio (observed over expected successes, shrunk towards
/// 1 by `prior_strength` outcomes) plus a shrunk per-band residual. A ratio rather than an
/// offset because models change multiplicatively: one that starts failing 70% of its answers
/// loses 70% everywhere, not the same points on easy and hard tasks. Returns the per-band means
/// and the tier's effective evidence including the prior.
fn estimate(
    prior: &[f64; BANDS],
    cells: &[Cell; BANDS],
    prior_strength: f64,
) -> ([f64; BANDS], f64) {
    let n: f64 = cells.iter().map(|c| c.n).sum();
    let observed: f64 = cells.iter().map(|c| c.sum).sum();
    let expected: f64 = cells.iter().zip(prior).map(|(c, p)| c.n * p).sum();
    let prior_mean = (prior.iter().sum::<f64>() / BANDS as f64).max(1e-6);
    let ratio = (observed + prior_strength * prior_mean) / (expected + prior_strength * prior_mean);
    let mut mean = [0.0; BANDS];
    for b in 0..BANDS {
        let base = (prior[b] * ratio).clamp(0.0, 1.0);
        let residual = (cells[b].sum - cells[b].n * base) / (cells[b].n + BAND_PRIOR);
        mean[b] = (base + residual).clamp(0.0, 1.0);
    }
    (mean, n + prior_strength)
}

/// Builds the plan of one scope from the calibration and its evidence.
pub fn plan_scope(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
) -> ScopePlan {
    let tiers: Vec<&Tier> = scope.allowed.iter().map(|&i| &policy.tiers[i]).collect();
    let k = tiers.len();
    let (typ_in, typ_out) = evidence
        .and_then(ScopeEvidence::typical_tokens)
        .unwrap_or((DEFAULT_TYPICAL_INPUT_TOKENS, DEFAULT_TYPICAL_OUTPUT_TOKENS));
    let log_prices: Vec<f64> = tiers
        .iter()
        .map(|t| t.cost_usd(typ_in, typ_out).max(1e-12).ln())
        .collect();
    let (lo, hi) = (log_prices[0], log_prices[k - 1]);
    let empty = [Cell::default(); BANDS];
    let mut mean = Vec::with_capacity(k);
    let mut predicted = Vec::with_capacity(k);
    let mut tier_cells = Vec::with_capacity(k);
    for (s, t) in tiers.iter().enumerate() {
        let rank = if hi > lo {
            (log_prices[s] - lo) / (hi - lo)
        } else {
            1.0
        };
        let prior = prior_curve(cal, t, rank);
        let known = t.model == cal.cheap_model || t.model == cal.premium_model;
        let cells = evidence
            .and_then(|e| e.cells.get(&t.name))
            .unwrap_or(&empty);
        let (estimated, n) = estimate(
            &prior,
            cells,
            if known {
                PRIOR_KNOWN_MODEL
            } else {
                PRIOR_OTHER_MODEL
            },
        );
        // Plan on a lower confidence bound: a tier is trusted as far as its evidence supports.
        let margin = CONFIDENCE_Z * (0.25 / n).sqrt();
        let mut m = estimated;
        m.iter_mut().for_each(|q| *q = (*q - margin).max(0.0));
        mean.push(m);
        predicted.push(estimated);
        tier_cells.push(cells);
    }
    // The traffic the plan is priced on: recent tasks, or one typical task per band.
    let sample: Vec<(usize, Vec<f64>)> = match evidence.filter(|e| !e.recent.is_empty()) {
        Some(e) => e
            .recent
            .iter()
            .map(|t| {
                let b = usize::from(t.band).min(BANDS - 1);
                (
                    b,
                    tiers
                        .iter()
                        .map(|x| x.cost_usd(t.input_tokens, t.output_tokens))
                        .collect(),
                )
            })
            .collect(),
        None => (0..BANDS)
            .map(|b| {
                (
                    b,
                    tiers.iter().map(|x| x.cost_usd(typ_in, typ_out)).collect(),
                )
            })
            .collect(),
    };
    let typical_costs: Vec<f64> = tiers.iter().map(|x| x.cost_usd(typ_in, typ_out)).collect();

    let (lambda, thresholds, expected_quality) = match &scope.pinned_thresholds {
        Some(pinned) => {
            let q = (0..BANDS)
                .map(|b| {
                    let centre = (b as f64 + 0.5) / BANDS as f64;
                    let s = pinned[..k - 1]
                        .iter()
                        .position(|&t| centre < t)
                        .unwrap_or(k - 1);
                    mean[s][b]
                })
                .sum::<f64>()
                / BANDS as f64;
            (None, pinned.clone(), q)
        }
        None => {
            let explore = scope.exploration_rate;
            let lambda = price_of_quality(&mean, &sample, scope.quality_bar, explore);
            let q = sample_quality(lambda, &mean, &sample, explore);
            let thresholds = (0..k)
                .map(|s| {
                    if s == k - 1 {
                        return 1.0;
                    }
                    let first_above =
                        (0..BANDS).find(|&b| choose(lambda, &typical_costs, |x| mean[x][b]) > s);
                    first_above.map_or(1.0, |b| b as f64 / BANDS as f64)
                })
                .collect();
            (Some(lambda), thresholds, q)
        }
    };
    let plans = (0..k)
        .map(|s| {
            let cells = tier_cells[s];
            let n: f64 = cells.iter().map(|c| c.n).sum();
            let sum: f64 = cells.iter().map(|c| c.sum).sum();
            let threshold: f64 = thresholds[s];
            let before = previous
                .and_then(|p| p.tiers.iter().find(|t| t.tier == scope.allowed[s]))
                .map(|p| (p.threshold, p.last_move));
            let last_move = match before {
                Some((old, _)) if (old - threshold).abs() > 1e-12 => threshold - old,
                Some((_, m)) => m,
                None => 0.0,
            };
            TierPlan {
                tier: scope.allowed[s],
                threshold,
                quality: mean[s],
                predicted: predicted[s],
                evidence: n,
                observed_quality: if n > 0.0 { sum / n } else { 0.0 },
                last_move,
            }
        })
        .collect();
    ScopePlan {
        policy: scope.clone(),
        tiers: plans,
        lambda,
        expected_quality,
        realized_quality: evidence.map(|e| e.total.mean()).unwrap_or(0.0),
        evidence: evidence.map(|e| e.total.n).unwrap_or(0.0),
        typical_output_tokens: typ_out,
        output_tokens_by_workflow: evidence
            .map(|e| {
                e.output_tokens_by_workflow
                    .iter()
                    .map(|(w, t)| (w.clone(), t.round() as u64))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Expected quality (on the planning bound) of choosing at price λ over the sample, including
/// what exploration costs: a share `explore` of tasks whose choice is above the cheapest tier
/// runs one tier lower.
fn sample_quality(
    lambda: f64,
    quality: &[[f64; BANDS]],
    sample: &[(usize, Vec<f64>)],
    explore: f64,
) -> f64 {
    let q: f64 = sample
        .iter()
        .map(|(b, costs)| {
            let s = choose(lambda, costs, |x| quality[x][*b]);
            match s.checked_sub(1) {
                Some(lower) => (1.0 - explore) * quality[s][*b] + explore * quality[lower][*b],
                None => quality[s][*b],
            }
        })
        .sum();
    q / sample.len().max(1) as f64
}

/// The smallest λ whose expected quality meets `bar`; `LAMBDA_MAX` when none does.
fn price_of_quality(
    quality: &[[f64; BANDS]],
    sample: &[(usize, Vec<f64>)],
    bar: f64,
    explore: f64,
) -> f64 {
    let ok = |l: f64| sample_quality(l, quality, sample, explore) >= bar;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::CalibrationBand;

    fn calibration() -> Calibration {
        // Cheap model strong on easy tasks, weak on hard; premium steady.
        let bands = (0..20)
            .map(|b| {
                let c = b as f64 / 19.0;
                CalibrationBand {
                    tasks: 100,
                    cheap_quality: 0.95 - 0.6 * c,
                    premium_quality: 0.95 - 0.15 * c,
                }
            })
            .collect();
        Calibration {
            cheap_model: "cheap-m".into(),
            premium_model: "premium-m".into(),
            bands,
        }
    }

    const TIERS: &str = r#"
[[tiers]]
name = "small"
model = "cheap-m"
input_usd_per_mtok = 0.2
output_usd_per_mtok = 0.2
[[tiers]]
name = "medium"
model = "other-m"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[tiers]]
name = "large"
model = "premium-m"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0
"#;

    fn policy(bar: f64) -> Policy {
        Policy::parse(&format!("{TIERS}[default]\nquality_bar = {bar}\n")).unwrap()
    }

    fn plan(bar: f64, ev: Option<&ScopeEvidence>) -> ScopePlan {
        let p = policy(bar);
        plan_scope(&p, &p.default, &calibration(), ev, None)
    }

    fn shape(band: usize) -> TaskShape {
        TaskShape {
            band: band as u8,
            input_tokens: 500,
            output_tokens: 256,
        }
    }

    fn typical_costs() -> Vec<f64> {
        let p = policy(0.8);
        p.tiers.iter().map(|t| t.cost_usd(500, 256)).collect()
    }

    #[test]
    fn thresholds_are_ordered_and_top_is_one() {
        for bar in [0.5, 0.7, 0.8, 0.85, 0.9, 0.99] {
            let p = plan(bar, None);
            let t: Vec<f64> = p.tiers.iter().map(|t| t.threshold).collect();
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
            assert_eq!(*t.last().unwrap(), 1.0);
            assert!(t.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }

    #[test]
    fn higher_bar_trusts_cheap_tiers_less_and_meets_the_bar() {
        let loose = plan(0.7, None);
        let strict = plan(0.82, None);
        assert!(
            loose.tiers[0].threshold > strict.tiers[0].threshold,
            "{loose:?}\n{strict:?}"
        );
        assert!(
            strict.expected_quality >= 0.82,
            "{}",
            strict.expected_quality
        );
        assert!(strict.lambda.unwrap() > loose.lambda.unwrap());
        // An impossible bar buys the best quality everywhere.
        let impossible = plan(0.99, None);
        assert_eq!(impossible.slot_for(0.9, 18, &typical_costs()), 2);
    }

    #[test]
    fn a_tier_without_evidence_starts_conservative() {
        // "medium" runs a model the calibration never saw: its estimate carries a wide margin.
        let p = plan(0.8, None);
        let margin = |t: &TierPlan| t.predicted[10] - t.quality[10];
        assert!(
            margin(&p.tiers[1]) > 1.5 * margin(&p.tiers[0]),
            "{:?}",
            p.tiers
        );
        // Evidence narrows the margin.
        let mut ev = ScopeEvidence::default();
        for i in 0..300 {
            ev.observe("medium", shape(i % BANDS), 0.8);
        }
        let later = plan(0.8, Some(&ev));
        assert!(margin(&later.tiers[1]) < margin(&p.tiers[1]) / 3.0);
    }

    #[test]
    fn slot_for_prefers_cheap_on_easy_tasks_and_premium_on_hard_ones() {
        let p = plan(0.8, None);
        let costs = typical_costs();
        assert_eq!(p.slot_for(0.0, 0, &costs), 0);
        assert_eq!(p.slot_for(1.0, BANDS - 1, &costs), 2);
    }

    #[test]
    fn larger_tasks_need_a_bigger_gain_to_climb() {
        let p = plan(0.8, None);
        let costs = typical_costs();
        // Find a band where a typical task goes to the top tier, then make the task 100× bigger.
        let b = (0..BANDS)
            .find(|&b| p.slot_for(0.0, b, &costs) == 2)
            .unwrap();
        let big: Vec<f64> = costs.iter().map(|c| c * 100.0).collect();
        assert!(p.slot_for(0.0, b, &big) <= 2);
        let tiny: Vec<f64> = costs.iter().map(|c| c / 100.0).collect();
        assert_eq!(p.slot_for(0.0, b, &tiny), 2);
    }

    #[test]
    fn evidence_that_cheap_tier_is_great_raises_its_threshold() {
        let before = plan(0.85, None);
        let mut ev = ScopeEvidence::default();
        for i in 0..2000 {
            ev.observe("small", shape(i % BANDS), 1.0);
        }
        let after = plan(0.85, Some(&ev));
        assert!(after.tiers[0].threshold > before.tiers[0].threshold);
        assert_eq!(after.tiers[0].threshold, 1.0);
        assert!(after.tiers[0].evidence > 100.0);
        assert!((after.tiers[0].observed_quality - 1.0).abs() < 1e-9);
    }

    #[test]
    fn decay_halves_old_evidence() {
        let mut ev = ScopeEvidence::default();
        ev.observe("small", shape(0), 1.0);
        for _ in 0..HALF_LIFE_FEEDBACKS as usize {
            ev.observe("large", shape(5), 1.0);
        }
        let n = ev.cells["small"][0].n;
        assert!((n - 0.5).abs() < 0.01, "{n}");
        assert_eq!(
            ev.recent.len(),
            (HALF_LIFE_FEEDBACKS as usize + 1).min(TRAFFIC_SAMPLE)
        );
    }

    #[test]
    fn output_tokens_are_learned_per_workflow() {
        let mut ev = ScopeEvidence::default();
        for _ in 0..50 {
            ev.observe_output("math", 200);
            ev.observe_output("quiz", 1);
        }
        let p = plan(0.8, Some(&ev));
        assert_eq!(p.expected_output_tokens("math"), 200);
        assert_eq!(p.expected_output_tokens("quiz"), 1);
        assert_eq!(
            p.expected_output_tokens("other"),
            DEFAULT_TYPICAL_OUTPUT_TOKENS
        );
    }

    #[test]
    fn pinned_thresholds_are_kept() {
        let p = Policy::parse(&format!(
            "{TIERS}[default]\nquality_bar = 0.8\nthresholds = {{ small = 0.25, medium = 0.5 }}\n"
        ))
        .unwrap();
        let plan = plan_scope(&p, &p.default, &calibration(), None, None);
        let t: Vec<f64> = plan.tiers.iter().map(|t| t.threshold).collect();
        assert_eq!(t, vec![0.25, 0.5, 1.0]);
        assert_eq!(plan.lambda, None);
        assert_eq!(plan.slot_for(0.3, 6, &typical_costs()), 1);
    }

    #[test]
    fn estimate_pools_before_it_trusts_a_band() {
        let prior = [0.8; BANDS];
        let mut cells = [Cell::default(); BANDS];
        // 100 failures in band 3 only.
        cells[3] = Cell { n: 100.0, sum: 0.0 };
        let (m, n) = estimate(&prior, &cells, 100.0);
        assert_eq!(n, 200.0);
        // Everything moves down (pooled offset), band 3 most.
        assert!(m[0] < 0.8 && m[0] > 0.3);
        assert!(m[3] < m[0]);
    }

    proptest::proptest! {
        #[test]
        fn thresholds_stay_ordered_and_estimates_in_range(
            obs in proptest::collection::vec((0usize..3, 0usize..BANDS, 0.0f64..=1.0), 0..300),
            bar in 0.0f64..1.0,
        ) {
            let mut ev = ScopeEvidence::default();
            let names = ["small", "medium", "large"];
            for (t, b, score) in obs {
                ev.observe(names[t], shape(b), score);
            }
            let p = plan(bar, Some(&ev));
            let t: Vec<f64> = p.tiers.iter().map(|t| t.threshold).collect();
            proptest::prop_assert!(t.windows(2).all(|w| w[0] <= w[1]), "{:?}", t);
            proptest::prop_assert_eq!(*t.last().unwrap(), 1.0);
            for tier in &p.tiers {
                proptest::prop_assert!(tier.quality.iter().chain(&tier.predicted).all(|q| (0.0..=1.0).contains(q)));
            }
        }
    }
}
