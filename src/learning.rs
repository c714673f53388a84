//! Per-scope thresholds from calibration plus outcome evidence: the planner.
//!
//! For every scope and allowed tier we keep decayed outcome statistics per complexity band. The
//! estimated quality of a (tier, band) cell is a Beta-style posterior mean that starts at the
//! bundled model's calibration (worth [`PRIOR_STRENGTH`] outcomes) and moves with feedback.
//! The planner then assigns each band the cheapest tier such that the scope's expected average
//! quality — minus [`CONFIDENCE_Z`] standard errors — meets the bar: pessimism under uncertainty
//! is what makes a tier with no evidence start conservative, and evidence is what earns savings.
//! The assignment is monotone (harder bands never get a cheaper tier), so it is exactly a set of
//! thresholds: tier `t` is trusted up to the top of the last band assigned to a tier ≤ `t`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::classifier::Calibration;
use crate::policy::{Policy, ScopePolicy, Tier};

/// Complexity bands used for evidence and planning (band `b` covers `[b/B, (b+1)/B)`).
pub const BANDS: usize = 20;
/// How many outcomes the calibration prior is worth in each (tier, band) cell.
pub const PRIOR_STRENGTH: f64 = 8.0;
/// Standard errors of margin the plan keeps between expected quality and the bar.
pub const CONFIDENCE_Z: f64 = 1.28;
/// Feedbacks in a scope after which old evidence weighs half as much.
pub const HALF_LIFE_FEEDBACKS: f64 = 1500.0;
/// Pseudo-feedbacks of uniform traffic that the band-traffic estimate starts from.
const TRAFFIC_PRIOR: f64 = 40.0;
/// Nominal call size used to compare tier prices when planning.
const NOMINAL_TOKENS: (u64, u64) = (500, 250);

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

/// Outcome evidence of one scope, keyed by tier name so it survives policy edits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeEvidence {
    /// Tier name → per-band cells.
    pub cells: HashMap<String, [Cell; BANDS]>,
    /// Decayed feedback count per band (the scope's traffic mix).
    pub traffic: [f64; BANDS],
    /// Decayed outcomes of the whole scope (realized quality).
    pub total: Cell,
    /// Feedbacks ever applied.
    pub feedbacks: u64,
}

impl ScopeEvidence {
    /// Applies one outcome of `tier` on a task of complexity band `band`.
    pub fn observe(&mut self, tier: &str, band: usize, score: f64) {
        let band = band.min(BANDS - 1);
        let decay = 0.5f64.powf(1.0 / HALF_LIFE_FEEDBACKS);
        for cells in self.cells.values_mut() {
            cells.iter_mut().for_each(|c| c.scale(decay));
        }
        self.traffic.iter_mut().for_each(|t| *t *= decay);
        self.total.scale(decay);
        self.cells.entry(tier.to_string()).or_insert([Cell::default(); BANDS])[band].add(score);
        self.traffic[band] += 1.0;
        self.total.add(score);
        self.feedbacks += 1;
    }
}

/// One tier's place in a scope's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TierPlan {
    /// Index into [`Policy::tiers`].
    pub tier: usize,
    /// Complexity up to which the tier is trusted (exclusive; 1 for the top tier).
    pub threshold: f64,
    /// Estimated quality per band.
    pub quality: [f64; BANDS],
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
    /// Expected average quality of the plan on the scope's traffic.
    pub expected_quality: f64,
    /// Realized (decayed) average outcome score of the scope, 0 without evidence.
    pub realized_quality: f64,
    /// Effective outcomes observed in the scope.
    pub evidence: f64,
}

impl ScopePlan {
    /// Slot (index into `tiers`) of the cheapest tier whose threshold admits `complexity`.
    pub fn slot_for(&self, complexity: f64) -> usize {
        let last = self.tiers.len() - 1;
        self.tiers[..last]
            .iter()
            .position(|t| complexity < t.threshold)
            .unwrap_or(last)
    }
}

/// Prior quality curve of a tier: the calibration's cheap or premium curve when the tier runs
/// that model, else interpolated between them by log price position among the allowed tiers.
fn prior_curve(cal: &Calibration, tier: &Tier, rank: f64) -> [f64; BANDS] {
    let bands = &cal.bands;
    let mut out = [0.0; BANDS];
    for (b, o) in out.iter_mut().enumerate() {
        // Calibration may use a different band count: sample it at this band's centre.
        let centre = (b as f64 + 0.5) / BANDS as f64;
        let cb = &bands[((centre * bands.len() as f64) as usize).min(bands.len() - 1)];
        let r = if tier.model == cal.cheap_model {
            0.0
        } else if tier.model == cal.premium_model {
            1.0
        } else {
            rank
        };
        *o = cb.cheap_quality + r * (cb.premium_quality - cb.cheap_quality);
    }
    out
}

