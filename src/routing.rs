//! The Route decision: validate, score complexity, pick the scope's plan, choose the cheapest
//! tier whose threshold admits the task (or explore one tier cheaper), and explain it.
//!
//! Reads only immutable snapshots (the model and an [`ArcSwap`]ed [`RoutingTable`]): no lock, no
//! I/O, no clock, and the exploration draw is handed in, so the same inputs give the same answer.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::classifier::ComplexityModel;
use crate::features::TaskInput;
use crate::learning::{BANDS, RoutingTable};
use crate::policy::Policy;
use crate::training::band_of;

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
    #[error("task must not be empty")]
    EmptyTask,
    /// The task is larger than the configured maximum.
    #[error("task is {size} bytes, over the maximum of {max} bytes")]
    TaskTooLarge {
        /// Size of the task.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A label is too long to be a workflow or team name.
    #[error("{field} is {size} bytes, over the maximum of {max} bytes")]
    LabelTooLong {
        /// Field name.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
}

impl RouteError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RouteError::EmptyTask | RouteError::TaskTooLarge { .. } => "task",
            RouteError::LabelTooLong { field, .. } => field,
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
    /// Whether this decision explored one tier below the safe choice.
    pub explored: bool,
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

const MAX_LABEL_BYTES: usize = 256;

/// Decides for one request against a routing table. `explore_draw` is a uniform number in
/// [0, 1) supplied by the caller (random in the server, seeded in replay).
pub fn decide(
    model: &ComplexityModel,
    table: &RoutingTable,
    limits: &Limits,
    req: &RouteRequest<'_>,
    explore_draw: f64,
) -> Result<Decision, RouteError> {
    if req.task.len() > limits.max_task_bytes {
        return Err(RouteError::TaskTooLarge {
            size: req.task.len(),
            max: limits.max_task_bytes,
        });
    }
    if req.task.trim().is_empty() {
        return Err(RouteError::EmptyTask);
    }
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
    }
    let complexity = model.complexity(&TaskInput {
        text: req.task,
        workflow: req.workflow,
        task_type: req.task_type,
        expected_output_tokens: req.expected_output_tokens,
    });
    let band = band_of(complexity, BANDS);
    let policy: &Policy = &table.policy;
    let scope = policy.resolve(req.team, req.workflow);
    let plan = table.plan(&scope.key);
    let input_tokens = (req.task.len() as u64).div_ceil(4);
    let output_tokens = if req.expected_output_tokens > 0 {
        u64::from(req.expected_output_tokens)
    } else {
        plan.expected_output_tokens(req.workflow)
    };
    let candidates: Vec<Candidate> = plan
        .tiers
        .iter()
        .map(|t| {
            let tier = &policy.tiers[t.tier];
            let cost_micros = tier.cost_micros(input_tokens, output_tokens);
            Candidate {
                tier: t.tier,
                name: tier.name.clone(),
                model: tier.model.clone(),
                predicted_quality: t.predicted[band],
                estimated_cost_usd: cost_micros as f64 / 1e6,
                cost_micros,
                threshold: t.threshold,
            }
        })
        .collect();
    let costs: Vec<f64> = candidates.iter().map(|c| c.estimated_cost_usd).collect();
    let safe = plan.slot_for(complexity, band, &costs);
    let explored = safe > 0 && explore_draw < plan.policy.exploration_rate;
    let chosen = if explored { safe - 1 } else { safe };
    let fallback = (chosen + 1 < candidates.len()).then_some(chosen + 1);
    let reason = explain(
        &candidates,
        chosen,
        safe,
        complexity,
        &scope.key,
        scope.quality_bar,
    );
    Ok(Decision {
        scope: scope.key.clone(),
        chosen,
        complexity,
        band,
        explored,
        candidates,
        fallback,
        policy_version: policy.version.clone(),
        input_tokens,
        output_tokens,
        reason,
    })
}

/// One line on why the chosen tier won.
fn explain(
    candidates: &[Candidate],
    chosen: usize,
    safe: usize,
    complexity: f64,
    scope: &str,
    bar: f64,
) -> String {
    let c = &candidates[chosen];
    if chosen != safe {
        return format!(
            "exploring: {} instead of {} (complexity {complexity:.2}) so scope {scope} keeps learning",
            c.name, candidates[safe].name
        );
    }
    if candidates.len() == 1 {
        return format!("{} is the only allowed tier in scope {scope}", c.name);
    }
    match chosen.checked_sub(1).map(|i| &candidates[i]) {
        None => format!(
            "complexity {complexity:.2}: {} (predicted {:.2}) is the cheapest tier that keeps scope {scope} at its bar {bar:.2}",
            c.name, c.predicted_quality
        ),
        Some(cheaper) => format!(
            "complexity {complexity:.2}: {} predicted {:.2} vs {:.2} on {} is worth the extra cost to keep scope {scope} at its bar {bar:.2}",
            c.name, c.predicted_quality, cheaper.predicted_quality, cheaper.name
        ),
    }
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

    /// Routes one request.
    pub fn route(&self, req: &RouteRequest<'_>, explore_draw: f64) -> Result<Decision, RouteError> {
        decide(
            &self.model,
            &self.table.load(),
            &self.limits,
            req,
            explore_draw,
        )
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
    use std::collections::HashMap;

    fn router() -> Router {
        let model = Arc::new(ComplexityModel::bundled().unwrap());
        let policy = Arc::new(Policy::embedded().unwrap());
        let table = RoutingTable::build(policy, &model.calibration, &HashMap::new(), None);
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
            crate::learning::DEFAULT_TYPICAL_OUTPUT_TOKENS
        );
    }

    #[test]
    fn exploration_goes_one_tier_cheaper_only_when_drawn() {
        let r = router();
        let hard = "Prove that every finite integral domain is a field, then compute the \
                    number of elements of order 6 in S_7 and justify each step.";
        let safe = r.route(&req(hard), 0.99).unwrap();
        assert!(safe.chosen > 0, "{safe:?}");
        let explored = r.route(&req(hard), 0.0).unwrap();
        assert!(explored.explored);
        assert_eq!(explored.chosen, safe.chosen - 1);
        // Same draw, same answer.
        assert_eq!(r.route(&req(hard), 0.0).unwrap(), explored);
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
