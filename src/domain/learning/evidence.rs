//! Outcome evidence: decayed cells per (level, tier, band), the traffic sample, robust output
//! lengths, and each team's own evidence with its bounded share of the shared levels.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::params::{
    BANDS, CLUSTER_FAMILY, CLUSTER_FIRST_FIT, CLUSTER_MAX_K, CLUSTER_REFIT_EVERY,
    CLUSTER_TASKS_PER_K, CLUSTER_WINDOW, DEFAULT_TYPICAL_OUTPUT_TOKENS, HALF_LIFE_FEEDBACKS,
    MAX_SAMPLE_INPUT_TOKENS, MAX_TEAMS, MAX_WORKFLOWS, MIN_TRAFFIC_SAMPLE, OUTPUT_MIN_REPORTS,
    OUTPUT_STEP, OUTPUT_WINDOW, SAMPLE_STRIDE, SHADOW_ANSWERS_HALF_LIFE, SHARED_OUTPUT_STEP,
    TEAM_SHARE, TRAFFIC_SAMPLE,
};
use crate::domain::clusters::{ClusterModel, FitJob, FitOptions, Sketch};
use crate::domain::labels::{family_of, workflow_key};
use crate::domain::lengths::LengthModel;

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

/// Decayed outcome statistics: effective count and score sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cell {
    /// Effective number of outcomes.
    pub n: f64,
    /// Effective sum of scores.
    pub sum: f64,
    /// Effective sum of the tasks' premium gaps (0 without a gap term).
    pub gap: f64,
}

