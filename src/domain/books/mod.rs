//! The books: spend accounting in hourly ledger cells and budgets enforced at Route; the ledger's
//! format is `ledger`, Route-time counts collect in `cells`, `flush` sends them to the store;
//! what is counted (the ledger metrics, [`RouteCount`]) is named here.
//!
//! Every Route reserves its estimated cost (integer micro-dollars) against the budgets that
//! cover its team and workflow and counts the decision in an hourly ledger cell (hour, team,
//! workflow, tier). Feedback reconciles: its counters (actual − estimate, the outcome, its score,
//! value, reuse) travel inside the outcome event and are applied by the store in the same atomic
//! step that spends the decision's nonce, so they count exactly once even through an outage
//! buffer. Decisions that never get feedback keep their estimate: they settle at it when their
//! decision id expires (the decision TTL).
//!
//! Route never waits on the store. Its reservations collect in a local pending map that the
//! background refresher flushes as idempotent counter batches, and budget checks read a local
//! view: the usage last read from the store, plus what this replica reserved since. Replicas
//! learn of each other's reservations at their next successful refresh, so with R replicas and
//! `reject` a hard limit can be overshot by the estimates the other replicas reserved since
//! their last successful refresh — at most (R − 1) × the budget left at that refresh. Tests pin
//! that bound. What it does not cover: `cheapest` keeps serving (and reserving) on the cheapest
//! tier past the limit by design; estimates come from the task size and the caller's output
//! hint, and a decision without feedback settles at its estimate, so an understated hint is
//! under-counted; and with `fail_open` during an outage the view is as old as the outage.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use hashbrown::Equivalent;

use crate::domain::calendar::HOUR_MS;
use crate::domain::decision::DecisionClaims;
use crate::domain::policy::{Budget, OnExhausted, OnStoreUnavailable, Policy, TokenKinds};
use crate::domain::routing::Decision;
use crate::domain::state::{CounterAdd, StateStore, StoreError};

mod cells;
mod flush;
mod ledger;
mod quality;

pub use cells::*;
pub use ledger::*;
pub use quality::ShadowRun;

