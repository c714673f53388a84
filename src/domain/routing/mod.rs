//! The Route decision: validate, score complexity, pick the scope's plan, choose the tier its
//! rule picks (or, within the exploration budget, the one a draw from every tier's posterior
//! picks), and explain it.
//!
//! Reads only immutable snapshots (the model and an [`ArcSwap`]ed [`RoutingTable`]): no lock, no
//! I/O, no clock, and the exploration draw is handed in, so the same inputs give the same answer.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::domain::classifier::ComplexityModel;
use crate::domain::clusters::sketch;
use crate::domain::features::TaskInput;
use crate::domain::labels::{DEFAULT_WORKFLOW, MAX_LABEL_BYTES, workflow_key};
use crate::domain::learning::{
    BANDS, Choice, RoutingTable, ScopePlan, TierPlan, band_of, cluster_label,
};
use crate::domain::policy::{BarMode, ExploreBy, Policy};

mod reason;
pub use reason::without_pair;
use reason::{Mode, Why, explain};

/// Default cap on the task size in bytes.
pub const DEFAULT_MAX_TASK_BYTES: usize = 256 * 1024;

/// A task to route.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteRequest<'a> {
    /// Task text.
    pub task: &'a str,
    /// Workflow label (may be empty).
    pub workflow: &'a str,
    /// Team (may be empty).
    pub team: &'a str,
    /// Expected output tokens, 0 if unknown.
    pub expected_output_tokens: u32,
    /// Task type hint (may be empty).
    pub task_type: &'a str,
}

/// Why a request cannot be routed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// The task is empty or only white space.
    #[error("task: must not be empty")]
    EmptyTask,
    /// The task is larger than the configured maximum.
    #[error("task: {size} bytes, over the maximum of {max} bytes")]
    TaskTooLarge {
        /// Size of the task.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A label is too long to be a workflow or team name.
    #[error("{field}: {size} bytes, over the maximum of {max} bytes")]
    LabelTooLong {
        /// Field name.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// A label holds a control character.
    #[error(
        "{field}: must not contain control characters (newlines, tabs, escapes): labels reach logs and terminals"
    )]
    LabelControl {
        /// Field name.
        field: &'static str,
    },
    /// A team label that would read as a team and a workflow in a scope key.
    #[error(
        "team: must not contain \"/workflow:\" (it separates a team from a workflow in scope keys)"
    )]
    ReservedTeam,
    /// A workflow label in the namespace of discovered clusters.
    #[error("workflow: labels starting with '~' are reserved for discovered clusters")]
    ReservedWorkflow,
}

impl RouteError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RouteError::EmptyTask | RouteError::TaskTooLarge { .. } => "task",
            RouteError::LabelTooLong { field, .. } | RouteError::LabelControl { field } => field,
            RouteError::ReservedWorkflow => "workflow",
            RouteError::ReservedTeam => "team",
        }
    }
}

/// One allowed tier and its prediction for the task.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Index into the policy's tiers.
    pub tier: usize,
    /// Tier name.
    pub name: String,
    /// Model id.
    pub model: String,
    /// Predicted quality for this task's complexity band.
    pub predicted_quality: f64,
    /// Estimated cost in USD.
    pub estimated_cost_usd: f64,
    /// The same estimate in micro-USD (what the books count).
    pub cost_micros: i64,
    /// The tier's current threshold in the scope.
    pub threshold: f64,
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Scope key whose plan decided.
    pub scope: String,
    /// Chosen candidate's position in `candidates`.
    pub chosen: usize,
    /// Complexity in [0, 1].
    pub complexity: f64,
    /// Complexity band used for learning.
    pub band: usize,
    /// The task's premium gap (0 without a gap term): carried in the decision id, so its
    /// outcome is learned and priced with it.
    pub gap: f64,
    /// Whether this decision explored: a posterior draw picked another tier than the plan
    /// (which then serves the task; where the scope pairs, `explore_by` "pairs" or "auto", a
    /// cheaper one is its shadow tier instead, on any task, not only within the exploration
    /// rate).
    pub explored: bool,
    /// Position in `candidates` of the tier the plan picked (the chosen one unless explored).
    pub planned: usize,
    /// The probability that this decision got the tier it got, given the plan and the
    /// exploration rate (see [`propensities`]: exact without exploration, estimated over a
    /// fixed set of draws with it).
    pub propensity: f64,
    /// The same probability for the scope's premium (top allowed) tier: 0 where no draw of
    /// this decision could have sent the task there.
    pub premium_propensity: f64,
    /// Position in `candidates` of the tier the caller may also run the task on, as a shadow
    /// pair (the scope's `shadow_rate`); `None` for most decisions, and always when the chosen
    /// tier is the shadow tier.
    pub shadow: Option<usize>,
    /// The discovered cluster an unlabelled task was placed in (`None`: labelled, or the scope
    /// has no clusters yet).
    pub cluster: Option<u32>,
    /// An unlabelled task's text sketch (empty for a labelled one).
    pub sketch: Vec<u16>,
    /// Allowed tiers, cheapest first.
    pub candidates: Vec<Candidate>,
    /// Position in `candidates` of the next tier up, if any.
    pub fallback: Option<usize>,
    /// Version of the policy.
    pub policy_version: String,
    /// Estimated input tokens (task bytes / 4).
    pub input_tokens: u64,
    /// Output tokens assumed (hint or default).
    pub output_tokens: u64,
    /// Human-readable explanation.
    pub reason: String,
}

