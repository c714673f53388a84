//! The planner's first stage: a scope's allowed tiers as slots (cheapest first), priced on the
//! typical task, and what each slot's estimate starts from at every level (its prior curve,
//! what that prior is worth, how a label or a premium gap moves it).

use super::estimate::{Start, expected_mix, inherits, prior_curve};
use super::evidence::{Level, is_discovered};
use super::odds::shift_quality;
use super::params::{
    BAND_PRIOR, BANDS, DEFAULT_TYPICAL_INPUT_TOKENS, DEFAULT_TYPICAL_OUTPUT_TOKENS, FAMILY_PRIOR,
    LABEL_BAND_PRIOR_PER_TASK, NOISE_SHRINK, PRIOR_KNOWN_MODEL, PRIOR_OTHER_MODEL,
    SHARED_PRIOR_MIN, WORKFLOW_PRIOR,
};
use super::scope_plan::ScopePlan;
use crate::domain::classifier::Calibration;
use crate::domain::policy::{Policy, ScopePolicy, Tier};

/// The task a plan's thresholds are drawn for and its prior traffic is made of: the scope's
/// typical tokens (learned from its reports, else the defaults), never zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Typical {
    pub(super) input: u64,
    pub(super) output: u64,
    /// The scope's `max_output_tokens`, which every output length is held to.
    pub(super) cap: u64,
}

impl Typical {
    /// The typical task from the evidence's `(input, output)` tokens, for a scope whose
    /// outputs are capped at `cap`. Never a free typical task: priced at 0 tokens, every tier
    /// costs nothing and any price of quality buys the top tier on paper while Route, pricing
    /// real tokens, buys the cheapest.
    pub(super) fn new(tokens: Option<(u64, u64)>, cap: u64) -> Self {
        let (input, output) =
            tokens.unwrap_or((DEFAULT_TYPICAL_INPUT_TOKENS, DEFAULT_TYPICAL_OUTPUT_TOKENS));
        Self {
            input: input.max(1),
            output: output.clamp(1, cap.max(1)),
            cap,
        }
    }
}

/// A scope's allowed tiers as the plan's slots, and what each slot's estimate starts from.
/// Every vector is indexed by slot.
pub(super) struct Slots<'p> {
    cal: &'p Calibration,
    pub(super) tiers: Vec<&'p Tier>,
    /// The typical task's cost on each slot (USD).
    pub(super) typical_costs: Vec<f64>,
    /// Where each slot sits between the calibration's cheap model (0) and its premium one (1):
    /// by log price between the cheapest and the dearest allowed tier for any other model.
    ranks: Vec<f64>,
    /// How a task's premium gap moves each slot ([`TierPlan::gap_sign`](super::TierPlan)).
    pub(super) gap_signs: Vec<f64>,
    /// Whether each slot runs one of the calibration's two (measured) models.
    known: Vec<bool>,
    /// The scope's prior curve per slot: the base plan's estimates (a team's plan on the
    /// shared one), else the calibration's curve at the slot's rank.
    pub(super) priors: Vec<[f64; BANDS]>,
    /// What the scope's prior is worth, in outcomes.
    strengths: Vec<f64>,
    /// How much of a deviation from the prior is put down to sampling noise.
    noise: Vec<f64>,
    /// What a family's own outcomes must outweigh of its scope's curve.
    family_strengths: Vec<f64>,
    /// What a workflow's own outcomes must outweigh of its parent's curve.
    workflow_strengths: Vec<f64>,
}