/// Ledger metrics, as stored: what the books count. Route counts the [`RouteCount`]s,
/// Feedback and RecordReuse the rest (`outcome_counters`, `reuse_counters`). A new counter is
/// its name here and the line that counts it; the report declares what it shows of it.
pub mod metric {
    /// Decisions.
    pub const TASKS: &str = "tasks";
    /// Spend, micro-USD: the estimate at Route, reconciled to the actual at Feedback.
    pub const SPEND: &str = "spend";
    /// Counterfactual spend on the scope's premium tier, micro-USD.
    pub const PREMIUM: &str = "premium";
    /// Decisions whose tier a budget lowered.
    pub const DOWNGRADED: &str = "downgraded";
    /// Route calls a budget refused (tier field empty).
    pub const REJECTED: &str = "rejected";
    /// Decisions that explored.
    pub const EXPLORED: &str = "explored";
    /// What exploring cost against the plan's own choice: the explored tier's estimate less
    /// the planned tier's, micro-USD (negative where exploration tried a cheaper tier); for an
    /// exploration pair (`explore_by` "pairs" or "auto"), what its run beside the plan's cost,
    /// booked when the run is reported (a pair the caller ignores explores nothing).
    pub const EXPLORE_COST: &str = "explore_cost";
    /// Outcomes received.
    pub const OUTCOMES: &str = "outcomes";
    /// Outcomes that met the scope's bar.
    pub const COMPLETED: &str = "completed";
    /// Sum of outcome scores, in millionths.
    pub const SCORE: &str = "score_ppm";
    /// Sum of the bars the outcomes were judged against, in millionths.
    pub const BAR: &str = "bar_ppm";
    /// Value created, micro-USD.
    pub const VALUE: &str = "value";
    /// Human time displaced, seconds.
    pub const HUMAN_SECONDS: &str = "human_s";
    /// Human time displaced, priced at the loaded hourly cost, micro-USD.
    pub const HUMAN_VALUE: &str = "human_value";
    /// Decisions whose output was reused at least once (RecordReuse, or Feedback's early
    /// `reused` mark): each decision counts once, however often it is reused.
    pub const REUSED: &str = "reused";
    /// Reuse events: every RecordReuse adds its count (Feedback's `reused` mark adds 1).
    pub const REUSE_EVENTS: &str = "reuse_events";
    /// Outcomes whose reported token counts were clipped before they were booked
    /// ([`booked_tokens`](super::booked_tokens)).
    pub const CLIPPED: &str = "clipped";
    /// Outcomes another tier served than the one Route chose (Feedback's `served_tier`),
    /// counted in the cell of the decision (the tier Route chose).
    pub const FALLBACKS: &str = "fallbacks";
    /// Decisions whose Route answer named a shadow tier to measure quality kept (the scope's
    /// `shadow_rate`; an exploration pair is counted in [`EXPLORED`] instead).
    pub const SHADOWED: &str = "shadowed";
    /// What shadow runs cost, micro-USD, in the shadow tier's cell: apart from [`SPEND`], in
    /// no budget.
    pub const SHADOW_SPEND: &str = "shadow_spend";
    /// Shadow pairs posted (each an outcome with a shadow score), in the served tier's cell.
    pub const PAIRS: &str = "pairs";
    /// Over the pairs: the routed scores r and shadow scores s in millionths, and their
    /// products (r², s², r·s, in millionths too), for the paired ratio and its interval.
    pub const PAIR_R: &str = "pair_r_ppm";
    /// See [`PAIR_R`].
    pub const PAIR_S: &str = "pair_s_ppm";
    /// See [`PAIR_R`].
    pub const PAIR_RR: &str = "pair_rr_ppm";
    /// See [`PAIR_R`].
    pub const PAIR_SS: &str = "pair_ss_ppm";
    /// See [`PAIR_R`].
    pub const PAIR_RS: &str = "pair_rs_ppm";
    /// Over the pairs: the routed and shadow costs in micro-USD, and their products (in
    /// micro-USD², saturating), for the saving's ratio and interval.
    pub const PAIR_CR: &str = "pair_cr";
    /// See [`PAIR_CR`].
    pub const PAIR_CS: &str = "pair_cs";
    /// See [`PAIR_CR`].
    pub const PAIR_CRR: &str = "pair_crr";
    /// See [`PAIR_CR`].
    pub const PAIR_CSS: &str = "pair_css";
    /// See [`PAIR_CR`].
    pub const PAIR_CRS: &str = "pair_crs";
    /// Outcomes whose decision could have gone to the premium tier (premium propensity > 0).
    pub const IPS_SUPPORTED: &str = "ips_n";
    /// Outcomes whose decision could not have gone to the premium tier (propensity 0).
    pub const IPS_UNSUPPORTED: &str = "ips_unsupported";
    /// Outcomes the premium tier served by a decision that could have gone elsewhere
    /// (propensity < 1): what the inverse-propensity estimate stands on.
    pub const IPS_EXPLORED: &str = "ips_explored";
    /// Over supported outcomes that premium served, weight w = 1 / premium propensity and score
    /// y: Σw, Σw·y, Σw², Σw²·y, Σw²·y², each in millionths (the Hajek estimate and its
    /// interval).
    pub const IPS_W: &str = "ips_w_ppm";
    /// See [`IPS_W`].
    pub const IPS_WY: &str = "ips_wy_ppm";
    /// See [`IPS_W`].
    pub const IPS_WW: &str = "ips_ww_ppm";
    /// See [`IPS_W`].
    pub const IPS_WWY: &str = "ips_wwy_ppm";
    /// See [`IPS_W`].
    pub const IPS_WWYY: &str = "ips_wwyy_ppm";
}

/// A reported input count is believed up to this many times what Route measured of the task:
/// room for the system prompt and context a caller does not route on, none for a count of 1e9.
pub const REPORTED_INPUT_FACTOR: u64 = 8;

/// The token counts an outcome is booked and learned with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookedTokens {
    /// Input tokens.
    pub input: u64,
    /// Of `input`, the tokens served from the provider's prompt cache.
    pub cached_input: u64,
    /// Output tokens.
    pub output: u64,
    /// Of `output`, the reasoning tokens.
    pub reasoning: u64,
    /// Whether a reported count was over its bound and clipped to it.
    pub clipped: bool,
}

impl BookedTokens {
    /// The counts by kind, as a tier prices them.
    pub fn kinds(&self) -> TokenKinds {
        TokenKinds {
            input: self.input,
            cached_input: self.cached_input,
            output: self.output,
            reasoning: self.reasoning,
        }
    }
}