impl Decision {
    /// The chosen candidate.
    pub fn tier(&self) -> &Candidate {
        &self.candidates[self.chosen]
    }

    /// Estimated cost of the same task on the scope's premium (most expensive allowed) tier.
    pub fn premium_micros(&self) -> i64 {
        self.candidates.last().map_or(0, |c| c.cost_micros)
    }

    /// The cheaper tier an exploration pair runs beside the plan's (`explore_by` "pairs", or
    /// "auto"): the shadow of an explored decision its plan's tier serves.
    pub fn exploration_pair(&self) -> Option<usize> {
        self.shadow
            .filter(|_| self.explored && self.chosen == self.planned)
    }
}

/// Limits checked before any work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum task size in bytes.
    pub max_task_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_task_bytes: DEFAULT_MAX_TASK_BYTES,
        }
    }
}

/// Refuses a label (workflow, team, task type) over [`MAX_LABEL_BYTES`], naming the field and
/// its size, never its content. The server checks this before anything keyed by a label (the
/// per-team rate limiter) sees it.
pub fn check_labels(req: &RouteRequest<'_>) -> Result<(), RouteError> {
    for (field, v) in [
        ("workflow", req.workflow),
        ("team", req.team),
        ("hints.task_type", req.task_type),
    ] {
        if v.len() > MAX_LABEL_BYTES {
            return Err(RouteError::LabelTooLong {
                field,
                size: v.len(),
                max: MAX_LABEL_BYTES,
            });
        }
        if crate::domain::labels::has_control(v) {
            return Err(RouteError::LabelControl { field });
        }
    }
    if req.workflow.starts_with('~') {
        return Err(RouteError::ReservedWorkflow);
    }
    if req.team.contains(crate::domain::policy::TEAM_WORKFLOW_SEP) {
        return Err(RouteError::ReservedTeam);
    }
    Ok(())
}

/// Decides for one request against a routing table. `explore_draw` is a uniform number in
/// [0, 1) supplied by the caller (random in the server, seeded in replay).
pub fn decide(
    model: &ComplexityModel,
    table: &RoutingTable,
    limits: &Limits,
    req: &RouteRequest<'_>,
    explore_draw: f64,
) -> Result<Decision, RouteError> {
    check_request(limits, req)?;
    let policy: &Policy = &table.policy;
    let task = Placed::of(model, table, req);
    let plan = task.plan;
    let choice = plan.choice(
        policy,
        task.workflow(),
        task.complexity,
        task.band,
        task.gap,
        task.input_tokens,
        task.output_tokens,
    );
    let (curves, safe) = (choice.curves, choice.slot);
    let candidates = candidates(policy, &choice, task.band, task.gap);
    let drawn = draw(plan, &choice, task.band, task.gap, explore_draw);
    let chosen = drawn.chosen;
    // An exploration pair takes the decision's one shadow place; any other decision may be
    // shadowed to measure quality kept (the decision id says which of the two its shadow is).
    let shadow = match drawn.pair {
        Some(pair) => Some(pair),
        None => shadow_slot(
            plan.policy.shadow_rate,
            plan.policy.shadow_tier,
            &candidates,
            chosen,
            explore_draw,
        ),
    };
    let fallback = (chosen + 1 < candidates.len()).then_some(chosen + 1);
    let mode = mode_of(plan);
    let workflow = task.workflow();
    let mut reason = explain(&Why {
        candidates: &candidates,
        curves,
        band: task.band,
        gap: task.gap,
        chosen,
        safe,
        pair: drawn.pair,
        complexity: task.complexity,
        scope: task.scope_key,
        workflow,
        bar: bar_held(plan, curves, task.band, task.gap),
        expected: plan.expected_quality,
        mode,
        // Only once its own outcomes weigh as much as what it borrows.
        learned: plan
            .workflow_plan(workflow)
            .is_some_and(|p| p.evidence >= crate::domain::learning::WORKFLOW_PRIOR),
    });
    if let Some(cap) = task.capped {
        reason.push_str("; expected_output_tokens capped at ");
        reason.push_str(&cap.to_string());
        reason.push_str(" by the policy's max_output_tokens");
    }
    Ok(Decision {
        scope: task.scope_key.clone(),
        chosen,
        planned: safe,
        propensity: drawn.propensity,
        premium_propensity: drawn.premium_propensity,
        shadow,
        cluster: task.cluster,
        sketch: task.sketch,
        complexity: task.complexity,
        band: task.band,
        gap: task.gap,
        explored: chosen != safe || drawn.pair.is_some(),
        candidates,
        fallback,
        policy_version: policy.version.clone(),
        input_tokens: task.input_tokens,
        output_tokens: task.output_tokens,
        reason,
    })
}