impl<'p> Slots<'p> {
    /// The slots of `scope`'s allowed tiers, ranked by their price for the `typical` task; the
    /// scope's priors come from `base`'s curves when it has one per slot. `pooled`: the plan is
    /// a scope's shared plan over its teams' bounded shares ([`SHARED_PRIOR_MIN`]).
    pub(super) fn new(
        policy: &'p Policy,
        scope: &ScopePolicy,
        cal: &'p Calibration,
        typical: &Typical,
        (base, pooled): (Option<&ScopePlan>, bool),
    ) -> Self {
        let tiers: Vec<&Tier> = scope.allowed.iter().map(|&i| &policy.tiers[i]).collect();
        let typical_costs: Vec<f64> = tiers
            .iter()
            .map(|t| t.cost_usd(typical.input, typical.output))
            .collect();
        let ranks = ranks(cal, &tiers, &typical_costs);
        let known: Vec<bool> = tiers
            .iter()
            .map(|t| t.model == cal.cheap_model || t.model == cal.premium_model)
            .collect();
        let priors = match base {
            Some(b) if b.tiers.len() == tiers.len() => {
                b.tiers.iter().map(|t| t.predicted).collect()
            }
            _ => ranks.iter().map(|&rank| prior_curve(cal, rank)).collect(),
        };
        // A shared plan over teams is what every team without evidence of its own routes on,
        // and one team holds up to TEAM_SHARE outcomes of it: there no prior is worth less than
        // SHARED_PRIOR_MIN, so that team moves a curve at most a third of the way.
        let floor = if pooled { SHARED_PRIOR_MIN } else { 0.0 };
        let by_kind = |measured: f64, other: f64| -> Vec<f64> {
            known
                .iter()
                .map(|&m| if m { measured } else { other.max(floor) })
                .collect()
        };
        // What a family's or workflow's own outcomes must outweigh of its parent's curve. For
        // a tier on one of the calibration's models, training measured how far labels move its
        // curve ([`FAMILY_PRIOR`], [`WORKFLOW_PRIOR`]); for any other model nothing did, so its
        // per-label curve is as unknown as its scope-wide one and the label's own outcomes count
        // from the first few ([`PRIOR_OTHER_MODEL`]): a model as good as premium on one
        // workflow only, or worse than a cheaper one on another, is believed within tens of
        // outcomes.
        Self {
            cal,
            gap_signs: ranks.iter().map(|r| 2.0 * r - 1.0).collect(),
            strengths: by_kind(PRIOR_KNOWN_MODEL, PRIOR_OTHER_MODEL),
            noise: by_kind(NOISE_SHRINK, 0.0),
            family_strengths: by_kind(FAMILY_PRIOR, PRIOR_OTHER_MODEL),
            workflow_strengths: by_kind(WORKFLOW_PRIOR, PRIOR_OTHER_MODEL),
            tiers,
            typical_costs,
            ranks,
            known,
            priors,
        }
    }

    /// Number of slots.
    pub(super) fn len(&self) -> usize {
        self.tiers.len()
    }

    /// A label's log-odds shift `(cheap, premium)` (what training saw of it) for slot `s`, by
    /// the same rank as the slot's prior.
    fn label_shift(&self, (dc, dp): (f64, f64), s: usize) -> f64 {
        dc + self.ranks[s] * (dp - dc)
    }

    /// A parent's curves (`parent`: its estimate per slot) as the prior of one of its labels,
    /// shifted by the label's own shift. The parent learned against its outcomes'
    /// label-shifted expectations ([`Self::expected`]), so what it learned is common to its
    /// labels and the shift applies in full. Except for a tier on a model the calibration never
    /// measured: a caller's workflow (or family) is a kind of work on which such a model may do
    /// far better or worse than elsewhere, so the tier starts there from its own prior, not
    /// from what other workflows taught its parent. A discovered cluster is provisional (a
    /// refit makes new ones) and starts from its parent's curves.
    pub(super) fn shifted(
        &self,
        parent: impl Fn(usize) -> [f64; BANDS],
        label: &str,
    ) -> Vec<[f64; BANDS]> {
        let own = self.cal.own_shift(label);
        let discovered = is_discovered(label);
        (0..self.len())
            .map(|s| {
                let delta = self.label_shift(own, s);
                let mut curve = if inherits(self.known[s], discovered) {
                    parent(s)
                } else {
                    self.priors[s]
                };
                curve.iter_mut().for_each(|q| *q = shift_quality(*q, delta));
                curve
            })
            .collect()
    }

    /// What a level's outcomes were expected to score on `base`: its `workflows`' evidence,
    /// each moved by that workflow's shift relative to the level (`shift`).
    pub(super) fn expected(
        &self,
        base: &[[f64; BANDS]],
        workflows: &[(&String, &Level)],
        shift: impl Fn(&str) -> (f64, f64),
    ) -> Vec<[f64; BANDS]> {
        (0..self.len())
            .map(|s| {
                let children = workflows.iter().filter_map(|(w, l)| {
                    let cells = l.cells.get(&self.tiers[s].name)?;
                    Some((cells, self.label_shift(shift(w), s)))
                });
                expected_mix(&base[s], children)
            })
            .collect()
    }

