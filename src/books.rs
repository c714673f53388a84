//! The books: spend accounting and budgets.
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

use crate::decision::DecisionClaims;
use crate::policy::{Budget, OnExhausted, OnStoreUnavailable, Policy};
use crate::routing::Decision;
use crate::store::{CounterAdd, StateStore, StoreError};

/// Length of one ledger bucket.
pub const HOUR_MS: u64 = 3_600_000;
/// Distinct team labels counted separately; later ones are counted as [`OTHER`].
pub const MAX_TEAMS: usize = 100;
/// Distinct workflow labels counted separately; later ones are counted as [`OTHER`].
pub const MAX_WORKFLOWS: usize = 200;
/// Label of everything over a cardinality cap.
pub const OTHER: &str = "other";
/// Separator of the parts of a ledger field name (never inside a label: see [`clean`]).
const SEP: char = '\u{1f}';

/// Ledger metrics, as stored. Route writes the first six, Feedback the rest.
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
}

/// Prefix of every ledger counter hash.
pub const LEDGER_PREFIX: &str = "ledger:";

/// Counter hash of the ledger hour containing `ms`.
pub fn ledger_hash(ms: u64) -> String {
    ledger_hash_of_hour(ms / HOUR_MS)
}

/// Counter hash of ledger hour `hour` (hours since the epoch).
pub fn ledger_hash_of_hour(hour: u64) -> String {
    format!("{LEDGER_PREFIX}{hour}")
}

/// Counter hash of a budget's period (field [`BUDGET_USED`]): one hash per period, so old
/// periods expire with the store's retention and a read touches only the current one.
pub fn budget_hash(id: &str, period_start_ms: u64) -> String {
    format!("budget:{id}:{period_start_ms}")
}

/// Field of a budget period hash that holds its usage, micro-USD.
pub const BUDGET_USED: &str = "used";

/// Field name of a ledger metric for one cell.
pub fn ledger_field(metric: &str, team: &str, workflow: &str, tier: &str) -> String {
    format!("{metric}{SEP}{team}{SEP}{workflow}{SEP}{tier}")
}

/// Splits a ledger field into (metric, team, workflow, tier).
pub fn parse_ledger_field(field: &str) -> Option<(&str, &str, &str, &str)> {
    let mut it = field.split(SEP);
    let r = (it.next()?, it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some(r)
}

/// A label with control characters replaced, so it can never break a field name.
fn clean(label: &str) -> std::borrow::Cow<'_, str> {
    if label.chars().any(char::is_control) {
        label
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect::<String>()
            .into()
    } else {
        label.into()
    }
}

/// Caps the number of distinct label values, so metrics and the ledger stay bounded.
#[derive(Default)]
struct Labels {
    teams: hashbrown::HashSet<String>,
    workflows: hashbrown::HashSet<String>,
}

impl Labels {
    fn admit<'a>(set: &mut hashbrown::HashSet<String>, cap: usize, label: &'a str) -> &'a str {
        if label.is_empty() || set.contains(label) {
            return label;
        }
        if set.len() >= cap {
            return OTHER;
        }
        set.insert(label.to_string());
        label
    }

    fn team<'a>(&mut self, t: &'a str) -> &'a str {
        Self::admit(&mut self.teams, MAX_TEAMS, t)
    }

    fn workflow<'a>(&mut self, w: &'a str) -> &'a str {
        Self::admit(&mut self.workflows, MAX_WORKFLOWS, w)
    }
}

/// A ledger cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    /// Hour index (ms / [`HOUR_MS`]).
    pub hour: u64,
    /// Team label.
    pub team: String,
    /// Workflow label.
    pub workflow: String,
    /// Tier name (empty for rejections).
    pub tier: String,
}

/// Borrowed form of [`CellKey`] for allocation-free lookups (hashes the same).
#[derive(Hash)]
struct CellRef<'a> {
    hour: u64,
    team: &'a str,
    workflow: &'a str,
    tier: &'a str,
}

impl Equivalent<CellKey> for CellRef<'_> {
    fn equivalent(&self, k: &CellKey) -> bool {
        self.hour == k.hour
            && self.team == k.team
            && self.workflow == k.workflow
            && self.tier == k.tier
    }
}

/// Route-time counts of one cell not yet flushed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellDelta {
    /// Decisions.
    pub tasks: i64,
    /// Reserved estimates.
    pub spend: i64,
    /// Premium counterfactual estimates.
    pub premium: i64,
    /// Budget downgrades.
    pub downgraded: i64,
    /// Budget rejections.
    pub rejected: i64,
    /// Explorations.
    pub explored: i64,
}

