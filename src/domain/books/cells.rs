//! Where Route's counts collect before a flush: per-thread shards of ledger cells, the local
//! budget view (seen, in flight, pending) and the batches sent to the store.

use super::*;

/// A ledger cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    /// Hour index (ms / [`HOUR_MS`](crate::domain::calendar::HOUR_MS)).
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
pub(super) struct CellRef<'a> {
    pub(super) hour: u64,
    pub(super) team: &'a str,
    pub(super) workflow: &'a str,
    pub(super) tier: &'a str,
}

impl Equivalent<CellKey> for CellRef<'_> {
    fn equivalent(&self, k: &CellKey) -> bool {
        self.hour == k.hour
            && self.team == k.team
            && self.workflow == k.workflow
            && self.tier == k.tier
    }
}

/// Route-time counts of one cell not yet flushed: one number per [`RouteCount`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellDelta([i64; RouteCount::ALL.len()]);

impl CellDelta {
    /// Adds `v` to count `c`.
    pub fn add(&mut self, c: RouteCount, v: i64) {
        // Money saturates at the limits of i64 rather than wrapping to a negative spend.
        let a = &mut self.0[c as usize];
        *a = a.saturating_add(v);
    }

    /// The value of count `c`.
    pub fn get(&self, c: RouteCount) -> i64 {
        self.0[c as usize]
    }

    fn merge(&mut self, other: &CellDelta) {
        self.0
            .iter_mut()
            .zip(other.0)
            .for_each(|(a, b)| *a = a.saturating_add(b));
    }

    pub(super) fn counters(&self, k: &CellKey, out: &mut Vec<CounterAdd>) {
        let hash = ledger_hash_of_hour(k.hour);
        for c in RouteCount::ALL {
            let v = self.get(c);
            if v != 0 {
                out.push(CounterAdd {
                    hash: hash.clone(),
                    field: ledger_field(c.metric(), &k.team, &k.workflow, &k.tier),
                    delta: v,
                });
            }
        }
    }
}

/// Budget usage by budget id and period start.
pub(super) type Usage = HashMap<String, HashMap<u64, i64>>;

pub(super) fn usage_of(u: &Usage, id: &str, start: u64) -> i64 {
    u.get(id).and_then(|p| p.get(&start)).copied().unwrap_or(0)
}

pub(super) fn add_usage(u: &mut Usage, id: &str, start: u64, delta: i64) {
    match u.get_mut(id) {
        Some(p) => {
            let used = p.entry(start).or_default();
            *used = used.saturating_add(delta);
        }
        None => {
            u.insert(id.to_string(), HashMap::from([(start, delta)]));
        }
    }
}

/// Route-time state behind one lock: budget reservations and batches (only calls covered by a
/// budget take it).
#[derive(Default)]
pub(super) struct Local {
    /// Reserved here, not yet sent to the store.
    pub(super) pending: Usage,
    /// The batch sent to the store and not yet acknowledged: resent as is (same id, so the
    /// store applies it once) until it is, even across a cancelled or failed flush.
    pub(super) batch: Option<Batch>,
    /// The budget usage inside `batch`.
    pub(super) in_flight: Usage,
    /// Batches a previous run could not send (read from its carry-over file at start), and
    /// batches sealed during an outage ([`Books::seal`]): sent first, each as is.
    pub(super) resumed: std::collections::VecDeque<Batch>,
    /// The budget usage inside the batches this run sealed, until all of them are sent.
    pub(super) sealed: Usage,
    /// Last read from the store.
    pub(super) seen: Usage,
}

impl Local {
    /// Takes the route-time cells and the pending reservations out as counter deltas (labels
    /// cleaned); returns the deltas and the reservations they carry.
    pub(super) fn drain_adds(&mut self, shards: &[Mutex<Shard>]) -> (Vec<CounterAdd>, Usage) {
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
                cells.entry(k).or_default().merge(&d);
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
        for (key, periods) in &pending {
            // A team's part of a shared budget goes in a field of its own in the budget's hash.
            let (id, field) = match split_team_usage_key(key) {
                Some((id, team)) => (id, team_used_field(team)),
                None => (key.as_str(), BUDGET_USED.to_string()),
            };
            for (start, v) in periods {
                if *v != 0 {
                    adds.push(CounterAdd {
                        hash: budget_hash(id, *start),
                        field: field.clone(),
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
    pub(super) fn used(&self, id: &str, start: u64) -> i64 {
        usage_of(&self.seen, id, start)
            + usage_of(&self.in_flight, id, start)
            + usage_of(&self.sealed, id, start)
            + usage_of(&self.pending, id, start)
    }
}

/// Route-time cells are counted in this many shards, one per worker thread (round robin), so
/// Route calls on different threads never wait for one another.
pub(super) const SHARDS: usize = 16;

/// One shard of the route-time counts, with the labels it has seen admitted.
#[derive(Default)]
pub(super) struct Shard {
    pub(super) cells: hashbrown::HashMap<CellKey, CellDelta>,
    /// Team labels admitted (under the cardinality cap) by the shared [`Labels`].
    pub(super) teams: hashbrown::HashSet<String>,
    /// Workflow labels admitted likewise.
    pub(super) workflows: hashbrown::HashMap<String, hashbrown::HashSet<String>>,
}

pub(super) static NEXT_SHARD: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// This thread's shard.
    pub(super) static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

pub(super) fn bump(
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