/// An outcome's score and the bar it is held to (the scope plan's,
/// [`ScopePlan::bar_for`](crate::domain::learning::ScopePlan::bar_for)): it counts as completed
/// when the score reaches the bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grade {
    /// The outcome score, in [0, 1].
    pub score: f64,
    /// The bar, absolute.
    pub bar: f64,
}

/// The token counts a Feedback reported, each `None` where the caller left it out. Negative
/// counts are refused before they get here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedTokens {
    /// Input tokens, cached ones included.
    pub input: Option<i64>,
    /// Of the input tokens, those billed at the cached input price.
    pub cached_input: Option<i64>,
    /// Output tokens, reasoning ones included.
    pub output: Option<i64>,
    /// Of the output tokens, those billed at the reasoning price.
    pub reasoning: Option<i64>,
}

/// What an outcome's reported token counts are booked as. An input or output count the caller
/// did not report, or reported as 0 (proto3's default), is Route's own figure from the
/// decision. A reported count is trusted up to a bound: input tokens to
/// [`REPORTED_INPUT_FACTOR`] × what Route measured of the task (unbounded for ids without that
/// figure), output tokens to the scope's `max_output_tokens`. Cached input tokens are a part of
/// the booked input and reasoning tokens a part of the booked output: absent means none, and a
/// part larger than its total is clipped to the total. Clipped counts are counted
/// ([`metric::CLIPPED`]), so one self-reported 1e9 cannot book hundreds of dollars, exhaust a
/// budget other teams share, or price another team's tasks.
pub fn booked_tokens(
    policy: &Policy,
    claims: &DecisionClaims,
    reported: ReportedTokens,
) -> BookedTokens {
    let scope = policy.scope(&claims.scope);
    let pick = |reported: Option<i64>, estimate: u64, bound: u64| match reported {
        Some(v) if v > 0 => {
            let v = v as u64;
            (v.min(bound), v > bound)
        }
        _ => (estimate, false),
    };
    let input_bound = match claims.input_tokens {
        0 => u64::MAX,
        measured => u64::from(measured).saturating_mul(REPORTED_INPUT_FACTOR),
    };
    let (input, a) = pick(reported.input, u64::from(claims.input_tokens), input_bound);
    let (output, b) = pick(
        reported.output,
        u64::from(claims.output_tokens),
        scope.max_output_tokens.max(1),
    );
    // The parts: none unless reported, never more than their (booked) totals.
    let (cached_input, c) = pick(reported.cached_input, 0, input);
    let (reasoning, d) = pick(reported.reasoning, 0, output);
    BookedTokens {
        input,
        cached_input,
        output,
        reasoning,
        clipped: a || b || c || d,
    }
}

/// What Route counts in each ledger cell ([`CellDelta`] holds one number per count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCount {
    /// Decisions.
    Tasks,
    /// Reserved estimates, micro-USD.
    Spend,
    /// Premium counterfactual estimates, micro-USD.
    Premium,
    /// Budget downgrades.
    Downgraded,
    /// Budget rejections.
    Rejected,
    /// Explorations.
    Explored,
    /// Explorations' estimated cost against the planned tier, micro-USD.
    ExploreCost,
    /// Decisions that named a shadow tier.
    Shadowed,
}

impl RouteCount {
    /// Every count, in [`CellDelta`]'s order.
    pub const ALL: [RouteCount; 8] = [
        RouteCount::Tasks,
        RouteCount::Spend,
        RouteCount::Premium,
        RouteCount::Downgraded,
        RouteCount::Rejected,
        RouteCount::Explored,
        RouteCount::ExploreCost,
        RouteCount::Shadowed,
    ];

    /// The ledger metric it is stored under.
    pub const fn metric(self) -> &'static str {
        match self {
            RouteCount::Tasks => metric::TASKS,
            RouteCount::Spend => metric::SPEND,
            RouteCount::Premium => metric::PREMIUM,
            RouteCount::Downgraded => metric::DOWNGRADED,
            RouteCount::Rejected => metric::REJECTED,
            RouteCount::Explored => metric::EXPLORED,
            RouteCount::ExploreCost => metric::EXPLORE_COST,
            RouteCount::Shadowed => metric::SHADOWED,
        }
    }
}