fn nominal_cost(t: &Tier) -> f64 {
    t.cost_usd(NOMINAL_TOKENS.0, NOMINAL_TOKENS.1)
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
    let log_prices: Vec<f64> = tiers.iter().map(|t| nominal_cost(t).max(1e-12).ln()).collect();
    let (lo, hi) = (log_prices[0], log_prices[k - 1]);
    let empty = [Cell::default(); BANDS];
    let mut mean = vec![[0.0; BANDS]; k];
    let mut var = vec![[0.0; BANDS]; k];
    let mut tier_cells = Vec::with_capacity(k);
    for (s, t) in tiers.iter().enumerate() {
        let rank = if hi > lo { (log_prices[s] - lo) / (hi - lo) } else { 1.0 };
        let prior = prior_curve(cal, t, rank);
        let cells = evidence
            .and_then(|e| e.cells.get(&t.name))
            .unwrap_or(&empty);
        for b in 0..BANDS {
            let ps = envf("TW_PS", PRIOR_STRENGTH); let n = cells[b].n + ps;
            let m = ((cells[b].sum + ps * prior[b]) / n).clamp(0.0, 1.0);
            mean[s][b] = m;
            var[s][b] = m * (1.0 - m) / (n + 1.0);
        }
        tier_cells.push(cells);
    }
    let mut weights = [1.0 / BANDS as f64; BANDS];
    if let Some(e) = evidence {
        let total: f64 = e.traffic.iter().sum::<f64>() + TRAFFIC_PRIOR;
        for (w, t) in weights.iter_mut().zip(e.traffic) {
            *w = (t + TRAFFIC_PRIOR / BANDS as f64) / total;
        }
    }
    let costs: Vec<f64> = tiers.iter().map(|t| nominal_cost(t)).collect();

    let (thresholds, expected_quality) = match &scope.pinned_thresholds {
        Some(pinned) => {
            let assign = assignment_from_thresholds(pinned);
            (pinned.clone(), quality_of(&assign, &mean, &weights))
        }
        None => {
            let assign = cheapest_assignment(&mean, &var, &weights, &costs, scope.quality_bar);
            (thresholds_of(&assign, k), quality_of(&assign, &mean, &weights))
        }
    };
    let plans = (0..k)
        .map(|s| {
            let cells = tier_cells[s];
            let n: f64 = cells.iter().map(|c| c.n).sum();
            let sum: f64 = cells.iter().map(|c| c.sum).sum();
            let before = previous
                .and_then(|p| p.tiers.iter().find(|t| t.tier == scope.allowed[s]))
                .map(|p| (p.threshold, p.last_move));
            let last_move = match before {
                Some((old, _)) if (old - thresholds[s]).abs() > 1e-12 => thresholds[s] - old,
                Some((_, m)) => m,
                None => 0.0,
            };
            TierPlan {
                tier: scope.allowed[s],
                threshold: thresholds[s],
                quality: mean[s],
                evidence: n,
                observed_quality: if n > 0.0 { sum / n } else { 0.0 },
                last_move,
            }
        })
        .collect();
    ScopePlan {
        policy: scope.clone(),
        tiers: plans,
        expected_quality,
        realized_quality: evidence.map(|e| e.total.mean()).unwrap_or(0.0),
        evidence: evidence.map(|e| e.total.n).unwrap_or(0.0),
    }
}

type Assignment = [usize; BANDS];

fn quality_of(a: &Assignment, mean: &[[f64; BANDS]], w: &[f64; BANDS]) -> f64 {
    (0..BANDS).map(|b| w[b] * mean[a[b]][b]).sum()
}

fn lower_bound(a: &Assignment, mean: &[[f64; BANDS]], var: &[[f64; BANDS]], w: &[f64; BANDS]) -> f64 {
    let v: f64 = (0..BANDS).map(|b| w[b] * w[b] * var[a[b]][b]).sum();
    quality_of(a, mean, w) - envf("TW_Z", CONFIDENCE_Z) * v.sqrt()
}

/// For a price of quality `lambda`, each band takes the tier minimising `cost − λ·quality`
/// (cheaper on ties), then harder bands are lifted to at least the tier of easier ones.
fn assignment_for(lambda: f64, mean: &[[f64; BANDS]], costs: &[f64]) -> Assignment {
    let mut a = [0usize; BANDS];
    let mut floor = 0;
    for (b, slot) in a.iter_mut().enumerate() {
        let mut best = 0;
        let mut best_v = f64::INFINITY;
        for (s, c) in costs.iter().enumerate() {
            let v = c - lambda * mean[s][b];
            if v < best_v - 1e-15 {
                best_v = v;
                best = s;
            }
        }
        floor = floor.max(best);
        *slot = floor;
    }
    a
}