impl CellDelta {
    fn counters(&self, k: &CellKey, out: &mut Vec<CounterAdd>) {
        let hash = ledger_hash_of_hour(k.hour);
        for (m, v) in [
            (metric::TASKS, self.tasks),
            (metric::SPEND, self.spend),
            (metric::PREMIUM, self.premium),
            (metric::DOWNGRADED, self.downgraded),
            (metric::REJECTED, self.rejected),
            (metric::EXPLORED, self.explored),
        ] {
            if v != 0 {
                out.push(CounterAdd {
                    hash: hash.clone(),
                    field: ledger_field(m, &k.team, &k.workflow, &k.tier),
                    delta: v,
                });
            }
        }
    }
}

/// Budget usage by budget id and period start.
type Usage = HashMap<String, HashMap<u64, i64>>;

fn usage_of(u: &Usage, id: &str, start: u64) -> i64 {
    u.get(id).and_then(|p| p.get(&start)).copied().unwrap_or(0)
}

fn add_usage(u: &mut Usage, id: &str, start: u64, delta: i64) {
    match u.get_mut(id) {
        Some(p) => *p.entry(start).or_default() += delta,
        None => {
            u.insert(id.to_string(), HashMap::from([(start, delta)]));
        }
    }
}

/// Route-time state behind one lock: budget reservations and batches (only calls covered by a
/// budget take it).
#[derive(Default)]
struct Local {
    /// Reserved here, not yet sent to the store.
    pending: Usage,
    /// The batch sent to the store and not yet acknowledged: resent as is (same id, so the
    /// store applies it once) until it is, even across a cancelled or failed flush.
    batch: Option<Batch>,
    /// The budget usage inside `batch`.
    in_flight: Usage,
    /// Batches a previous run could not send (read from its carry-over file at start): sent
    /// first, each as is.
    resumed: std::collections::VecDeque<Batch>,
    /// Last read from the store.
    seen: Usage,
}

