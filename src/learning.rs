//! Per-scope routing plans from calibration plus outcome evidence: the learning core.
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
//! the calibration prior scaled by a ratio learned from the scope's outcomes, plus a per-band
//! residual; a family's curve is the scope's, corrected the same way by the family's outcomes;
//! a workflow's is its family's, corrected by its own. Each correction is worth
//! [`FAMILY_PRIOR`] / [`WORKFLOW_PRIOR`] pseudo-outcomes of its parent, so a workflow with three
//! outcomes mostly borrows its parent's curve and one with thousands stands on its own. A label
//! the model was trained on first shifts its parent's curve by the log-odds shift training
//! measured there ([`Calibration::workflows`]), less the share the parent already learned from
//! the label's own outcomes.
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
//!   each extra dollar where it buys the most quality.
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
//! clipped to within [`OUTPUT_STEP`]× of the current estimate, and never above the policy's
//! `max_output_tokens`.
//!
//! Memory: a workflow costs about `k × 0.9 KB` for `k` allowed tiers (evidence cells plus the
//! plan's two curves), so 1,024 workflows of a 4-tier scope take about 3.7 MB, once in the
//! shared evidence and once more in each team's own that reports outcomes on them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::classifier::Calibration;
use crate::policy::{BarMode, Policy, ScopePolicy, Tier};

/// Complexity bands used for evidence and planning (band `b` covers `[b/B, (b+1)/B)`).
pub const BANDS: usize = 20;
/// Outcomes the calibration is worth for a tier that runs one of the calibration's own models.
pub const PRIOR_KNOWN_MODEL: f64 = 30.0;
/// Outcomes the calibration is worth for any other model: weak, so such a tier starts cautious.
pub const PRIOR_OTHER_MODEL: f64 = 4.0;
/// Pseudo-outcomes of its scope's curve that a family's own correction must outweigh.
pub const FAMILY_PRIOR: f64 = 20.0;
/// Pseudo-outcomes of its family's (or scope's) curve that a workflow's correction must
/// outweigh.
pub const WORKFLOW_PRIOR: f64 = 20.0;
/// Outcomes a single band needs before its own residual counts as much as the pooled estimate.
pub const BAND_PRIOR: f64 = 40.0;
/// Standard errors (of a tier's pooled estimate, σ ≤ 0.5) the plan subtracts from its quality.
/// Measured on held-out replays (0 to 0.5 tried): choosing the cheap tier where its estimate is
/// high picks up its estimation error (a winner's curse), which the margin pays for; 0.3 kept
/// every seed within 0.005 of the bar but sent mid-complexity trivial prompts to the top tier
/// under the example policy, 0.2 keeps them off it and misses by up to 0.01 on some seeds.
pub const CONFIDENCE_Z: f64 = 0.2;
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
/// (0.754 against a bar of 0.77 on the domain-shift replay), gain 3 a quarter (0.762).
pub const CATCH_UP_GAIN: f64 = 3.0;
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
/// Output-length reports kept per level; the estimate is their median.
const OUTPUT_WINDOW: usize = 15;
/// Reports a level needs before its own median replaces its parent's estimate.
const OUTPUT_MIN_REPORTS: usize = 3;
/// A report is clipped to within this factor of the current estimate.
pub const OUTPUT_STEP: u64 = 16;
/// The workflow an empty label means.
pub const DEFAULT_WORKFLOW: &str = "default";
/// λ large enough that quality dominates any cost (USD per unit of quality).
const LAMBDA_MAX: f64 = 1e6;
const LAMBDA_MIN: f64 = 1e-10;

/// The workflow a label stands for: an empty label is [`DEFAULT_WORKFLOW`].
pub fn workflow_key(workflow: &str) -> &str {
    if workflow.is_empty() {
        DEFAULT_WORKFLOW
    } else {
        workflow
    }
}

/// The family of a workflow: its part before the first `/` or `.`; `None` without one.
pub fn family_of(workflow: &str) -> Option<&str> {
    let family = workflow.split(['/', '.']).next()?;
    (!family.is_empty() && family.len() < workflow.len()).then_some(family)
}

/// Index of the band `c` falls in, for `bands` equal-width bands over [0, 1].
pub fn band_of(c: f64, bands: usize) -> usize {
    ((c * bands as f64) as usize).min(bands - 1)
}

/// Decayed outcome statistics: effective count and score sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cell {
    /// Effective number of outcomes.
    pub n: f64,
    /// Effective sum of scores.
    pub sum: f64,
}

impl Cell {
    fn scale(&mut self, f: f64) {
        self.n *= f;
        self.sum *= f;
    }
    fn add(&mut self, score: f64, weight: f64) {
        self.n += weight;
        self.sum += weight * score;
    }
    /// Mean score, 0 without evidence.
    pub fn mean(&self) -> f64 {
        if self.n > 0.0 { self.sum / self.n } else { 0.0 }
    }
}

/// Size of one observed task: what the planner prices tiers on.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskShape {
    /// Workflow label as the caller sent it.
    pub workflow: Arc<str>,
    /// Complexity band.
    pub band: u8,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

