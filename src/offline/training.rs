//! Offline learning: fit the item-response complexity model on graded task records, and evaluate a
//! model with RouteLLM's metrics (APGR, CPT, saving at 95% of premium quality).

use serde::Serialize;

use std::collections::BTreeMap;

use crate::domain::classifier::{
    ARTIFACT_FORMAT, Calibration, CalibrationBand, ComplexityModel, LabelShift,
};
use crate::domain::features::{self, TaskInput};
use crate::domain::learning::band_of;
use crate::offline::dataset::Record;

/// Number of complexity bands in the calibration.
pub const CALIBRATION_BANDS: usize = 20;
/// Number of quantile knots stored for the logit → complexity map.
const QUANTILE_KNOTS: usize = 201;
/// Folds used to get out-of-fold logits for the quantiles and the calibration.
const FOLDS: usize = 5;
/// Penalty on a label's log-odds shift (`κ·δ²/2`), in units of the log-likelihood of one task:
/// a label of ~20 tasks keeps about half of its own evidence, one of hundreds nearly all.
const LABEL_SHIFT_PENALTY: f64 = 4.0;

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Model id of the cheap tier in the records.
    pub cheap: String,
    /// Model id of the premium tier in the records.
    pub premium: String,
    /// L2 penalty on the difficulty weights.
    pub alpha: f64,
    /// Full-batch optimiser steps.
    pub max_iterations: u64,
    /// What the score is trained to mean.
    pub target: Target,
}

/// What the complexity score is trained to mean; as text ([`FromStr`](std::str::FromStr),
/// `Display`) `irt`, `cheap` or `gap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Item response: one difficulty shared by both models, one ability each.
    Irt,
    /// Difficulty for the cheap model alone (the chance it fails).
    Cheap,
    /// The chance the premium model does better than the cheap one.
    Gap,
}

impl Target {
    /// Every target, in the order they are listed.
    pub const ALL: [Target; 3] = [Target::Irt, Target::Cheap, Target::Gap];

    /// Its name, as [`FromStr`](std::str::FromStr) reads it and `Display` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Irt => "irt",
            Target::Cheap => "cheap",
            Target::Gap => "gap",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown target {0:?}: expected irt, cheap or gap")]
pub struct ParseTargetError(pub String);

impl std::str::FromStr for Target {
    type Err = ParseTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL
            .into_iter()
            .find(|target| target.name() == s)
            .ok_or_else(|| ParseTargetError(s.to_string()))
    }
}

/// Errors of training and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Too few usable records.
    #[error(
        "need at least {needed} records with outcomes for both {cheap:?} and {premium:?}, found {found}"
    )]
    TooFew {
        /// Minimum.
        needed: usize,
        /// Found.
        found: usize,
        /// Cheap model id.
        cheap: String,
        /// Premium model id.
        premium: String,
    },
    /// The optimiser failed (a non-finite gradient).
    #[error("fitting failed: {0}")]
    Fit(String),
}

/// A record reduced to what the pair needs.
struct PairTask<'a> {
    record: &'a Record,
    cheap: f64,
    premium: f64,
    cheap_cost: Option<f64>,
    premium_cost: Option<f64>,
}

fn pair_tasks<'a>(records: &'a [Record], cheap: &str, premium: &str) -> Vec<PairTask<'a>> {
    records
        .iter()
        .filter_map(|r| {
            let c = r.outcomes.get(cheap)?;
            let p = r.outcomes.get(premium)?;
            Some(PairTask {
                record: r,
                cheap: c.score,
                premium: p.score,
                cheap_cost: c.cost_usd,
                premium_cost: p.cost_usd,
            })
        })
        .collect()
}

fn input_of(r: &Record) -> TaskInput<'_> {
    TaskInput {
        text: &r.prompt,
        workflow: &r.workflow,
        ..TaskInput::default()
    }
}

