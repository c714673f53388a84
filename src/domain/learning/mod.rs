//! Per-scope routing plans from calibration plus outcome evidence: the learning core. The layer
//! owns evidence (`evidence`), estimates (`estimate`), the planner (`plan`, in stages: `slots`,
//! `levels`, `pricing`), what Route reads of a plan (`scope_plan`) and the routing table
//! (`table`); the log-odds helpers they share (`odds`) and the tuned constants, each with its
//! reason (`params`), sit below all of them.
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
mod levels;
mod odds;
mod params;
mod plan;
mod pricing;
mod scope_plan;
mod slots;
mod table;

pub use evidence::{
    Cell, Discovery, Lesson, Level, OutputLengths, ScopeEvidence, ShadowAnswers, TaskShape,
    TeamEvidence, cluster_id, cluster_label,
};
pub use params::{
    BAND_PRIOR, BANDS, CATCH_UP, CATCH_UP_GAIN, CLUSTER_FAMILY, CLUSTER_FIRST_FIT, CLUSTER_MAX_K,
    CLUSTER_REFIT_EVERY, CLUSTER_TASKS_PER_K, CLUSTER_WINDOW, CONFIDENCE_Z,
    DEFAULT_TYPICAL_OUTPUT_TOKENS, EXPLORE_DRAWS, FAMILY_PRIOR, HALF_LIFE_FEEDBACKS,
    LABEL_BAND_PRIOR_PER_TASK, MAX_TEAMS, MAX_WORKFLOWS, MIN_TRAFFIC_SAMPLE, NOISE_SHRINK,
    OUT_OF_REACH_SLACK, OUTPUT_STEP, PRIOR_KNOWN_MODEL, PRIOR_OTHER_MODEL, REPLAN_LEVELS,
    REPLAN_TEAMS, SHADOW_ANSWERS_HALF_LIFE, SHARED_OUTPUT_STEP, SHARED_PRIOR_MIN, TEAM_SHARE,
    WORKFLOW_PRIOR,
};
pub use plan::{plan_scope, replan_scope};
pub use scope_plan::{Choice, ScopePlan, TierPlan, WorkflowPlan};
pub use table::{RoutingTable, ThresholdRow};

pub use crate::domain::labels::{DEFAULT_WORKFLOW, family_of, workflow_key};

/// Index of the band `c` falls in, for `bands` equal-width bands over [0, 1].
pub fn band_of(c: f64, bands: usize) -> usize {
    ((c * bands as f64) as usize).min(bands - 1)
}

#[cfg(test)]
mod tests;
