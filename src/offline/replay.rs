//! Replay: stream recorded tasks in file order through the same routing and learning code the
//! server runs (in process, in-memory state), use the chosen tier's recorded outcome as the
//! feedback, and report realized quality and cost against always-premium.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::domain::classifier::ComplexityModel;
use crate::domain::decision::Signer;
use crate::domain::policy::{ExploreBy, Policy, PolicyError, ScopePolicy, Tier};
use crate::domain::routing::{Decision, RouteRequest};
use crate::engine::Engine;
use crate::engine::feedback::FeedbackInput;
use crate::offline::dataset::{Outcome, Record};

/// Replay settings.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Override every scope's quality bar.
    pub bar: Option<f64>,
    /// Learn from the outcomes (off: cold-start thresholds throughout).
    pub learning: bool,
    /// Seed of the exploration draws.
    pub seed: u64,
    /// The team every task is routed for (empty: the anonymous team).
    pub team: String,
    /// Route every task without its workflow label (a caller that sends none); the report
    /// still groups by the true label.
    pub strip_labels: bool,
    /// Every scope's `shadow_rate` (`None`: the policy's): shadowed decisions post the shadow
    /// tier's recorded outcome as their shadow score.
    pub shadow_rate: Option<f64>,
    /// Every scope's `explore_by` (`None`: the policy's): with pairs, an explored decision
    /// posts the drawn tier's recorded outcome as its shadow score.
    pub explore_by: Option<ExploreBy>,
    /// The caller runs no shadow tier: every Feedback comes without a shadow score, whatever
    /// the decision named (a caller that ignores `shadow_tier`).
    pub no_shadow_runs: bool,
    /// Keep one [`TraceRow`] per routed task in [`ReplayReport::trace`].
    pub trace: bool,
}

/// One routed task of a traced replay: what the plan knew when it decided, what it chose, and
/// what every allowed tier recorded on the task (`replay --trace`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceRow {
    /// Position in the replayed stream (after any shuffle).
    pub i: usize,
    /// The record's id.
    pub id: String,
    /// The record's workflow label (also when the replay stripped it from the request).
    pub workflow: String,
    /// The discovered cluster Route placed the task in (unlabelled tasks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<u32>,
    /// Complexity band.
    pub band: usize,
    /// The tier that served the task.
    pub tier: String,
    /// The tier the plan chose (another one when an exploration substituted).
    pub planned: String,
    /// Whether the decision explored.
    pub explored: bool,
    /// The tier Route asked the caller to also run (a pair or a measurement shadow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
    /// The served tier's recorded score.
    pub score: f64,
    /// What the plan aimed at when it decided ([`ScopePlan::target`](crate::domain::learning::ScopePlan::target)).
    pub target: f64,
    /// The quality the plan expected on its traffic sample.
    pub expected: f64,
    /// Every allowed tier: its predicted quality for the task and its recorded score.
    pub tiers: Vec<TraceTier>,
}

/// One allowed tier in a [`TraceRow`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceTier {
    /// Tier name.
    pub name: String,
    /// The plan's predicted quality of the tier for the task.
    pub predicted: f64,
    /// The tier's recorded score on the task.
    pub recorded: f64,
}

/// How well the plan knew one tier on one workflow over the second half of a replay: its mean
/// predicted quality against the mean recorded score, on every task of the workflow (what the
/// plan weighed when it chose) and on the tasks the tier served (where a wrong estimate was
/// acted on). A gap on every task but not on the served ones is a tier the plan misjudges
/// where it does not send it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TierCalibration {
    /// Tasks of the workflow.
    pub tasks: usize,
    /// Mean predicted quality over them.
    pub predicted: f64,
    /// Mean recorded score over them.
    pub recorded: f64,
    /// Tasks the tier served.
    pub served: usize,
    /// Mean predicted quality over those.
    pub served_predicted: f64,
    /// Mean recorded score over those.
    pub served_recorded: f64,
}

/// What shadow pairs measured in a replay, against the truth the recorded data holds (every
/// tier's outcome of every task).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShadowReplay {
    /// Shadow pairs posted.
    pub pairs: u64,
    /// Quality kept on the pairs (the report's estimate), with its 95% interval.
    pub kept: Option<crate::report::Estimate>,
    /// The truth: Σ routed score / Σ shadow-tier score over every task routed below the shadow
    /// tier (the tasks that could be shadowed).
    pub true_kept: f64,
    /// Whether the interval covers the truth.
    pub kept_covers: Option<bool>,
    /// The saving on the pairs (booked costs), with its interval.
    pub saving: Option<crate::report::Estimate>,
    /// Always-premium quality by inverse propensity, with its interval (`None`: unsupported).
    pub premium_quality: Option<crate::report::Estimate>,
    /// Outcomes that could not have gone to premium.
    pub unsupported: u64,
    /// Whether that interval covers the replay's `premium_quality`.
    pub premium_covers: Option<bool>,
    /// What the shadow runs cost, USD.
    #[serde(serialize_with = "micro_usd")]
    pub shadow_spend_usd: f64,
}