/// Robust output length: the median of the last reports, each clipped near the estimate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputLengths {
    reports: VecDeque<u64>,
}

impl OutputLengths {
    fn observe(&mut self, tokens: u64, current: u64) {
        let current = current.max(1);
        let x = tokens.clamp(
            (current / OUTPUT_STEP).max(1),
            current.saturating_mul(OUTPUT_STEP),
        );
        if self.reports.len() == OUTPUT_WINDOW {
            self.reports.pop_front();
        }
        self.reports.push_back(x);
    }

    /// The median report, once there are enough of them.
    pub fn estimate(&self) -> Option<u64> {
        if self.reports.len() < OUTPUT_MIN_REPORTS {
            return None;
        }
        let mut v: Vec<u64> = self.reports.iter().copied().collect();
        v.sort_unstable();
        Some(v[v.len() / 2])
    }
}

/// Outcome evidence at one level of a scope (the scope itself, a family or a workflow), keyed
/// by tier name so it survives policy edits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Level {
    /// Tier name → per-band cells.
    pub cells: HashMap<String, [Cell; BANDS]>,
    /// Decayed outcomes of the level (realized quality).
    pub total: Cell,
    /// Outcomes ever applied.
    pub feedbacks: u64,
    /// The scope's outcome count when this level last received one (least recently seen first
    /// out).
    pub last_seen: u64,
    /// Reported output lengths.
    pub output: OutputLengths,
    /// For a team's own scope level: the shared scope's outcome count when the team last
    /// reported one (least recently seen team first out).
    pub last_seen_shared: u64,
}

impl Level {
    fn observe(&mut self, tier: &str, band: usize, score: f64, weight: f64, seen: u64) {
        let decay = decay_per_outcome();
        for cells in self.cells.values_mut() {
            cells.iter_mut().for_each(|c| c.scale(decay));
        }
        self.total.scale(decay);
        self.cells
            .entry(tier.to_string())
            .or_insert([Cell::default(); BANDS])[band]
            .add(score, weight);
        self.total.add(score, weight);
        self.feedbacks += 1;
        self.last_seen = seen;
    }
}

/// What one outcome's weight falls to per later outcome of the same level.
fn decay_per_outcome() -> f64 {
    0.5f64.powf(1.0 / HALF_LIFE_FEEDBACKS)
}

/// The level of `key` in `map`, created if new; a full map first drops its least recently
/// seen entry.
fn level_mut<'a>(map: &'a mut HashMap<String, Level>, key: &str) -> &'a mut Level {
    if !map.contains_key(key) && map.len() >= MAX_WORKFLOWS {
        let oldest = map
            .iter()
            .min_by(|a, b| a.1.last_seen.cmp(&b.1.last_seen).then(a.0.cmp(b.0)))
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            map.remove(&k);
        }
    }
    map.entry(key.to_string()).or_default()
}

/// One team's part in a scope's shared state, decayed on the scope's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct TeamShare {
    /// The team's decayed outcomes.
    outcomes: f64,
    /// The decayed weight those outcomes hold in the shared levels.
    held: f64,
    /// The scope's outcome count when this was taken.
    at: u64,
}

/// Outcome evidence of one scope.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeEvidence {
    /// The scope as a whole.
    pub scope: Level,
    /// Family → evidence.
    pub families: HashMap<String, Level>,
    /// Workflow → evidence (empty label as [`DEFAULT_WORKFLOW`]).
    pub workflows: HashMap<String, Level>,
    /// A sample of the scope's recent tasks (workflow, band and real token counts): every task
    /// until it is full, then every `SAMPLE_STRIDE`-th.
    pub recent: VecDeque<TaskShape>,
    /// Team → the team's own evidence in this scope (itself without teams), at most
    /// [`MAX_TEAMS`]; the least recently seen team is dropped first.
    pub teams: HashMap<String, ScopeEvidence>,
    /// Team → its share on the scope's clock: what bounds its weight in the shared levels.
    team_outcomes: HashMap<String, TeamShare>,
    /// Decayed outcome count of all teams together (unweighted).
    all_outcomes: f64,
}

impl ScopeEvidence {
    /// Applies one outcome of `tier` on a task of `shape`: quality at every level, output length
    /// robustly, and the task into the traffic sample (the shared levels only, at full weight).
    pub fn observe(&mut self, tier: &str, shape: TaskShape, score: f64) {
        self.observe_weighted(tier, shape, score, 1.0);
    }