/// Signals whose weight is set by hand, in standard deviations of the trained difficulty per
/// unit of signal: the length of the request in words (a one-line question vs a page of
/// requirements), demanding-task cues (prove, design, implement, analyse…) and small talk (hi,
/// thanks…). The training data (knowledge questions and school math) has almost none of the
/// cues and little spread in length, so it cannot teach them; without them a greeting and a
/// system-design request differ only by their length. They are left out of the fit, added
/// after it, and the abilities are then refitted on the difficulties with them, so that
/// `σ(ability − difficulty)` stays calibrated on the training data.
pub const HAND_SET: [(usize, f64); 3] = [
    (features::HASH_DIMS + 1, 2.5),
    (features::HASH_DIMS + 12, 2.5),
    (features::HASH_DIMS + 13, -3.0),
];

fn hand_set(index: usize) -> bool {
    HAND_SET.iter().any(|&(i, _)| i == index)
}

/// The task's features as sparse (index, value) pairs, without the hand-set signals.
fn sparse_features(r: &Record) -> Vec<(usize, f64)> {
    let mut out: Vec<(usize, f64)> = Vec::new();
    features::visit_features(&input_of(r), |j, v| {
        if !hand_set(j as usize) {
            out.push((j as usize, f64::from(v)));
        }
    });
    out
}

/// A fitted item-response model: `P(tier succeeds on x) = σ(ability − w·φ(x))`.
struct Fitted {
    /// Difficulty weights `w` (larger `w·φ` = harder).
    weights: Vec<f32>,
    /// Ability of the cheap model.
    cheap: f32,
    /// Ability of the premium model.
    premium: f32,
    /// Difficulty offset per training workflow and family.
    offsets: std::collections::BTreeMap<String, f32>,
}

/// One training task: sparse features, cheap success, premium success.
type Row = (Vec<(usize, f64)>, f64, f64);

/// Adam step size and moment decays of the optimiser.
const LEARNING_RATE: f64 = 0.05;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

/// Fits the item-response model on `tasks`: one shared difficulty per task, linear in its
/// features, and one ability per tier, so the score means difficulty for every tier instead of
/// "where the premium model wins". Each (task, tier) pair is one observation: did that tier
/// succeed (score ≥ 0.5). Minimises the summed log loss + `alpha/2·‖w‖²` (abilities are not
/// penalised) by full-batch Adam over the sparse features: the dense design matrix that a
/// general-purpose solver needs (14,500 rows × 4,110 columns) took over 20 minutes on 2 cores;
/// this takes seconds, deterministically.
fn fit(tasks: &[&PairTask<'_>], opts: &TrainOptions) -> Result<Fitted, TrainError> {
    let dims = features::DIMS;
    // Workflow and family labels of the training data: one offset column each, after the two
    // abilities (penalised like the weights, so a rare label stays near 0).
    let mut labels: Vec<String> = tasks
        .iter()
        .flat_map(|t| label_names(&t.record.workflow))
        .collect();
    labels.sort();
    labels.dedup();
    let column = |name: &str| labels.binary_search_by(|l| l.as_str().cmp(name)).ok();
    let rows: Vec<Row> = tasks
        .iter()
        .map(|t| {
            let ok = |s: f64| if s >= 0.5 { 1.0 } else { 0.0 };
            let mut x = sparse_features(t.record);
            for name in label_names(&t.record.workflow) {
                if let Some(c) = column(&name) {
                    x.push((dims + 2 + c, 1.0));
                }
            }
            (x, ok(t.cheap), ok(t.premium))
        })
        .collect();
    // Parameters: w[0..dims], the two abilities, then the label offsets.
    let n = dims + 2 + labels.len();
    let mut theta = vec![0.0f64; n];
    let (mut m, mut v) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut grad = vec![0.0f64; n];
    let scale = 1.0 / rows.len().max(1) as f64;
    for step in 1..=opts.max_iterations {
        for (i, (g, w)) in grad.iter_mut().zip(&theta).enumerate() {
            *g = if i == dims || i == dims + 1 {
                0.0
            } else {
                opts.alpha * w * scale
            };
        }
        for (x, yc, yp) in &rows {
            let d: f64 = x.iter().map(|&(j, v)| theta[j] * v).sum();
            let sigma = |z: f64| 1.0 / (1.0 + (-z).exp());
            // d(loss)/d(logit) for each observation; logit = ability − d (for `gap`: the
            // chance premium does better is σ(bias + d)).
            let (rc, rp, dd) = match opts.target {
                Target::Irt => {
                    let rc = (sigma(theta[dims] - d) - yc) * scale;
                    let rp = (sigma(theta[dims + 1] - d) - yp) * scale;
                    (rc, rp, -(rc + rp))
                }
                Target::Cheap => {
                    let rc = (sigma(theta[dims] - d) - yc) * scale;
                    (rc, 0.0, -rc)
                }
                Target::Gap => {
                    let y = if yp > yc { 1.0 } else { 0.0 };
                    let r = (sigma(theta[dims] + d) - y) * scale;
                    (r, 0.0, r)
                }
            };
            grad[dims] += rc;
            grad[dims + 1] += rp;
            for &(j, v) in x {
                grad[j] += dd * v;
            }
        }
        if grad.iter().any(|g| !g.is_finite()) {
            return Err(TrainError::Fit(format!(
                "gradient not finite at step {step}"
            )));
        }
        let (c1, c2) = (1.0 - BETA1.powi(step as i32), 1.0 - BETA2.powi(step as i32));
        for i in 0..n {
            m[i] = BETA1 * m[i] + (1.0 - BETA1) * grad[i];
            v[i] = BETA2 * v[i] + (1.0 - BETA2) * grad[i] * grad[i];
            theta[i] -= LEARNING_RATE * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8);
        }
    }
    Ok(Fitted {
        weights: theta[..dims].iter().map(|&w| w as f32).collect(),
        cheap: theta[dims] as f32,
        premium: theta[dims + 1] as f32,
        offsets: labels
            .into_iter()
            .zip(&theta[dims + 2..])
            .map(|(l, &w)| (l, w as f32))
            .collect(),
    })
}