/// What a replay measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplayReport {
    /// Tasks routed.
    pub tasks: usize,
    /// Records skipped (no outcome for a needed tier, or not routable).
    pub skipped: usize,
    /// Average quality bar over the routed tasks' scopes.
    pub bar: f64,
    /// Realized average score.
    pub quality: f64,
    /// Realized cost in USD.
    #[serde(serialize_with = "micro_usd")]
    pub cost_usd: f64,
    /// Average score of sending every task to its scope's most expensive allowed tier.
    pub premium_quality: f64,
    /// Cost of that.
    #[serde(serialize_with = "micro_usd")]
    pub premium_cost_usd: f64,
    /// 1 − cost / premium cost.
    pub saving_vs_premium: f64,
    /// quality ≥ bar.
    pub bar_met: bool,
    /// Tier name → share of tasks.
    pub tier_share: BTreeMap<String, f64>,
    /// Share of decisions that explored.
    pub explored_share: f64,
    /// What exploring cost against the plan's own choices: the explored tasks' recorded cost
    /// less what the tier the plan picked would have cost on them, USD (negative: it saved).
    #[serde(serialize_with = "micro_usd")]
    pub exploration_cost_usd: f64,
    /// The explored tasks' recorded score less the planned tier's, summed (negative: quality
    /// the exploration gave up).
    pub exploration_score_delta: f64,
    /// Whether learning was on.
    pub learning: bool,
    /// Final thresholds of the default scope, tier → threshold.
    pub final_thresholds: BTreeMap<String, f64>,
    /// Tasks routed before the last [`WINDOW`] tasks' quality first came within 0.01 of the
    /// bar (`None`: never).
    pub feedbacks_to_bar: Option<usize>,
    /// Realized quality over the second half of the stream.
    pub late_quality: f64,
    /// Saving vs premium over the second half of the stream.
    pub late_saving_vs_premium: f64,
    /// The best fixed tier per workflow, chosen in hindsight, that meets the bar overall.
    pub hindsight: Option<Hindsight>,
    /// Per workflow: tasks, realized quality, cost, premium cost.
    pub by_workflow: BTreeMap<String, WorkflowReplay>,
    /// With `--shadow-rate`: quality kept, measured, against the truth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReplay>,
    /// Per workflow and tier: how well the plan knew the tier over the second half.
    pub calibration: BTreeMap<String, BTreeMap<String, TierCalibration>>,
    /// With [`ReplayOptions::trace`]: one row per routed task.
    #[serde(skip)]
    pub trace: Vec<TraceRow>,
}

/// What replay measured on one workflow.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WorkflowReplay {
    /// Tasks routed.
    pub tasks: usize,
    /// Realized average score.
    pub quality: f64,
    /// Always-premium average score.
    pub premium_quality: f64,
    /// Realized cost in USD.
    #[serde(serialize_with = "micro_usd")]
    pub cost_usd: f64,
    /// Always-premium cost in USD.
    #[serde(serialize_with = "micro_usd")]
    pub premium_cost_usd: f64,
}

/// Dollars as the JSON prints them: to the micro-dollar (sums of recorded costs carry float
/// noise, `1.0142619999999993`, that no bill has).
fn micro_usd<S: serde::Serializer>(usd: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((usd * 1e6).round() / 1e6)
}

/// Tasks in the trailing window that judges when quality reached the bar.
pub const WINDOW: usize = 200;

/// The hindsight baseline: each workflow on one fixed tier mix, the cheapest whose overall
/// quality meets the bar (what the issue calls the hindsight per-workflow mix).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hindsight {
    /// Its realized quality.
    pub quality: f64,
    /// Its cost in USD.
    #[serde(serialize_with = "micro_usd")]
    pub cost_usd: f64,
    /// 1 − cost / premium cost.
    pub saving_vs_premium: f64,
}

/// Per workflow and tier slot: (score sum, cost sum) of every routed task.
type Ledger = BTreeMap<String, Vec<(f64, f64)>>;

