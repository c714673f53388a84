//! Evaluation: RouteLLM's metrics (APGR and the cost at quality targets) of a trained model
//! routing a cheap/premium pair.

use super::*;

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
/// premium over cheap (abilities, shifted by the task's workflow label and its premium gap) to
/// premium first, sweeping the share from 0 to 1. Without abilities for
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
            let (z, gap) = model.logit_and_gap(&input);
            let (dc, dp) = model.calibration.shift_of(&t.record.workflow);
            match (
                model.success_chance(premium, z - dp as f32 - gap),
                model.success_chance(cheap, z - dc as f32 + gap),
            ) {
                (Some(p), Some(c)) => p - c,
                _ => model.complexity_of_logit(z),
            }
        })
        .collect();
    sweep(&tasks, &scores)
}

pub(super) fn sweep(tasks: &[PairTask<'_>], scores: &[f64]) -> Option<EvalReport> {
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