/// The labels a workflow contributes offsets for: itself and its family.
fn label_names(workflow: &str) -> Vec<String> {
    if workflow.is_empty() {
        return Vec::new();
    }
    let mut out = vec![workflow.to_string()];
    if let Some(f) = crate::domain::learning::family_of(workflow) {
        out.push(f.to_string());
    }
    out
}

/// Difficulty logit of a record under a fitted model: features plus workflow offsets.
fn logit(f: &Fitted, r: &Record) -> f32 {
    let mut z: f32 = label_names(&r.workflow)
        .iter()
        .filter_map(|l| f.offsets.get(l))
        .sum();
    features::visit_features(&input_of(r), |i, v| z += f.weights[i as usize] * v);
    z
}

/// The log-odds shift `δ` of one tier on a group of (base log-odds, score) pairs: maximises
/// `Σ log-likelihood(score | σ(base + δ)) − penalty·δ²/2` by Newton steps (the objective is
/// concave).
fn log_odds_shift(group: &[(f64, f64)], penalty: f64) -> f64 {
    let sigma = |z: f64| 1.0 / (1.0 + (-z).exp());
    let mut delta = 0.0;
    for _ in 0..50 {
        let (mut g, mut h) = (-penalty * delta, -penalty - 1e-9);
        for &(base, y) in group {
            let p = sigma(base + delta);
            g += y - p;
            h -= p * (1.0 - p);
        }
        let step = g / h;
        delta -= step.clamp(-2.0, 2.0);
        if step.abs() < 1e-7 {
            break;
        }
    }
    delta
}