/// The cheapest monotone assignment whose quality lower bound meets `bar`; when no assignment
/// can, the highest-quality one.
fn cheapest_assignment(
    mean: &[[f64; BANDS]],
    var: &[[f64; BANDS]],
    w: &[f64; BANDS],
    costs: &[f64],
    bar: f64,
) -> Assignment {
    let ok = |a: &Assignment| lower_bound(a, mean, var, w) >= bar;
    let cheapest = assignment_for(0.0, mean, costs);
    if ok(&cheapest) {
        return cheapest;
    }
    // Grow λ until quality dominates cost.
    let mut hi = costs.iter().cloned().fold(0.0, f64::max).max(1e-12) * 1e3;
    let mut best_quality = assignment_for(hi, mean, costs);
    for _ in 0..40 {
        let next = assignment_for(hi * 10.0, mean, costs);
        if next == best_quality {
            break;
        }
        hi *= 10.0;
        best_quality = next;
    }
    if !ok(&best_quality) {
        return best_quality;
    }
    let mut lo = 0.0;
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if ok(&assignment_for(mid, mean, costs)) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    assignment_for(hi, mean, costs)
}

fn thresholds_of(a: &Assignment, k: usize) -> Vec<f64> {
    (0..k)
        .map(|s| {
            if s == k - 1 {
                return 1.0;
            }
            match a.iter().rposition(|&t| t <= s) {
                Some(b) => (b + 1) as f64 / BANDS as f64,
                None => 0.0,
            }
        })
        .collect()
}

fn assignment_from_thresholds(thresholds: &[f64]) -> Assignment {
    let mut a = [0usize; BANDS];
    let last = thresholds.len() - 1;
    for (b, slot) in a.iter_mut().enumerate() {
        let centre = (b as f64 + 0.5) / BANDS as f64;
        *slot = thresholds[..last]
            .iter()
            .position(|&t| centre < t)
            .unwrap_or(last);
    }
    a
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
                let prev = previous.and_then(|p| p.plans.get(&scope.key)).map(|p| p.as_ref());
                let plan = plan_scope(&policy, scope, cal, evidence.get(&scope.key), prev);
                (scope.key.clone(), Arc::new(plan))
            })
            .collect::<HashMap<_, _>>();
        // all_scopes() always yields the default scope, so the fallback never runs.
        let default = plans.get("default").cloned().unwrap_or_else(|| {
            Arc::new(plan_scope(&policy, &policy.default, cal, evidence.get("default"), None))
        });
        Self { policy, plans, default }
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
        let default = plans.get("default").cloned().unwrap_or_else(|| self.default.clone());
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

    pub(crate) fn calibration() -> Calibration {
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

    fn policy(bar: f64) -> Policy {
        Policy::parse(&format!(
            r#"
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
[default]
quality_bar = {bar}
"#
        ))
        .unwrap()
    }

    fn plan(bar: f64, ev: Option<&ScopeEvidence>) -> ScopePlan {
        let p = policy(bar);
        plan_scope(&p, &p.default, &calibration(), ev, None)
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
    fn higher_bar_trusts_cheap_tiers_less() {
        let loose = plan(0.7, None);
        let strict = plan(0.85, None);
        assert!(loose.tiers[0].threshold > strict.tiers[0].threshold);
        assert!(strict.expected_quality >= 0.85, "{}", strict.expected_quality);
        // An impossible bar sends every band to its best-quality tier.
        let impossible = plan(0.99, None);
        assert_eq!(impossible.slot_for(0.5), 2);
    }

    #[test]
    fn slot_for_follows_thresholds() {
        let p = plan(0.8, None);
        let t0 = p.tiers[0].threshold;
        assert!(t0 > 0.0 && t0 < 1.0, "{t0}");
        assert_eq!(p.slot_for(0.0), 0);
        assert_ne!(p.slot_for(t0), 0);
        assert_eq!(p.slot_for(1.0), 2);
    }

    #[test]
    fn evidence_that_cheap_tier_is_great_raises_its_threshold() {
        let before = plan(0.85, None);
        let mut ev = ScopeEvidence::default();
        for i in 0..2000 {
            ev.observe("small", i % BANDS, 1.0);
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
        ev.observe("small", 0, 1.0);
        for _ in 0..HALF_LIFE_FEEDBACKS as usize {
            ev.observe("large", 5, 1.0);
        }
        let n = ev.cells["small"][0].n;
        assert!((n - 0.5).abs() < 0.01, "{n}");
    }

    #[test]
    fn pinned_thresholds_are_kept() {
        let p = Policy::parse(&format!(
            "{}\nthresholds = {{ small = 0.25, medium = 0.5 }}\n",
            policy_text_for_pinned()
        ))
        .unwrap();
        let plan = plan_scope(&p, &p.default, &calibration(), None, None);
        let t: Vec<f64> = plan.tiers.iter().map(|t| t.threshold).collect();
        assert_eq!(t, vec![0.25, 0.5, 1.0]);
    }

    fn policy_text_for_pinned() -> String {
        r#"
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
[default]
quality_bar = 0.8"#
            .to_string()
    }
}

fn envf(k: &str, d: f64) -> f64 { std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d) }