/// What a budget did to a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetAction {
    /// Nothing: every covering budget has room.
    None,
    /// The tier was lowered (soft limit, or hard limit with `cheapest`).
    Downgraded {
        /// The budget that lowered it.
        budget: String,
        /// Tier the router would have chosen.
        from: String,
    },
}

/// A hard budget refused the call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "budget {budget} is exhausted: {used_usd:.6} USD used of {limit_usd:.6} USD this {period} (resets at {resets_ms} ms since epoch)"
)]
pub struct BudgetExhausted {
    /// Budget id.
    pub budget: String,
    /// Used in the period, USD.
    pub used_usd: f64,
    /// The hard limit, USD.
    pub limit_usd: f64,
    /// Period name.
    pub period: &'static str,
    /// When the next period starts.
    pub resets_ms: u64,
}

/// A budget's position in its current period.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetUse {
    /// The budget.
    pub budget: std::sync::Arc<Budget>,
    /// Start of the current period.
    pub period_start_ms: u64,
    /// Used in it, micro-USD.
    pub used_micros: i64,
}

/// Spend accounting and budget enforcement for one replica.
pub struct Books {
    local: Mutex<Local>,
    shards: [Mutex<Shard>; SHARDS],
    /// The label caps, shared by all shards (taken only for a label a shard has not seen).
    labels: Mutex<Labels>,
    flush_lock: tokio::sync::Mutex<()>,
    store_down: AtomicBool,
    observer: std::sync::Arc<dyn Observer>,
}

impl Default for Books {
    fn default() -> Self {
        Self::new(std::sync::Arc::new(Unobserved))
    }
}

impl Books {
    /// Empty books that tell `observer` what they count.
    pub fn new(observer: std::sync::Arc<dyn Observer>) -> Self {
        Self {
            local: Mutex::default(),
            shards: Default::default(),
            labels: Mutex::default(),
            flush_lock: tokio::sync::Mutex::default(),
            store_down: AtomicBool::default(),
            observer,
        }
    }

    /// Tells the observer what a batch of increments counted (budget usage is not a ledger
    /// count and is left out).
    fn observe(&self, adds: &[CounterAdd]) {
        for a in adds {
            if !a.hash.starts_with(LEDGER_PREFIX) {
                continue;
            }
            if let Some((metric, team, workflow, tier)) = parse_ledger_field(&a.field) {
                self.observer.counted(Counted {
                    metric,
                    team,
                    workflow,
                    tier,
                    delta: a.delta,
                });
            }
        }
    }

    /// Ledger counters of a decision's cell (its issue hour, team, workflow and tier), zeros left
    /// out. Later events about a decision (outcome, reuse) count in its issue hour, so a
    /// period's rates are those of the outputs produced in it.
    fn cell_counters(&self, claims: &DecisionClaims, values: &[(&str, i64)]) -> Vec<CounterAdd> {
        self.tier_cell_counters(claims, &claims.tier, values)
    }