/// Refuses a task over the size limit, an empty one, or bad labels ([`check_labels`]).
fn check_request(limits: &Limits, req: &RouteRequest<'_>) -> Result<(), RouteError> {
    if req.task.len() > limits.max_task_bytes {
        return Err(RouteError::TaskTooLarge {
            size: req.task.len(),
            max: limits.max_task_bytes,
        });
    }
    if req.task.trim().is_empty() {
        return Err(RouteError::EmptyTask);
    }
    check_labels(req)
}

/// A task placed before the choice: its scope and plan, the workflow it learns as, its
/// complexity and its token estimates.
struct Placed<'a> {
    scope_key: &'a String,
    /// The team's own plan where it has one (its outcomes move it), else the scope's shared one.
    plan: &'a ScopePlan,
    /// The caller's workflow (an empty one is `default`).
    workflow: &'a str,
    /// The discovered cluster of an unlabelled task, and its label (the workflow it learns as).
    cluster: Option<u32>,
    cluster_workflow: Option<String>,
    /// The unlabelled task's text sketch, to fit the clusters on; empty for a labelled one.
    sketch: Vec<u16>,
    complexity: f64,
    band: usize,
    gap: f64,
    /// The client's length hint when the policy's cap cut it.
    capped: Option<u64>,
    input_tokens: u64,
    output_tokens: u64,
}

impl<'a> Placed<'a> {
    fn of(model: &ComplexityModel, table: &'a RoutingTable, req: &RouteRequest<'a>) -> Self {
        // An empty workflow and "default" are the same workflow everywhere.
        let workflow = workflow_key(req.workflow);
        let scope = table.policy.resolve(req.team, workflow);
        let shared = table.plan(&scope.key);
        let plan = shared.for_team(req.team);
        // A task without a label learns as the cluster of similar tasks it falls in (once the
        // scope has clusters); its sketch travels with the decision, to fit them on.
        let (sketch, cluster) = if workflow == DEFAULT_WORKFLOW {
            let s = sketch(req.task);
            let c = shared.clusters.as_ref().map(|m| m.assign(&s));
            (s.0, c)
        } else {
            (Vec::new(), None)
        };
        // A client's length hint is taken up to the policy's cap, and the reason says so.
        let hint = u64::from(req.expected_output_tokens);
        let capped = (hint > scope.max_output_tokens).then_some(scope.max_output_tokens);
        let hint = hint.min(scope.max_output_tokens);
        let (complexity, gap) = model.score(&TaskInput {
            text: req.task,
            workflow,
            task_type: req.task_type,
            expected_output_tokens: hint as u32,
        });
        let mut placed = Self {
            scope_key: &scope.key,
            plan,
            workflow,
            cluster,
            cluster_workflow: cluster.map(cluster_label),
            sketch,
            complexity,
            band: band_of(complexity, BANDS),
            gap: f64::from(gap),
            capped,
            input_tokens: (req.task.len() as u64).div_ceil(4),
            output_tokens: hint,
        };
        if hint == 0 {
            placed.output_tokens = plan.expected_output_tokens(placed.workflow());
            // An unlabelled task outside any cluster is priced at what its words predict
            // (the team's model, else the scope's), not at the scope's median length.
            if placed.cluster.is_none() && !placed.sketch.is_empty() {
                let cap = scope.max_output_tokens;
                let predict = |p: &ScopePlan| p.lengths.as_ref()?.predict(&placed.sketch, cap);
                if let Some(t) = predict(plan).or_else(|| predict(shared)) {
                    placed.output_tokens = t;
                }
            }
        }
        placed
    }

    /// The workflow the task learns as: its cluster's where it has one, else the caller's.
    fn workflow(&self) -> &str {
        self.cluster_workflow.as_deref().unwrap_or(self.workflow)
    }
}

/// Each allowed tier as a candidate for the task, in slot order.
fn candidates(policy: &Policy, choice: &Choice<'_>, band: usize, gap: f64) -> Vec<Candidate> {
    choice
        .curves
        .iter()
        .zip(&choice.costs_micros)
        .map(|(t, &cost_micros)| {
            let tier = &policy.tiers[t.tier];
            Candidate {
                tier: t.tier,
                name: tier.name.clone(),
                model: tier.model.clone(),
                predicted_quality: t.predicted_for(band, gap),
                estimated_cost_usd: cost_micros as f64 / 1e6,
                cost_micros,
                threshold: t.threshold,
            }
        })
        .collect()
}

/// The slot a decision got, and the probabilities that it got that one and the premium one.
struct Drawn {
    chosen: usize,
    /// A cheaper slot a draw picked where the scope pairs ([`pairing`]): the decision's shadow
    /// tier, while the plan's serves the task.
    pair: Option<usize>,
    propensity: f64,
    premium_propensity: f64,
}