impl Local {
    /// Takes the route-time cells and the pending reservations out as counter deltas (labels
    /// cleaned); returns the deltas and the reservations they carry.
    fn drain_adds(&mut self, shards: &[Mutex<Shard>]) -> (Vec<CounterAdd>, Usage) {
        // One cell may have counts in several shards: summed into one delta per cell.
        let mut cells: hashbrown::HashMap<CellKey, CellDelta> = hashbrown::HashMap::new();
        for shard in shards {
            let drained: Vec<(CellKey, CellDelta)> = shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .cells
                .drain()
                .collect();
            for (k, d) in drained {
                let c = cells.entry(k).or_default();
                c.tasks += d.tasks;
                c.spend += d.spend;
                c.premium += d.premium;
                c.downgraded += d.downgraded;
                c.rejected += d.rejected;
                c.explored += d.explored;
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let mut adds = Vec::new();
        for (k, c) in &cells {
            let k = CellKey {
                team: clean(&k.team).into_owned(),
                workflow: clean(&k.workflow).into_owned(),
                ..k.clone()
            };
            c.counters(&k, &mut adds);
        }
        for (id, periods) in &pending {
            for (start, v) in periods {
                if *v != 0 {
                    adds.push(CounterAdd {
                        hash: budget_hash(id, *start),
                        field: BUDGET_USED.into(),
                        delta: *v,
                    });
                }
            }
        }
        (adds, pending)
    }
}

/// Counter increments sent as one idempotent unit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    /// The store applies a batch id once.
    pub id: u64,
    /// The counter deltas.
    pub adds: Vec<CounterAdd>,
}

impl Local {
    fn used(&self, id: &str, start: u64) -> i64 {
        usage_of(&self.seen, id, start)
            + usage_of(&self.in_flight, id, start)
            + usage_of(&self.pending, id, start)
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

/// Route-time cells are counted in this many shards, one per worker thread (round robin), so
/// Route calls on different threads never wait for one another.
const SHARDS: usize = 16;

/// One shard of the route-time counts, with the labels it has seen admitted.
#[derive(Default)]
struct Shard {
    cells: hashbrown::HashMap<CellKey, CellDelta>,
    /// Team labels admitted (under the cardinality cap) by the shared [`Labels`].
    teams: hashbrown::HashSet<String>,
    /// Workflow labels admitted likewise.
    workflows: hashbrown::HashSet<String>,
}

static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's shard.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// One ledger increment the books sent to the store, in typed form: what their [`Observer`]
/// sees (the metrics count these, so the exported metrics and the report agree).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counted<'a> {
    /// One of [`metric`].
    pub metric: &'a str,
    /// The decision's team label (capped).
    pub team: &'a str,
    /// Its workflow label (capped).
    pub workflow: &'a str,
    /// The tier that ran (empty for a refused call).
    pub tier: &'a str,
    /// The increment.
    pub delta: i64,
}

/// Told of every ledger increment the books send to the store (the metrics face implements
/// it; the books know nothing of metrics).
pub trait Observer: Send + Sync {
    /// One increment, once it is sent.
    fn counted(&self, c: Counted<'_>);
}

/// Observes nothing (books without metrics, in tests).
struct Unobserved;

impl Observer for Unobserved {
    fn counted(&self, _: Counted<'_>) {}
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
        let (team, workflow) = {
            let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
            let t = labels.team(&claims.team).to_string();
            let w = labels.workflow(&claims.workflow).to_string();
            (clean(&t).into_owned(), clean(&w).into_owned())
        };
        let hash = ledger_hash(claims.issued_ms);
        values
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|&(m, v)| CounterAdd {
                hash: hash.clone(),
                field: ledger_field(m, &team, &workflow, &claims.tier),
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
        let key = CellRef {
            hour,
            team: self.admitted(teams, team, Labels::team),
            workflow: self.admitted(workflows, workflow, Labels::workflow),
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
        admit: for<'l> fn(&mut Labels, &'l str) -> &'l str,
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
            for b in policy.budgets.iter().filter(|b| b.covers(team, workflow)) {
                let start = b.period.start_ms(now_ms);
                let used = local.used(&b.id, start);
                if let Some(hard) = b.hard_limit_micros {
                    let closed =
                        store_down && b.on_store_unavailable == OnStoreUnavailable::FailClosed;
                    if closed || used + d.candidates[usual].cost_micros > hard {
                        match b.on_exhausted {
                            OnExhausted::Reject => {
                                drop(local);
                                self.bump_cell(now_ms / HOUR_MS, team, workflow, "", |c| {
                                    c.rejected += 1;
                                });
                                return Err(BudgetExhausted {
                                    budget: b.id.clone(),
                                    used_usd: used as f64 / 1e6,
                                    limit_usd: hard as f64 / 1e6,
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
            if target != usual {
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
            }
        }
        let (cost, premium) = (d.tier().cost_micros, d.premium_micros());
        let (explored, downgraded) = (d.explored, action != BudgetAction::None);
        self.bump_cell(
            now_ms / HOUR_MS,
            team,
            workflow,
            &d.candidates[d.chosen].name,
            |c| {
                c.tasks += 1;
                c.spend += cost;
                c.premium += premium;
                c.explored += i64::from(explored);
                c.downgraded += i64::from(downgraded);
            },
        );
        Ok(action)
    }

    /// The counters that settle one outcome: to be recorded with it, atomically.
    pub fn outcome_counters(
        &self,
        policy: &Policy,
        claims: &DecisionClaims,
        score: f64,
        input_tokens: u64,
        output_tokens: u64,
        reused: bool,
    ) -> (Vec<CounterAdd>, i64) {
        let scope = policy.scopes.get(&claims.scope).unwrap_or(&policy.default);
        let estimate = claims.estimate_micros as i64;
        let actual = policy.tier_index(&claims.tier).map_or(estimate, |i| {
            policy.tiers[i].cost_micros(input_tokens, output_tokens)
        });
        let premium = scope.allowed.last().map_or(actual, |&i| {
            policy.tiers[i].cost_micros(input_tokens, output_tokens)
        });
        let bar_ppm = (scope.quality_bar * 1e6).round() as i64;
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
        let mut out = self.cell_counters(
            claims,
            &[
                (metric::OUTCOMES, 1),
                (metric::COMPLETED, i64::from(completed)),
                (metric::SCORE, score_ppm),
                (metric::BAR, bar_ppm),
                (metric::SPEND, actual - estimate),
                (metric::PREMIUM, premium - claims.premium_micros as i64),
                (metric::VALUE, value),
                (metric::HUMAN_SECONDS, human_seconds),
                (metric::HUMAN_VALUE, human_value),
                // The early reuse mark is one reuse event; the decision itself is counted as
                // reused by its reuse mark (see `reuse_counters`), once.
                (metric::REUSE_EVENTS, i64::from(reused)),
            ],
        );
        if actual != estimate {
            for b in policy
                .budgets
                .iter()
                .filter(|b| b.covers(&claims.team, &claims.workflow))
            {
                out.push(CounterAdd {
                    hash: budget_hash(&b.id, b.period.start_ms(claims.issued_ms)),
                    field: BUDGET_USED.into(),
                    delta: actual - estimate,
                });
            }
        }
        (out, actual)
    }

    /// Sends pending reservations and counts to the store, then reads the budgets' usage back.
    /// Nothing is lost and nothing counts twice: what was not acknowledged is resent as the same
    /// batch (the store applies a batch id once), also after a timeout whose write did land, or
    /// a flush that was cancelled midway.
    pub async fn flush(
        &self,
        policy: &Policy,
        store: &dyn StateStore,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let _one = self.flush_lock.lock().await;
        // What a previous run left, first and as is (a batch that landed before it stopped
        // is not applied twice).
        loop {
            let next = self.lock().resumed.front().cloned();
            let Some(b) = next else { break };
            store.add_counters(b.id, &b.adds).await?;
            self.observe(&b.adds);
            self.lock().resumed.pop_front();
        }
        let batch = {
            let mut local = self.lock();
            if local.batch.is_none() {
                let (adds, pending) = local.drain_adds(&self.shards);
                if !adds.is_empty() {
                    local.batch = Some(Batch {
                        id: rand::random(),
                        adds,
                    });
                    local.in_flight = pending;
                }
            }
            local.batch.clone()
        };
        if let Some(batch) = batch {
            // On error the batch stays for the next flush.
            store.add_counters(batch.id, &batch.adds).await?;
            self.observe(&batch.adds);
            let mut local = self.lock();
            local.batch = None;
            // Acknowledged: count it as seen until a read shows it.
            let in_flight = std::mem::take(&mut local.in_flight);
            for (id, periods) in in_flight {
                for (start, v) in periods {
                    add_usage(&mut local.seen, &id, start, v);
                }
            }
        }
        let starts: Vec<u64> = policy
            .budgets
            .iter()
            .map(|b| b.period.start_ms(now_ms))
            .collect();
        let hashes: Vec<String> = policy
            .budgets
            .iter()
            .zip(&starts)
            .map(|(b, start)| budget_hash(&b.id, *start))
            .collect();
        let values = store.read_counters(&hashes).await?;
        let mut local = self.lock();
        let mut seen = Usage::new();
        for ((b, start), fields) in policy.budgets.iter().zip(starts).zip(values) {
            let used = fields.get(BUDGET_USED).copied().unwrap_or(0);
            seen.insert(b.id.clone(), HashMap::from([(start, used)]));
        }
        local.seen = seen;
        Ok(())
    }

    /// Every budget of the policy with its usage in its current period, as this replica sees it.
    pub fn budget_usage(&self, policy: &Policy, now_ms: u64) -> Vec<BudgetUse> {
        let local = self.lock();
        policy
            .budgets
            .iter()
            .map(|b| {
                let start = b.period.start_ms(now_ms);
                BudgetUse {
                    budget: b.clone(),
                    period_start_ms: start,
                    used_micros: local.used(&b.id, start),
                }
            })
            .collect()
    }

    /// Everything not yet acknowledged by the store, as batches to send as they are: the batch
    /// in flight (its id kept), then the rest as one new batch. Leaves the books empty: for a
    /// shutdown that could not flush, so the next start can send them.
    pub fn take_unflushed(&self) -> Vec<Batch> {
        let mut local = self.lock();
        let mut out: Vec<Batch> = local.resumed.drain(..).collect();
        out.extend(local.batch.take());
        local.in_flight.clear();
        let (adds, _) = local.drain_adds(&self.shards);
        if !adds.is_empty() {
            out.push(Batch {
                id: rand::random(),
                adds,
            });
        }
        out
    }

    /// Queues batches a previous run could not send; the next flush sends them first.
    pub fn resume(&self, batches: Vec<Batch>) {
        self.lock().resumed.extend(batches);
    }

    /// Batches waiting from a previous run.
    pub fn resumed(&self) -> usize {
        self.lock().resumed.len()
    }

    /// Route-time counts not yet flushed (for tests and shutdown logs).
    pub fn pending_cells(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).cells.len())
            .sum()
    }
}

fn bump(
    cells: &mut hashbrown::HashMap<CellKey, CellDelta>,
    key: CellRef<'_>,
    f: impl FnOnce(&mut CellDelta),
) {
    // Look up by reference first: no allocation for a cell seen before.
    if let Some(c) = cells.get_mut(&key) {
        f(c);
        return;
    }
    let mut c = CellDelta::default();
    f(&mut c);
    cells.insert(
        CellKey {
            hour: key.hour,
            team: key.team.to_string(),
            workflow: key.workflow.to_string(),
            tier: key.tier.to_string(),
        },
        c,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_over_the_cap_count_as_other() {
        let mut l = Labels::default();
        for i in 0..MAX_WORKFLOWS {
            assert_eq!(l.workflow(&format!("w{i}")), format!("w{i}"));
        }
        assert_eq!(l.workflow("one-too-many"), OTHER);
        assert_eq!(l.workflow("w7"), "w7");
        assert_eq!(l.workflow(""), "");
        assert_eq!(clean("a\u{1f}b\nc"), "a?b?c");
        let f = ledger_field("spend", "t", "w", "small");
        assert_eq!(parse_ledger_field(&f), Some(("spend", "t", "w", "small")));
        assert_eq!(parse_ledger_field("spend"), None);
    }
}