    /// Applies one outcome reported by `team`: in full to the team's own evidence, and to the
    /// shared levels that every other team of the scope starts from with the team's bounded
    /// weight ([`ScopeEvidence::share_weight`]).
    pub fn observe_from(&mut self, team: &str, tier: &str, shape: TaskShape, score: f64) {
        let weight = self.share_weight(team);
        if !self.teams.contains_key(team) && self.teams.len() >= MAX_TEAMS {
            let oldest = self
                .teams
                .iter()
                .min_by(|a, b| {
                    (a.1.scope.last_seen_shared, a.0).cmp(&(b.1.scope.last_seen_shared, b.0))
                })
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.teams.remove(&k);
                self.team_outcomes.remove(&k);
            }
        }
        let now = self.scope.feedbacks + 1;
        let own = self.teams.entry(team.to_string()).or_default();
        own.observe_weighted(tier, shape.clone(), score, 1.0);
        own.scope.last_seen_shared = now;
        self.observe_weighted(tier, shape, score, weight);
    }

    /// The weight of `team`'s next outcome in the shared levels, with the team's share updated
    /// for it. The weight the team holds in the shared state (decayed like the evidence) never
    /// exceeds [`TEAM_SHARE`] plus the outcomes of all other teams together: one team alone
    /// holds at most [`TEAM_SHARE`] outcomes' worth however many it sends, while teams of
    /// similar volume pool their evidence in full.
    fn share_weight(&mut self, team: &str) -> f64 {
        let decay = decay_per_outcome();
        let now = self.scope.feedbacks + 1;
        let share = self.team_outcomes.get(team).copied().unwrap_or_default();
        let f = decay.powf(now.saturating_sub(share.at.max(1)) as f64);
        let (own, held) = (share.outcomes * f, share.held * f);
        self.all_outcomes *= decay;
        let others = (self.all_outcomes - own).max(0.0);
        let weight = (TEAM_SHARE + others - held).clamp(0.0, 1.0);
        self.all_outcomes += 1.0;
        let updated = TeamShare {
            outcomes: own + 1.0,
            held: held + weight,
            at: now,
        };
        self.team_outcomes.insert(team.to_string(), updated);
        weight
    }

    fn observe_weighted(&mut self, tier: &str, mut shape: TaskShape, score: f64, weight: f64) {
        let band = usize::from(shape.band).min(BANDS - 1);
        let seen = self.scope.feedbacks + 1;
        let workflow = workflow_key(&shape.workflow).to_string();
        let family = family_of(&workflow).map(str::to_string);
        let tokens = shape.output_tokens;
        // Output length first, against the estimate before this report.
        let scope_est = self
            .scope
            .output
            .estimate()
            .unwrap_or(DEFAULT_TYPICAL_OUTPUT_TOKENS);
        let family_est = family
            .as_ref()
            .and_then(|f| self.families.get(f))
            .and_then(|l| l.output.estimate())
            .unwrap_or(scope_est);
        let workflow_est = self
            .workflows
            .get(&workflow)
            .and_then(|l| l.output.estimate())
            .unwrap_or(family_est);
        self.scope.observe(tier, band, score, weight, seen);
        self.scope.output.observe(tokens, scope_est);
        if let Some(f) = &family {
            let level = level_mut(&mut self.families, f);
            level.observe(tier, band, score, weight, seen);
            level.output.observe(tokens, family_est);
        }
        let level = level_mut(&mut self.workflows, &workflow);
        level.observe(tier, band, score, weight, seen);
        level.output.observe(tokens, workflow_est);
        if self.recent.len() < TRAFFIC_SAMPLE || seen.is_multiple_of(SAMPLE_STRIDE) {
            if self.recent.len() == TRAFFIC_SAMPLE {
                self.recent.pop_front();
            }
            shape.input_tokens = shape.input_tokens.min(MAX_SAMPLE_INPUT_TOKENS);
            shape.output_tokens = shape
                .output_tokens
                .min(workflow_est.saturating_mul(OUTPUT_STEP));
            self.recent.push_back(shape);
        }
    }

    /// Outcomes ever applied to the scope.
    pub fn feedbacks(&self) -> u64 {
        self.scope.feedbacks
    }

    /// Median token counts of the recent tasks, once there are enough of them.
    fn typical_tokens(&self) -> Option<(u64, u64)> {
        let n = self.recent.len();
        (n >= MIN_TRAFFIC_SAMPLE / 4).then(|| {
            let median = |f: fn(&TaskShape) -> u64| {
                let mut v: Vec<u64> = self.recent.iter().map(f).collect();
                v.sort_unstable();
                v[n / 2]
            };
            (median(|t| t.input_tokens), median(|t| t.output_tokens))
        })
    }
}

/// One tier's place in a plan (of a scope, a family or a workflow).
#[derive(Debug, Clone, PartialEq)]
pub struct TierPlan {
    /// Index into [`Policy::tiers`].
    pub tier: usize,
    /// Complexity up to which the tier (or a cheaper one) is chosen for a typical task; 1 for
    /// the top tier.
    pub threshold: f64,
    /// Quality per band the plan counts on: the estimate less a confidence margin that shrinks
    /// with evidence.
    pub quality: [f64; BANDS],
    /// Estimated (expected) quality per band.
    pub predicted: [f64; BANDS],
    /// Effective outcomes observed for this tier at this level.
    pub evidence: f64,
    /// Observed average score of the tier at this level (0 without evidence).
    pub observed_quality: f64,
    /// Threshold change at the last re-plan that moved it.
    pub last_move: f64,
}

/// The learned state of one workflow (or family) inside a scope's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowPlan {
    /// Allowed tiers, cheapest first, with this workflow's curves.
    pub tiers: Vec<TierPlan>,
    /// Effective outcomes of the workflow.
    pub evidence: f64,
    /// Realized (decayed) average score of the workflow.
    pub realized_quality: f64,
    /// Output tokens assumed for its tasks without a hint.
    pub output_tokens: u64,
}

