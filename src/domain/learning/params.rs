//! The learner's tuned constants, each with the reason for its value (measurements in
//! docs/experiments.md): what a prior is worth, how evidence decays and is capped, how the plan
//! aims at its bar, and the bounds on a re-plan's work.

/// Complexity bands used for evidence and planning (band `b` covers `[b/B, (b+1)/B)`): fine
/// enough that a tier's curve can fall across the complexity range, coarse enough that each
/// band of a busy workflow gathers outcomes of its own.
pub const BANDS: usize = 20;
/// Outcomes the calibration is worth for a tier that runs one of the calibration's own models.
/// 300 measured ~0.02 more held-out saving at equal quality (at 30 each tier's scope-wide ratio
/// wanders ±4% on a stationary stream, sampling noise the plan chases), but a team whose cheap
/// tier succeeds on every task then needed far more than 300 outcomes to be routed there.
pub const PRIOR_KNOWN_MODEL: f64 = 30.0;
/// Outcomes the calibration is worth for any other model: weak, so such a tier starts cautious.
/// Its curve is only interpolated by price between the two measured ones, so what it shows of
/// the guess within a few outcomes is believed (a model as good as premium on one workflow only
/// is found within tens of outcomes).
pub const PRIOR_OTHER_MODEL: f64 = 4.0;
/// Pseudo-outcomes of its scope's curve that a family's own correction must outweigh (for tiers
/// on the calibration's models; others count [`PRIOR_OTHER_MODEL`]): training measured how far
/// labels move those curves, so a family with a handful of outcomes mostly borrows its scope's
/// curve and one with hundreds stands on its own.
pub const FAMILY_PRIOR: f64 = 20.0;
/// Pseudo-outcomes of its family's (or scope's) curve that a workflow's correction must
/// outweigh, as [`FAMILY_PRIOR`] for a family. Workflows the model never saw starting from 5
/// instead of 20 came out cheaper and worse on held-out replays (docs/experiments.md).
pub const WORKFLOW_PRIOR: f64 = 20.0;
/// Outcomes a single band of the scope needs before its own residual counts as much as the
/// pooled estimate: a band holds a twentieth of a level's outcomes, so its own deviation is
/// mostly noise until it has tens of them, while the pooled log-odds shift moves every band.
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
/// ([`ScopePlan::explore`](crate::domain::learning::ScopePlan::explore)): more draws spend more of the exploration budget on alternatives
/// that are only somewhat likely to be right. With one, an unmeasured tier as good as the
/// plan's choice but a few points below it in the prior was tried on too few tasks to be
/// believed within hundreds of outcomes; with every explored task forced onto an alternative,
/// two tiers explored the premium tier on trivially easy tasks.
pub const EXPLORE_DRAWS: usize = 4;
/// Sketches of unlabelled tasks a scope keeps to fit its clusters on (64 bytes each): enough
/// for [`CLUSTER_MAX_K`] clusters of [`CLUSTER_TASKS_PER_K`] tasks twice over, at 128 KB.
pub const CLUSTER_WINDOW: usize = 2048;
/// Unlabelled outcomes between two cluster fits: a quarter of the window is new by the next
/// fit, and each fit's work is spread over this many Feedbacks (one Lloyd step each).
pub const CLUSTER_REFIT_EVERY: usize = 512;
/// Unlabelled outcomes before a scope's first fit (at 4 clusters): [`CLUSTER_TASKS_PER_K`]
/// tasks per cluster, so the first clusters have outcomes enough to learn from.
pub const CLUSTER_FIRST_FIT: usize = 512;
/// Recent unlabelled tasks per cluster: k grows with the window (4 at the first fit, 8 once it
/// holds 1,024), so each cluster holds enough outcomes to learn from.
pub const CLUSTER_TASKS_PER_K: usize = 128;
/// Most clusters per scope: measured on a three-workflow set, k-means on these features
/// recovered the workflows with NMI 0.96 at k = 4 and 0.86 at k = 16 (issue 34); more
/// clusters split a scope's outcomes thinner for every tier's estimate.
pub const CLUSTER_MAX_K: usize = 8;
/// The family of discovered clusters (`~` is refused in callers' labels).
pub const CLUSTER_FAMILY: &str = "~cluster";
/// Outcomes of one level (scope, family or workflow) after which its old evidence weighs half:
/// long enough that a tier's estimate stands on hundreds of outcomes, short enough that a
/// model that changes is followed within a thousand.
pub const HALF_LIFE_FEEDBACKS: f64 = 500.0;
/// Shadow-run asks after which whether callers answered one weighs half
/// ([`ShadowAnswers`](super::evidence::ShadowAnswers)): a caller that starts or stops running
/// shadow pairs is followed within a few dozen asks, while one failed shadow run among many
/// answered turns nothing off.
pub const SHADOW_ANSWERS_HALF_LIFE: f64 = 32.0;
/// Tasks per scope that the planner prices its choices on: the price of quality is solved on
/// every Feedback over every sampled task, so the sample bounds that work.
pub(super) const TRAFFIC_SAMPLE: usize = 512;
/// Once the sample is full, it takes every `SAMPLE_STRIDE`-th task of the scope, so it spans
/// the last `TRAFFIC_SAMPLE × SAMPLE_STRIDE` outcomes at the cost of `TRAFFIC_SAMPLE`: priced
/// on a short stretch, the plan chased whichever workflow had just been busy (on held-out
/// replays in workflow order, spanning 2,048 instead of 512 kept quality above the bar on
/// every seed).
pub(super) const SAMPLE_STRIDE: u64 = 4;
/// Largest amount by which a scope that has fallen short aims above its bar: a long hard
/// stretch is made up for over time instead of by sending everything to the top tier at once.
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
/// Output tokens assumed for a scope before feedback reports real ones: never a free task
/// (priced at 0 tokens every tier costs nothing), and replaced by reports within a few.
pub const DEFAULT_TYPICAL_OUTPUT_TOKENS: u64 = 256;
/// Input tokens of the typical task before feedback reports real ones (a typical prompt; as
/// [`DEFAULT_TYPICAL_OUTPUT_TOKENS`], only until reports come).
pub(super) const DEFAULT_TYPICAL_INPUT_TOKENS: u64 = 500;
/// Input tokens one task may count for in the traffic sample (a 256 KB task is ~64k tokens).
pub(super) const MAX_SAMPLE_INPUT_TOKENS: u64 = 1 << 20;
/// Distinct workflows (and, separately, families) kept per scope: bounds a scope's memory
/// (about 3.7 MB at 4 tiers) and its re-plan work whatever labels callers send.
pub const MAX_WORKFLOWS: usize = 1024;
/// Teams whose own learned state is kept per scope: each holds a copy of the evidence it
/// reports on, so the count bounds a scope's memory.
pub const MAX_TEAMS: usize = 32;
/// Outcomes' worth of the shared state (what a team without evidence of its own routes on) that
/// one team can hold beyond all other teams' together: one team's outcomes cannot move the
/// routing of another team beyond this, while teams of similar volume pool in full.
pub const TEAM_SHARE: f64 = 10.0;
/// What a tier's prior is worth at least, in outcomes, in a scope's shared plan (the one a team
/// without evidence of its own routes on, and every team's plan starts from). One team holds
/// at most [`TEAM_SHARE`] outcomes of the shared levels, so it moves a shared curve at most a
/// third of the way to its own outcomes, whatever the tier. A tier on a model the calibration
/// never measured is worth only [`PRIOR_OTHER_MODEL`] against a team's own outcomes, where it
/// must be believed within tens of them; in the shared plan one team's 10 perfect scores on
/// such a tier's easy tasks moved another team's hardest tasks onto it. Measured tiers'
/// priors are at least this already, so only unmeasured tiers' shared curves move slower.
pub const SHARED_PRIOR_MIN: f64 = 2.0 * TEAM_SHARE;
/// Family and workflow levels of one plan whose curves a re-plan after Feedback recomputes:
/// every level with new outcomes, then the ones recomputed longest ago up to this many. A plan
/// with at most this many levels is recomputed whole on every Feedback.
pub const REPLAN_LEVELS: usize = 64;
/// Team plans a re-plan after Feedback recomputes beyond those of teams with new outcomes (the
/// ones re-planned longest ago first). A scope with at most this many other teams re-plans
/// every team on every Feedback.
pub const REPLAN_TEAMS: usize = 3;
/// Output-length reports kept per level; the estimate is their median, which a few outliers
/// cannot move.
pub(super) const OUTPUT_WINDOW: usize = 15;
/// Reports a level needs before its own median replaces its parent's estimate: one odd report
/// should not reprice a workflow.
pub(super) const OUTPUT_MIN_REPORTS: usize = 3;
/// A report is clipped to within this factor of the current estimate, so one absurd report
/// moves the median a bounded step while a real change shows within a few.
pub const OUTPUT_STEP: u64 = 16;
/// The same for the shared levels, which price the tasks of every team without output lengths
/// of its own: a team's first reports (it holds a bounded share, see [`TEAM_SHARE`]) can move
/// the shared median about this factor squared at most (×4 from ten reports), where the
/// team's own levels follow it at [`OUTPUT_STEP`].
pub const SHARED_OUTPUT_STEP: u64 = 2;
/// λ large enough that quality dominates any cost (USD per unit of quality): a million dollars
/// per point of quality outbids any task's price, so at this λ every task buys its best tier.
pub(super) const LAMBDA_MAX: f64 = 1e6;
/// The low end of the bisection for λ: a tenth of a nano-dollar per unit of quality, below
/// which no difference in quality buys a dearer tier (prices differ by micro-dollars at least).
pub(super) const LAMBDA_MIN: f64 = 1e-10;