impl Cell {
    fn scale(&mut self, f: f64) {
        self.n *= f;
        self.sum *= f;
        self.gap *= f;
    }
    fn add(&mut self, score: f64, gap: f64, weight: f64) {
        self.n += weight;
        self.sum += weight * score;
        self.gap += weight * gap;
    }
    /// Mean premium gap of the cell's tasks, 0 without evidence.
    pub fn mean_gap(&self) -> f64 {
        if self.n > 0.0 { self.gap / self.n } else { 0.0 }
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
    /// Premium gap of the task (0 without a gap term).
    pub gap: f32,
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
    /// Adds a report of `tokens`, clipped to within `step`× of the `current` estimate.
    fn observe(&mut self, tokens: u64, current: u64, step: u64) {
        let current = current.max(1);
        let x = tokens.clamp((current / step).max(1), current.saturating_mul(step));
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
}

impl Level {
    fn observe(&mut self, tier: &str, task: (usize, f64), score: f64, weight: f64, seen: u64) {
        let (band, gap) = task;
        let decay = decay_per_outcome();
        for cells in self.cells.values_mut() {
            cells.iter_mut().for_each(|c| c.scale(decay));
        }
        self.total.scale(decay);
        self.cells
            .entry(tier.to_string())
            .or_insert([Cell::default(); BANDS])[band]
            .add(score, gap, weight);
        self.total.add(score, gap, weight);
        self.feedbacks += 1;
        self.last_seen = seen;
    }

    /// Adds the shadow half of a pair: `tier`'s outcome on the task whose routed outcome this
    /// level has just observed. It goes into the tier's cell at the task's band and nowhere
    /// else: no decay step (the pair is one outcome of the level's clock, so half-lives and the
    /// planner's clocks count as before), and not into `total`, the realized quality the
    /// target's catch-up reads, which is the quality of what was served; the shadow run was
    /// never served.
    fn observe_shadow(&mut self, tier: &str, task: (usize, f64), score: f64, weight: f64) {
        let (band, gap) = task;
        self.cells
            .entry(tier.to_string())
            .or_insert([Cell::default(); BANDS])[band]
            .add(score, gap, weight);
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

/// One team's part of a scope: its own evidence, and its share of the shared levels (decayed
/// on the scope's clock).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeamEvidence {
    /// The team's own evidence in the scope (itself without teams).
    pub evidence: ScopeEvidence,
    /// The team's decayed outcomes.
    outcomes: f64,
    /// The decayed weight those outcomes hold in the shared levels.
    held: f64,
    /// The scope's outcome count at the team's last outcome (least recently seen first out).
    at: u64,
}

impl TeamEvidence {
    /// The weight of the team's next outcome (number `now` of the scope) in the shared levels,
    /// with its share updated for it. The weight the team holds in the shared state never
    /// exceeds [`TEAM_SHARE`] plus `others`, the other teams' decayed outcomes together: one
    /// team alone holds at most [`TEAM_SHARE`] outcomes' worth however many it sends, while
    /// teams of similar volume pool their evidence in full.
    fn next_weight(&mut self, now: u64, all: f64) -> f64 {
        let f = decay_per_outcome().powf(now.saturating_sub(self.at.max(1)) as f64);
        let (own, held) = (self.outcomes * f, self.held * f);
        let others = (all - own).max(0.0);
        let weight = (TEAM_SHARE + others - held).clamp(0.0, 1.0);
        (self.outcomes, self.held, self.at) = (own + 1.0, held + weight, now);
        weight
    }
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
    /// Team → its own evidence and share, at most [`MAX_TEAMS`]; the least recently seen team
    /// is dropped first.
    pub teams: HashMap<String, TeamEvidence>,
    /// Decayed outcome count of all teams together (unweighted).
    all_outcomes: f64,
    /// Clusters discovered in the scope's unlabelled traffic.
    pub clusters: Discovery,
    /// Whether the callers run the shadow tiers their decisions name.
    pub shadow_answers: ShadowAnswers,
}

/// Whether callers run the shadow tiers Route names: decayed counts of the decisions that named
/// one and whose Feedback came back with a shadow score, and of those whose Feedback did not.
/// `explore_by = "auto"` explores by pairs while most of them come back answered.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShadowAnswers {
    /// Decayed count of answered asks.
    pub answered: f64,
    /// Decayed count of asks left unanswered.
    pub unanswered: f64,
}

impl ShadowAnswers {
    /// Counts one Feedback of a decision that named a shadow tier.
    fn observe(&mut self, answered: bool) {
        let decay = 0.5f64.powf(1.0 / SHADOW_ANSWERS_HALF_LIFE);
        self.answered *= decay;
        self.unanswered *= decay;
        *if answered {
            &mut self.answered
        } else {
            &mut self.unanswered
        } += 1.0;
    }

    /// Whether pairs teach: at least half of the recent asks came back answered (and before
    /// any ask, the callers are taken to run them: the first unanswered one says otherwise).
    pub fn pairs_answered(&self) -> bool {
        self.answered >= self.unanswered
    }
}

/// What one unlabelled outcome taught the levels below the scope, kept beside its sketch so
/// that a refit can teach it again to the cluster its task falls in then.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lesson {
    /// The team that reported it.
    pub team: Arc<str>,
    /// The tier that ran the task.
    pub tier: Arc<str>,
    /// The task's complexity band.
    pub band: u8,
    /// The task's premium gap.
    pub gap: f32,
    /// Output tokens of the outcome.
    pub output_tokens: u64,
    /// The outcome's score.
    pub score: f64,
    /// Its weight in the shared levels (the team's bounded share).
    pub weight: f64,
    /// The scope's outcome count when it was applied, and the team's own.
    pub seen: (u64, u64),
    /// The shadow half of its pair, if any: the shadow tier, its score and its weight in the
    /// shared levels.
    pub shadow: Option<(Arc<str>, f64, f64)>,
}

/// Workflow discovery for one scope: the sketches of its recent unlabelled tasks with what
/// their outcomes taught, in log order, and the clusters last fitted on them. Every replica
/// folds the same log in the same order, so every replica fits the same clusters at the same
/// outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The recent sketches and their outcomes, at most [`CLUSTER_WINDOW`].
    recent: VecDeque<(Sketch, Lesson)>,
    /// Sketches added since the last fit.
    since_fit: usize,
    /// The clusters Route assigns unlabelled tasks to.
    pub model: Option<Arc<ClusterModel>>,
    /// How an unlabelled task's words move its output length.
    pub lengths: Arc<LengthModel>,
    /// Fits that succeeded.
    pub fits: u64,
    /// Fits that failed or diverged (the previous clusters stayed).
    pub failed_fits: u64,
    /// The fit under way, if any: one Lloyd step per unlabelled outcome, so no Feedback pays
    /// for a whole fit.
    pending: Option<Box<FitJob>>,
    /// Sketches kept ([`CLUSTER_WINDOW`]; tests make it small).
    window: usize,
    /// Sketches between two fits ([`CLUSTER_REFIT_EVERY`]; tests make it small).
    every: usize,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            recent: VecDeque::new(),
            since_fit: 0,
            model: None,
            lengths: Arc::default(),
            fits: 0,
            failed_fits: 0,
            pending: None,
            window: CLUSTER_WINDOW,
            every: CLUSTER_REFIT_EVERY,
        }
    }
}