/// Per-label shifts of each model's success log-odds against the item-response prediction on
/// out-of-fold difficulties: first each family against the prediction, then each workflow
/// against its family's shifted prediction. What a workflow's difficulty offset cannot say (the
/// premium model gains much on one subject, little on another) is what these carry.
fn label_shifts(
    tasks: &[PairTask<'_>],
    oof: &[f32],
    (a_cheap, a_premium): (f32, f32),
) -> BTreeMap<String, LabelShift> {
    let mut out: BTreeMap<String, LabelShift> = BTreeMap::new();
    // Predicted log-odds of success of (cheap, premium) on each task.
    let base = |i: usize| (f64::from(a_cheap - oof[i]), f64::from(a_premium - oof[i]));
    let mut groups: BTreeMap<(bool, String), Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let w = &t.record.workflow;
        if w.is_empty() {
            continue;
        }
        if let Some(f) = crate::domain::learning::family_of(w) {
            groups.entry((false, f.to_string())).or_default().push(i);
        }
        groups.entry((true, w.clone())).or_default().push(i);
    }
    // Families (false) sort before workflows (true), so a workflow's family shift is known.
    for ((is_workflow, label), members) in &groups {
        if *is_workflow && out.contains_key(label) {
            continue;
        }
        let parent = |i: usize| -> (f64, f64) {
            if !*is_workflow {
                return (0.0, 0.0);
            }
            crate::domain::learning::family_of(&tasks[i].record.workflow)
                .and_then(|f| out.get(f))
                .map_or((0.0, 0.0), |s| (f64::from(s.cheap), f64::from(s.premium)))
        };
        let cheap: Vec<(f64, f64)> = members
            .iter()
            .map(|&i| (base(i).0 + parent(i).0, tasks[i].cheap))
            .collect();
        let premium: Vec<(f64, f64)> = members
            .iter()
            .map(|&i| (base(i).1 + parent(i).1, tasks[i].premium))
            .collect();
        let s = LabelShift {
            tasks: members.len() as u32,
            cheap: log_odds_shift(&cheap, LABEL_SHIFT_PENALTY) as f32,
            premium: log_odds_shift(&premium, LABEL_SHIFT_PENALTY) as f32,
        };
        out.insert(label.clone(), s);
    }
    out
}