    /// The outcomes one band of `label` needs before its own residual counts: a label the
    /// model was trained on had its shifted curve measured on its training tasks, so its bands
    /// need that many more ([`LABEL_BAND_PRIOR_PER_TASK`] per task) on top of [`BAND_PRIOR`].
    pub(super) fn band_prior_of(&self, label: &str) -> f64 {
        BAND_PRIOR
            + LABEL_BAND_PRIOR_PER_TASK
                * self
                    .cal
                    .workflows
                    .get(label)
                    .map_or(0.0, |s| f64::from(s.tasks))
    }

    /// The scope's own label shift for a workflow (a family's and the workflow's together, as
    /// the scope expects a workflow's outcomes to score).
    pub(super) fn scope_shift(&self, workflow: &str) -> (f64, f64) {
        self.cal.shift_of(workflow)
    }

    /// A label's own shift relative to its parent (a family below the scope, a workflow below
    /// its family).
    pub(super) fn own_shift(&self, label: &str) -> (f64, f64) {
        self.cal.own_shift(label)
    }

    /// Where the scope's estimate starts: the priors, expected at `expect`.
    pub(super) fn scope_start<'s>(&'s self, expect: &'s [[f64; BANDS]]) -> Start<'s> {
        self.start(
            &self.priors,
            expect,
            &self.strengths,
            BAND_PRIOR,
            (false, false),
        )
    }

    /// Where a family's estimate starts: `prior` (its scope's curves, shifted), expected at
    /// `expect` (its workflows' shifts on that prior).
    pub(super) fn family_start<'s>(
        &'s self,
        label: &str,
        prior: &'s [[f64; BANDS]],
        expect: &'s [[f64; BANDS]],
    ) -> Start<'s> {
        let band_prior = self.band_prior_of(label);
        let discovered = is_discovered(label);
        self.start(
            prior,
            expect,
            &self.family_strengths,
            band_prior,
            (false, discovered),
        )
    }

    /// Where a workflow's estimate starts: `prior` (its parent's curves, shifted), which is
    /// also what its own outcomes were expected to score.
    pub(super) fn workflow_start<'s>(
        &'s self,
        label: &str,
        prior: &'s [[f64; BANDS]],
    ) -> Start<'s> {
        // A caller's label names one kind of work, and a discovered cluster groups tasks alike
        // in their words (each tier fits its own slope there too: on the cross-validation
        // folds stripped of labels, worst run −0.0762 against −0.0767 without, saving 0.381
        // against 0.373); the tasks sent without a label, before any cluster, are no such thing.
        let discovered = is_discovered(label);
        let one_kind = label != crate::domain::labels::DEFAULT_WORKFLOW;
        let band_prior = self.band_prior_of(label);
        let kind = (one_kind, discovered);
        self.start(prior, prior, &self.workflow_strengths, band_prior, kind)
    }

    fn start<'s>(
        &'s self,
        prior: &'s [[f64; BANDS]],
        expect: &'s [[f64; BANDS]],
        strength: &'s [f64],
        band_prior: f64,
        (one_kind, discovered): (bool, bool),
    ) -> Start<'s> {
        Start {
            prior,
            expect,
            strength,
            band_prior,
            noise: &self.noise,
            gap_sign: &self.gap_signs,
            measured: &self.known,
            one_kind,
            discovered,
        }
    }
}

