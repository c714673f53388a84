//! Estimates: the calibration prior of a tier, label shifts, and the hierarchical shrinkage of
//! a level's curves towards its parent's.

use super::evidence::{Cell, Level};
use super::odds::{logistic, logit, score_variance, shift_quality};
use super::params::{BANDS, CONFIDENCE_Z};
use crate::domain::classifier::Calibration;
use crate::domain::policy::Tier;

/// Prior quality curve of a tier at rank `r`: the calibration's cheap curve at 0 (a tier running
/// the cheap model), the premium one at 1 (the premium model), interpolated between them by log
/// price position among the allowed tiers for any other model.
pub(super) fn prior_curve(cal: &Calibration, r: f64) -> [f64; BANDS] {
    let bands = &cal.bands;
    let mut out = [0.0; BANDS];
    for (b, o) in out.iter_mut().enumerate() {
        // Calibration may use a different band count: sample it at this band's centre.
        let centre = (b as f64 + 0.5) / BANDS as f64;
        let cb = &bands[((centre * bands.len() as f64) as usize).min(bands.len() - 1)];
        *o = cb.cheap_quality + r * (cb.premium_quality - cb.cheap_quality);
    }
    out
}

/// Shrunk estimate: prior moved by one tier-wide log-odds shift (the one under which the
/// level's outcomes were expected to score what they did, with `prior_strength`
/// pseudo-outcomes on the unshifted prior) plus a shrunk per-band residual. In log-odds, as
/// label shifts are: a tier that is only ever sent its hardest tasks and falls short there
/// moves its easy bands far less than its hard ones, where a ratio learned on the hard bands
/// took the easy ones down by the same share, below tiers that were truly worse there (and the
/// plan stopped sending the tier anywhere it could have shown otherwise). `expect` is what the
/// level's own outcomes were expected to score per band: `prior` for a level without labelled
/// children, else the mix of its children's label-shifted priors (see [`expected_mix`]), so a
/// scope whose cheap tier only ever sees the workflows it is good at does not learn that it is
/// good everywhere; each cell's expectation is moved by its tasks' mean premium gap, signed
/// for the tier by `gap_sign`. `noise` is how much of a deviation is put down to sampling
/// noise ([`denoise`]). Returns the per-band means and the level's own effective evidence plus
/// `prior_strength`.
pub(super) fn estimate(
    prior: &[f64; BANDS],
    expect: &[f64; BANDS],
    cells: &[Cell; BANDS],
    prior_strength: f64,
    band_prior: f64,
    noise: f64,
    gap_sign: f64,
) -> ([f64; BANDS], f64) {
    let n: f64 = cells.iter().map(|c| c.n).sum();
    if n <= 0.0 {
        return (*prior, prior_strength);
    }
    // What a cell's tasks were expected to score at curve value `p`: moved by their mean gap,
    // so a tier sent where the gap says it does well does not learn that as its own quality
    // (and then get the gap again on top at Route).
    let at = |c: &Cell, p: f64| shift_quality(p, gap_sign * c.mean_gap());
    let (mut expected, mut variance) = (0.0, 0.0);
    for (c, &p) in cells.iter().zip(expect) {
        let q = at(c, p);
        expected += c.n * q;
        variance += c.n * score_variance(q);
    }
    let surplus = cells.iter().map(|c| c.sum).sum::<f64>() - expected;
    let observed = expected + denoise(surplus, variance, noise);
    // The tier-wide shift in log-odds: the one that makes the level's outcomes expected to
    // score what they did, shrunk towards 0 by `prior_strength` pseudo-outcomes on the prior.
    // Newton's method: the expectation is a weighted sum of logistic terms, increasing in it.
    let prior_mean = prior.iter().sum::<f64>() / BANDS as f64;
    let pseudo = prior_strength / BANDS as f64;
    let terms = |delta: f64| {
        let own = cells.iter().zip(expect);
        (own.map(move |(c, &p)| (c.n, at(c, shift_quality(p, delta))))).chain(
            prior
                .iter()
                .map(move |&p| (pseudo, shift_quality(p, delta))),
        )
    };
    let mut delta = 0.0;
    for _ in 0..8 {
        let start = (-observed - prior_strength * prior_mean, 0.0);
        let (f, df) =
            terms(delta).fold(start, |(f, df), (w, q)| (f + w * q, df + w * q * (1.0 - q)));
        if df <= 1e-12 {
            break;
        }
        let step = (f / df).clamp(-2.0, 2.0);
        delta -= step;
        if step.abs() < 1e-6 {
            break;
        }
    }
    let mut mean = [0.0; BANDS];
    for b in 0..BANDS {
        let base = shift_quality(prior[b], delta);
        let own = at(&cells[b], shift_quality(expect[b], delta));
        let (n, sum) = (cells[b].n, cells[b].sum);
        let residual = denoise(sum - n * own, n * score_variance(own), noise) / (n + band_prior);
        mean[b] = (base + residual).clamp(0.0, 1.0);
    }
    (mean, n + prior_strength)
}