impl Discovery {
    /// Adds one unlabelled task's sketch and what its outcome taught, and advances the fit under
    /// way by one Lloyd step ([`FitJob`]). A fit starts every [`CLUSTER_REFIT_EVERY`] sketches
    /// (first once the window holds enough for one) on the window as it is then, and its
    /// clusters take over at the outcome whose step ends it: the same outcome on every replica.
    /// Returns whether the clusters changed. A fit that fails keeps the previous clusters; it
    /// is logged and counted. A featureless task (empty sketch) is not kept.
    pub fn observe(&mut self, sketch: &[u16], lesson: Lesson) -> bool {
        if sketch.is_empty() {
            return false;
        }
        // As the shared output lengths: a team beyond its share does not move them.
        if lesson.weight >= 0.5 {
            Arc::make_mut(&mut self.lengths).observe(sketch, lesson.output_tokens);
        }
        if self.recent.len() >= self.window {
            self.recent.pop_front();
        }
        self.recent.push_back((Sketch(sketch.to_vec()), lesson));
        self.since_fit += 1;
        let first = self.model.is_none() && self.recent.len() >= CLUSTER_FIRST_FIT.min(self.window);
        if self.pending.is_none() && (first || self.since_fit >= self.every) {
            self.start_fit();
        }
        self.step_fit()
    }

    /// Discovery over a window of `window` sketches, refitting every `every` (tests).
    #[cfg(test)]
    pub(super) fn sized(window: usize, every: usize) -> Self {
        Self {
            window,
            every,
            ..Self::default()
        }
    }

    fn start_fit(&mut self) {
        self.since_fit = 0;
        let sketches: Vec<Sketch> = self.recent.iter().map(|(s, _)| s.clone()).collect();
        let opts = FitOptions {
            k: (sketches.len() / CLUSTER_TASKS_PER_K).clamp(2, CLUSTER_MAX_K),
            n_runs: 1,
            ..FitOptions::default()
        };
        match FitJob::start(&sketches, &opts, self.model.clone()) {
            Ok(job) => self.pending = Some(Box::new(job)),
            Err(e) => self.failed(&e, sketches.len()),
        }
    }

    /// One step of the fit under way; whether it ended with new clusters.
    fn step_fit(&mut self) -> bool {
        let Some(outcome) = self.pending.as_mut().and_then(|job| job.step()) else {
            return false;
        };
        self.pending = None;
        match outcome {
            Ok(m) => {
                self.model = Some(Arc::new(m));
                self.fits += 1;
                true
            }
            Err(e) => {
                self.failed(&e, self.recent.len());
                false
            }
        }
    }

    fn failed(&mut self, e: &crate::domain::clusters::FitError, tasks: usize) {
        self.failed_fits += 1;
        tracing::warn!(error = %e, tasks, "cluster refit failed; keeping the previous clusters");
    }

