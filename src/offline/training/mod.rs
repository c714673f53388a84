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

mod eval;
mod fit;
#[cfg(test)]
mod recipe_guard;

#[cfg(test)]
use eval::sweep;
pub use eval::{EvalReport, evaluate};
use fit::*;

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
    /// L2 penalty on the premium-gap weights (`irt` only); `None` fits no gap term.
    pub gap_alpha: Option<f64>,
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
    // Out-of-fold difficulties (and, with a gap term, premium gaps) of every task, learned
    // without the hand-set signals.
    let mut oof = vec![0f32; tasks.len()];
    let mut oof_gap = vec![0f64; tasks.len()];
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
            oof_gap[i] = gap_of(&f, t.record);
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
    // Abilities refitted on the difficulties the model ships (signals included) and the gaps,
    // so that `σ(ability − difficulty ∓ gap)` stays calibrated; the label shifts are measured
    // against them.
    let ability = |score: fn(&PairTask<'_>) -> f64, sign: f64| -> f32 {
        let group: Vec<(f64, f64)> = tasks
            .iter()
            .zip(oof.iter().zip(&oof_gap))
            .map(|(t, (&z, &g))| (sign * g - f64::from(z), score(t)))
            .collect();
        log_odds_shift(&group, 0.0) as f32
    };
    let abilities = (ability(|t| t.cheap, -1.0), ability(|t| t.premium, 1.0));
    let shifts = match opts.target {
        Target::Irt => label_shifts(&tasks, &oof, abilities, &oof_gap),
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
        gap_weights: fitted.gap,
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
    model.version = version_of(&model);
    Ok(model)
}

/// A trained model's version: a digest of everything that moves a routing decision (the
/// weights and bias: the difficulty; the quantiles: complexity; the abilities and offsets; the
/// calibration's bands and label shifts: the priors; the gap weights when there are any). The
/// bands' qualities count to 9 decimals: JSON's parse may move an f64 by its last bit, and the
/// version read back from an artifact must be the one written.
fn version_of(model: &ComplexityModel) -> String {
    let bands: Vec<String> = model
        .calibration
        .bands
        .iter()
        .map(|b| {
            format!(
                "{}:{:.9}:{:.9}",
                b.tasks, b.cheap_quality, b.premium_quality
            )
        })
        .collect();
    let mut fingerprint = format!(
        "{:?}{:?}{:?}{:?}",
        model.weights, model.abilities, model.workflow_offsets, model.calibration.workflows
    );
    fingerprint.push_str(&format!(
        "{:?}{:?}{}",
        model.bias,
        model.logit_quantiles,
        bands.join(",")
    ));
    if !model.gap_weights.is_empty() {
        fingerprint.push_str(&format!("{:?}", model.gap_weights));
    }
    format!("cx2-{}", crate::domain::policy::short_hash(&fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_changes_with_anything_that_moves_a_decision() {
        let model = ComplexityModel::bundled().unwrap();
        let v = version_of(&model);
        assert_eq!(
            v, model.version,
            "the bundled artifact's version is its digest"
        );
        let mut m = model.clone();
        m.calibration.bands[0].cheap_quality += 0.001;
        assert_ne!(version_of(&m), v, "calibration bands");
        let mut m = model.clone();
        m.bias += 0.01;
        assert_ne!(version_of(&m), v, "bias");
        let mut m = model.clone();
        m.logit_quantiles[1] += 0.01;
        assert_ne!(version_of(&m), v, "quantiles");
    }
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
        let shifts = label_shifts(&tasks, &oof, (0.0, 2.0), &[]);
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
            gap_alpha: Some(30.0),
            target: Target::Irt,
        };
        let model = train(&records, &opts).unwrap();
        let report = evaluate(&model, &records, "c", "p").unwrap();
        assert!(report.apgr > 0.8, "{report:?}");
        assert_eq!(model.gap_weights.len(), features::DIMS);
        assert!(model.gap_weights.iter().all(|w| w.is_finite()));
        let plain = train(
            &records,
            &TrainOptions {
                gap_alpha: None,
                ..opts.clone()
            },
        )
        .unwrap();
        assert!(plain.gap_weights.is_empty());
        assert_ne!(plain.version, model.version);
        assert_eq!(model.calibration.bands.len(), CALIBRATION_BANDS);
        let too_few = train(&records[..10], &opts).unwrap_err();
        assert!(too_few.to_string().contains("at least 50"));
    }
}
