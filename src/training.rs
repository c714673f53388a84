//! Offline learning: fit the complexity model with linfa on graded task records, and evaluate a
//! model with RouteLLM's metrics (APGR, CPT, saving at 95% of premium quality).

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::Serialize;

use crate::classifier::{ARTIFACT_FORMAT, Calibration, CalibrationBand, ComplexityModel};
use crate::dataset::Record;
use crate::features::{self, TaskInput};

/// Number of complexity bands in the calibration.
pub const CALIBRATION_BANDS: usize = 20;
/// Number of quantile knots stored for the logit → complexity map.
const QUANTILE_KNOTS: usize = 201;
/// Folds used to get out-of-fold logits for the quantiles and the calibration.
const FOLDS: usize = 5;

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Model id of the cheap tier in the records.
    pub cheap: String,
    /// Model id of the premium tier in the records.
    pub premium: String,
    /// L2 penalty of the logistic regression.
    pub alpha: f64,
    /// Iteration cap of the optimiser.
    pub max_iterations: u64,
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
    /// linfa failed.
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

fn design_matrix(tasks: &[&PairTask<'_>]) -> Array2<f64> {
    let mut x = Array2::<f64>::zeros((tasks.len(), features::DIMS));
    for (i, t) in tasks.iter().enumerate() {
        features::visit_features(&input_of(t.record), |j, v| {
            x[[i, j as usize]] += f64::from(v);
        });
    }
    x
}

/// The label: the premium model did better than the cheap one on this task.
fn label(t: &PairTask<'_>) -> bool {
    t.premium > t.cheap
}

/// Fits weights and bias on `tasks`, oriented so that a larger logit means "premium better".
fn fit(tasks: &[&PairTask<'_>], opts: &TrainOptions) -> Result<(Vec<f32>, f32), TrainError> {
    let x = design_matrix(tasks);
    let y: Array1<bool> = tasks.iter().map(|t| label(t)).collect();
    let ds = Dataset::new(x, y);
    let fitted = LogisticRegression::default()
        .alpha(opts.alpha)
        .max_iterations(opts.max_iterations)
        .fit(&ds)
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    // linfa makes the larger class the positive one; orient towards `true`.
    let sign: f64 = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let weights = fitted.params().iter().map(|w| (sign * w) as f32).collect();
    Ok((weights, (sign * fitted.intercept()) as f32))
}

fn logit(weights: &[f32], bias: f32, r: &Record) -> f32 {
    let mut z = bias;
    features::visit_features(&input_of(r), |i, v| z += weights[i as usize] * v);
    z
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
    let mut oof = vec![0f32; tasks.len()];
    for fold in 0..FOLDS {
        let train: Vec<&PairTask<'_>> = tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| i % FOLDS != fold)
            .map(|(_, t)| t)
            .collect();
        let (w, b) = fit(&train, opts)?;
        for (i, t) in tasks.iter().enumerate().filter(|(i, _)| i % FOLDS == fold) {
            oof[i] = logit(&w, b, t.record);
        }
    }
    let mut sorted = oof.clone();
    sorted.sort_by(f32::total_cmp);
    let logit_quantiles: Vec<f32> = (0..QUANTILE_KNOTS)
        .map(|k| sorted[k * (sorted.len() - 1) / (QUANTILE_KNOTS - 1)])
        .collect();
    let all: Vec<&PairTask<'_>> = tasks.iter().collect();
    let (weights, bias) = fit(&all, opts)?;
    let mut model = ComplexityModel {
        format: ARTIFACT_FORMAT.into(),
        version: String::new(),
        feature_version: features::FEATURE_VERSION.into(),
        weights,
        bias,
        logit_quantiles,
        calibration: Calibration {
            cheap_model: opts.cheap.clone(),
            premium_model: opts.premium.clone(),
            bands: Vec::new(),
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
    let digest = crate::policy::short_hash(&format!("{:?}{:?}", model.weights, model.bias));
    model.version = format!("cx1-{digest}");
    Ok(model)
}

/// Index of the band `c` falls in, for `bands` equal-width bands over [0, 1].
pub fn band_of(c: f64, bands: usize) -> usize {
    ((c * bands as f64) as usize).min(bands - 1)
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

/// Evaluates `model` on `records`: sends the hardest tasks (by complexity) to premium, sweeping
/// the share from 0 to 1.
pub fn evaluate(
    model: &ComplexityModel,
    records: &[Record],
    cheap: &str,
    premium: &str,
) -> Option<EvalReport> {
    let tasks = pair_tasks(records, cheap, premium);
    let scores: Vec<f64> = tasks
        .iter()
        .map(|t| model.complexity(&input_of(t.record)))
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
    use crate::dataset::Outcome;
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
            max_iterations: 100,
        };
        let model = train(&records, &opts).unwrap();
        let report = evaluate(&model, &records, "c", "p").unwrap();
        assert!(report.apgr > 0.8, "{report:?}");
        assert_eq!(model.calibration.bands.len(), CALIBRATION_BANDS);
        let too_few = train(&records[..10], &opts).unwrap_err();
        assert!(too_few.to_string().contains("at least 50"));
    }
}