/// A level's surplus `d` of observed over expected score, less what sampling noise of
/// `variance` explains (positive-part James–Stein: `d · max(0, 1 − shrink · variance / d²)`).
/// At `shrink` 1 a deviation within one standard error teaches nothing and one of three keeps
/// about 90% of itself: a stationary stream stops moving the plan while a real change of a
/// tier still shows within tens of outcomes.
fn denoise(d: f64, variance: f64, shrink: f64) -> f64 {
    if d == 0.0 {
        return 0.0;
    }
    d * (1.0 - shrink * variance / (d * d)).max(0.0)
}

/// Per band, what a level's outcomes were expected to score: `base` moved by each child's
/// log-odds shift, weighted by the child's evidence in that band (`base` where no child has
/// any). `children` yields each child's cells of the tier and its shift. The children's cells
/// decay by their own outcomes, the level's by all of its own, so the mix weighs each child by
/// its recent share, not exactly by its share of the level's cell.
pub(super) fn expected_mix<'a>(
    base: &[f64; BANDS],
    children: impl Iterator<Item = (&'a [Cell; BANDS], f64)>,
) -> [f64; BANDS] {
    let mut num = [0.0; BANDS];
    let mut den = [0.0; BANDS];
    for (cells, delta) in children {
        for b in 0..BANDS {
            let n = cells[b].n;
            if n > 0.0 {
                num[b] += n * shift_quality(base[b], delta);
                den[b] += n;
            }
        }
    }
    let mut out = *base;
    for b in 0..BANDS {
        if den[b] > 0.0 {
            out[b] = num[b] / den[b];
        }
    }
    out
}

/// A tier without outcomes at a level.
const EMPTY_CELLS: [Cell; BANDS] = [Cell {
    n: 0.0,
    sum: 0.0,
    gap: 0.0,
}; BANDS];

/// How steeply success falls across a level's bands for the tiers `measured` marks: one slope
/// `β` by which their prior curves are flattened (`β < 1`) or steepened around their means over
/// the level's tasks (log-odds `m + β·(logit q − m)`). The bands come from one difficulty model
/// trained across workflows; most of what it tells apart is one workflow from another, and
/// within one workflow a band says less (fitted per workflow on recorded outcomes, the slope
/// was about 0.5 on the held-out subjects and 0.25–0.75 on subjects the model never saw).
/// [`curves`] fits it for each tier on a calibration model from that tier's own outcomes, since
/// how much harder a band is differs by tier. On the four-tier set's quiz workflow the cheap
/// model's success falls to 0.06 in the hardest band and the premium one's to 0.36; one slope
/// shared by both put the premium tier at 0.41 and 0.32 in bands 17 and 18, where it scored
/// 0.51 and 0.40, and the plan sent most of those tasks to cheaper tiers (seeds 1–4, second
/// half); fitted on its own outcomes, 0.48 and 0.37. A tier on any other model, whose curve is
/// guessed by price between the two measured ones, takes the slope of both measured tiers'
/// outcomes together.
///
/// Maximum likelihood of the slope and one log-odds shift per tier (the shifts are refitted
/// after, by [`estimate`]) on the outcomes of the `measured` tiers, expected at `expect`
/// (moved by each cell's premium gap), and on their prior pseudo-outcomes (`strength[s]` spread
/// over the bands at `prior`), which hold the slope at 1 until the level's outcomes outweigh
/// them. Returns 1 without such outcomes.
fn slope_of(
    cells: &[&[Cell; BANDS]],
    prior: &[[f64; BANDS]],
    expect: &[[f64; BANDS]],
    strength: &[f64],
    gap_sign: &[f64],
    pivot: &[f64],
    measured: &[bool],
) -> f64 {
    let cells: Vec<&[Cell; BANDS]> = (0..cells.len())
        .map(|s| if measured[s] { cells[s] } else { &EMPTY_CELLS })
        .collect();
    if cells.iter().all(|c| c.iter().all(|c| c.n <= 0.0)) {
        return 1.0;
    }
    // Per tier: (weight, summed score, logit of the expected quality − pivot) of every cell.
    let terms: Vec<Vec<(f64, f64, f64)>> = (0..cells.len())
        .map(|s| {
            let pseudo = if measured[s] {
                strength[s] / BANDS as f64
            } else {
                0.0
            };
            let own = cells[s]
                .iter()
                .zip(&expect[s])
                .filter(|(c, _)| c.n > 0.0)
                .map(|(c, &p)| {
                    let q = shift_quality(p, gap_sign[s] * c.mean_gap());
                    (c.n, c.sum, logit(q) - pivot[s])
                });
            let pseudo = prior[s]
                .iter()
                .map(move |&q| (pseudo, pseudo * q, logit(q) - pivot[s]));
            own.chain(pseudo).collect()
        })
        .collect();
    let (mut beta, mut delta) = (1.0, vec![0.0; cells.len()]);
    for _ in 0..20 {
        // Newton on (β, δ…): an arrow-shaped Hessian, solved through its Schur complement.
        let (mut g_b, mut h_bb) = (0.0, 0.0);
        let mut rows = Vec::with_capacity(cells.len());
        for (s, t) in terms.iter().enumerate() {
            let (mut g_d, mut h_dd, mut h_bd) = (0.0, 0.0, 0.0);
            for &(n, y, x) in t {
                let z = pivot[s] + delta[s] + beta * x;
                let p = logistic(z);
                let r = y - n * p;
                let w = n * p * (1.0 - p);
                g_b += r * x;
                h_bb += w * x * x;
                g_d += r;
                h_dd += w;
                h_bd += w * x;
            }
            rows.push((g_d, h_dd.max(1e-9), h_bd));
        }
        let schur = h_bb - rows.iter().map(|&(_, h, hb)| hb * hb / h).sum::<f64>();
        if schur <= 1e-9 {
            break;
        }
        let step_b = (g_b - rows.iter().map(|&(g, h, hb)| hb * g / h).sum::<f64>()) / schur;
        let step_b = step_b.clamp(-0.5, 0.5);
        beta += step_b;
        for (d, &(g, h, hb)) in delta.iter_mut().zip(&rows) {
            *d += ((g - hb * step_b) / h).clamp(-2.0, 2.0);
        }
        if step_b.abs() < 1e-6 {
            break;
        }
    }
    beta.clamp(0.0, 2.0)
}