/// Trains a model: out-of-fold logits give the quantile map and the calibration, then the final
/// weights are fitted on every record.
pub fn train(records: &[Record], opts: &TrainOptions) -> Result<ComplexityModel, TrainError> {
    let tasks = pair_tasks(records, &opts.cheap, &opts.premium);
    if tasks.len() < 50 {
        return Err(TrainError::TooFew {
            needed: 50,
            found: tasks.len(),
            cheap: opts.cheap.clone(),
            premium: opts.premium.clone(),
        });
    }
    // Out-of-fold difficulties of every task, learned without the hand-set signals.
    let mut oof = vec![0f32; tasks.len()];
    for fold in 0..FOLDS {
        let train: Vec<&PairTask<'_>> = tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| i % FOLDS != fold)
            .map(|(_, t)| t)
            .collect();
        let f = fit(&train, opts)?;
        for (i, t) in tasks.iter().enumerate().filter(|(i, _)| i % FOLDS == fold) {
            oof[i] = logit(&f, t.record);
        }
    }
    // The hand-set signals, scaled to the spread of the learned difficulty, then added to it.
    // (Fitting the other weights with them held fixed let correlated features, such as the
    // character count, cancel them: short greetings scored as hard as proofs.)
    let mean = oof.iter().map(|&z| f64::from(z)).sum::<f64>() / oof.len() as f64;
    let sd = (oof
        .iter()
        .map(|&z| (f64::from(z) - mean).powi(2))
        .sum::<f64>()
        / oof.len() as f64)
        .sqrt();
    let set_weights: Vec<(usize, f64)> = HAND_SET.iter().map(|&(i, k)| (i, k * sd)).collect();
    for (z, t) in oof.iter_mut().zip(&tasks) {
        features::visit_features(&input_of(t.record), |j, v| {
            if let Some(&(_, w)) = set_weights.iter().find(|&&(i, _)| i == j as usize) {
                *z += (w * f64::from(v)) as f32;
            }
        });
    }
    // Abilities refitted on the difficulties the model ships (signals included), so that
    // `σ(ability − difficulty)` stays calibrated; the label shifts are measured against them.
    let ability = |score: fn(&PairTask<'_>) -> f64| -> f32 {
        let group: Vec<(f64, f64)> = tasks
            .iter()
            .zip(&oof)
            .map(|(t, &z)| (-f64::from(z), score(t)))
            .collect();
        log_odds_shift(&group, 0.0) as f32
    };
    let abilities = (ability(|t| t.cheap), ability(|t| t.premium));
    let shifts = match opts.target {
        Target::Irt => label_shifts(&tasks, &oof, abilities),
        Target::Cheap | Target::Gap => BTreeMap::new(),
    };
    let mut sorted = oof.clone();
    sorted.sort_by(f32::total_cmp);
    let logit_quantiles: Vec<f32> = (0..QUANTILE_KNOTS)
        .map(|k| sorted[k * (sorted.len() - 1) / (QUANTILE_KNOTS - 1)])
        .collect();
    let all: Vec<&PairTask<'_>> = tasks.iter().collect();
    let mut fitted = fit(&all, opts)?;
    for &(i, w) in &set_weights {
        fitted.weights[i] = w as f32;
    }
    match opts.target {
        Target::Irt => (fitted.cheap, fitted.premium) = abilities,
        Target::Cheap => fitted.cheap = abilities.0,
        Target::Gap => {}
    }
    let mut model = ComplexityModel {
        format: ARTIFACT_FORMAT.into(),
        version: String::new(),
        feature_version: features::FEATURE_VERSION.into(),
        weights: fitted.weights,
        bias: 0.0,
        abilities: match opts.target {
            Target::Irt => vec![
                (opts.cheap.clone(), fitted.cheap),
                (opts.premium.clone(), fitted.premium),
            ],
            Target::Cheap => vec![(opts.cheap.clone(), fitted.cheap)],
            Target::Gap => Vec::new(),
        }
        .into_iter()
        .collect(),
        workflow_offsets: fitted.offsets,
        logit_quantiles,
        calibration: Calibration {
            cheap_model: opts.cheap.clone(),
            premium_model: opts.premium.clone(),
            bands: Vec::new(),
            workflows: shifts,
        },
        training: serde_json::Value::Null,
    };
    // Calibration from out-of-fold complexities, so it reflects unseen tasks.
    let mut bands = vec![(0u32, 0.0f64, 0.0f64); CALIBRATION_BANDS];
    for (t, z) in tasks.iter().zip(&oof) {
        let c = model.complexity_of_logit(*z);
        let b = band_of(c, CALIBRATION_BANDS);
        bands[b].0 += 1;
        bands[b].1 += t.cheap;
        bands[b].2 += t.premium;
    }
    model.calibration.bands = bands
        .into_iter()
        .map(|(n, c, p)| {
            let d = f64::from(n.max(1));
            CalibrationBand {
                tasks: n,
                cheap_quality: c / d,
                premium_quality: p / d,
            }
        })
        .collect();
    let digest = crate::domain::policy::short_hash(&format!(
        "{:?}{:?}{:?}{:?}",
        model.weights, model.abilities, model.workflow_offsets, model.calibration.workflows
    ));
    model.version = format!("cx2-{digest}");
    Ok(model)
}

/// RouteLLM metrics of a router on a cheap/premium pair.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// Records with outcomes for both models.
    pub tasks: usize,
    /// Average score of always-cheap.
    pub cheap_quality: f64,
    /// Average score of always-premium.
    pub premium_quality: f64,
    /// Average performance gap recovered over the premium-share sweep (random = 0.5).
    pub apgr: f64,
    /// Premium share needed to recover 50% of the gap.
    pub cpt50: f64,
    /// Premium share needed to recover 80% of the gap.
    pub cpt80: f64,
    /// 1 − cost / cost of always-premium at the cheapest point reaching 95% of premium quality
    /// (cost in USD when every record has `cost_usd`, else premium share).
    pub saving_at_95: f64,
}