    /// Steps the fit under way to its end (tests: a fit at once, as before fits were stepped).
    #[cfg(test)]
    pub(super) fn finish_fit(&mut self) -> bool {
        let mut changed = false;
        while self.pending.is_some() {
            changed |= self.step_fit();
        }
        changed
    }
}

impl ScopeEvidence {
    /// Applies one outcome of `tier` on a task of `shape`: quality at every level, output length
    /// robustly, and the task into the traffic sample (the shared levels only, at full weight).
    pub fn observe(&mut self, tier: &str, shape: TaskShape, score: f64) {
        self.observe_weighted(tier, shape, score, 1.0, OUTPUT_STEP);
    }

    /// Applies one outcome reported by `team`: in full to the team's own evidence, and to the
    /// shared levels that every other team of the scope starts from with the team's bounded
    /// weight (`TeamEvidence::next_weight`).
    pub fn observe_from(&mut self, team: &str, tier: &str, shape: TaskShape, score: f64) -> f64 {
        if !self.teams.contains_key(team) && self.teams.len() >= MAX_TEAMS {
            let oldest = self
                .teams
                .iter()
                .min_by(|a, b| (a.1.at, a.0).cmp(&(b.1.at, b.0)))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.teams.remove(&k);
            }
        }
        let now = self.scope.feedbacks + 1;
        self.all_outcomes *= decay_per_outcome();
        let own = self.teams.entry(team.to_string()).or_default();
        let weight = own.next_weight(now, self.all_outcomes);
        own.evidence
            .observe_weighted(tier, shape.clone(), score, 1.0, OUTPUT_STEP);
        self.all_outcomes += 1.0;
        // The shared output lengths price every team without lengths of its own: one team's
        // reports move them by at most SHARED_OUTPUT_STEP per report, a few times in all.
        self.observe_weighted(tier, shape, score, weight, SHARED_OUTPUT_STEP);
        weight
    }

    /// Applies one outcome reported by `team` ([`ScopeEvidence::observe_from`]), and the shadow
    /// half of its pair if it has one (`shadow`: the shadow tier and its score;
    /// [`ScopeEvidence::observe_shadow_from`]). An unlabelled task's outcome (a non-empty
    /// `sketch`) also feeds workflow discovery; when that fits new clusters, the discovered
    /// levels are rebuilt: every remembered unlabelled outcome is taught again to the cluster
    /// its task falls in now. So a new cluster starts from the window's outcomes of its own
    /// tasks, not from nothing, and the outcomes that came before the first fit count for the
    /// clusters too.
    pub fn observe_task(
        &mut self,
        team: &str,
        tier: &str,
        shape: TaskShape,
        score: f64,
        sketch: &[u16],
        shadow: Option<(&str, f64)>,
    ) {
        let (band, gap, output_tokens) = (shape.band, shape.gap, shape.output_tokens);
        let workflow = Arc::clone(&shape.workflow);
        let weight = self.observe_from(team, tier, shape, score);
        // Before discovery sees the task, so a refit it ends teaches the pair whole.
        let shadow = shadow.map(|(shadow_tier, shadow_score)| {
            let task = (band, gap);
            let w = self.observe_shadow_from(team, shadow_tier, &workflow, task, shadow_score);
            (Arc::from(shadow_tier), shadow_score, w)
        });
        if sketch.is_empty() {
            return;
        }
        // The team's own plan prices its unlabelled tasks on its own reports, as it does
        // labelled ones on its own workflows' lengths.
        if let Some(t) = self.teams.get_mut(team) {
            Arc::make_mut(&mut t.evidence.clusters.lengths).observe(sketch, output_tokens);
        }
        let own = self.teams.get(team).map_or(0, |t| t.evidence.feedbacks());
        let lesson = Lesson {
            team: Arc::from(team),
            tier: Arc::from(tier),
            band,
            gap,
            output_tokens,
            score,
            weight,
            seen: (self.feedbacks(), own),
            shadow,
        };
        if self.clusters.observe(sketch, lesson) {
            self.relearn_clusters();
        }
    }

    /// Counts whether `team` ran the shadow tier its decision named (a Feedback with a shadow
    /// score, or without one), in the scope's count and in the team's own (the team has just
    /// reported the decision's outcome, so it has evidence).
    pub fn observe_shadow_answer(&mut self, team: &str, answered: bool) {
        self.shadow_answers.observe(answered);
        if let Some(t) = self.teams.get_mut(team) {
            t.evidence.shadow_answers.observe(answered);
        }
    }

    /// Applies the shadow half of the pair whose routed outcome `team` has just reported
    /// ([`ScopeEvidence::observe_from`]): one more outcome of `tier` on the same task (same
    /// workflow, band and gap), in full to the team's own evidence and at the team's bounded
    /// weight to the shared levels. It counts in the team's share as an outcome of its own, so
    /// pairs do not widen what one team may hold in the shared levels. It moves only the tier's
    /// cells ([`Level::observe_shadow`]): not the outcome clocks, nor the output lengths and
    /// the traffic sample, which the routed outcome already fed with this task (a second report
    /// of it would count it twice in what tasks are priced on, and a shadow run's tokens, when
    /// the caller leaves them out, are only Route's estimate). Returns that weight.
    fn observe_shadow_from(
        &mut self,
        team: &str,
        tier: &str,
        workflow: &str,
        task: (u8, f32),
        score: f64,
    ) -> f64 {
        let now = self.scope.feedbacks;
        let Some(own) = self.teams.get_mut(team) else {
            return 0.0;
        };
        let weight = own.next_weight(now, self.all_outcomes);
        own.evidence
            .observe_shadow(tier, workflow, task, score, (1.0, true));
        self.all_outcomes += 1.0;
        self.observe_shadow(tier, workflow, task, score, (weight, true));
        weight
    }

    /// The shadow half of a pair at `weight` on the levels of its task: its family's and its
    /// workflow's, and the scope's too when `scope` (a refit teaches the levels below it
    /// again). Those levels have just observed the routed half, so they exist.
    fn observe_shadow(
        &mut self,
        tier: &str,
        workflow: &str,
        (band, gap): (u8, f32),
        score: f64,
        (weight, scope): (f64, bool),
    ) {
        let task = (usize::from(band).min(BANDS - 1), f64::from(gap));
        if scope {
            self.scope.observe_shadow(tier, task, score, weight);
        }
        let workflow = workflow_key(workflow);
        if let Some(level) = family_of(workflow).and_then(|f| self.families.get_mut(f)) {
            level.observe_shadow(tier, task, score, weight);
        }
        if let Some(level) = self.workflows.get_mut(workflow) {
            level.observe_shadow(tier, task, score, weight);
        }
    }

    /// Rebuilds the discovered levels (the cluster family and every cluster, shared and per
    /// team) from the remembered unlabelled outcomes, each under the cluster the current model
    /// assigns its task to.
    fn relearn_clusters(&mut self) {
        let Some(model) = self.clusters.model.clone() else {
            return;
        };
        self.forget_clusters();
        for t in self.teams.values_mut() {
            t.evidence.forget_clusters();
        }
        let recent = std::mem::take(&mut self.clusters.recent);
        for (sketch, l) in &recent {
            let shape = TaskShape {
                workflow: Arc::from(cluster_label(model.assign(sketch)).as_str()),
                band: l.band,
                gap: l.gap,
                input_tokens: 0,
                output_tokens: l.output_tokens,
            };
            let shared = (l.weight, l.seen.0, SHARED_OUTPUT_STEP);
            self.observe_labels(&l.tier, &shape, l.score, shared);
            let task = (l.band, l.gap);
            if let Some((tier, score, weight)) = &l.shadow {
                self.observe_shadow(tier, &shape.workflow, task, *score, (*weight, false));
            }
            if let Some(t) = self.teams.get_mut(&*l.team) {
                let own = (1.0, l.seen.1, OUTPUT_STEP);
                t.evidence.observe_labels(&l.tier, &shape, l.score, own);
                if let Some((tier, score, _)) = &l.shadow {
                    t.evidence
                        .observe_shadow(tier, &shape.workflow, task, *score, (1.0, false));
                }
            }
        }
        self.clusters.recent = recent;
    }

    /// Steps a cluster fit under way to its end and relearns the discovered levels if it ended
    /// with new clusters (tests: a fit at once).
    #[cfg(test)]
    pub(super) fn finish_fits(&mut self) {
        if self.clusters.finish_fit() {
            self.relearn_clusters();
        }
    }

    fn forget_clusters(&mut self) {
        self.families.retain(|k, _| !is_discovered(k));
        self.workflows.retain(|k, _| !is_discovered(k));
    }

    /// Applies one outcome at `weight`, its output length clipped to within `step`× of each
    /// level's estimate.
    fn observe_weighted(
        &mut self,
        tier: &str,
        mut shape: TaskShape,
        score: f64,
        weight: f64,
        step: u64,
    ) {
        let band = usize::from(shape.band).min(BANDS - 1);
        let task = (band, f64::from(shape.gap));
        let seen = self.scope.feedbacks + 1;
        // A team beyond its share moves the shared quality by its weight, and the shared output
        // lengths and traffic sample (what other teams' cost estimates and prices come from)
        // not at all.
        let shapes = weight >= 0.5;
        // Output lengths against the estimates before this report (the scope's first).
        let workflow_est = self.observe_labels(tier, &shape, score, (weight, seen, step));
        let scope_est = self.scope_output();
        self.scope.observe(tier, task, score, weight, seen);
        if shapes {
            self.scope
                .output
                .observe(shape.output_tokens, scope_est, step);
        }
        if shapes && (self.recent.len() < TRAFFIC_SAMPLE || seen.is_multiple_of(SAMPLE_STRIDE)) {
            if self.recent.len() == TRAFFIC_SAMPLE {
                self.recent.pop_front();
            }
            shape.input_tokens = shape.input_tokens.min(MAX_SAMPLE_INPUT_TOKENS);
            shape.output_tokens = shape.output_tokens.min(workflow_est.saturating_mul(step));
            self.recent.push_back(shape);
        }
    }

    fn scope_output(&self) -> u64 {
        self.scope
            .output
            .estimate()
            .unwrap_or(DEFAULT_TYPICAL_OUTPUT_TOKENS)
    }

    /// Applies one outcome to the levels of its label (its family's and its workflow's) at
    /// `(weight, seen, step)`: its weight, as outcome number `seen` of the scope, its output
    /// length clipped to within `step`× of each level's estimate; returns the workflow's output
    /// length estimate before it.
    fn observe_labels(
        &mut self,
        tier: &str,
        shape: &TaskShape,
        score: f64,
        (weight, seen, step): (f64, u64, u64),
    ) -> u64 {
        let band = usize::from(shape.band).min(BANDS - 1);
        let task = (band, f64::from(shape.gap));
        let workflow = workflow_key(&shape.workflow).to_string();
        let family = family_of(&workflow).map(str::to_string);
        let tokens = shape.output_tokens;
        let shapes = weight >= 0.5;
        let scope_est = self.scope_output();
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
        if let Some(f) = &family {
            let level = level_mut(&mut self.families, f);
            level.observe(tier, task, score, weight, seen);
            if shapes {
                level.output.observe(tokens, family_est, step);
            }
        }
        let level = level_mut(&mut self.workflows, &workflow);
        level.observe(tier, task, score, weight, seen);
        if shapes {
            level.output.observe(tokens, workflow_est, step);
        }
        workflow_est
    }

    /// Outcomes ever applied to the scope.
    pub fn feedbacks(&self) -> u64 {
        self.scope.feedbacks
    }

    /// Median token counts of the recent tasks, once there are enough of them.
    pub(super) fn typical_tokens(&self) -> Option<(u64, u64)> {
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