/// Each slot's rank: 0 for the calibration's cheap model, 1 for its premium one (or when every
/// allowed tier costs the same), else its log price between the cheapest and the dearest
/// allowed tier's, on the typical task.
fn ranks(cal: &Calibration, tiers: &[&Tier], typical_costs: &[f64]) -> Vec<f64> {
    let log_prices: Vec<f64> = typical_costs.iter().map(|c| c.max(1e-12).ln()).collect();
    let (lo, hi) = (log_prices[0], log_prices[tiers.len() - 1]);
    tiers
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
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::classifier::LabelShift;
    use crate::domain::learning::tests::{calibration, policy};

    /// The test policy's slots: `small` (the calibration's cheap model), `medium` (a model it
    /// never measured) and `large` (its premium model).
    /// (Other stages' tests build on them too, with the typical task.)
    pub(in crate::domain::learning) fn with_slots<T>(
        cal: &Calibration,
        f: impl FnOnce(&Slots<'_>, &Typical) -> T,
    ) -> T {
        let p = policy(0.8);
        let typical = Typical::new(None, p.default.max_output_tokens);
        f(
            &Slots::new(&p, &p.default, cal, &typical, (None, false)),
            &typical,
        )
    }

    #[test]
    fn the_typical_task_is_500_in_256_out_and_never_free() {
        let t = Typical::new(None, 4096);
        assert_eq!((t.input, t.output), (500, 256));
        let t = Typical::new(Some((0, 0)), 4096);
        assert_eq!((t.input, t.output), (1, 1));
        // Outputs are held to the scope's cap.
        assert_eq!(Typical::new(Some((800, 9000)), 1000).output, 1000);
    }

    #[test]
    fn slots_rank_measured_models_at_their_ends_and_others_by_log_price() {
        with_slots(&calibration(), |s, _| {
            assert_eq!(s.ranks[0], 0.0);
            assert_eq!(s.ranks[2], 1.0);
            // On 500 + 256 tokens `medium` costs 5× `small` and `large` 83.86× (12,680 against
            // 151.2 micro-USD): ln 5 / ln 83.86 = 0.3634.
            assert!((s.ranks[1] - 0.363_37).abs() < 1e-4, "{}", s.ranks[1]);
            assert_eq!(s.gap_signs[0], -1.0);
            assert_eq!(s.gap_signs[2], 1.0);
            assert!((s.gap_signs[1] - (2.0 * s.ranks[1] - 1.0)).abs() < 1e-15);
        });
    }

    #[test]
    fn a_measured_models_prior_is_worth_30_outcomes_and_20_below_the_scope_others_4() {
        with_slots(&calibration(), |s, _| {
            assert_eq!(s.known, [true, false, true]);
            assert_eq!(s.strengths, [30.0, 4.0, 30.0]);
            assert_eq!(s.family_strengths, [20.0, 4.0, 20.0]);
            assert_eq!(s.workflow_strengths, [20.0, 4.0, 20.0]);
            // Only a measured curve's deviations are discounted as sampling noise.
            assert_eq!(s.noise, [1.0, 0.0, 1.0]);
        });
    }

    #[test]
    fn in_a_shared_plan_over_teams_no_prior_is_worth_less_than_20_outcomes() {
        let (p, cal) = (policy(0.8), calibration());
        let typical = Typical::new(None, p.default.max_output_tokens);
        let s = Slots::new(&p, &p.default, &cal, &typical, (None, true));
        assert_eq!(s.strengths, [30.0, 20.0, 30.0]);
        assert_eq!(s.family_strengths, [20.0, 20.0, 20.0]);
        assert_eq!(s.workflow_strengths, [20.0, 20.0, 20.0]);
    }

    #[test]
    fn a_label_seen_in_training_needs_three_more_outcomes_a_band_per_training_task() {
        let mut cal = calibration();
        cal.workflows.insert(
            "law".into(),
            LabelShift {
                tasks: 10,
                cheap: 0.0,
                premium: 0.0,
            },
        );
        with_slots(&cal, |s, _| {
            assert_eq!(s.band_prior_of("never-seen"), 40.0);
            assert_eq!(s.band_prior_of("law"), 70.0);
        });
    }

    #[test]
    fn a_labels_shift_moves_each_slot_by_its_rank_and_an_unmeasured_tier_starts_from_its_prior() {
        let mut cal = calibration();
        cal.workflows.insert(
            "law".into(),
            LabelShift {
                tasks: 10,
                cheap: -1.0,
                premium: 0.5,
            },
        );
        with_slots(&cal, |s, _| {
            // A parent whose every curve sits at 0.5 (log-odds 0).
            let parent = |_| [0.5; BANDS];
            let law = s.shifted(parent, "law");
            assert!((law[0][7] - shift_quality(0.5, -1.0)).abs() < 1e-15);
            assert!((law[2][7] - shift_quality(0.5, 0.5)).abs() < 1e-15);
            // `medium` on a caller's label: its own prior, shifted by its rank's share.
            let delta = -1.0 + s.ranks[1] * 1.5;
            assert!((law[1][7] - shift_quality(s.priors[1][7], delta)).abs() < 1e-15);
            // A discovered cluster borrows even `medium`'s curve from its parent.
            let cluster = s.shifted(parent, "~cluster/3");
            assert_eq!(cluster[1], [0.5; BANDS]);
        });
    }
}