/// A scope's routing plan: what [`crate::routing`] reads on every Route call.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopePlan {
    /// The scope's policy.
    pub policy: Arc<ScopePolicy>,
    /// Allowed tiers, cheapest first, with the scope-wide curves (for workflows it has not seen).
    pub tiers: Vec<TierPlan>,
    /// Price of quality in USD per unit of expected score (`average` mode); `None` when
    /// thresholds are pinned or the bar is per task.
    pub lambda: Option<f64>,
    /// The absolute bar the plan aims at: the policy's, or the relative bar made absolute on
    /// the scope's traffic.
    pub target: f64,
    /// Expected average quality of the plan on the scope's traffic.
    pub expected_quality: f64,
    /// Realized (decayed) average outcome score of the scope, 0 without evidence.
    pub realized_quality: f64,
    /// Effective outcomes observed in the scope.
    pub evidence: f64,
    /// Output tokens assumed for a task of an unseen workflow without a hint.
    pub typical_output_tokens: u64,
    /// Family → its learned state.
    pub families: HashMap<String, Arc<WorkflowPlan>>,
    /// Workflow → its learned state.
    pub workflows: HashMap<String, Arc<WorkflowPlan>>,
    /// Team → the team's own plan, learned from its own outcomes on top of this (shared) one;
    /// a team without one routes on this plan.
    pub teams: HashMap<String, Arc<ScopePlan>>,
}

impl ScopePlan {
    /// The plan a task of `team` routes on: the team's own, or the shared one.
    pub fn for_team(&self, team: &str) -> &ScopePlan {
        self.teams.get(team).map_or(self, Arc::as_ref)
    }

    /// The most specific learned state for `workflow`: its own, its family's, or none.
    pub fn workflow_plan(&self, workflow: &str) -> Option<&WorkflowPlan> {
        let w = workflow_key(workflow);
        self.workflows
            .get(w)
            .or_else(|| family_of(w).and_then(|f| self.families.get(f)))
            .map(Arc::as_ref)
    }

    /// The tier curves that apply to a task of `workflow`.
    pub fn tiers_for(&self, workflow: &str) -> &[TierPlan] {
        self.workflow_plan(workflow)
            .map_or(&self.tiers[..], |p| &p.tiers[..])
    }

    /// Output tokens to assume for a task of `workflow` without a hint.
    pub fn expected_output_tokens(&self, workflow: &str) -> u64 {
        self.workflow_plan(workflow)
            .map_or(self.typical_output_tokens, |p| p.output_tokens)
    }

    /// Slot (index into the allowed tiers) for a task of `workflow` and `complexity` whose cost
    /// on each allowed tier is `costs`.
    pub fn slot_for(&self, workflow: &str, complexity: f64, band: usize, costs: &[f64]) -> usize {
        self.slot_in(self.tiers_for(workflow), complexity, band, costs)
    }

    /// Slot under given curves: pinned thresholds, per-task bar, or cheapest at price λ.
    pub fn slot_in(
        &self,
        tiers: &[TierPlan],
        complexity: f64,
        band: usize,
        costs: &[f64],
    ) -> usize {
        let last = tiers.len() - 1;
        if self.policy.pinned_thresholds.is_some() {
            return tiers[..last]
                .iter()
                .position(|t| complexity < t.threshold)
                .unwrap_or(last);
        }
        match (self.policy.bar_mode, self.lambda) {
            (BarMode::Average, Some(lambda)) => choose(lambda, costs, |s| tiers[s].quality[band]),
            _ => per_task(
                tiers.len(),
                |s| tiers[s].quality[band],
                self.policy.quality_bar_relative,
                self.target,
            ),
        }
    }
}

/// The slot minimising `cost − λ·quality`; the cheaper slot wins ties.
fn choose(lambda: f64, costs: &[f64], quality: impl Fn(usize) -> f64) -> usize {
    let mut best = 0;
    let mut best_v = costs.first().map_or(0.0, |c| c - lambda * quality(0));
    for (s, c) in costs.iter().enumerate().skip(1) {
        let v = c - lambda * quality(s);
        // Strictly better by more than rounding noise, so exact ties stay on the cheaper tier.
        if v < best_v - 1e-12 * best_v.abs() {
            best_v = v;
            best = s;
        }
    }
    best
}

/// The cheapest of `k` slots whose quality reaches the bar (`relative` × the top slot's, or
/// `absolute`); the top slot when none does: a task too hard for every tier gets the most
/// capable one, not a guess at which tier fails least.
fn per_task(
    k: usize,
    quality: impl Fn(usize) -> f64,
    relative: Option<f64>,
    absolute: f64,
) -> usize {
    let bar = match relative {
        Some(r) => r * quality(k - 1),
        None => absolute,
    };
    (0..k).find(|&s| quality(s) >= bar - 1e-12).unwrap_or(k - 1)
}