/// Exploration: a share `exploration_rate` of tasks is routed by draws from every allowed
/// tier's posterior; it explores when a draw picks another tier than the plan. With pairs,
/// every other task draws too, for a cheaper tier only: a pair risks no quality, so it is
/// rationed by the posterior alone (a cheaper tier is paired about as often as it may be the
/// right choice), not by the rate; a rate of 0 still turns exploration off, pairs included.
/// Within the rate's share a cheaper draw pairs too, or serves where the scope substitutes
/// ([`pairing`]).
fn draw(plan: &ScopePlan, choice: &Choice<'_>, band: usize, gap: f64, u: f64) -> Drawn {
    let slots = choice.curves.len();
    let safe = choice.slot;
    let rate = plan.policy.exploration_rate;
    let branch = u < rate && slots > 1;
    // A pair within the rate: a draw of a cheaper tier runs it beside the plan's, which
    // serves; a dearer one serves as by substitution (it risks no quality, and a pair would
    // pay both calls).
    let (pairs_in_rate, pairs_beyond) = pairing(plan);
    let served = |s: usize| if pairs_in_rate && s < safe { safe } else { s };
    let (drawn, chosen) = if branch {
        let drawn = plan.explore(choice, band, gap, u / rate);
        (drawn, served(drawn))
    } else if let Some(seed) =
        beyond_seed(u, rate, pairs_in_rate).filter(|_| pairs_beyond && slots > 1)
    {
        let drawn = plan.explore(choice, band, gap, seed);
        (drawn.min(safe), safe)
    } else {
        (safe, safe)
    };
    let (propensity, premium_propensity) = if slots > 1 {
        propensities(
            &Draws {
                rate,
                planned: safe,
                chosen,
                premium: slots - 1,
                in_branch: branch,
            },
            |v| served(plan.explore(choice, band, gap, v)),
        )
    } else {
        (1.0, 1.0)
    };
    Drawn {
        chosen,
        pair: (drawn < chosen).then_some(drawn),
        propensity,
        premium_propensity,
    }
}

/// The posterior draw's seed, uniform in [0, 1) as inside the rate's share, for a draw `u`
/// beyond that share that asks for a pair: every such draw while pairs are answered
/// (`every_task`); else only the next `rate` share of draws (the rest of them where that is
/// less), so a plan whose callers leave pairs unanswered still asks now and then (an answer
/// turns pairs back on) but not on every task.
fn beyond_seed(u: f64, rate: f64, every_task: bool) -> Option<f64> {
    let width = if every_task {
        1.0 - rate
    } else {
        rate.min(1.0 - rate)
    };
    (rate > 0.0 && width > 0.0 && u >= rate && u < rate + width).then(|| (u - rate) / width)
}

/// Whether the scope's exploration pairs a cheaper draw (runs it beside the plan's tier)
/// within the rate's share, and beyond it. `auto` pairs beyond the rate always (an unanswered
/// pair costs nothing, and its Feedback says whether the callers run them; on a rate's share
/// of draws only while they do not), and within it while the plan's callers answer pairs;
/// while they do not, a cheaper draw there serves.
fn pairing(plan: &ScopePlan) -> (bool, bool) {
    (
        plan.explores_by() == ExploreBy::Pairs,
        plan.policy.explore_by != ExploreBy::Substitution,
    )
}

/// How the plan chooses: by pinned thresholds, or by its bar mode.
fn mode_of(plan: &ScopePlan) -> Mode {
    if plan.policy.pinned_thresholds.is_some() {
        Mode::Pinned
    } else {
        match plan.policy.bar_mode {
            BarMode::Average => Mode::Average,
            BarMode::PerTask => Mode::PerTask,
        }
    }
}

/// The bar the choice was held to: per task and relative, a share of the top tier's bound;
/// else the plan's target.
fn bar_held(plan: &ScopePlan, curves: &[TierPlan], band: usize, gap: f64) -> f64 {
    plan.task_bar(curves, band, gap).unwrap_or(plan.target)
}

/// Stratified draws of the exploration rule that a decision's propensities are estimated on.
/// Eight evaluations of [`ScopePlan::explore`](crate::domain::learning::ScopePlan::explore)
/// per Route: enough to tell "never" from "often", cheap next to the rest of the decision.
pub const PROPENSITY_DRAWS: usize = 8;

/// How one decision was drawn: what [`propensities`] needs besides the rule itself.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    /// The scope's exploration rate.
    pub rate: f64,
    /// Slot the plan picked.
    pub planned: usize,
    /// Slot the decision got.
    pub chosen: usize,
    /// Slot of the premium (top) tier.
    pub premium: usize,
    /// Whether this decision's draw fell in the exploration share (it ran the rule).
    pub in_branch: bool,
}

