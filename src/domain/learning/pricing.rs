//! The planner's pricing stages: the traffic sample the plan is priced on, the bar and the
//! target it aims at, the price of quality (λ) that meets it, and the thresholds a typical task
//! climbs the tiers by.

use super::estimate::Curves;
use super::evidence::{Cell, ScopeEvidence};
use super::levels::{LevelCurves, PlanCurves};
use super::odds::shift_quality;
use super::params::{
    BANDS, CATCH_UP, CATCH_UP_GAIN, LAMBDA_MAX, LAMBDA_MIN, MIN_TRAFFIC_SAMPLE, OUT_OF_REACH_SLACK,
};
use super::scope_plan::{choose, per_task};
use super::slots::{Slots, Typical};
use crate::domain::policy::{BarMode, ScopePolicy};

/// One task of the traffic the plan is priced on.
struct SampleTask<'c> {
    weight: f64,
    band: usize,
    /// The task's premium gap.
    gap: f64,
    /// The curves that apply (its workflow's, else its family's, else the scope's).
    curves: &'c LevelCurves<'c>,
    /// The task's cost on each slot (USD).
    costs: Vec<f64>,
}

/// The traffic the plan is priced on: the scope's recent tasks, topped up with the prior shape
/// (one typical task per band, on the scope's curves) until it weighs [`MIN_TRAFFIC_SAMPLE`]
/// tasks, so one feedback can never reprice a whole scope.
pub(super) struct Sample<'c> {
    tasks: Vec<SampleTask<'c>>,
    /// The tasks' weights together.
    weight: f64,
    /// How a premium gap moves each slot.
    gap_signs: &'c [f64],
}

impl<'c> Sample<'c> {
    /// The sample of `evidence`'s recent tasks, each priced on `slots` and on the curves of its
    /// workflow in `curves`.
    pub(super) fn new(
        evidence: Option<&ScopeEvidence>,
        slots: &'c Slots<'_>,
        curves: &'c PlanCurves<'c, '_>,
        typical: &Typical,
    ) -> Self {
        let mut tasks: Vec<SampleTask<'c>> = Vec::new();
        if let Some(e) = evidence {
            for t in &e.recent {
                // A task recorded without token counts (an id issued before Route's estimates
                // travelled with it) is priced as the typical task, never at zero.
                let (tin, tout) = match (t.input_tokens, t.output_tokens.min(typical.cap)) {
                    (0, 0) => (typical.input, typical.output),
                    (i, o) => (i.max(1), o.max(1)),
                };
                tasks.push(SampleTask {
                    weight: 1.0,
                    band: usize::from(t.band).min(BANDS - 1),
                    gap: f64::from(t.gap),
                    curves: curves.for_workflow(&t.workflow),
                    costs: slots.tiers.iter().map(|x| x.cost_usd(tin, tout)).collect(),
                });
            }
        }
        let missing = MIN_TRAFFIC_SAMPLE.saturating_sub(tasks.len());
        if missing > 0 {
            let weight = missing as f64 / BANDS as f64;
            for b in 0..BANDS {
                tasks.push(SampleTask {
                    weight,
                    band: b,
                    gap: 0.0,
                    curves: &curves.scope,
                    costs: slots.typical_costs.clone(),
                });
            }
        }
        let weight = tasks.iter().map(|t| t.weight).sum();
        Self {
            tasks,
            weight,
            gap_signs: &slots.gap_signs,
        }
    }

    /// The quality the plan counts on for task `t` on slot `s`, moved by the task's gap.
    fn quality(&self, t: &SampleTask<'_>, s: usize) -> f64 {
        shift_quality(t.curves.quality(s, t.band), self.gap_signs[s] * t.gap)
    }