/// Prior quality curve of a tier at rank `r`: the calibration's cheap curve at 0 (a tier running
/// the cheap model), the premium one at 1 (the premium model), interpolated between them by log
/// price position among the allowed tiers for any other model.
fn prior_curve(cal: &Calibration, r: f64) -> [f64; BANDS] {
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

/// `q` with its log-odds moved by `delta` (kept off 0 and 1 so a shift can always act).
fn shift_log_odds(q: f64, delta: f64) -> f64 {
    let q = q.clamp(1e-4, 1.0 - 1e-4);
    let z = (q / (1.0 - q)).ln() + delta;
    1.0 / (1.0 + (-z).exp())
}

/// Shrunk estimate: prior × a tier-wide ratio (observed over expected successes, shrunk towards
/// 1 by `prior_strength` outcomes) plus a shrunk per-band residual. A ratio rather than an
/// offset because models change multiplicatively: one that starts failing 70% of its answers
/// loses 70% everywhere, not the same points on easy and hard tasks. Returns the per-band means
/// and the level's own effective evidence plus `prior_strength`.
fn estimate(
    prior: &[f64; BANDS],
    cells: &[Cell; BANDS],
    prior_strength: f64,
) -> ([f64; BANDS], f64) {
    let n: f64 = cells.iter().map(|c| c.n).sum();
    if n <= 0.0 {
        return (*prior, prior_strength);
    }
    let observed: f64 = cells.iter().map(|c| c.sum).sum();
    let expected: f64 = cells.iter().zip(prior).map(|(c, p)| c.n * p).sum();
    let prior_mean = (prior.iter().sum::<f64>() / BANDS as f64).max(1e-6);
    let ratio = (observed + prior_strength * prior_mean) / (expected + prior_strength * prior_mean);
    let mut mean = [0.0; BANDS];
    for b in 0..BANDS {
        let base = (prior[b] * ratio).clamp(0.0, 1.0);
        let residual = (cells[b].sum - cells[b].n * base) / (cells[b].n + BAND_PRIOR);
        mean[b] = (base + residual).clamp(0.0, 1.0);
    }
    (mean, n + prior_strength)
}

/// Curves of every allowed tier at one level.
struct Curves {
    /// Planning bound per slot.
    quality: Vec<[f64; BANDS]>,
    /// Estimate per slot.
    predicted: Vec<[f64; BANDS]>,
    /// Effective evidence per slot, priors included (for the margin of child levels).
    strength: Vec<f64>,
}

/// Curves of a level from its parent's estimates and its own cells. The parent's estimate
/// already holds this level's outcomes: to not count them twice, the pseudo-outcomes of the
/// parent grow as the level's share `f` of the parent's evidence does (`K / (1 − f)`, at most
/// 20 K), so the only workflow of a scope moves with the scope and no faster, while one of many
/// stands on its own data. (Scaling the level's own evidence by `1 − f` instead, leave-one-out
/// style, made a workflow with half of its scope's traffic learn at half speed.)
fn curves(
    tiers: &[&Tier],
    parents: &[[f64; BANDS]],
    parent_strength: &[f64],
    level: Option<&Level>,
    parent_level: Option<&Level>,
    prior_strength: &[f64],
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
    for (s, t) in tiers.iter().enumerate() {
        let cells = level.and_then(|l| l.cells.get(&t.name)).unwrap_or(&empty);
        let strength = match parent_level {
            Some(_) => {
                let (own, parent) = (total(level, &t.name), total(parent_level, &t.name));
                let share = if parent > 0.0 { own / parent } else { 0.0 };
                prior_strength[s] / (1.0 - share).max(0.05)
            }
            None => prior_strength[s],
        };
        let (estimated, n) = estimate(&parents[s], cells, strength);
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

/// One task of the traffic the plan is priced on.
struct SampleTask {
    weight: f64,
    band: usize,
    /// Index of the curves that apply.
    curves: usize,
    costs: Vec<f64>,
}

/// Builds the plan of one scope from the calibration and its evidence: the shared plan, and one
/// plan per team with evidence of its own, which starts from the shared plan's curves where the
/// shared one starts from the calibration. A team's outcomes move its own plan in full and the
/// shared one by a bounded share ([`ScopeEvidence::observe_from`]), so one team cannot move the
/// routing of another beyond that share; each team's plan meets the bar on its own traffic.
pub fn plan_scope(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
) -> ScopePlan {
    let shared_tokens = evidence.and_then(ScopeEvidence::typical_tokens);
    let mut plan = plan_level(policy, scope, cal, evidence, previous, None, shared_tokens);
    if let Some(e) = evidence {
        let mut teams = HashMap::with_capacity(e.teams.len());
        for (team, own) in &e.teams {
            let before = previous.and_then(|p| p.teams.get(team)).map(Arc::as_ref);
            let tokens = own.typical_tokens().or(shared_tokens);
            let p = plan_level(policy, scope, cal, Some(own), before, Some(&plan), tokens);
            teams.insert(team.clone(), Arc::new(p));
        }
        plan.teams = teams;
    }
    plan
}

/// One plan from `evidence`: the scope's curves start from `base`'s (a team's plan on the
/// shared one) or, without a base, from the calibration.
fn plan_level(
    policy: &Policy,
    scope: &Arc<ScopePolicy>,
    cal: &Calibration,
    evidence: Option<&ScopeEvidence>,
    previous: Option<&ScopePlan>,
    base: Option<&ScopePlan>,
    tokens: Option<(u64, u64)>,
) -> ScopePlan {
    let tiers: Vec<&Tier> = scope.allowed.iter().map(|&i| &policy.tiers[i]).collect();
    let k = tiers.len();
    let cap = scope.max_output_tokens;
    let (typ_in, typ_out) =
        tokens.unwrap_or((DEFAULT_TYPICAL_INPUT_TOKENS, DEFAULT_TYPICAL_OUTPUT_TOKENS));
    let typ_out = typ_out.min(cap);
    let log_prices: Vec<f64> = tiers
        .iter()
        .map(|t| t.cost_usd(typ_in, typ_out).max(1e-12).ln())
        .collect();
    let (lo, hi) = (log_prices[0], log_prices[k - 1]);
    let ranks: Vec<f64> = tiers
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
        .collect();
    let priors: Vec<[f64; BANDS]> = match base {
        Some(b) if b.tiers.len() == k => b.tiers.iter().map(|t| t.predicted).collect(),
        _ => ranks.iter().map(|&rank| prior_curve(cal, rank)).collect(),
    };
    // A parent's curves as the prior of one of its labels: shifted by what training saw of
    // that label (its log-odds shift, per tier by the same rank as the prior), less the part
    // the parent has already learned from this label's own outcomes.
    let shifted = |parent: &Curves, label: &str, level: Option<&Level>| -> Vec<[f64; BANDS]> {
        let (dc, dp) = cal.own_shift(label);
        tiers
            .iter()
            .enumerate()
            .map(|(s, t)| {
                let own: f64 = level
                    .and_then(|l| l.cells.get(&t.name))
                    .map_or(0.0, |c| c.iter().map(|c| c.n).sum());
                let learned = (own / parent.strength[s].max(1e-9)).min(1.0);
                let delta = (dc + ranks[s] * (dp - dc)) * (1.0 - learned);
                let mut curve = parent.predicted[s];
                if delta != 0.0 {
                    curve
                        .iter_mut()
                        .for_each(|q| *q = shift_log_odds(*q, delta));
                }
                curve
            })
            .collect()
    };
    let strengths: Vec<f64> = tiers
        .iter()
        .map(|t| {
            if t.model == cal.cheap_model || t.model == cal.premium_model {
                PRIOR_KNOWN_MODEL
            } else {
                PRIOR_OTHER_MODEL
            }
        })
        .collect();

    // Curves: index 0 the scope, then families, then workflows.
    let zero = vec![0.0; k];
    let mut all = vec![curves(
        &tiers,
        &priors,
        &zero,
        evidence.map(|e| &e.scope),
        None,
        &strengths,
    )];
    let mut family_index: HashMap<&str, usize> = HashMap::new();
    let mut workflow_index: HashMap<&str, usize> = HashMap::new();
    if let Some(e) = evidence {
        let mut names: Vec<&String> = e.families.keys().collect();
        names.sort();
        for f in names {
            let c = curves(
                &tiers,
                &shifted(&all[0], f, e.families.get(f)),
                &all[0].strength,
                e.families.get(f),
                Some(&e.scope),
                &vec![FAMILY_PRIOR; k],
            );
            family_index.insert(f, all.len());
            all.push(c);
        }
        let mut names: Vec<&String> = e.workflows.keys().collect();
        names.sort();
        for w in names {
            let family = family_of(w).and_then(|f| Some((f, *family_index.get(f)?)));
            let parent = family.map_or(0, |(_, i)| i);
            let parent_level = match family {
                Some((f, _)) => e.families.get(f),
                None => Some(&e.scope),
            };
            let c = curves(
                &tiers,
                &shifted(&all[parent], w, e.workflows.get(w)),
                &all[parent].strength,
                e.workflows.get(w),
                parent_level,
                &vec![WORKFLOW_PRIOR; k],
            );
            workflow_index.insert(w, all.len());
            all.push(c);
        }
    }
    let curves_of = |workflow: &str| -> usize {
        let w = workflow_key(workflow);
        workflow_index
            .get(w)
            .or_else(|| family_of(w).and_then(|f| family_index.get(f)))
            .copied()
            .unwrap_or(0)
    };

    // The traffic the plan is priced on: recent tasks, topped up with the prior shape (one
    // typical task per band, scope-wide curves) until it weighs MIN_TRAFFIC_SAMPLE tasks.
    let typical_costs: Vec<f64> = tiers.iter().map(|x| x.cost_usd(typ_in, typ_out)).collect();
    let mut sample: Vec<SampleTask> = Vec::new();
    if let Some(e) = evidence {
        for t in &e.recent {
            sample.push(SampleTask {
                weight: 1.0,
                band: usize::from(t.band).min(BANDS - 1),
                curves: curves_of(&t.workflow),
                costs: tiers
                    .iter()
                    .map(|x| x.cost_usd(t.input_tokens, t.output_tokens.min(cap)))
                    .collect(),
            });
        }
    }
    let missing = MIN_TRAFFIC_SAMPLE.saturating_sub(sample.len());
    if missing > 0 {
        let weight = missing as f64 / BANDS as f64;
        for b in 0..BANDS {
            sample.push(SampleTask {
                weight,
                band: b,
                curves: 0,
                costs: typical_costs.clone(),
            });
        }
    }
    let mean_of = |f: &dyn Fn(&SampleTask) -> f64| -> f64 {
        let w: f64 = sample.iter().map(|t| t.weight).sum();
        sample.iter().map(|t| t.weight * f(t)).sum::<f64>() / w.max(1e-12)
    };
    let top_quality = mean_of(&|t| all[t.curves].quality[k - 1][t.band]);
    let bar = match scope.quality_bar_relative {
        Some(r) => r * top_quality,
        None => scope.quality_bar,
    };
    // Close the loop on what was delivered: while the scope's realized (decayed) quality runs
    // below the bar, aim above it by CATCH_UP_GAIN × the shortfall (at most CATCH_UP), so a
    // stretch of hard traffic that missed the bar is made up for instead of forgotten.
    let target = match evidence.map(|e| e.scope.total) {
        Some(t) if t.n >= MIN_TRAFFIC_SAMPLE as f64 => {
            bar + (CATCH_UP_GAIN * (bar - t.mean())).clamp(0.0, CATCH_UP)
        }
        _ => bar,
    };
    let explore = scope.exploration_rate;
    // Expected quality of a slot choice, counting that a share `explore` of tasks above the
    // cheapest tier runs one tier lower.
    let with_exploration = |c: &Curves, s: usize, b: usize| match s.checked_sub(1) {
        Some(lower) => (1.0 - explore) * c.quality[s][b] + explore * c.quality[lower][b],
        None => c.quality[s][b],
    };
    let rel = scope.quality_bar_relative;
    let per_task_slot = |c: &Curves, b: usize| per_task(k, |s| c.quality[s][b], rel, target);

    let (lambda, expected_quality) = match (&scope.pinned_thresholds, scope.bar_mode) {
        (Some(pinned), _) => {
            let q = mean_of(&|t| {
                let centre = (t.band as f64 + 0.5) / BANDS as f64;
                let s = pinned[..k - 1]
                    .iter()
                    .position(|&x| centre < x)
                    .unwrap_or(k - 1);
                all[t.curves].quality[s][t.band]
            });
            (None, q)
        }
        (None, BarMode::PerTask) => {
            let q = mean_of(&|t| {
                let c = &all[t.curves];
                with_exploration(c, per_task_slot(c, t.band), t.band)
            });
            (None, q)
        }
        (None, BarMode::Average) => {
            let quality_at = |l: f64| {
                mean_of(&|t| {
                    let c = &all[t.curves];
                    let s = choose(l, &t.costs, |x| c.quality[x][t.band]);
                    with_exploration(c, s, t.band)
                })
            };
            let lambda = price_of_quality(&quality_at, target);
            (Some(lambda), quality_at(lambda))
        }
    };

    // Thresholds of a set of curves: where a typical task's choice first climbs above a slot.
    let thresholds = |c: &Curves| -> Vec<f64> {
        if let Some(pinned) = &scope.pinned_thresholds {
            return pinned.clone();
        }
        let slot = |b: usize| match lambda {
            Some(l) => choose(l, &typical_costs, |x| c.quality[x][b]),
            None => per_task_slot(c, b),
        };
        let slots: Vec<usize> = (0..BANDS).map(slot).collect();
        (0..k)
            .map(|s| {
                if s == k - 1 {
                    return 1.0;
                }
                slots
                    .iter()
                    .position(|&x| x > s)
                    .map_or(1.0, |b| b as f64 / BANDS as f64)
            })
            .collect()
    };
    let tier_plans = |c: &Curves, level: Option<&Level>, before: Option<&[TierPlan]>| {
        let th = thresholds(c);
        (0..k)
            .map(|s| {
                let (n, sum) = level
                    .and_then(|l| l.cells.get(&tiers[s].name))
                    .map(|cells| {
                        (
                            cells.iter().map(|c| c.n).sum::<f64>(),
                            cells.iter().map(|c| c.sum).sum::<f64>(),
                        )
                    })
                    .unwrap_or((0.0, 0.0));
                let old = before
                    .and_then(|p| p.iter().find(|t| t.tier == scope.allowed[s]))
                    .map(|p| (p.threshold, p.last_move));
                let last_move = match old {
                    Some((o, _)) if (o - th[s]).abs() > 1e-12 => th[s] - o,
                    Some((_, m)) => m,
                    None => 0.0,
                };
                TierPlan {
                    tier: scope.allowed[s],
                    threshold: th[s],
                    quality: c.quality[s],
                    predicted: c.predicted[s],
                    evidence: n,
                    observed_quality: if n > 0.0 { sum / n } else { 0.0 },
                    last_move,
                }
            })
            .collect::<Vec<_>>()
    };
    let scope_output = evidence
        .and_then(|e| e.scope.output.estimate())
        .unwrap_or(typ_out)
        .min(cap);
    let level_plans = |levels: Option<&HashMap<String, Level>>,
                       index: &HashMap<&str, usize>,
                       before: Option<&HashMap<String, Arc<WorkflowPlan>>>,
                       parent_output: &dyn Fn(&str) -> u64|
     -> HashMap<String, Arc<WorkflowPlan>> {
        let Some(levels) = levels else {
            return HashMap::new();
        };
        levels
            .iter()
            .filter_map(|(name, level)| {
                let c = &all[*index.get(name.as_str())?];
                let prev = before.and_then(|b| b.get(name)).map(|p| &p.tiers[..]);
                Some((
                    name.clone(),
                    Arc::new(WorkflowPlan {
                        tiers: tier_plans(c, Some(level), prev),
                        evidence: level.total.n,
                        realized_quality: level.total.mean(),
                        output_tokens: level
                            .output
                            .estimate()
                            .unwrap_or_else(|| parent_output(name))
                            .min(cap),
                    }),
                ))
            })
            .collect()
    };
    let families = level_plans(
        evidence.map(|e| &e.families),
        &family_index,
        previous.map(|p| &p.families),
        &|_| scope_output,
    );
    let workflows = level_plans(
        evidence.map(|e| &e.workflows),
        &workflow_index,
        previous.map(|p| &p.workflows),
        &|w| {
            family_of(w)
                .and_then(|f| families.get(f))
                .map_or(scope_output, |p| p.output_tokens)
        },
    );
    ScopePlan {
        policy: scope.clone(),
        tiers: tier_plans(
            &all[0],
            evidence.map(|e| &e.scope),
            previous.map(|p| &p.tiers[..]),
        ),
        lambda,
        target,
        expected_quality,
        realized_quality: evidence.map(|e| e.scope.total.mean()).unwrap_or(0.0),
        evidence: evidence.map(|e| e.scope.total.n).unwrap_or(0.0),
        typical_output_tokens: scope_output,
        families,
        workflows,
        teams: HashMap::new(),
    }
}

/// The smallest λ whose expected quality meets `bar`; `LAMBDA_MAX` when none does.
fn price_of_quality(quality_at: &dyn Fn(f64) -> f64, bar: f64) -> f64 {
    let ok = |l: f64| quality_at(l) >= bar;
    if ok(0.0) {
        return 0.0;
    }
    if !ok(LAMBDA_MAX) {
        return LAMBDA_MAX;
    }
    // Bisect in log space: costs span micro-dollars to dollars.
    let (mut lo, mut hi) = (LAMBDA_MIN.ln(), LAMBDA_MAX.ln());
    for _ in 0..48 {
        let mid = (lo + hi) / 2.0;
        if ok(mid.exp()) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi.exp()
}

/// What routing reads: the live policy and one plan per scope. Immutable; swapped whole.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// The live policy.
    pub policy: Arc<Policy>,
    /// Scope key → plan. Every scope of the policy has one.
    pub plans: HashMap<String, Arc<ScopePlan>>,
    /// The default scope's plan (also in `plans`), so a lookup always has an answer.
    pub default: Arc<ScopePlan>,
}

impl RoutingTable {
    /// Plans every scope of `policy` from the calibration and the evidence so far.
    pub fn build(
        policy: Arc<Policy>,
        cal: &Calibration,
        evidence: &HashMap<String, ScopeEvidence>,
        previous: Option<&RoutingTable>,
    ) -> Self {
        let plans = policy
            .all_scopes()
            .into_iter()
            .map(|scope| {
                let prev = previous
                    .and_then(|p| p.plans.get(&scope.key))
                    .map(|p| p.as_ref());
                let plan = plan_scope(&policy, scope, cal, evidence.get(&scope.key), prev);
                (scope.key.clone(), Arc::new(plan))
            })
            .collect::<HashMap<_, _>>();
        // all_scopes() always yields the default scope, so the fallback never runs.
        let default = plans.get("default").cloned().unwrap_or_else(|| {
            Arc::new(plan_scope(
                &policy,
                &policy.default,
                cal,
                evidence.get("default"),
                None,
            ))
        });
        Self {
            policy,
            plans,
            default,
        }
    }

    /// Re-plans one scope after new evidence, sharing every other plan.
    pub fn with_scope(&self, key: &str, cal: &Calibration, evidence: &ScopeEvidence) -> Self {
        let mut plans = self.plans.clone();
        let scope = self
            .policy
            .all_scopes()
            .into_iter()
            .find(|s| s.key == key)
            .cloned();
        if let Some(scope) = scope {
            let prev = self.plans.get(key).map(|p| p.as_ref());
            let plan = plan_scope(&self.policy, &scope, cal, Some(evidence), prev);
            plans.insert(key.to_string(), Arc::new(plan));
        }
        let default = plans
            .get("default")
            .cloned()
            .unwrap_or_else(|| self.default.clone());
        Self {
            policy: self.policy.clone(),
            plans,
            default,
        }
    }

    /// The plan of a scope key; the default plan for a key the policy does not have.
    pub fn plan(&self, key: &str) -> &Arc<ScopePlan> {
        self.plans.get(key).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests;
