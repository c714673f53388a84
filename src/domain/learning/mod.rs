//! Per-scope routing plans from calibration plus outcome evidence: the learning core. The layer
//! owns evidence (`evidence`), estimates (`estimate`), the planner (`plan`), what Route reads of a
//! plan (`scope_plan`) and the routing table (`table`).
//!
//! **Evidence.** Outcomes are kept per (scope, workflow, tier, complexity band), at three levels
//! of one scope: the scope, the workflow's family (`mmlu/law` → `mmlu`, `support.reply` →
//! `support`) and the workflow. An empty workflow is the workflow `default`. Each level decays
//! its own evidence by `0.5^(1/HALF_LIFE_FEEDBACKS)` per outcome it receives, so a workflow that
//! sees 1% of a scope's traffic keeps its own history instead of losing it to its neighbours'.
//! At most [`MAX_WORKFLOWS`] workflows (and as many families) are kept per scope; the one seen
//! longest ago is dropped first and its tasks fall back to its family, then to the scope.
//!
//! **Estimate.** Shrunk hierarchically, as in empirical Bayes: the scope's curve of a tier is
//! the calibration prior moved by a log-odds shift learned from the scope's outcomes, plus a
//! per-band residual; a family's curve is the scope's, corrected the same way by the family's outcomes;
//! a workflow's is its family's, corrected by its own. Each correction is worth
//! [`FAMILY_PRIOR`] / [`WORKFLOW_PRIOR`] pseudo-outcomes of its parent, so a workflow with three
//! outcomes mostly borrows its parent's curve and one with thousands stands on its own. A tier
//! on a model the calibration never measured is worth [`PRIOR_OTHER_MODEL`] at every level, and
//! a caller's family or workflow starts it from its own (price-interpolated) prior rather than
//! from its parent's learned curve; a discovered cluster (`~cluster/<id>`) borrows from its
//! parent like any level. Route explores by drawing from these estimates
//! ([`ScopePlan::explore`]). A label
//! the model was trained on first shifts its parent's curve by the log-odds shift training
//! measured there ([`Calibration::workflows`](crate::domain::classifier::Calibration::workflows)).
//! A level learns against what its own outcomes were expected to score, each at its
//! workflow's shifted curve, so a parent whose cheap tier only sees the workflows it is good at
//! does not learn that it is good everywhere, and the shift then applies in full; each
//! outcome is also expected at its task's premium gap (0 without a gap term). For tiers on the
//! calibration's own models, the part of a deviation that sampling noise explains is dropped
//! first ([`NOISE_SHRINK`]).
//!
//! **Teams.** Each team that reports outcomes in a scope also gets evidence of its own (at most
//! [`MAX_TEAMS`]) and a plan of its own, which starts from the shared plan's curves where the
//! shared plan starts from the calibration, and meets the bar on the team's own traffic. A
//! team's outcomes count in full in its own evidence and with a bounded weight in the shared
//! evidence ([`TEAM_SHARE`] outcomes beyond all other teams' together), so one team cannot move
//! the routing of a team without evidence beyond that share.
//!
//! **Plan.** The bar is met across all workflows of the scope at once:
//! - `bar_mode = "average"`: routing minimises `cost(tier, task) − λ·quality(tier, workflow,
//!   band)` with one λ (the scope's price of quality in USD): the smallest λ whose expected
//!   quality on the scope's recent traffic meets the bar. One λ for every workflow is what puts
//!   each extra dollar where it buys the most quality. A bar beyond the top tier's reach on
//!   that traffic is aimed at [`OUT_OF_REACH_SLACK`] below the reach.
//! - `bar_mode = "per_task"`: each task goes to the cheapest tier whose estimate for its
//!   workflow and band reaches the bar, the top tier when none does.
//! - `quality_bar_relative = r`: the bar is `r` × the estimate of the scope's most expensive
//!   allowed tier on the same traffic (per task in `per_task` mode).
//!
//! The traffic sample is 512 of the scope's recent tasks (every task until it is full, then
//! every 4th, so it spans the last 2,048 outcomes); while it holds fewer than
//! [`MIN_TRAFFIC_SAMPLE`], the prior traffic shape (one typical task per band) makes up the
//! difference in weight, so one feedback can never reprice a whole scope. Every estimate is
//! used less a confidence margin that shrinks with evidence, so a tier with little evidence
//! starts cautious. Output lengths are robust: the median of a workflow's last reports, each
//! clipped to within [`OUTPUT_STEP`]× of the current estimate (the shared levels, which price
//! other teams' tasks: [`SHARED_OUTPUT_STEP`]×), and never above the policy's
//! `max_output_tokens`.
//!
//! **Re-plan.** After a Feedback, [`replan_scope`] bounds the work: λ is solved again on every
//! Feedback, but only levels with new outcomes plus the [`REPLAN_LEVELS`] recomputed longest ago
//! get new curves, and only team plans with new outcomes plus the [`REPLAN_TEAMS`] re-planned
//! longest ago; a smaller scope is re-planned whole, exactly as [`plan_scope`] would.
//!
//! Memory: a workflow costs about `k × 0.9 KB` for `k` allowed tiers (evidence cells plus the
//! plan's two curves), so 1,024 workflows of a 4-tier scope take about 3.7 MB, once in the
//! shared evidence and once more in each team's own that reports outcomes on them.