/// The probabilities that the decision got its tier and that it got the premium tier:
/// `(1 − rate)·[slot = planned] + rate·P(explore(u) = slot)`, u uniform in [0, 1).
///
/// Exact without exploration (rate 0, or a rule that always returns the plan). The share
/// P(explore(u) = slot) of Thompson exploration has no closed form (up to four multi-tier
/// posterior draws): it is estimated by running the same deterministic rule on the
/// [`PROPENSITY_DRAWS`] stratified draws u = (k + ½)/K, plus the decision's own draw when it
/// explored, so a tier a decision actually got never has propensity 0 (at least
/// rate/(K + 1)). A slot no draw reached gets 0: "no support", which the report respects by
/// printing no estimate that rests on it. The estimate is deterministic, so replicas and
/// replays agree.
pub fn propensities(d: &Draws, explore: impl Fn(f64) -> usize) -> (f64, f64) {
    let exact = |slot: usize| if slot == d.planned { 1.0 } else { 0.0 };
    if d.rate <= 0.0 {
        return (exact(d.chosen), exact(d.premium));
    }
    let (mut n, mut chosen, mut premium) = (0usize, 0usize, 0usize);
    let mut count = |s: usize| {
        n += 1;
        chosen += usize::from(s == d.chosen);
        premium += usize::from(s == d.premium);
    };
    for k in 0..PROPENSITY_DRAWS {
        count(explore((k as f64 + 0.5) / PROPENSITY_DRAWS as f64));
    }
    if d.in_branch {
        count(d.chosen);
    }
    let p =
        |slot: usize, hits: usize| (1.0 - d.rate) * exact(slot) + d.rate * hits as f64 / n as f64;
    (p(d.chosen, chosen), p(d.premium, premium))
}