/// The cheapest per-workflow tier mix that meets `bar`: one price of quality λ for all
/// workflows (each takes the tier minimising cost − λ·quality), bisected to the bar.
fn hindsight(ledger: &Ledger, n: usize, bar: f64, premium_cost: f64) -> Option<Hindsight> {
    let at = |lambda: f64| {
        let (mut q, mut c) = (0.0, 0.0);
        for tiers in ledger.values() {
            let best = tiers
                .iter()
                .fold(None::<(f64, f64)>, |best, &(tq, tc)| match best {
                    Some((bq, bc)) if bc - lambda * bq <= tc - lambda * tq => Some((bq, bc)),
                    _ => Some((tq, tc)),
                });
            if let Some((tq, tc)) = best {
                q += tq;
                c += tc;
            }
        }
        (q / n.max(1) as f64, c)
    };
    let (mut lo, mut hi) = (1e-9f64.ln(), 1e9f64.ln());
    if at(hi.exp()).0 < bar {
        return None;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if at(mid.exp()).0 >= bar {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Between the two prices only a workflow or two change tier: mixing them in the right
    // proportion (a fixed fractional mix) meets the bar exactly, the optimum of the linear
    // programme.
    let (q_hi, c_hi) = at(hi.exp());
    let (q_lo, c_lo) = at(lo.exp());
    let t = if q_hi > q_lo + 1e-12 {
        ((bar - q_lo) / (q_hi - q_lo)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let (quality, cost_usd) = (t * q_hi + (1.0 - t) * q_lo, t * c_hi + (1.0 - t) * c_lo);
    Some(Hindsight {
        quality,
        cost_usd,
        saving_vs_premium: if premium_cost > 0.0 {
            1.0 - cost_usd / premium_cost
        } else {
            0.0
        },
    })
}

/// Errors of replay setup.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The generated or given policy is invalid.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// A named model has no outcome in any record.
    #[error("model {0:?} has no outcome in the data")]
    UnknownModel(String),
    /// Fewer than two tiers.
    #[error("--tiers needs at least two model ids")]
    TooFewTiers,
    /// The signer or the runtime could not be set up.
    #[error("setup: {0}")]
    Setup(String),
}

/// Builds a one-scope policy from model ids: tiers ordered by their mean cost in the data, each
/// priced from the data's cost per token (so token-based costs stay consistent).
pub fn policy_from_models(
    records: &[Record],
    models: &[String],
    bar: f64,
) -> Result<Policy, ReplayError> {
    if models.len() < 2 {
        return Err(ReplayError::TooFewTiers);
    }
    let mut rows = Vec::new();
    for m in models {
        let outcomes: Vec<&Outcome> = records.iter().filter_map(|r| r.outcomes.get(m)).collect();
        if outcomes.is_empty() {
            return Err(ReplayError::UnknownModel(m.clone()));
        }
        let mean_cost = outcomes
            .iter()
            .map(|o| o.cost_usd.unwrap_or(0.0))
            .sum::<f64>()
            / outcomes.len() as f64;
        let (input, output) = fit_prices(&outcomes).unwrap_or_else(|| {
            // No token counts: price a nominal 750-token call at the mean cost.
            let p = mean_cost / 750.0 * 1e6;
            (p, p)
        });
        rows.push((m.clone(), mean_cost, input, output));
    }
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut text = String::new();
    for (i, (m, _, input, output)) in rows.iter().enumerate() {
        // Strictly increasing prices keep the data's cost order even when two prices round alike.
        let bump = 1.0 + 1e-6 * i as f64;
        let (pi, po) = (input.max(1e-6) * bump, output.max(1e-6) * bump);
        text.push_str(&format!(
            "[[tiers]]\nname = {m:?}\nmodel = {m:?}\ninput_usd_per_mtok = {pi}\noutput_usd_per_mtok = {po}\n\n"
        ));
    }
    text.push_str(&format!("[default]\nquality_bar = {bar}\n"));
    Ok(Policy::parse(&text)?)
}

/// Input and output prices (USD per 1M tokens) that best explain the recorded costs, by least
/// squares over records with tokens and cost; a single blended price when the two cannot be told
/// apart (e.g. constant output length). `None` without any token counts.
fn fit_prices(outcomes: &[&Outcome]) -> Option<(f64, f64)> {
    let (mut ii, mut io, mut oo, mut ic, mut oc, mut cost, mut tokens) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for o in outcomes {
        if let (Some(i), Some(out), Some(c)) = (o.input_tokens, o.output_tokens, o.cost_usd) {
            let (i, out) = (i as f64, out as f64);
            ii += i * i;
            io += i * out;
            oo += out * out;
            ic += i * c;
            oc += out * c;
            cost += c;
            tokens += i + out;
        }
    }
    if tokens == 0.0 {
        return None;
    }
    let det = ii * oo - io * io;
    if det > 1e-9 * ii * oo {
        let a = (ic * oo - oc * io) / det;
        let b = (ii * oc - io * ic) / det;
        if a >= 0.0 && b >= 0.0 {
            return Some((a * 1e6, b * 1e6));
        }
    }
    let blended = cost / tokens * 1e6;
    Some((blended, blended))
}

/// `policy` with every scope's `shadow_rate` set to `rate`, bounded as the policy bounds it.
fn with_shadow_rate(policy: &Policy, rate: f64) -> Result<Policy, ReplayError> {
    use crate::domain::policy::MAX_SHADOW_RATE;
    if !(0.0..=MAX_SHADOW_RATE).contains(&rate) {
        return Err(ReplayError::Setup(format!(
            "--shadow-rate: must be in [0, {MAX_SHADOW_RATE}], got {rate}"
        )));
    }
    Ok(with_scopes(policy, |s| s.shadow_rate = rate))
}

fn with_bar(policy: &Policy, bar: f64) -> Policy {
    with_scopes(policy, |s| s.quality_bar = bar)
}

/// `policy` with `change` made to every scope.
fn with_scopes(
    policy: &Policy,
    change: impl Fn(&mut crate::domain::policy::ScopePolicy),
) -> Policy {
    let mut p = policy.clone();
    let set = |s: &Arc<crate::domain::policy::ScopePolicy>| {
        let mut s = (**s).clone();
        change(&mut s);
        Arc::new(s)
    };
    p.default = set(&p.default);
    p.scopes = p.scopes.iter().map(|(k, s)| (k.clone(), set(s))).collect();
    p
}

fn outcome_cost(tier: &Tier, o: &Outcome) -> f64 {
    match o.cost_usd {
        Some(c) => c,
        None => tier.cost_usd(o.input_tokens.unwrap_or(0), o.output_tokens.unwrap_or(0)),
    }
}

/// Replays `records` in order: each task routed by the engine, its chosen tier's recorded
/// outcome posted back as Feedback, and the whole stream tallied against always-premium and
/// the hindsight mix.
pub fn replay(
    model: Arc<ComplexityModel>,
    policy: Policy,
    records: &[Record],
    opts: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let policy = match opts.bar {
        Some(b) => with_bar(&policy, b),
        None => policy,
    };
    let policy = match opts.shadow_rate {
        Some(rate) => with_shadow_rate(&policy, rate)?,
        None => policy,
    };
    let policy = match opts.explore_by {
        Some(by) => with_scopes(&policy, |s| s.explore_by = by),
        None => policy,
    };
    let policy = Arc::new(policy);
    let signer = Signer::new(b"replay").map_err(|e| ReplayError::Setup(e.to_string()))?;
    let engine = Engine::builder(model, policy.clone(), signer)
        .decision_ttl_ms(u64::MAX / 4)
        .learning(opts.learning)
        .build();
    // The engine's store interface is async; replay drives it on a single-threaded runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| ReplayError::Setup(format!("runtime: {e}")))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let t0 = 1_800_000_000_000u64;
    let mut tally = Tally::default();
    let mut last_now = t0;
    for (i, r) in records.iter().enumerate() {
        let workflow = if opts.strip_labels { "" } else { &r.workflow };
        let req = RouteRequest {
            task: &r.prompt,
            workflow,
            team: &opts.team,
            ..Default::default()
        };
        let scope = policy.resolve(&opts.team, workflow);
        let top = &policy.tiers[*scope.allowed.last().unwrap_or(&0)];
        // Every allowed tier must have a recorded outcome, or the counterfactuals are unknown.
        if scope
            .allowed
            .iter()
            .any(|&t| !r.outcomes.contains_key(&policy.tiers[t].model))
        {
            tally.skipped += 1;
            continue;
        }
        let draw: f64 = rng.random();
        let nonce: u64 = rng.random();
        let now = t0 + i as u64 * 1000;
        last_now = now;
        let Ok((d, id)) = engine.route(&req, draw, now, nonce) else {
            tally.skipped += 1;
            continue;
        };
        // What the deciding plan aimed at and expected, before this task's Feedback.
        let aim = opts.trace.then(|| {
            let table = engine.table();
            let plan = table.plan(&d.scope).for_team(&opts.team);
            (plan.target, plan.expected_quality)
        });
        let chosen = &policy.tiers[d.tier().tier];
        let (Some(o), Some(p)) = (r.outcomes.get(&chosen.model), r.outcomes.get(&top.model)) else {
            tally.skipped += 1;
            continue;
        };
        // A shadowed decision posts the shadow tier's recorded outcome as its pair.
        let shadow = d
            .shadow
            .filter(|_| !opts.no_shadow_runs)
            .and_then(|s| r.outcomes.get(&policy.tiers[d.candidates[s].tier].model));
        let fb = FeedbackInput {
            decision_id: &id,
            score: o.score,
            input_tokens: o.input_tokens.map(|t| t as i64),
            output_tokens: o.output_tokens.map(|t| t as i64),
            shadow_score: shadow.map(|s| s.score),
            shadow_input_tokens: shadow.and_then(|s| s.input_tokens.map(|t| t as i64)),
            shadow_output_tokens: shadow.and_then(|s| s.output_tokens.map(|t| t as i64)),
            ..Default::default()
        };
        if let Err(e) = runtime.block_on(engine.feedback(&fb, now)) {
            tracing::warn!(error = %e, id = %r.id, "replay feedback refused");
        }
        tally.add(&Routed {
            policy: &policy,
            scope,
            record: r,
            decision: &d,
            outcome: o,
            premium: p,
            runs_shadows: !opts.no_shadow_runs,
            trace: aim.map(|aim| (i, aim)),
        });
    }
    let nf = tally.n.max(1) as f64;
    let shadow = match opts.shadow_rate {
        Some(_) => Some(shadow_replay(
            &engine,
            &runtime,
            (t0, last_now + 1),
            tally.eligible,
            tally.prem_q / nf,
        )?),
        None => None,
    };
    let table = engine.table();
    // The replay's team's plan is the one that learned.
    let final_thresholds = table
        .default
        .for_team(&opts.team)
        .tiers
        .iter()
        .map(|t| (policy.tiers[t.tier].name.clone(), t.threshold))
        .collect();
    Ok(tally.report(&policy, opts.learning, final_thresholds, shadow))
}

/// One routed task of a replay: the decision and the recorded outcomes it is judged on.
struct Routed<'a> {
    policy: &'a Policy,
    scope: &'a ScopePolicy,
    record: &'a Record,
    decision: &'a Decision,
    /// The chosen tier's recorded outcome.
    outcome: &'a Outcome,
    /// The scope's top tier's recorded outcome.
    premium: &'a Outcome,
    /// Whether the caller runs the shadow tiers decisions name (a pair it ignores costs
    /// nothing).
    runs_shadows: bool,
    /// When tracing: the task's position, and the deciding plan's target and expected quality.
    trace: Option<(usize, (f64, f64))>,
}

/// What a replay adds up task by task.
#[derive(Default)]
struct Tally {
    n: usize,
    skipped: usize,
    explored: usize,
    exploration_cost: f64,
    exploration_delta: f64,
    quality: f64,
    cost: f64,
    prem_q: f64,
    prem_cost: f64,
    bar_sum: f64,
    counts: BTreeMap<String, usize>,
    ledger: Ledger,
    by_workflow: BTreeMap<String, WorkflowReplay>,
    /// Per routed task: (score, cost, premium cost).
    trail: Vec<(f64, f64, f64)>,
    feedbacks_to_bar: Option<usize>,
    window_sum: f64,
    /// Routed and shadow-tier scores summed over the tasks routed below the shadow tier.
    eligible: (f64, f64),
    /// Per routed task: its workflow, the served candidate, and every candidate's (name,
    /// predicted, recorded).
    known: Vec<(String, usize, Vec<TraceTier>)>,
    trace: Vec<TraceRow>,
}

impl Tally {
    /// Adds one routed task.
    fn add(&mut self, t: &Routed<'_>) {
        let (policy, scope, r, d) = (t.policy, t.scope, t.record, t.decision);
        let (o, p) = (t.outcome, t.premium);
        let chosen = &policy.tiers[d.tier().tier];
        // An exploration pair's run (`explore_by` "pairs" or "auto"), where the caller runs it:
        // what exploring cost.
        let pair_cost = d
            .exploration_pair()
            .filter(|_| t.runs_shadows)
            .map(|s| &policy.tiers[d.candidates[s].tier])
            .and_then(|t| r.outcomes.get(&t.model).map(|o| outcome_cost(t, o)))
            .unwrap_or(0.0);
        let served_cost = outcome_cost(chosen, o) + pair_cost;
        let top = &policy.tiers[*scope.allowed.last().unwrap_or(&0)];
        // The truth quality kept is measured on: every task routed below the shadow tier.
        if d.tier().tier != scope.shadow_tier
            && let Some(s) = r.outcomes.get(&policy.tiers[scope.shadow_tier].model)
        {
            self.eligible.0 += o.score;
            self.eligible.1 += s.score;
        }
        let slots = self
            .ledger
            .entry(r.workflow.clone())
            .or_insert_with(|| vec![(0.0, 0.0); scope.allowed.len()]);
        for (slot, &t) in scope.allowed.iter().enumerate() {
            if let (Some(o), Some(cell)) =
                (r.outcomes.get(&policy.tiers[t].model), slots.get_mut(slot))
            {
                cell.0 += o.score;
                cell.1 += outcome_cost(&policy.tiers[t], o);
            }
        }
        self.trail
            .push((o.score, served_cost, outcome_cost(top, p)));
        let w = self.by_workflow.entry(r.workflow.clone()).or_default();
        w.tasks += 1;
        w.quality += o.score;
        w.premium_quality += p.score;
        w.cost_usd += served_cost;
        w.premium_cost_usd += outcome_cost(top, p);
        self.window_sum += o.score;
        if self.trail.len() > WINDOW {
            self.window_sum -= self.trail[self.trail.len() - 1 - WINDOW].0;
        }
        if self.feedbacks_to_bar.is_none()
            && self.trail.len() >= WINDOW
            && self.window_sum / WINDOW as f64 >= scope.quality_bar - 0.01
        {
            self.feedbacks_to_bar = Some(self.trail.len() - WINDOW);
        }
        self.n += 1;
        // A pair the caller does not run explores nothing.
        let ignored_pair = d.exploration_pair().is_some() && !t.runs_shadows;
        self.explored += usize::from(d.explored && !ignored_pair);
        if d.exploration_pair().is_some() {
            self.exploration_cost += pair_cost;
        } else if d.explored {
            let planned = &policy.tiers[d.candidates[d.planned].tier];
            if let Some(po) = r.outcomes.get(&planned.model) {
                self.exploration_cost += outcome_cost(chosen, o) - outcome_cost(planned, po);
                self.exploration_delta += o.score - po.score;
            }
        }
        self.quality += o.score;
        self.cost += served_cost;
        self.prem_q += p.score;
        self.prem_cost += outcome_cost(top, p);
        self.bar_sum += scope.quality_bar;
        *self.counts.entry(chosen.name.clone()).or_default() += 1;
        let tiers: Vec<TraceTier> = (d.candidates.iter())
            .filter_map(|c| {
                let o = r.outcomes.get(&c.model)?;
                Some(TraceTier {
                    name: c.name.clone(),
                    predicted: c.predicted_quality,
                    recorded: o.score,
                })
            })
            .collect();
        if let Some((i, (target, expected))) = t.trace {
            self.trace.push(TraceRow {
                i,
                id: r.id.clone(),
                workflow: r.workflow.clone(),
                cluster: d.cluster,
                band: d.band,
                tier: chosen.name.clone(),
                planned: d.candidates[d.planned].name.clone(),
                explored: d.explored,
                shadow: d.shadow.map(|s| d.candidates[s].name.clone()),
                score: o.score,
                target,
                expected,
                tiers: tiers.clone(),
            });
        }
        self.known.push((r.workflow.clone(), d.chosen, tiers));
    }

    /// Per workflow and tier, how well the plan knew the tier over the second half.
    fn calibration(&self) -> BTreeMap<String, BTreeMap<String, TierCalibration>> {
        let mut out: BTreeMap<String, BTreeMap<String, TierCalibration>> = BTreeMap::new();
        for (workflow, served, tiers) in &self.known[self.known.len() / 2..] {
            let by_tier = out.entry(workflow.clone()).or_default();
            for (slot, t) in tiers.iter().enumerate() {
                let c = by_tier.entry(t.name.clone()).or_default();
                c.tasks += 1;
                c.predicted += t.predicted;
                c.recorded += t.recorded;
                if slot == *served {
                    c.served += 1;
                    c.served_predicted += t.predicted;
                    c.served_recorded += t.recorded;
                }
            }
        }
        let mean = |sum: &mut f64, n: usize| *sum /= n.max(1) as f64;
        for c in out.values_mut().flat_map(BTreeMap::values_mut) {
            mean(&mut c.predicted, c.tasks);
            mean(&mut c.recorded, c.tasks);
            mean(&mut c.served_predicted, c.served);
            mean(&mut c.served_recorded, c.served);
        }
        out
    }

    /// The report of the tasks added.
    fn report(
        self,
        policy: &Policy,
        learning: bool,
        final_thresholds: BTreeMap<String, f64>,
        shadow: Option<ShadowReplay>,
    ) -> ReplayReport {
        let n = self.n;
        let nf = n.max(1) as f64;
        let quality = self.quality / nf;
        // The average of the configured bars, without the float noise of summing 1,832 copies
        // of 0.77 (which printed as 0.769999999999986).
        let bar = (self.bar_sum / nf * 1e9).round() / 1e9;
        let late = &self.trail[self.trail.len() / 2..];
        let late_q = late.iter().map(|t| t.0).sum::<f64>() / late.len().max(1) as f64;
        let late_cost: f64 = late.iter().map(|t| t.1).sum();
        let late_prem: f64 = late.iter().map(|t| t.2).sum();
        let saving = |cost: f64, premium: f64| {
            if premium > 0.0 {
                1.0 - cost / premium
            } else {
                0.0
            }
        };
        let calibration = self.calibration();
        ReplayReport {
            calibration,
            feedbacks_to_bar: self.feedbacks_to_bar,
            late_quality: late_q,
            late_saving_vs_premium: saving(late_cost, late_prem),
            hindsight: hindsight(&self.ledger, n, bar, self.prem_cost),
            by_workflow: self
                .by_workflow
                .into_iter()
                .map(|(k, mut w)| {
                    let t = w.tasks.max(1) as f64;
                    w.quality /= t;
                    w.premium_quality /= t;
                    (k, w)
                })
                .collect(),
            tasks: n,
            skipped: self.skipped,
            bar,
            quality,
            cost_usd: self.cost,
            premium_quality: self.prem_q / nf,
            premium_cost_usd: self.prem_cost,
            saving_vs_premium: saving(self.cost, self.prem_cost),
            bar_met: n > 0 && quality >= bar - 1e-12,
            tier_share: policy
                .tiers
                .iter()
                .map(|t| {
                    let count = self.counts.get(&t.name).copied().unwrap_or(0);
                    (t.name.clone(), count as f64 / nf)
                })
                .collect(),
            explored_share: self.explored as f64 / nf,
            exploration_cost_usd: self.exploration_cost,
            exploration_score_delta: self.exploration_delta,
            learning,
            final_thresholds,
            shadow,
            trace: self.trace,
        }
    }
}

/// Reads quality kept off the engine's own report (the books, the ledger, the estimators:
/// what `tokenwise report` prints) and checks it against the truth.
fn shadow_replay(
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    (since_ms, until_ms): (u64, u64),
    (routed, shadow): (f64, f64),
    premium_quality: f64,
) -> Result<ShadowReplay, ReplayError> {
    let query = crate::report::build::ReportQuery {
        since_ms,
        until_ms,
        ..Default::default()
    };
    let report = runtime
        .block_on(engine.report(&query, until_ms))
        .map_err(|e| ReplayError::Setup(format!("report: {e}")))?;
    let q = report
        .quality
        .into_iter()
        .find(|q| q.key == "total")
        .unwrap_or_default();
    let true_kept = if shadow > 0.0 { routed / shadow } else { 0.0 };
    let covers = |e: Option<crate::report::Estimate>, truth: f64| {
        e.map(|e| (e.low..=e.high).contains(&truth))
    };
    Ok(ShadowReplay {
        pairs: q.pairs,
        kept: q.kept,
        true_kept,
        kept_covers: covers(q.kept, true_kept),
        saving: q.saving,
        premium_quality: q.premium_quality,
        unsupported: q.unsupported,
        premium_covers: covers(q.premium_quality, premium_quality),
        shadow_spend_usd: q.shadow_spend_micros as f64 / 1e6,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dollars_print_to_the_micro_dollar() {
        #[derive(serde::Serialize)]
        struct Cost {
            #[serde(serialize_with = "super::micro_usd")]
            cost_usd: f64,
        }
        let json = serde_json::to_string(&Cost {
            cost_usd: 1.0142619999999993,
        })
        .unwrap();
        assert_eq!(json, r#"{"cost_usd":1.014262}"#);
    }

    use crate::offline::dataset::Outcome;

    fn outcome(score: f64, cost: f64) -> Outcome {
        Outcome {
            score,
            input_tokens: Some(40),
            output_tokens: Some(10),
            cost_usd: Some(cost),
        }
    }

    /// 300 tasks of each of two workflows, interleaved, the same text: the cheap model is as
    /// good as the premium one on `easy/a` and fails every task of `hard/b`.
    fn records() -> Vec<Record> {
        (0..600)
            .map(|i| {
                let easy = i % 2 == 0;
                Record {
                    id: format!("t{i}"),
                    prompt: "Which of these is a prime number? A. 21 B. 23 C. 25 D. 27".into(),
                    workflow: if easy { "easy/a" } else { "hard/b" }.into(),
                    outcomes: [
                        (
                            "cheap".to_string(),
                            outcome(if easy { 1.0 } else { 0.0 }, 0.0001),
                        ),
                        ("premium".to_string(), outcome(1.0, 0.001)),
                    ]
                    .into(),
                }
            })
            .collect()
    }

    /// The records, a two-tier policy with a bar of 0.75 on them, the bundled model, and
    /// options that learn (seed 7).
    fn fixture() -> (Vec<Record>, Policy, Arc<ComplexityModel>, ReplayOptions) {
        let records = records();
        let models = ["cheap".to_string(), "premium".to_string()];
        let policy = policy_from_models(&records, &models, 0.75).unwrap();
        let model = Arc::new(ComplexityModel::bundled().unwrap());
        let learning = ReplayOptions {
            learning: true,
            seed: 7,
            ..Default::default()
        };
        (records, policy, model, learning)
    }

    #[test]
    fn shadowed_replays_post_pairs_and_measure_quality_kept_against_the_truth() {
        let (records, policy, model, learning) = fixture();
        let opts = |shadow_rate| ReplayOptions {
            shadow_rate,
            ..learning.clone()
        };
        let plain = replay(model.clone(), policy.clone(), &records, &opts(None)).unwrap();
        assert_eq!(plain.shadow, None);
        let r = replay(model.clone(), policy.clone(), &records, &opts(Some(0.2))).unwrap();
        let s = r.shadow.unwrap();
        assert!(s.pairs > 0 && s.shadow_spend_usd > 0.0, "{s:?}");
        assert!(s.true_kept > 0.0 && s.kept.is_some() == s.kept_covers.is_some());
        // Shadowing changes no decision: the same routing, the same books.
        assert_eq!((r.quality, r.cost_usd), (plain.quality, plain.cost_usd));
        assert!(replay(model, policy, &records, &opts(Some(0.3))).is_err());
    }

    fn run(learning: bool) -> ReplayReport {
        let records = records();
        let models = ["cheap".to_string(), "premium".to_string()];
        let policy = policy_from_models(&records, &models, 0.75).unwrap();
        let opts = ReplayOptions {
            bar: None,
            learning,
            seed: 7,
            ..Default::default()
        };
        replay(
            Arc::new(ComplexityModel::bundled().unwrap()),
            policy,
            &records,
            &opts,
        )
        .unwrap()
    }

    #[test]
    fn replay_accounts_every_task_and_learns_which_workflow_the_cheap_tier_serves() {
        let r = run(true);
        assert_eq!((r.tasks, r.skipped), (600, 0));
        assert!((r.premium_quality - 1.0).abs() < 1e-12);
        assert!((r.premium_cost_usd - 0.6).abs() < 1e-9);
        // The per-workflow rows add up to the totals.
        let tasks: usize = r.by_workflow.values().map(|w| w.tasks).sum();
        let cost: f64 = r.by_workflow.values().map(|w| w.cost_usd).sum();
        let quality: f64 = r
            .by_workflow
            .values()
            .map(|w| w.quality * w.tasks as f64)
            .sum::<f64>()
            / 600.0;
        assert_eq!(tasks, 600);
        assert!((cost - r.cost_usd).abs() < 1e-9, "{cost} vs {}", r.cost_usd);
        assert!(
            (quality - r.quality).abs() < 1e-9,
            "{quality} vs {}",
            r.quality
        );
        assert!((1.0 - r.cost_usd / r.premium_cost_usd - r.saving_vs_premium).abs() < 1e-9);
        // Hindsight by hand: easy/a all cheap (300 × 0.0001), hard/b half premium to reach
        // 0.75 overall (150 × 0.001 + 150 × 0.0001): $0.195 of $0.60.
        let h = r.hindsight.as_ref().unwrap();
        assert!((h.cost_usd - 0.195).abs() < 0.002, "{h:?}");
        // Learning meets the bar and finds that easy/a needs no premium tier.
        assert!(r.bar_met, "{r:?}");
        let easy = &r.by_workflow["easy/a"];
        assert!(easy.cost_usd < 0.5 * easy.premium_cost_usd, "{easy:?}");
        let frozen = run(false);
        assert!(
            r.saving_vs_premium > frozen.saving_vs_premium,
            "{} vs {}",
            r.saving_vs_premium,
            frozen.saving_vs_premium
        );
    }

    #[test]
    fn a_traced_replay_keeps_one_row_per_task_and_its_calibration_adds_up() {
        let (records, policy, model, learning) = fixture();
        let opts = |trace| ReplayOptions {
            trace,
            ..learning.clone()
        };
        let r = replay(model.clone(), policy.clone(), &records, &opts(true)).unwrap();
        // Tracing changes no decision.
        let plain = replay(model, policy, &records, &opts(false)).unwrap();
        assert!(plain.trace.is_empty());
        assert_eq!((r.quality, r.cost_usd), (plain.quality, plain.cost_usd));
        assert_eq!(r.calibration, plain.calibration);
        // One row per routed task, in order, each with every allowed tier's prediction and
        // recorded score, and the served tier's score as the one it recorded.
        assert_eq!(r.trace.len(), r.tasks);
        for (i, row) in r.trace.iter().enumerate() {
            assert_eq!((row.i, row.id.as_str()), (i, records[i].id.as_str()));
            let names: Vec<&str> = row.tiers.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["cheap", "premium"]);
            let served = row.tiers.iter().find(|t| t.name == row.tier).unwrap();
            assert_eq!(served.recorded, row.score);
            assert!(row.tiers.iter().all(|t| (0.0..=1.0).contains(&t.predicted)));
            assert!(row.target >= 0.75 && (0.0..=1.0).contains(&row.expected));
        }
        let served = |tier: &str| r.trace.iter().filter(|row| row.tier == tier).count();
        assert_eq!(served("cheap") + served("premium"), 600);
        // Calibration: the second half, per workflow every tier on every task; the served
        // counts add up to the workflow's tasks, and the means are the trace's.
        let late = &r.trace[300..];
        for (workflow, tiers) in &r.calibration {
            let rows: Vec<&TraceRow> = late.iter().filter(|x| &x.workflow == workflow).collect();
            assert_eq!(tiers.len(), 2);
            assert_eq!(tiers.values().map(|c| c.served).sum::<usize>(), rows.len());
            for (name, c) in tiers {
                assert_eq!(c.tasks, rows.len());
                let tier = |x: &TraceRow| x.tiers.iter().find(|t| &t.name == name).cloned();
                let recorded: f64 = rows
                    .iter()
                    .filter_map(|x| tier(x))
                    .map(|t| t.recorded)
                    .sum();
                assert!(
                    (c.recorded - recorded / rows.len() as f64).abs() < 1e-9,
                    "{c:?}"
                );
            }
        }
        // The cheap tier's recorded score is 1 on easy/a and 0 on hard/b.
        assert_eq!(r.calibration["easy/a"]["cheap"].recorded, 1.0);
        assert_eq!(r.calibration["hard/b"]["cheap"].recorded, 0.0);
    }
}