    /// Ledger counters of the cell of a decision's issue hour, team and workflow on `tier`
    /// (another tier than the decision's where a fallback served it), zeros left out.
    fn tier_cell_counters(
        &self,
        claims: &DecisionClaims,
        tier: &str,
        values: &[(&str, i64)],
    ) -> Vec<CounterAdd> {
        let (team, workflow) = {
            let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
            let t = labels.team(&claims.team).to_string();
            let w = labels.workflow(&t, &claims.workflow).to_string();
            (clean(&t).into_owned(), clean(&w).into_owned())
        };
        let hash = ledger_hash(claims.issued_ms);
        values
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|&(m, v)| CounterAdd {
                hash: hash.clone(),
                field: ledger_field(m, &team, &workflow, tier),
                delta: v,
            })
            .collect()
    }

    /// The counters of a reuse: `events` reuse events, and the decision counted as reused once
    /// (to be recorded with the decision's reuse mark, which only the first reuse spends).
    pub fn reuse_counters(
        &self,
        claims: &DecisionClaims,
        events: u32,
    ) -> (Vec<CounterAdd>, Vec<CounterAdd>) {
        (
            self.cell_counters(claims, &[(metric::REUSE_EVENTS, i64::from(events))]),
            self.cell_counters(claims, &[(metric::REUSED, 1)]),
        )
    }

    /// A team as budgets with team shares count it: its ledger label (teams over the cap share
    /// [`OTHER`]).
    fn budget_team(&self, team: &str) -> String {
        let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        clean(labels.team(team)).into_owned()
    }

    /// Counts settled accounting (outcomes, reuse) in the exported metrics.
    pub fn observe_outcome(&self, counters: &[CounterAdd]) {
        self.observe(counters);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // A poisoned lock only means a panic elsewhere mid-update; the maps stay valid.
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a Route in this thread's shard, in the cell of (hour, team, workflow, tier) with
    /// labels over the caps counted as [`OTHER`].
    fn bump_cell(
        &self,
        hour: u64,
        team: &str,
        workflow: &str,
        tier: &str,
        f: impl FnOnce(&mut CellDelta),
    ) {
        let i = SHARD.with(|i| *i);
        let mut shard = self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Shard {
            cells,
            teams,
            workflows,
        } = &mut *shard;
        let team = self.admitted(teams, team, |l, t| l.team(t));
        let known = workflows.get(team);
        let workflow = if workflow.is_empty() || known.is_some_and(|s| s.contains(workflow)) {
            workflow
        } else {
            let got = self
                .labels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .workflow(team, workflow);
            if got == workflow {
                workflows
                    .entry_ref(team)
                    .or_default()
                    .insert(workflow.to_string());
            }
            got
        };
        let key = CellRef {
            hour,
            team,
            workflow,
            tier,
        };
        bump(cells, key, f);
    }

    /// `label` if the caps admit it (asked of the shared labels once per shard), else
    /// [`OTHER`]. Only admitted labels are remembered, so junk labels cannot grow a shard.
    fn admitted<'a>(
        &self,
        seen: &mut hashbrown::HashSet<String>,
        label: &'a str,
        admit: impl FnOnce(&mut Labels, &'a str) -> &'a str,
    ) -> &'a str {
        if label.is_empty() || seen.contains(label) {
            return label;
        }
        let got = admit(
            &mut self.labels.lock().unwrap_or_else(PoisonError::into_inner),
            label,
        );
        if got == label {
            seen.insert(label.to_string());
        }
        got
    }

    /// Marks whether the store is reachable (budgets with `fail_closed` depend on it).
    pub fn set_store_down(&self, down: bool) {
        self.store_down.store(down, Ordering::Relaxed);
    }

    /// Applies the budgets covering the caller to a fresh decision (possibly lowering its tier),
    /// then reserves its estimate and counts it. On `Err` the call is refused; the refusal is
    /// counted, nothing is reserved.
    pub fn admit(
        &self,
        policy: &Policy,
        d: &mut Decision,
        team: &str,
        workflow: &str,
        now_ms: u64,
    ) -> Result<BudgetAction, BudgetExhausted> {
        let mut action = BudgetAction::None;
        // Only a call that a budget covers takes the shared lock: check and reserve must be one
        // step. Everything else counts in this thread's shard.
        if policy.budgets.iter().any(|b| b.covers(team, workflow)) {
            let mut local = self.lock();
            let mut exhausted = false;
            let usual = d.chosen;
            let mut target = usual;
            let store_down = self.store_down.load(Ordering::Relaxed);
            // The caller's part of budgets with team shares, under its ledger label.
            let team_key = policy
                .budgets
                .iter()
                .any(|b| b.team_share.is_some())
                .then(|| self.budget_team(team));
            for b in policy.budgets.iter().filter(|b| b.covers(team, workflow)) {
                let start = b.period.start_ms(now_ms);
                let used = local.used(&b.id, start);
                if let Some(hard) = b.hard_limit_micros {
                    let closed =
                        store_down && b.on_store_unavailable == OnStoreUnavailable::FailClosed;
                    let cost = d.candidates[usual].cost_micros;
                    // The whole budget, or this team's share of it.
                    let over = if closed || used.saturating_add(cost) > hard {
                        Some((b.id.clone(), used, hard))
                    } else {
                        b.team_share
                            .zip(team_key.as_deref())
                            .and_then(|(share, t)| {
                                let cap = (hard as f64 * share) as i64;
                                let mine = local.used(&team_usage_key(&b.id, t), start);
                                (mine.saturating_add(cost) > cap)
                                    .then(|| (format!("{} (team {t}'s share)", b.id), mine, cap))
                            })
                    };
                    if let Some((budget, used, limit)) = over {
                        match b.on_exhausted {
                            OnExhausted::Reject => {
                                drop(local);
                                self.bump_cell(now_ms / HOUR_MS, team, workflow, "", |c| {
                                    c.add(RouteCount::Rejected, 1);
                                });
                                return Err(BudgetExhausted {
                                    budget,
                                    used_usd: used as f64 / 1e6,
                                    limit_usd: limit as f64 / 1e6,
                                    period: b.period.as_str(),
                                    resets_ms: b.period.next_start_ms(now_ms),
                                });
                            }
                            OnExhausted::Cheapest => {
                                exhausted = true;
                                if target > 0 {
                                    target = 0;
                                    action = BudgetAction::Downgraded {
                                        budget: b.id.clone(),
                                        from: d.candidates[usual].name.clone(),
                                    };
                                }
                                continue;
                            }
                        }
                    }
                }
                if let Some(soft) = b.soft_limit_micros
                    && used >= soft
                    && usual > 0
                    && target > usual - 1
                {
                    target = usual - 1;
                    action = BudgetAction::Downgraded {
                        budget: b.id.clone(),
                        from: d.candidates[usual].name.clone(),
                    };
                }
            }
            if target != usual || exhausted {
                // A budget is biting: no second call, and the tier is the budget's doing, not a
                // draw's (it would be got for certain; premium only where it is the target). An
                // exploration pair without its second call explores nothing.
                if d.exploration_pair().is_some() {
                    d.explored = false;
                    d.reason = crate::domain::routing::without_pair(&d.reason);
                }
                d.shadow = None;
            }
            if target != usual {
                d.propensity = 1.0;
                d.premium_propensity = if target + 1 == d.candidates.len() {
                    1.0
                } else {
                    0.0
                };
                d.chosen = target;
                d.fallback = (target + 1 < d.candidates.len()).then_some(target + 1);
                if let BudgetAction::Downgraded { budget, from } = &action {
                    d.reason = format!(
                        "budget {budget}: {} instead of {from} ({})",
                        d.candidates[target].name, d.reason
                    );
                }
            }
            if exhausted {
                // Past a hard limit there is nothing to escalate to.
                d.fallback = None;
            }
            let cost = d.tier().cost_micros;
            for b in policy.budgets.iter().filter(|b| b.covers(team, workflow)) {
                let start = b.period.start_ms(now_ms);
                add_usage(&mut local.pending, &b.id, start, cost);
                if let (Some(_), Some(t)) = (b.team_share, team_key.as_deref()) {
                    add_usage(&mut local.pending, &team_usage_key(&b.id, t), start, cost);
                }
            }
        }
        let (cost, premium) = (d.tier().cost_micros, d.premium_micros());
        // An exploration pair's shadow is the drawn tier, not a measurement of quality kept;
        // it counts as exploration once its run is reported (`Books::shadow_counters`).
        let pair = d.exploration_pair().is_some();
        let (explored, downgraded) = (d.explored && !pair, action != BudgetAction::None);
        let shadowed = d.shadow.is_some() && !pair;
        // Priced on Route's estimates, as chosen (after any budget action) against planned.
        let explore_cost = if explored {
            cost - d.candidates.get(d.planned).map_or(cost, |c| c.cost_micros)
        } else {
            0
        };
        self.bump_cell(
            now_ms / HOUR_MS,
            team,
            workflow,
            &d.candidates[d.chosen].name,
            |c| {
                c.add(RouteCount::Tasks, 1);
                c.add(RouteCount::Spend, cost);
                c.add(RouteCount::Premium, premium);
                c.add(RouteCount::Explored, i64::from(explored));
                c.add(RouteCount::ExploreCost, explore_cost);
                c.add(RouteCount::Downgraded, i64::from(downgraded));
                c.add(RouteCount::Shadowed, i64::from(shadowed));
            },
        );
        Ok(action)
    }

    /// The counters that settle one outcome, to be recorded with it atomically, and its actual
    /// cost in micro-USD: the booked tokens, each kind at the price for it of the tier that
    /// served (`served`: the decision's tier, or the one the caller fell back to)
    /// ([`Tier::bill_micros`](crate::domain::policy::Tier::bill_micros)), which the spend and
    /// the covering budgets are reconciled to. It counts as completed when its `grade`'s score
    /// reaches its bar.
    ///
    /// The outcome (its spend, premium counterfactual, score and value) is booked in the served
    /// tier's cell. After a fallback, Route's reservation leaves the decision's cell (its spend
    /// and premium estimates are taken back there) and the decision's cell counts one
    /// [`metric::FALLBACKS`]; what describes the decision (tasks, explorations, downgrades,
    /// reuse) stays in its cell.
    pub fn outcome_counters(
        &self,
        policy: &Policy,
        claims: &DecisionClaims,
        served: &str,
        grade: Grade,
        tokens: BookedTokens,
        reused: bool,
    ) -> (Vec<CounterAdd>, i64) {
        let Grade { score, bar } = grade;
        let (kinds, clipped) = (tokens.kinds(), tokens.clipped);
        let scope = policy.scope(&claims.scope);
        let estimate = claims.estimate_micros as i64;
        let premium_estimate = claims.premium_micros as i64;
        let fell_back = served != claims.tier;
        // Each kind of token at the serving tier's price for it; the premium counterfactual
        // prices the same tokens at the premium tier's prices.
        let actual = policy
            .tier_index(served)
            .map_or(estimate, |i| policy.tiers[i].bill_micros(&kinds));
        let premium = scope
            .allowed
            .last()
            .map_or(actual, |&i| policy.tiers[i].bill_micros(&kinds));
        let bar_ppm = (bar * 1e6).round() as i64;
        let score_ppm = (score * 1e6).round() as i64;
        let completed = score_ppm >= bar_ppm;
        let value = if completed {
            scope
                .value_per_success_usd
                .map_or(0, |v| (v * 1e6).round() as i64)
        } else {
            0
        };
        // Human time displaced by an output that met the bar, and its price.
        let minutes = if completed {
            scope.human_minutes_per_success.unwrap_or(0.0)
        } else {
            0.0
        };
        let human_seconds = (minutes * 60.0).round() as i64;
        let human_value = scope
            .loaded_cost_per_hour_usd
            .map_or(0, |rate| (minutes / 60.0 * rate * 1e6).round() as i64);
        // The reservation is reconciled in place, or moved to the serving tier's cell.
        let (spend, premium_delta) = if fell_back {
            (actual, premium)
        } else {
            (actual - estimate, premium - premium_estimate)
        };
        let mut out = self.tier_cell_counters(
            claims,
            served,
            &[
                (metric::OUTCOMES, 1),
                (metric::COMPLETED, i64::from(completed)),
                (metric::SCORE, score_ppm),
                (metric::BAR, bar_ppm),
                (metric::SPEND, spend),
                (metric::PREMIUM, premium_delta),
                (metric::VALUE, value),
                (metric::HUMAN_SECONDS, human_seconds),
                (metric::HUMAN_VALUE, human_value),
                (metric::CLIPPED, i64::from(clipped)),
            ],
        );
        out.extend(self.cell_counters(
            claims,
            &[
                // The early reuse mark is one reuse event; the decision itself is counted as
                // reused by its reuse mark (see `reuse_counters`), once. Both in the decision's
                // cell, where RecordReuse counts them.
                (metric::REUSE_EVENTS, i64::from(reused)),
                (metric::FALLBACKS, i64::from(fell_back)),
                (metric::SPEND, if fell_back { -estimate } else { 0 }),
                (
                    metric::PREMIUM,
                    if fell_back { -premium_estimate } else { 0 },
                ),
            ],
        ));
        if actual != estimate {
            for b in policy
                .budgets
                .iter()
                .filter(|b| b.covers(&claims.team, &claims.workflow))
            {
                let hash = budget_hash(&b.id, b.period.start_ms(claims.issued_ms));
                if b.team_share.is_some() {
                    out.push(CounterAdd {
                        hash: hash.clone(),
                        field: team_used_field(&self.budget_team(&claims.team)),
                        delta: actual - estimate,
                    });
                }
                out.push(CounterAdd {
                    hash,
                    field: BUDGET_USED.into(),
                    delta: actual - estimate,
                });
            }
        }
        (out, actual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counts_are_listed_in_cell_order_each_under_its_own_metric() {
        let mut names = Vec::new();
        for (i, c) in RouteCount::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i, "{c:?} out of order in RouteCount::ALL");
            names.push(c.metric());
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            RouteCount::ALL.len(),
            "two counts share a metric"
        );
        let mut d = CellDelta::default();
        d.add(RouteCount::Explored, 2);
        d.add(RouteCount::Explored, 1);
        assert_eq!(
            (d.get(RouteCount::Explored), d.get(RouteCount::Tasks)),
            (3, 0)
        );
    }
}