    /// The weighted mean of `f` over the sample.
    fn mean_of(&self, f: impl Fn(&SampleTask<'_>) -> f64) -> f64 {
        self.tasks.iter().map(|t| t.weight * f(t)).sum::<f64>() / self.weight.max(1e-12)
    }

    /// The sample's mean quality with every task on the top slot.
    pub(super) fn top_quality(&self) -> f64 {
        let top = self.gap_signs.len() - 1;
        self.mean_of(|t| self.quality(t, top))
    }

    /// The sample's mean quality under pinned thresholds: each task on the first slot whose
    /// threshold lies above its band's centre.
    fn pinned_quality(&self, pinned: &[f64]) -> f64 {
        let k = self.gap_signs.len();
        self.mean_of(|t| {
            let centre = (t.band as f64 + 0.5) / BANDS as f64;
            let s = pinned[..k - 1]
                .iter()
                .position(|&x| centre < x)
                .unwrap_or(k - 1);
            self.quality(t, s)
        })
    }

    /// The sample's mean quality with each task on the cheapest slot that reaches the bar
    /// ([`per_task`]).
    fn per_task_quality(&self, relative: Option<f64>, target: f64) -> f64 {
        let k = self.gap_signs.len();
        self.mean_of(|t| {
            let s = per_task(k, |s| self.quality(t, s), relative, target);
            self.quality(t, s)
        })
    }

    /// Each task's cost and quality per slot: all the λ solve reads.
    fn menu(&self) -> Menu<'_> {
        let k = self.gap_signs.len();
        Menu {
            tasks: self
                .tasks
                .iter()
                .map(|t| (t.weight, &t.costs[..]))
                .collect(),
            qualities: self
                .tasks
                .iter()
                .flat_map(|t| (0..k).map(move |s| self.quality(t, s)))
                .collect(),
            k,
            weight: self.weight,
        }
    }
}

/// The bar a scope's plan is held to: the policy's `quality_bar`, or with
/// `quality_bar_relative = r`, `r` × what the top tier reaches on the scope's traffic (`top`,
/// only asked for then).
pub(super) fn bar(scope: &ScopePolicy, top: impl FnOnce() -> f64) -> f64 {
    match scope.quality_bar_relative {
        Some(r) => r * top(),
        None => scope.quality_bar,
    }
}

/// The target the plan aims at: the bar, raised while the scope's realized (decayed) quality
/// runs below it by [`CATCH_UP_GAIN`] × the shortfall (at most [`CATCH_UP`]), so a stretch of
/// hard traffic that missed the bar is made up for instead of forgotten. A scope with fewer
/// than [`MIN_TRAFFIC_SAMPLE`] outcomes aims at the bar.
pub(super) fn target(bar: f64, realized: Option<Cell>) -> f64 {
    match realized {
        Some(t) if t.n >= MIN_TRAFFIC_SAMPLE as f64 => {
            bar + (CATCH_UP_GAIN * (bar - t.mean())).clamp(0.0, CATCH_UP)
        }
        _ => bar,
    }
}

/// What `average` mode buys: the target, unless the top tier cannot reach it on this traffic
/// (`reach`, every task on the top tier; a hard stretch, or catching up); then only up to
/// [`OUT_OF_REACH_SLACK`] below the reach: the last of it costs the most per point, so it is
/// made up later on traffic where quality is cheaper.
pub(super) fn aim(target: f64, reach: f64) -> f64 {
    target.min(reach - OUT_OF_REACH_SLACK)
}

/// What the plan's choice rule resolved to on the sample: how each task is placed (pinned
/// thresholds, the per-task bar, or one price of quality) and the quality that gives.
pub(super) struct Pricing {
    /// Price of quality in USD per unit of expected score (`average` mode only).
    pub(super) lambda: Option<f64>,
    /// The bar as the plan aims at it ([`target`]).
    pub(super) target: f64,
    /// The policy's relative bar, which `per_task` mode applies task by task.
    pub(super) relative: Option<f64>,
    /// The plan's expected mean quality on the sample.
    pub(super) expected_quality: f64,
}