/// A second uniform number in [0, 1) from the exploration draw (SplitMix64 of its bits):
/// shadowing is decided from the same draw as exploration, so a replay with the same draws
/// shadows the same tasks, and apart from it (the exploration share says nothing about it).
pub fn shadow_draw(explore_draw: f64) -> f64 {
    let mut z = explore_draw.to_bits().wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The slot of the shadow tier for a decision whose second draw falls in the scope's
/// `shadow_rate`; never the chosen slot itself.
fn shadow_slot(
    rate: f64,
    tier: usize,
    candidates: &[Candidate],
    chosen: usize,
    explore_draw: f64,
) -> Option<usize> {
    if rate <= 0.0 || shadow_draw(explore_draw) >= rate {
        return None;
    }
    candidates
        .iter()
        .position(|c| c.tier == tier)
        .filter(|&s| s != chosen)
}

/// The live routing state shared by the server's handlers: the model and the swappable table.
pub struct Router {
    model: Arc<ComplexityModel>,
    table: ArcSwap<RoutingTable>,
    limits: Limits,
}

impl Router {
    /// A router over a model and an initial table.
    pub fn new(model: Arc<ComplexityModel>, table: RoutingTable, limits: Limits) -> Self {
        Self {
            model,
            table: ArcSwap::from_pointee(table),
            limits,
        }
    }

    /// The current table, borrowed for one call (no reference count touched: Route uses this).
    pub fn current(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    /// The current table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Publishes a new table; readers switch on their next call.
    pub fn publish(&self, table: RoutingTable) {
        self.table.store(Arc::new(table));
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The complexity model.
    pub fn model(&self) -> &Arc<ComplexityModel> {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propensities_mix_the_plan_with_the_rule_on_fixed_draws() {
        // The rule sends a quarter of its draws to premium (slot 2), the rest to the plan.
        let rule = |u: f64| if u < 0.25 { 2 } else { 0 };
        let planned = Draws {
            rate: 0.1,
            planned: 0,
            chosen: 0,
            premium: 2,
            in_branch: false,
        };
        // Of the 8 draws (k + ½)/8, k = 0, 1 go to premium: 0.9 + 0.1 × 6/8, and 0.1 × 2/8.
        let (p, premium) = propensities(&planned, rule);
        assert!((p - 0.975).abs() < 1e-12 && (premium - 0.025).abs() < 1e-12);
        // An explored decision counts its own draw too: 3 of 9 reach premium.
        let explored = Draws {
            chosen: 2,
            in_branch: true,
            ..planned
        };
        let (p, premium) = propensities(&explored, rule);
        assert!((p - 0.1 / 3.0).abs() < 1e-12 && p == premium);
        // Exact without exploration; no support where no draw reaches premium.
        assert_eq!(
            propensities(
                &Draws {
                    rate: 0.0,
                    ..planned
                },
                rule
            ),
            (1.0, 0.0)
        );
        assert_eq!(propensities(&planned, |_| 0), (1.0, 0.0));
        // The shadow draw is a uniform number of its own, the same for the same draw.
        assert_eq!(shadow_draw(0.3), shadow_draw(0.3));
        let share = (0..10_000)
            .filter(|k| shadow_draw(f64::from(*k) / 10_000.0) < 0.2)
            .count();
        assert!((1_850..2_150).contains(&share), "{share}");
    }

    use std::collections::HashMap;

    use crate::domain::policy::ScopePolicy;

    impl Router {
        /// The decision alone (what the engine's Route starts with).
        fn route(&self, req: &RouteRequest<'_>, draw: f64) -> Result<Decision, RouteError> {
            decide(self.model(), &self.current(), self.limits(), req, draw)
        }
    }

    fn router() -> Router {
        router_with(|_| {})
    }

    /// [`router`] with `change` made to the example policy's default scope.
    fn router_with(change: impl Fn(&mut ScopePolicy)) -> Router {
        router_planned(change, |_| {})
    }

    /// [`router_with`], with `replan` made to the default scope's plan.
    fn router_planned(
        change: impl Fn(&mut ScopePolicy),
        replan: impl Fn(&mut ScopePlan),
    ) -> Router {
        let model = Arc::new(ComplexityModel::bundled().unwrap());
        let mut policy = Policy::embedded().unwrap();
        let mut scope = (*policy.default).clone();
        change(&mut scope);
        policy.default = Arc::new(scope);
        let mut table =
            RoutingTable::build(Arc::new(policy), &model.calibration, &HashMap::new(), None);
        let mut plan = (*table.default).clone();
        replan(&mut plan);
        table.default = Arc::new(plan);
        table
            .plans
            .insert("default".into(), Arc::clone(&table.default));
        Router::new(
            model,
            table,
            Limits {
                max_task_bytes: 1000,
            },
        )
    }

    fn req(task: &str) -> RouteRequest<'_> {
        RouteRequest {
            task,
            workflow: "default",
            ..Default::default()
        }
    }

    #[test]
    fn a_task_premium_gap_moves_its_choice_and_its_predictions() {
        let plain = router();
        let task = "Explain the main causes of the French Revolution in two sentences.";
        let base = plain.route(&req(task), 0.9).unwrap();
        // The same model, with every feature saying "the premium model gains here" (or the
        // reverse): the task's tiers are re-predicted and the choice follows.
        let with_gap = |w: f32| {
            let mut model = ComplexityModel::bundled().unwrap();
            model.gap_weights = vec![w; crate::domain::features::DIMS];
            let r = router();
            Router::new(Arc::new(model), r.table().as_ref().clone(), *r.limits())
        };
        let up = with_gap(10.0).route(&req(task), 0.9).unwrap();
        let down = with_gap(-10.0).route(&req(task), 0.9).unwrap();
        assert_eq!(up.complexity, base.complexity, "the gap is not difficulty");
        let last = base.candidates.len() - 1;
        assert!(up.candidates[last].predicted_quality > base.candidates[last].predicted_quality);
        assert!(up.candidates[0].predicted_quality < base.candidates[0].predicted_quality);
        assert!(down.candidates[0].predicted_quality > base.candidates[0].predicted_quality);
        assert!(
            up.chosen >= base.chosen && base.chosen >= down.chosen,
            "{up:?} {base:?} {down:?}"
        );
        assert!(up.chosen > down.chosen);
    }

    #[test]
    fn bad_input_is_rejected_with_the_field() {
        let r = router();
        assert_eq!(r.route(&req(""), 0.9).unwrap_err(), RouteError::EmptyTask);
        assert_eq!(r.route(&req("  \n"), 0.9).unwrap_err().field(), "task");
        let big = "x".repeat(1001);
        assert!(matches!(
            r.route(&req(&big), 0.9),
            Err(RouteError::TaskTooLarge {
                size: 1001,
                max: 1000
            })
        ));
        let long = "w".repeat(300);
        let e = r
            .route(
                &RouteRequest {
                    task: "hi",
                    team: &long,
                    ..Default::default()
                },
                0.9,
            )
            .unwrap_err();
        assert_eq!(e.field(), "team");
        // The namespace of discovered clusters is not a caller's to use.
        let e = r
            .route(
                &RouteRequest {
                    task: "hi",
                    workflow: "~cluster/1",
                    ..Default::default()
                },
                0.9,
            )
            .unwrap_err();
        assert_eq!(e, RouteError::ReservedWorkflow);
        assert_eq!(e.field(), "workflow");
        // A team that reads as a team and a workflow would reach another scope.
        let e = r
            .route(
                &RouteRequest {
                    task: "hi",
                    team: "ads/workflow:triage",
                    ..Default::default()
                },
                0.9,
            )
            .unwrap_err();
        assert_eq!(e, RouteError::ReservedTeam);
        // A newline or an escape in a label would forge log lines and drive terminals.
        for (workflow, team) in [("a\nERROR forged", ""), ("", "ads\u{1b}[31m")] {
            let e = r
                .route(
                    &RouteRequest {
                        task: "hi",
                        workflow,
                        team,
                        ..Default::default()
                    },
                    0.9,
                )
                .unwrap_err();
            assert!(matches!(e, RouteError::LabelControl { .. }), "{e}");
        }
    }

    #[test]
    fn decision_is_complete_and_consistent() {
        let r = router();
        let d = r.route(&req("What is 2+2?"), 0.99).unwrap();
        assert_eq!(d.candidates.len(), 3);
        assert!((0.0..=1.0).contains(&d.complexity));
        assert!(!d.explored);
        assert_eq!(d.scope, "default");
        assert!(
            d.candidates
                .windows(2)
                .all(|w| w[0].estimated_cost_usd < w[1].estimated_cost_usd)
        );
        assert_eq!(d.candidates.last().unwrap().threshold, 1.0);
        assert!(d.tier().threshold > d.complexity || d.chosen == 2);
        assert_eq!(d.fallback, (d.chosen < 2).then_some(d.chosen + 1));
        assert!(!d.reason.is_empty());
        assert_eq!(d.input_tokens, 3);
        assert_eq!(
            d.output_tokens,
            crate::domain::learning::DEFAULT_TYPICAL_OUTPUT_TOKENS
        );
    }

    #[test]
    fn exploration_draws_from_every_tier_only_within_its_budget() {
        let r = router_with(|s| s.explore_by = ExploreBy::Substitution);
        let hard = "Prove that every finite integral domain is a field, then compute the \
                    number of elements of order 6 in S_7 and justify each step.";
        let safe = r.route(&req(hard), 0.99).unwrap();
        assert!(!safe.explored && safe.planned == safe.chosen);
        // Draws below the exploration rate (0.05 in the test policy) sample the posteriors;
        // many such draws reach more than one other tier, cheaper and not only one step down.
        let mut reached = std::collections::BTreeSet::new();
        for i in 0..400 {
            let d = r.route(&req(hard), 0.05 * f64::from(i) / 400.0).unwrap();
            assert_eq!(d.planned, safe.chosen);
            assert_eq!(d.explored, d.chosen != d.planned);
            if d.explored {
                reached.insert(d.chosen);
                assert!(d.reason.starts_with("exploring: "), "{}", d.reason);
            }
        }
        assert!(!reached.is_empty() && !reached.contains(&safe.chosen));
        assert!(
            reached.len() >= 2 || safe.chosen == 1,
            "{reached:?} from {}",
            safe.chosen
        );
        // Same draw, same answer.
        assert_eq!(
            r.route(&req(hard), 0.01).unwrap(),
            r.route(&req(hard), 0.01).unwrap()
        );
        // Above the rate, never.
        for i in 0..100 {
            let d = r
                .route(&req(hard), 0.05 + 0.95 * f64::from(i) / 100.0)
                .unwrap();
            assert!(!d.explored);
        }
    }

    #[test]
    fn exploring_by_pairs_serves_the_plans_tier_and_names_a_cheaper_drawn_one_as_its_shadow_on_any_task()
     {
        let by_substitution = router_with(|s| s.explore_by = ExploreBy::Substitution);
        let by_pairs = router_with(|s| s.explore_by = ExploreBy::Pairs);
        let hard = "Prove that every finite integral domain is a field, then compute the \
                    number of elements of order 6 in S_7 and justify each step.";
        // Both routers' decisions for every 400th draw within the exploration rate (0.05).
        let (by_substitution, by_pairs) = (&by_substitution, &by_pairs);
        let both = |task| {
            (0..400).map(move |i| {
                let u = 0.05 * f64::from(i) / 400.0;
                let r = |router: &Router| router.route(&req(task), u).unwrap();
                (r(by_substitution), r(by_pairs))
            })
        };
        let mut paired = 0;
        for (s, p) in both(hard) {
            // The same draw picks the same tier; with pairs a cheaper one runs beside the plan's.
            assert_eq!(p.chosen, p.planned);
            assert_eq!(p.explored, s.explored);
            assert!(
                !s.explored || s.chosen < s.planned,
                "the plan's tier is the top one"
            );
            assert_eq!(p.propensity, 1.0);
            if s.explored {
                paired += 1;
                assert_eq!(p.shadow, Some(s.chosen), "{}", p.reason);
                let name = &p.candidates[s.chosen].name;
                assert!(
                    p.reason
                        .contains(&format!("; exploring: also run it on {name} (predicted ")),
                    "{}",
                    p.reason
                );
                assert!(!p.reason.starts_with("exploring: "), "{}", p.reason);
            } else {
                assert_eq!((p.chosen, &p.reason, p.shadow), (s.chosen, &s.reason, None));
            }
        }
        assert!(paired > 0);
        // Above the rate, pairs draw too, for a cheaper tier only: a dearer draw never serves
        // there, and substitution never explores.
        let mut beyond = 0;
        for i in 0..400 {
            let u = 0.05 + 0.95 * f64::from(i) / 400.0;
            let (s, p) = (
                by_substitution.route(&req(hard), u).unwrap(),
                by_pairs.route(&req(hard), u).unwrap(),
            );
            assert!(!s.explored);
            assert_eq!(
                (p.chosen, p.planned, p.propensity),
                (s.chosen, s.planned, 1.0)
            );
            assert_eq!(p.explored, p.shadow.is_some());
            if let Some(t) = p.shadow {
                beyond += 1;
                assert!(t < p.chosen, "{}", p.reason);
            }
        }
        assert!(beyond > 0);
        // A rate of 0 turns exploration off, pairs included.
        let off = router_with(|s| {
            s.explore_by = ExploreBy::Pairs;
            s.exploration_rate = 0.0;
        });
        for i in 0..100 {
            let d = off.route(&req(hard), f64::from(i) / 100.0).unwrap();
            assert!(!d.explored && d.shadow.is_none(), "{}", d.reason);
        }
        // A dearer draw serves the task as by substitution: it risks no quality.
        let easy = "What is 2+2?";
        let mut upward = 0;
        for (s, p) in both(easy) {
            if s.explored && s.chosen > s.planned {
                upward += 1;
                assert_eq!((p.chosen, p.shadow, p.explored), (s.chosen, None, true));
                assert!(p.reason.starts_with("exploring: "), "{}", p.reason);
            }
        }
        assert!(upward > 0);
        // With pairs, a decision that explored by serving a dearer draw may still be shadowed
        // to measure quality kept, on the scope's shadow tier (its id says it is no pair).
        let measuring = router_with(|s| {
            s.explore_by = ExploreBy::Pairs;
            s.shadow_rate = 0.2;
        });
        let (mut explored, mut shadowed) = (0, 0);
        for i in 0..1000 {
            let d = measuring.route(&req(easy), f64::from(i) / 1000.0).unwrap();
            if d.explored && d.exploration_pair().is_none() {
                explored += 1;
                assert!(d.chosen > d.planned, "{}", d.reason);
                if let Some(s) = d.shadow {
                    shadowed += 1;
                    assert_eq!(
                        d.candidates[s].tier,
                        measuring.table().policy.default.shadow_tier
                    );
                }
            }
        }
        assert!(explored > 0 && shadowed > 0, "{explored} {shadowed}");
    }

    #[test]
    fn auto_explores_by_pairs_while_callers_answer_them_and_else_substitutes_within_the_rate() {
        let by = |e: ExploreBy| router_with(move |s| s.explore_by = e);
        let (sub, pairs, auto) = (
            by(ExploreBy::Substitution),
            by(ExploreBy::Pairs),
            by(ExploreBy::Auto),
        );
        let unanswered = router_planned(
            |s| s.explore_by = ExploreBy::Auto,
            |p| p.pairs_answered = false,
        );
        let mut within = (0, 0);
        let hard = "Prove that every finite integral domain is a field, then compute the \
                    number of elements of order 6 in S_7 and justify each step.";
        for task in ["What is 2+2?", hard] {
            for i in 0..1000 {
                let u = f64::from(i) / 1000.0;
                let route = |r: &Router| r.route(&req(task), u).unwrap();
                let (s, p, a, n) = (route(&sub), route(&pairs), route(&auto), route(&unanswered));
                // Callers that answer (and a new scope's, until one leaves a pair unanswered):
                // exactly pairs.
                assert_eq!(a, p);
                if u < 0.05 {
                    // Within the rate, callers that leave pairs unanswered get substitution.
                    assert_eq!(n, s);
                    within.0 += usize::from(s.explored);
                } else {
                    // Beyond it, the plan's tier serves as by substitution, and pairs are still
                    // asked for (answering one turns pairs back on), on the next 0.05 of draws
                    // only: a caller that runs none is not asked on every task.
                    assert_eq!((n.chosen, n.planned), (s.chosen, s.planned));
                    assert_eq!(n.explored, n.shadow.is_some());
                    if let Some(t) = n.shadow {
                        assert!(u < 0.1 && t < n.chosen, "{u}: {}", n.reason);
                    }
                    within.1 += usize::from(n.shadow.is_some());
                }
            }
        }
        assert!(within.0 > 0 && within.1 > 0, "{within:?}");
    }

    #[test]
    fn unknown_team_and_workflow_use_the_default_policy() {
        let r = router();
        let d = r
            .route(
                &RouteRequest {
                    task: "hello",
                    team: "nobody",
                    workflow: "nothing",
                    ..Default::default()
                },
                0.9,
            )
            .unwrap();
        assert_eq!(d.scope, "default");
        let d = r
            .route(
                &RouteRequest {
                    task: "hello",
                    team: "support",
                    workflow: "support.reply",
                    ..Default::default()
                },
                0.9,
            )
            .unwrap();
        assert_eq!(d.scope, "team:support/workflow:support.reply");
        assert_eq!(d.candidates[0].name, "medium");
    }

    proptest::proptest! {
        #[test]
        fn any_task_gets_an_allowed_tier_and_finite_numbers(task in "\\PC{1,400}", team in "[a-z]{0,8}", wf in "(gsm8k|support.reply|[a-z/]{0,10})", draw in 0.0f64..1.0) {
            let r = router();
            if let Ok(d) = r.route(&RouteRequest { task: &task, team: &team, workflow: &wf, ..Default::default() }, draw) {
                let table = r.table();
                let scope = table.policy.resolve(&team, &wf);
                proptest::prop_assert!(scope.allowed.contains(&d.tier().tier));
                proptest::prop_assert!((0.0..=1.0).contains(&d.complexity));
                for c in &d.candidates {
                    proptest::prop_assert!((0.0..=1.0).contains(&c.predicted_quality));
                    proptest::prop_assert!(c.estimated_cost_usd.is_finite() && c.estimated_cost_usd >= 0.0);
                }
                let t: Vec<f64> = d.candidates.iter().map(|c| c.threshold).collect();
                proptest::prop_assert!(t.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }
}
