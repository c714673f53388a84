//! The fit: the item-response model by full-batch Adam over sparse features, and the per-label
//! log-odds shifts that carry what a workflow's difficulty offset cannot say.

use super::*;

/// A fitted item-response model: `P(tier succeeds on x) = σ(ability − w·φ(x))`.
pub(super) struct Fitted {
    /// Difficulty weights `w` (larger `w·φ` = harder).
    pub(super) weights: Vec<f32>,
    /// Ability of the cheap model.
    pub(super) cheap: f32,
    /// Ability of the premium model.
    pub(super) premium: f32,
    /// Difficulty offset per training workflow and family.
    pub(super) offsets: std::collections::BTreeMap<String, f32>,
    /// Premium-gap weights `u` (empty without a gap term): the cheap model succeeds with chance
    /// `σ(a_c − w·φ − u·φ)`, the premium one with `σ(a_p − w·φ + u·φ)`.
    pub(super) gap: Vec<f32>,
}

/// One training task: sparse features, cheap success, premium success.
pub(super) type Row = (Vec<(usize, f64)>, f64, f64);

/// Adam step size and moment decays of the optimiser.
pub(super) const LEARNING_RATE: f64 = 0.05;
pub(super) const BETA1: f64 = 0.9;
pub(super) const BETA2: f64 = 0.999;

/// Fits the item-response model on `tasks`: one shared difficulty per task, linear in its
/// features, and one ability per tier, so the score means difficulty for every tier instead of
/// "where the premium model wins". Each (task, tier) pair is one observation: did that tier
/// succeed (score ≥ 0.5). Minimises the summed log loss + `alpha/2·‖w‖²` (abilities are not
/// penalised) by full-batch Adam over the sparse features: the dense design matrix that a
/// general-purpose solver needs (14,500 rows × 4,110 columns) took over 20 minutes on 2 cores;
/// this takes seconds, deterministically. With `opts.gap_alpha`, a premium gap `u·φ(x)` is fitted
/// jointly (penalty `gap_alpha/2·‖u‖²`): the cheap model succeeds with `σ(a_c − d − g)`, the
/// premium one with `σ(a_p − d + g)`, so `g` says where the premium model gains more than the
/// shared difficulty does.
pub(super) fn fit(tasks: &[&PairTask<'_>], opts: &TrainOptions) -> Result<Fitted, TrainError> {
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
    // With a gap term, one gap weight per feature after the offsets (`irt` only).
    let joint = opts.gap_alpha.filter(|_| opts.target == Target::Irt);
    let g0 = dims + 2 + labels.len();
    let n = g0 + if joint.is_some() { dims } else { 0 };
    let scale = 1.0 / rows.len().max(1) as f64;
    let sigma = |z: f64| 1.0 / (1.0 + (-z).exp());
    let theta = adam(n, opts.max_iterations, |theta, grad| {
        for (i, (g, w)) in grad.iter_mut().zip(theta).enumerate() {
            *g = if i == dims || i == dims + 1 {
                0.0
            } else if i >= g0 {
                joint.unwrap_or(0.0) * w * scale
            } else {
                opts.alpha * w * scale
            };
        }
        for (x, yc, yp) in &rows {
            let d: f64 = x.iter().map(|&(j, v)| theta[j] * v).sum();
            if joint.is_some() {
                // Cheap succeeds with σ(a_c − d − g), premium with σ(a_p − d + g).
                let gp: f64 = x
                    .iter()
                    .filter(|p| p.0 < dims)
                    .map(|&(j, v)| theta[g0 + j] * v)
                    .sum();
                let rc = (sigma(theta[dims] - d - gp) - yc) * scale;
                let rp = (sigma(theta[dims + 1] - d + gp) - yp) * scale;
                grad[dims] += rc;
                grad[dims + 1] += rp;
                for &(j, v) in x {
                    grad[j] -= (rc + rp) * v;
                    if j < dims {
                        grad[g0 + j] += (rp - rc) * v;
                    }
                }
                continue;
            }
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
    })?;
    Ok(Fitted {
        weights: theta[..dims].iter().map(|&w| w as f32).collect(),
        cheap: theta[dims] as f32,
        premium: theta[dims + 1] as f32,
        offsets: labels
            .into_iter()
            .zip(&theta[dims + 2..g0])
            .map(|(l, &w)| (l, w as f32))
            .collect(),
        gap: theta[g0..].iter().map(|&w| w as f32).collect(),
    })
}

/// Minimises a differentiable loss over `n` parameters from 0 by `steps` full-batch Adam steps;
/// `gradient(theta, grad)` overwrites `grad` with the loss's gradient at `theta`.
pub(super) fn adam(
    n: usize,
    steps: u64,
    mut gradient: impl FnMut(&[f64], &mut [f64]),
) -> Result<Vec<f64>, TrainError> {
    let mut theta = vec![0.0f64; n];
    let (mut m, mut v) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut grad = vec![0.0f64; n];
    for step in 1..=steps {
        gradient(&theta, &mut grad);
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
    Ok(theta)
}

/// The labels a workflow contributes offsets for: itself and its family.
pub(super) fn label_names(workflow: &str) -> Vec<String> {
    if workflow.is_empty() {
        return Vec::new();
    }
    let mut out = vec![workflow.to_string()];
    if let Some(f) = crate::domain::labels::family_of(workflow) {
        out.push(f.to_string());
    }
    out
}

/// Premium gap of a record under a jointly fitted model (0 without one).
pub(super) fn gap_of(f: &Fitted, r: &Record) -> f64 {
    if f.gap.is_empty() {
        return 0.0;
    }
    sparse_features(r)
        .iter()
        .map(|&(j, v)| f64::from(f.gap[j]) * v)
        .sum()
}

/// Difficulty logit of a record under a fitted model: features plus workflow offsets.
pub(super) fn logit(f: &Fitted, r: &Record) -> f32 {
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
pub(super) fn log_odds_shift(group: &[(f64, f64)], penalty: f64) -> f64 {
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
pub(super) fn label_shifts(
    tasks: &[PairTask<'_>],
    oof: &[f32],
    (a_cheap, a_premium): (f32, f32),
    gaps: &[f64],
) -> BTreeMap<String, LabelShift> {
    let mut out: BTreeMap<String, LabelShift> = BTreeMap::new();
    // Predicted log-odds of success of (cheap, premium) on each task.
    let gap = |i: usize| gaps.get(i).copied().unwrap_or(0.0);
    let base = |i: usize| {
        (
            f64::from(a_cheap - oof[i]) - gap(i),
            f64::from(a_premium - oof[i]) + gap(i),
        )
    };
    let mut groups: BTreeMap<(bool, String), Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let w = &t.record.workflow;
        if w.is_empty() {
            continue;
        }
        if let Some(f) = crate::domain::labels::family_of(w) {
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
            crate::domain::labels::family_of(&tasks[i].record.workflow)
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