/// `curve` with its log-odds moved `slope` of the way from `pivot` (log-odds) to each band's.
fn tilt(curve: &[f64; BANDS], pivot: f64, slope: f64) -> [f64; BANDS] {
    let mut out = *curve;
    if slope == 1.0 {
        return out;
    }
    for q in &mut out {
        let z = pivot + slope * (logit(*q) - pivot);
        *q = logistic(z);
    }
    out
}

/// Curves of every allowed tier at one level.
pub(super) struct Curves {
    /// Planning bound per slot.
    pub(super) quality: Vec<[f64; BANDS]>,
    /// Estimate per slot.
    pub(super) predicted: Vec<[f64; BANDS]>,
    /// Effective evidence per slot, priors included (for the margin of child levels).
    pub(super) strength: Vec<f64>,
}

/// What a level's estimate starts from, per slot: its prior curve, what its own outcomes were
/// expected to score ([`expected_mix`]), the prior's weight in outcomes, the outcomes a band
/// needs before its own residual counts, and how much of a deviation is noise.
pub(super) struct Start<'a> {
    pub(super) prior: &'a [[f64; BANDS]],
    pub(super) expect: &'a [[f64; BANDS]],
    pub(super) strength: &'a [f64],
    pub(super) band_prior: f64,
    /// Per slot, how much of a deviation from the prior is sampling noise: [`NOISE_SHRINK`]
    /// for a tier running one of the calibration's models (its curve was measured), 0 for any
    /// other (its curve is a guess by price, and what it shows of the guess is real).
    pub(super) noise: &'a [f64],
    /// Per slot, how a task's premium gap moves the tier ([`TierPlan::gap_sign`]).
    pub(super) gap_sign: &'a [f64],
    /// Per slot, whether the tier runs one of the calibration's two models (whose curves'
    /// shape was measured): only their outcomes tell how steep the level's difficulty is.
    pub(super) measured: &'a [bool],
    /// Whether the level is one kind of work (a workflow or a discovered cluster), whose
    /// tasks' difficulty its outcomes can rescale ([`slope_of`]); a scope or a family
    /// mixes kinds of work, and its curves keep the calibration's shape.
    pub(super) one_kind: bool,
    /// Whether the level is a discovered cluster (whose every tier starts from its parent's
    /// curve: [`inherits`]).
    pub(super) discovered: bool,
}

/// Whether a label's slot starts from its parent's curve (shifted by the label): a tier on a
/// calibration model always, any other only in a discovered cluster (a provisional grouping).
/// Then the parent's estimate already holds the level's own outcomes, and the more of them it
/// holds the more the prior is worth; a tier a caller's label starts from its own prior holds
/// only what its strength says.
pub(super) fn inherits(measured: bool, discovered: bool) -> bool {
    measured || discovered
}