/// Evaluates `model` on `records`: sends the tasks where the model predicts the largest gain of
/// premium over cheap (abilities, shifted by the task's workflow label) to premium first, sweeping the share from 0 to 1. Without abilities for
/// both models (an older artifact), the most complex tasks go first.
pub fn evaluate(
    model: &ComplexityModel,
    records: &[Record],
    cheap: &str,
    premium: &str,
) -> Option<EvalReport> {
    let tasks = pair_tasks(records, cheap, premium);
    let scores: Vec<f64> = tasks
        .iter()
        .map(|t| {
            let input = input_of(t.record);
            let z = model.logit(&input);
            let (dc, dp) = model.calibration.shift_of(&t.record.workflow);
            match (
                model.success_chance(premium, z - dp as f32),
                model.success_chance(cheap, z - dc as f32),
            ) {
                (Some(p), Some(c)) => p - c,
                _ => model.complexity_of_logit(z),
            }
        })
        .collect();
    sweep(&tasks, &scores)
}

fn sweep(tasks: &[PairTask<'_>], scores: &[f64]) -> Option<EvalReport> {
    let n = tasks.len();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let cheap_q = tasks.iter().map(|t| t.cheap).sum::<f64>() / nf;
    let prem_q = tasks.iter().map(|t| t.premium).sum::<f64>() / nf;
    let with_cost = tasks
        .iter()
        .all(|t| t.cheap_cost.is_some() && t.premium_cost.is_some());
    let cost = |t: &PairTask<'_>, premium: bool| -> f64 {
        match (with_cost, premium) {
            (true, true) => t.premium_cost.unwrap_or(0.0),
            (true, false) => t.cheap_cost.unwrap_or(0.0),
            (false, true) => 1.0,
            (false, false) => 0.0,
        }
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let gap = prem_q - cheap_q;
    let pgr = |q: f64| {
        if gap.abs() < 1e-12 {
            1.0
        } else {
            (q - cheap_q) / gap
        }
    };
    let mut quality_sum = cheap_q * nf;
    let mut cost_sum: f64 = tasks.iter().map(|t| cost(t, false)).sum();
    let premium_cost: f64 = tasks.iter().map(|t| cost(t, true)).sum();
    // k = number of tasks sent to premium.
    let mut pgrs = Vec::with_capacity(n + 1);
    let mut best_cost = premium_cost;
    let mut cpt50 = 1.0;
    let mut cpt80 = 1.0;
    for k in 0..=n {
        if k > 0 {
            let t = &tasks[order[k - 1]];
            quality_sum += t.premium - t.cheap;
            cost_sum += cost(t, true) - cost(t, false);
        }
        let q = quality_sum / nf;
        let p = pgr(q);
        let share = k as f64 / nf;
        if p >= 0.5 && cpt50 > share {
            cpt50 = share;
        }
        if p >= 0.8 && cpt80 > share {
            cpt80 = share;
        }
        if q >= 0.95 * prem_q - 1e-12 && cost_sum < best_cost {
            best_cost = cost_sum;
        }
        pgrs.push(p);
    }
    // Trapezoid rule over the share axis (steps of 1/n).
    let apgr = pgrs.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / nf;
    let saving = if premium_cost > 0.0 {
        1.0 - best_cost / premium_cost
    } else {
        0.0
    };
    Some(EvalReport {
        tasks: n,
        cheap_quality: cheap_q,
        premium_quality: prem_q,
        apgr,
        cpt50,
        cpt80,
        saving_at_95: saving,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::dataset::Outcome;
    use std::collections::BTreeMap;

    fn rec(id: usize, prompt: &str, cheap: f64, premium: f64) -> Record {
        let mut outcomes = BTreeMap::new();
        let o = |score, cost| Outcome {
            score,
            input_tokens: None,
            output_tokens: None,
            cost_usd: Some(cost),
        };
        outcomes.insert("c".to_string(), o(cheap, 0.001));
        outcomes.insert("p".to_string(), o(premium, 0.05));
        Record {
            id: format!("r{id}"),
            prompt: prompt.into(),
            workflow: "w".into(),
            outcomes,
        }
    }

    #[test]
    fn perfect_router_beats_random_and_oracle_numbers_hold() {
        // Half the tasks: cheap fails, premium succeeds; the other half both succeed.
        let records: Vec<Record> = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    rec(i, "hard", 0.0, 1.0)
                } else {
                    rec(i, "easy", 1.0, 1.0)
                }
            })
            .collect();
        let tasks = pair_tasks(&records, "c", "p");
        let oracle: Vec<f64> = tasks.iter().map(|t| t.premium - t.cheap).collect();
        let r = sweep(&tasks, &oracle).unwrap();
        assert_eq!(r.tasks, 100);
        assert!((r.cheap_quality - 0.5).abs() < 1e-9);
        assert!((r.cpt50 - 0.25).abs() < 1e-9, "{}", r.cpt50);
        assert!(r.apgr > 0.74, "{}", r.apgr);
        // 95% of premium (0.95) needs 45 of 50 hard tasks on premium.
        let expected = 1.0 - (45.0 * 0.05 + 55.0 * 0.001) / 5.0;
        assert!(
            (r.saving_at_95 - expected).abs() < 1e-9,
            "{} vs {expected}",
            r.saving_at_95
        );
        let worst: Vec<f64> = oracle.iter().map(|x| -x).collect();
        assert!(sweep(&tasks, &worst).unwrap().apgr < 0.3);
    }

    #[test]
    fn label_shifts_find_where_a_model_does_better_than_predicted() {
        // Two workflows of one family, predicted alike; the cheap model fails on `f/b`.
        let mut records = Vec::new();
        for i in 0..200 {
            let cheap = if i % 2 == 0 { 1.0 } else { 0.0 };
            let mut a = rec(i, "same text", cheap, 1.0);
            a.workflow = "f/a".into();
            let mut b = rec(1000 + i, "same text", 0.0, 1.0);
            b.workflow = "f/b".into();
            records.push(a);
            records.push(b);
        }
        let tasks = pair_tasks(&records, "c", "p");
        let oof = vec![0f32; tasks.len()];
        let shifts = label_shifts(&tasks, &oof, (0.0, 2.0));
        let (fam, a, b) = (&shifts["f"], &shifts["f/a"], &shifts["f/b"]);
        // The family as a whole: the cheap model succeeds a quarter of the time (σ(0) = 1/2
        // predicted), the premium one always (σ(2) predicted).
        assert!(fam.cheap < -0.5 && fam.premium > 0.5, "{fam:?}");
        // Against the family: `f/a` better, `f/b` worse for the cheap model.
        assert!(a.cheap > 0.5 && b.cheap < -0.5, "{a:?} {b:?}");
        assert_eq!((a.tasks, b.tasks, fam.tasks), (200, 200, 400));
    }

    #[test]
    fn target_names_read_back() {
        for target in Target::ALL {
            assert_eq!(target.to_string().parse::<Target>(), Ok(target));
        }
        assert_eq!("IRT".parse::<Target>(), Err(ParseTargetError("IRT".into())));
    }

    #[test]
    fn trains_a_model_that_separates_a_learnable_signal() {
        let records: Vec<Record> = (0..300)
            .map(|i| {
                if i % 3 == 0 {
                    rec(
                        i,
                        "prove the theorem about eigenvalues of the operator",
                        0.0,
                        1.0,
                    )
                } else {
                    rec(i, "say hello to my friend", 1.0, 1.0)
                }
            })
            .collect();
        let opts = TrainOptions {
            cheap: "c".into(),
            premium: "p".into(),
            alpha: 1.0,
            max_iterations: 300,
            target: Target::Irt,
        };
        let model = train(&records, &opts).unwrap();
        let report = evaluate(&model, &records, "c", "p").unwrap();
        assert!(report.apgr > 0.8, "{report:?}");
        assert_eq!(model.calibration.bands.len(), CALIBRATION_BANDS);
        let too_few = train(&records[..10], &opts).unwrap_err();
        assert!(too_few.to_string().contains("at least 50"));
    }
}