mod estimate;
mod evidence;
mod plan;
mod scope_plan;
mod table;

pub use evidence::{
    Cell, Discovery, Lesson, Level, OutputLengths, ScopeEvidence, TaskShape, TeamEvidence,
};
pub use plan::{plan_scope, replan_scope};
pub use scope_plan::{Choice, ScopePlan, TierPlan, WorkflowPlan};
pub use table::{RoutingTable, ThresholdRow};

pub use crate::domain::labels::{DEFAULT_WORKFLOW, family_of, workflow_key};

/// Complexity bands used for evidence and planning (band `b` covers `[b/B, (b+1)/B)`).
pub const BANDS: usize = 20;
/// Outcomes the calibration is worth for a tier that runs one of the calibration's own models.
/// 300 measured ~0.02 more held-out saving at equal quality (at 30 each tier's scope-wide ratio
/// wanders ±4% on a stationary stream, sampling noise the plan chases), but a team whose cheap
/// tier succeeds on every task then needed far more than 300 outcomes to be routed there.
pub const PRIOR_KNOWN_MODEL: f64 = 30.0;
/// Outcomes the calibration is worth for any other model: weak, so such a tier starts cautious.
pub const PRIOR_OTHER_MODEL: f64 = 4.0;
/// Pseudo-outcomes of its scope's curve that a family's own correction must outweigh.
pub const FAMILY_PRIOR: f64 = 20.0;
/// Pseudo-outcomes of its family's (or scope's) curve that a workflow's correction must
/// outweigh.
pub const WORKFLOW_PRIOR: f64 = 20.0;
/// Outcomes a single band of the scope needs before its own residual counts as much as the
/// pooled estimate.
pub const BAND_PRIOR: f64 = 40.0;
/// Outcomes per training task of a label (family or workflow the model was trained on) that
/// the label's bands need on top of [`BAND_PRIOR`] before their own residuals count: its
/// shifted curve was measured on those tasks, while a band of a label holds a handful of
/// outcomes, whose residuals were mostly noise the plan chased. Held-out replays, mean saving at
/// equal quality: 0.509 at 0, 0.518 at 1, 0.524 at 3, 0.527 at 10. Labels the model never saw
/// (the domain-shift stream, any user's own workflows) keep [`BAND_PRIOR`], so a workflow
/// where a tier does far better than its curve says is still learned band by band.
pub const LABEL_BAND_PRIOR_PER_TASK: f64 = 3.0;
/// Standard errors (of a tier's pooled estimate, σ ≤ 0.5) the plan subtracts from its quality.
/// Measured on held-out replays (0 to 0.5 tried): choosing the cheap tier where its estimate is
/// high picks up its estimation error (a winner's curse), which the margin pays for; 0.3 kept
/// every seed within 0.005 of the bar but sent mid-complexity trivial prompts to the top tier
/// under the example policy, 0.2 kept them off it and missed by up to 0.01 on some seeds. With
/// levels learning against their labels' own expectations and calmer estimates
/// ([`LABEL_BAND_PRIOR_PER_TASK`]) there is less error to pay for: 0.1 keeps every
/// held-out seed at ≥ 0.7669 (README, "Proof").
pub const CONFIDENCE_Z: f64 = 0.1;
/// How much of a level's deviation from its expected score is put down to sampling noise:
/// the deviation loses `NOISE_SHRINK` × its variance over its square (positive-part
/// James–Stein). Without it each tier's learned ratio wandered with the noise of its last few
/// hundred outcomes and the plan chased it; held-out replays (README, "Proof"), mean over 10
/// runs: 0.7736 / 0.524 (quality / saving) at 0, 0.7746 / 0.551 at 1 (ratio and band residuals
/// both), 0.7745 / 0.540 at 1 on the ratio alone, 0.7752 / 0.538 at 2.
pub const NOISE_SHRINK: f64 = 1.0;
/// Posterior draws an explored task may take before it settles on the plan's own choice
/// ([`ScopePlan::explore`]): more draws spend more of the exploration budget on alternatives
/// that are only somewhat likely to be right. With one, an unmeasured tier as good as the
/// plan's choice but a few points below it in the prior was tried on too few tasks to be
/// believed within hundreds of outcomes; with every explored task forced onto an alternative,
/// two tiers explored the premium tier on trivially easy tasks.
pub const EXPLORE_DRAWS: usize = 4;
/// Sketches of unlabelled tasks a scope keeps to fit its clusters on (64 bytes each).
pub const CLUSTER_WINDOW: usize = 2048;
/// Unlabelled outcomes between two cluster fits.
pub const CLUSTER_REFIT_EVERY: usize = 512;
/// Unlabelled outcomes before a scope's first fit (at 4 clusters).
pub const CLUSTER_FIRST_FIT: usize = 512;
/// Recent unlabelled tasks per cluster: k grows with the window (4 at the first fit, 8 once it
/// holds 1,024), so each cluster holds enough outcomes to learn from.
pub const CLUSTER_TASKS_PER_K: usize = 128;
/// Most clusters per scope: measured on a three-workflow set, k-means on these features
/// recovered the workflows with NMI 0.96 at k = 4 and 0.86 at k = 16 (issue 34); more
/// clusters split a scope's outcomes thinner for every tier's estimate.
pub const CLUSTER_MAX_K: usize = 8;
/// The workflow label an unlabelled task of discovered cluster `id` learns under: a workflow
/// of the family `~cluster`, so clusters learn like workflows and borrow from each other.
pub fn cluster_label(id: u32) -> String {
    format!("{CLUSTER_FAMILY}/{id}")
}
/// The cluster id of a label made by [`cluster_label`]; `None` for any other label.
pub fn cluster_id(label: &str) -> Option<u32> {
    label
        .strip_prefix(CLUSTER_FAMILY)?
        .strip_prefix('/')?
        .parse()
        .ok()
}
/// Whether `label` is a discovered cluster or their family.
pub(super) fn is_discovered(label: &str) -> bool {
    label == CLUSTER_FAMILY || family_of(label) == Some(CLUSTER_FAMILY)
}
/// The family of discovered clusters (`~` is refused in callers' labels).
pub const CLUSTER_FAMILY: &str = "~cluster";
/// Outcomes of one level (scope, family or workflow) after which its old evidence weighs half.
pub const HALF_LIFE_FEEDBACKS: f64 = 500.0;
/// Tasks per scope that the planner prices its choices on.
const TRAFFIC_SAMPLE: usize = 512;
/// Once the sample is full, it takes every `SAMPLE_STRIDE`-th task of the scope, so it spans
/// the last `TRAFFIC_SAMPLE × SAMPLE_STRIDE` outcomes at the cost of `TRAFFIC_SAMPLE`: priced
/// on a short stretch, the plan chased whichever workflow had just been busy (on held-out
/// replays in workflow order, spanning 2,048 instead of 512 kept quality above the bar on
/// every seed).
const SAMPLE_STRIDE: u64 = 4;
/// Largest amount by which a scope that has fallen short aims above its bar.
pub const CATCH_UP: f64 = 0.04;
/// How far above the bar a scope aims per unit of shortfall. With estimates that run high by
/// `b` on the traffic routed (new traffic, or the optimizer's curse), aiming at `bar + k ×
/// shortfall` settles at `bar − b / (1 + k)`: gain 1 left half the bias as a lasting miss
/// (0.754 against a bar of 0.77 on the domain-shift replay), gain 3 a quarter (0.762). With
/// sampling noise no longer moving the curves ([`NOISE_SHRINK`]) there is less bias to make
/// up: on held-out replays gain 2 kept every run at ≥ 0.7658 with a mean saving of 0.633
/// (gain 3: 0.627, one run at 0.598), and the domain-shift replay ends as close to the bar.
pub const CATCH_UP_GAIN: f64 = 2.0;
/// How far below what every task on the top tier would reach a scope aims when its target is
/// out of that reach (`average` mode): it keeps buying the quality that is cheap per point
/// instead of sending every task to the top tier. On held-out replays in workflow order (the
/// first half, abstract algebra to high-school physics, is harder than the rest) the plan sat at
/// the top tier for 900 tasks; with a slack of 0.005 the mean saving over the 10 runs went from
/// 0.551 to 0.633 at quality 0.7746 → 0.7700 (0.003: 0.604 at 0.7714; 0.01: 0.659, but three
/// runs below 0.765). The price: a scope whose bar is within the slack of its top tier's reach
/// settles up to the slack below the most it could have had.
pub const OUT_OF_REACH_SLACK: f64 = 0.005;
/// Recent tasks a scope needs before its sample alone stands for its traffic; below that, the
/// prior traffic shape fills the remaining weight.
pub const MIN_TRAFFIC_SAMPLE: usize = 64;
/// Output tokens assumed for a scope before feedback reports real ones.
pub const DEFAULT_TYPICAL_OUTPUT_TOKENS: u64 = 256;
/// Input tokens of the typical task before feedback reports real ones.
const DEFAULT_TYPICAL_INPUT_TOKENS: u64 = 500;
/// Input tokens one task may count for in the traffic sample (a 256 KB task is ~64k tokens).
const MAX_SAMPLE_INPUT_TOKENS: u64 = 1 << 20;
/// Distinct workflows (and, separately, families) kept per scope.
pub const MAX_WORKFLOWS: usize = 1024;
/// Teams whose own learned state is kept per scope.
pub const MAX_TEAMS: usize = 32;
/// Outcomes' worth of the shared state (what a team without evidence of its own routes on) that
/// one team can hold beyond all other teams' together.
pub const TEAM_SHARE: f64 = 10.0;
/// Family and workflow levels of one plan whose curves a re-plan after Feedback recomputes:
/// every level with new outcomes, then the ones recomputed longest ago up to this many. A plan
/// with at most this many levels is recomputed whole on every Feedback.
pub const REPLAN_LEVELS: usize = 64;
/// Team plans a re-plan after Feedback recomputes beyond those of teams with new outcomes (the
/// ones re-planned longest ago first). A scope with at most this many other teams re-plans
/// every team on every Feedback.
pub const REPLAN_TEAMS: usize = 3;
/// Output-length reports kept per level; the estimate is their median.
const OUTPUT_WINDOW: usize = 15;
/// Reports a level needs before its own median replaces its parent's estimate.
const OUTPUT_MIN_REPORTS: usize = 3;
/// A report is clipped to within this factor of the current estimate.
pub const OUTPUT_STEP: u64 = 16;
/// The same for the shared levels, which price the tasks of every team without output lengths
/// of its own: a team's first reports (it holds a bounded share, see [`TEAM_SHARE`]) can move
/// the shared median about this factor squared at most (×4 from ten reports), where the
/// team's own levels follow it at [`OUTPUT_STEP`].
pub const SHARED_OUTPUT_STEP: u64 = 2;
/// λ large enough that quality dominates any cost (USD per unit of quality).
const LAMBDA_MAX: f64 = 1e6;
const LAMBDA_MIN: f64 = 1e-10;

/// Index of the band `c` falls in, for `bands` equal-width bands over [0, 1].
pub fn band_of(c: f64, bands: usize) -> usize {
    ((c * bands as f64) as usize).min(bands - 1)
}

#[cfg(test)]
mod tests;