/// The pivot of each slot's curve in `prior` (log-odds): its mean over the level's tasks across
/// the bands, counted from every tier's outcomes in `cells_of` (uniform without any).
fn pivots(prior: &[[f64; BANDS]], cells_of: &[&[Cell; BANDS]]) -> Vec<f64> {
    let mut mix = [0.0; BANDS];
    for cells in cells_of {
        for (m, c) in mix.iter_mut().zip(cells.iter()) {
            *m += c.n;
        }
    }
    if mix.iter().sum::<f64>() <= 0.0 {
        mix = [1.0; BANDS];
    }
    let mix_total: f64 = mix.iter().sum();
    prior
        .iter()
        .map(|curve| logit(curve.iter().zip(&mix).map(|(q, m)| q * m).sum::<f64>() / mix_total))
        .collect()
}

/// Curves of a level from its parent's estimates and its own cells. The parent's estimate
/// already holds this level's outcomes: to not count them twice, the pseudo-outcomes of the
/// parent grow as the level's share `f` of the parent's evidence does (`K / (1 − f)`, at most
/// 20 K), so the only workflow of a scope moves with the scope and no faster, while one of many
/// stands on its own data. (Scaling the level's own evidence by `1 − f` instead, leave-one-out
/// style, made a workflow with half of its scope's traffic learn at half speed.) They never
/// exceed what the parent's own estimate stands on (`parent_strength`).
pub(super) fn curves(
    tiers: &[&Tier],
    start: Start<'_>,
    parent_strength: &[f64],
    level: Option<&Level>,
    parent_level: Option<&Level>,
) -> Curves {
    let empty = [Cell::default(); BANDS];
    let total = |l: Option<&Level>, name: &str| -> f64 {
        l.and_then(|l| l.cells.get(name))
            .map_or(0.0, |c| c.iter().map(|c| c.n).sum())
    };
    let mut out = Curves {
        quality: Vec::with_capacity(tiers.len()),
        predicted: Vec::with_capacity(tiers.len()),
        strength: Vec::with_capacity(tiers.len()),
    };
    let cells_of: Vec<&[Cell; BANDS]> = tiers
        .iter()
        .map(|t| level.and_then(|l| l.cells.get(&t.name)).unwrap_or(&empty))
        .collect();
    let pivot = pivots(start.prior, &cells_of);
    // Each measured tier's slope from its own outcomes; the other tiers' from theirs together.
    let slope = |measured: &[bool]| {
        slope_of(
            &cells_of,
            start.prior,
            start.expect,
            start.strength,
            start.gap_sign,
            &pivot,
            measured,
        )
    };
    let guessed = start.one_kind && start.measured.iter().any(|m| !m);
    let joint = if guessed { slope(start.measured) } else { 1.0 };
    for (s, t) in tiers.iter().enumerate() {
        let cells = cells_of[s];
        let slope = match (start.one_kind, start.measured[s]) {
            (false, _) => 1.0,
            (true, false) => joint,
            (true, true) => {
                let only: Vec<bool> = (0..tiers.len()).map(|i| i == s).collect();
                slope(&only)
            }
        };
        let prior = tilt(&start.prior[s], pivot[s], slope);
        let expect = tilt(&start.expect[s], pivot[s], slope);
        let strength = match parent_level {
            Some(_) if inherits(start.measured[s], start.discovered) => {
                let (own, parent) = (total(level, &t.name), total(parent_level, &t.name));
                let share = if parent > 0.0 { own / parent } else { 0.0 };
                // Never more pseudo-outcomes than the parent's estimate stands on: the only
                // workflow of a family with five outcomes is as unsure as its family.
                (start.strength[s] / (1.0 - share).max(0.05))
                    .min(parent_strength[s].max(start.strength[s]))
            }
            _ => start.strength[s],
        };
        let (estimated, n) = estimate(
            &prior,
            &expect,
            cells,
            strength,
            start.band_prior,
            start.noise[s],
            start.gap_sign[s],
        );
        // A child level knows at least what its parent does.
        let n = if parent_level.is_some() {
            n
        } else {
            n.max(parent_strength[s])
        };
        // Plan on a lower confidence bound: a tier is trusted as far as its evidence supports.
        let margin = CONFIDENCE_Z * (0.25 / n).sqrt();
        let mut q = estimated;
        q.iter_mut().for_each(|x| *x = (*x - margin).max(0.0));
        out.quality.push(q);
        out.predicted.push(estimated);
        out.strength.push(n);
    }
    out
}