impl Pricing {
    /// The scope's rule on `sample`, aiming at `target`: pinned thresholds as pinned, the
    /// cheapest slot that reaches the bar in `per_task` mode, else the smallest λ whose
    /// expected quality meets [`aim`].
    pub(super) fn solve(scope: &ScopePolicy, sample: &Sample<'_>, target: f64) -> Self {
        let relative = scope.quality_bar_relative;
        let (lambda, expected_quality) = match (&scope.pinned_thresholds, scope.bar_mode) {
            (Some(pinned), _) => (None, sample.pinned_quality(pinned)),
            (None, BarMode::PerTask) => (None, sample.per_task_quality(relative, target)),
            (None, BarMode::Average) => {
                let (lambda, q) = sample.menu().solve(target);
                (Some(lambda), q)
            }
        };
        Self {
            lambda,
            target,
            relative,
            expected_quality,
        }
    }

    /// The slot a typical task (costs `typical_costs`) in band `b` gets under curves `c`.
    fn typical_slot(&self, c: &Curves, b: usize, typical_costs: &[f64]) -> usize {
        match self.lambda {
            Some(l) => choose(
                l,
                typical_costs.len(),
                |x| typical_costs[x],
                |x| c.quality[x][b],
            ),
            None => per_task(
                c.quality.len(),
                |x| shift_quality(c.quality[x][b], 0.0),
                self.relative,
                self.target,
            ),
        }
    }

    /// Thresholds of a level's curves `c`: per slot, the complexity where a typical task's
    /// choice first climbs above it (1 for the top slot); `pinned` when the policy pins them.
    pub(super) fn thresholds(
        &self,
        c: &Curves,
        pinned: Option<&[f64]>,
        typical_costs: &[f64],
    ) -> Vec<f64> {
        if let Some(pinned) = pinned {
            return pinned.to_vec();
        }
        let k = c.quality.len();
        let slots: Vec<usize> = (0..BANDS)
            .map(|b| self.typical_slot(c, b, typical_costs))
            .collect();
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
    }
}

/// What the λ solve reads of the sample: each task's weight and cost per slot, and its
/// quality per slot, which does not depend on λ (computed once, not on every bisection step).
struct Menu<'s> {
    /// Per task: its weight and its cost on each slot.
    tasks: Vec<(f64, &'s [f64])>,
    /// Per task, `k` qualities in slot order.
    qualities: Vec<f64>,
    k: usize,
    /// The tasks' weights together.
    weight: f64,
}

impl Menu<'_> {
    /// The mean quality when every task takes the slot minimising `cost − λ·quality`.
    fn quality_at(&self, lambda: f64) -> f64 {
        let total: f64 = self
            .tasks
            .iter()
            .zip(self.qualities.chunks_exact(self.k))
            .map(|(&(weight, costs), q)| {
                let s = choose(lambda, costs.len(), |x| costs[x], |x| q[x]);
                weight * q[s]
            })
            .sum();
        total / self.weight.max(1e-12)
    }

    /// The price of quality that meets [`aim`] (`target`, or just below the top tier's reach),
    /// and the mean quality it buys.
    fn solve(&self, target: f64) -> (f64, f64) {
        let aim = aim(target, self.quality_at(LAMBDA_MAX));
        let lambda = price_of_quality(&|l| self.quality_at(l), aim);
        (lambda, self.quality_at(lambda))
    }
}

/// The smallest λ whose expected quality (`quality_at`, which rises with λ) meets `bar`, to
/// within the bisection's step; 0 when even λ = 0 does, `LAMBDA_MAX` when none does.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::learning::slots::tests::with_slots;
    use crate::domain::learning::tests::{TIERS, calibration, shape};
    use crate::domain::policy::Policy;

    fn scope_of(extra: &str) -> std::sync::Arc<ScopePolicy> {
        let p = Policy::parse(&format!("{TIERS}[default]\nquality_bar = 0.8\n{extra}")).unwrap();
        p.default.clone()
    }

    fn realized(n: f64, mean: f64) -> Option<Cell> {
        Some(Cell {
            n,
            sum: n * mean,
            gap: 0.0,
        })
    }

    #[test]
    fn the_bar_is_the_policys_or_a_share_of_what_the_top_tier_reaches() {
        // An absolute bar never asks what the top tier reaches.
        assert_eq!(bar(&scope_of(""), || unreachable!()), 0.8);
        let relative = scope_of("quality_bar_relative = 0.75\n");
        assert_eq!(bar(&relative, || 0.5), 0.375);
    }

    #[test]
    fn the_target_rises_by_twice_the_shortfall_up_to_four_points() {
        // No evidence, or fewer outcomes than the sample needs: the bar itself.
        assert_eq!(target(0.8, None), 0.8);
        assert_eq!(target(0.8, realized(63.0, 0.5)), 0.8);
        // A shortfall of 0.01 over 64 outcomes: aim 2 × 0.01 above the bar (CATCH_UP_GAIN).
        let t = target(0.8, realized(64.0, 0.79));
        assert!((t - 0.82).abs() < 1e-12, "{t}");
        // A large shortfall: at most 0.04 above (CATCH_UP).
        assert_eq!(target(0.8, realized(500.0, 0.5)), 0.8 + 0.04);
        // Above the bar: never aims below it.
        assert_eq!(target(0.8, realized(500.0, 0.95)), 0.8);
    }

    #[test]
    fn a_target_out_of_the_top_tiers_reach_is_aimed_half_a_point_below_the_reach() {
        assert_eq!(aim(0.8, 0.9), 0.8);
        assert!((aim(0.8, 0.7) - 0.695).abs() < 1e-12, "{}", aim(0.8, 0.7));
        // Within the slack of the reach, the slack still applies (the price of the rule).
        assert!((aim(0.8, 0.803) - 0.798).abs() < 1e-12);
    }

    #[test]
    fn the_price_of_quality_is_the_smallest_lambda_that_meets_the_bar() {
        // Quality λ/(1 + λ) meets a bar b from λ = b/(1 − b) on.
        let smooth = |l: f64| l / (1.0 + l);
        for (b, want) in [(0.5, 1.0), (0.9, 9.0), (0.2, 0.25)] {
            let l = price_of_quality(&smooth, b);
            assert!(smooth(l) >= b, "{b}: {l}");
            assert!((l / want - 1.0).abs() < 1e-9, "{b}: {l} vs {want}");
        }
        // A step at 0.37: the bisection lands just above it.
        let step = |l: f64| if l >= 0.37 { 0.9 } else { 0.5 };
        let l = price_of_quality(&step, 0.8);
        assert!(l >= 0.37 && l / 0.37 - 1.0 < 1e-12, "{l}");
        // Met for free, or never.
        assert_eq!(price_of_quality(&step, 0.5), 0.0);
        assert_eq!(price_of_quality(&step, 0.95), LAMBDA_MAX);
        // A higher bar never costs less.
        let mut last = 0.0;
        for b in [0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
            let l = price_of_quality(&smooth, b);
            assert!(l > last, "{b}: {l} after {last}");
            last = l;
        }
    }

    /// Two tasks on two slots: task A climbs at λ = 0.003 / 0.3 = 0.01, task B at
    /// λ = 0.0005 / 0.1 = 0.005.
    const A: [f64; 2] = [0.001, 0.004];
    const B: [f64; 2] = [0.002, 0.0025];

    fn menu() -> Menu<'static> {
        Menu {
            tasks: vec![(1.0, &A[..]), (1.0, &B[..])],
            qualities: vec![0.6, 0.9, 0.7, 0.8],
            k: 2,
            weight: 2.0,
        }
    }

    #[test]
    fn quality_bought_rises_with_the_price_of_quality() {
        let m = menu();
        assert!((m.quality_at(0.0) - 0.65).abs() < 1e-12);
        assert!((m.quality_at(0.007) - 0.7).abs() < 1e-12);
        assert!((m.quality_at(0.02) - 0.85).abs() < 1e-12);
        // Exactly at B's crossing both slots cost the same: the cheaper one keeps the task.
        assert!((m.quality_at(0.005) - 0.65).abs() < 1e-12);
        let mut last = 0.0;
        for i in 0..60 {
            let q = m.quality_at(1e-6 * 1.5f64.powi(i));
            assert!(q >= last, "{i}: {q} < {last}");
            last = q;
        }
    }

    #[test]
    fn the_lambda_solve_meets_the_target_at_the_lowest_price_or_stops_short_of_the_reach() {
        let m = menu();
        // 0.7 needs B on its better slot: λ just above 0.005.
        let (l, q) = m.solve(0.7);
        assert!(l > 0.005 && l / 0.005 - 1.0 < 1e-9, "{l}");
        assert!((q - 0.7).abs() < 1e-12, "{q}");
        // 0.9 is beyond the reach (0.85): aimed at 0.845, which needs both tasks climbed.
        let (l, q) = m.solve(0.9);
        assert!(l > 0.01 && l / 0.01 - 1.0 < 1e-9, "{l}");
        assert!((q - 0.85).abs() < 1e-12, "{q}");
        // A target met at λ = 0 is free.
        let (l, q) = m.solve(0.6);
        assert!(l == 0.0 && (q - 0.65).abs() < 1e-12, "{l} {q}");
    }

    /// Two slots over the bands: the cheap one falls 0.04 a band from 0.9, the dear one is
    /// flat at 0.9.
    fn falling_curves() -> Curves {
        let cheap: [f64; BANDS] = std::array::from_fn(|b| 0.9 - 0.04 * b as f64);
        Curves {
            quality: vec![cheap, [0.9; BANDS]],
            predicted: vec![cheap, [0.9; BANDS]],
            strength: vec![30.0, 30.0],
        }
    }

    #[test]
    fn a_threshold_is_where_a_typical_task_first_climbs_above_the_slot() {
        let c = falling_curves();
        let costs = [0.001, 0.002];
        // At λ = 0.01 the dear slot is worth 0.001 more once the gap exceeds 0.1: band 3.
        let priced = Pricing {
            lambda: Some(0.01),
            target: 0.8,
            relative: None,
            expected_quality: 0.0,
        };
        assert_eq!(priced.thresholds(&c, None, &costs), vec![0.15, 1.0]);
        // Per task, a bar of 0.8 holds on the cheap slot up to band 2 (0.82): band 3 again.
        let per_task = Pricing {
            lambda: None,
            ..priced
        };
        assert_eq!(per_task.thresholds(&c, None, &costs), vec![0.15, 1.0]);
        // A relative bar of 0.95 × 0.9 = 0.855 holds up to band 1 (0.86).
        let relative = Pricing {
            relative: Some(0.95),
            ..per_task
        };
        assert_eq!(relative.thresholds(&c, None, &costs), vec![0.1, 1.0]);
        // Pinned thresholds are the plan's whatever the curves.
        assert_eq!(relative.thresholds(&c, Some(&[0.3]), &costs), vec![0.3]);
    }

    #[test]
    fn the_prior_traffic_shape_weighs_what_the_sample_lacks_of_64_tasks() {
        let mut ev = ScopeEvidence::default();
        for b in 0..10 {
            ev.observe("small", shape(b), 1.0);
        }
        with_slots(&calibration(), |slots, typical| {
            // No evidence: one typical task per band, 64 tasks' weight in all.
            let curves = PlanCurves::build(slots, None, None);
            let sample = Sample::new(None, slots, &curves, typical);
            assert_eq!(sample.tasks.len(), BANDS);
            assert!((sample.weight - 64.0).abs() < 1e-12);
            assert!(sample.tasks.iter().all(|t| t.costs == slots.typical_costs));
            // Ten recent tasks: the prior shape makes up the other 54.
            let curves = PlanCurves::build(slots, Some(&ev), None);
            let sample = Sample::new(Some(&ev), slots, &curves, typical);
            assert_eq!(sample.tasks.len(), 10 + BANDS);
            assert!((sample.weight - 64.0).abs() < 1e-12);
            assert!((sample.tasks[10].weight - 54.0 / BANDS as f64).abs() < 1e-12);
        });
    }
}
