//! The books through the engine: budgets at Route, flushes, outages and carry-over.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::HashMap;

use super::test_support::two_tier_engine;
use crate::domain::books::*;
use crate::domain::policy::Period;
use crate::domain::routing::RouteRequest;
use crate::engine::{Engine, Error};
use crate::store::StateStore;
use crate::store::failing::{FailingStore, Fault, Op};
use std::sync::Arc;

/// Beside [`TWO_TIERS`](super::test_support::TWO_TIERS).
const POLICY: &str = r#"
[default]
exploration_rate = 0.0
thresholds = { small = 0.0 }
[[budgets]]
team = "t"
period = "day"
hard_limit_usd = 0.007
on_exhausted = "reject"
on_store_unavailable = "fail_closed"
[[budgets]]
team = "u"
period = "day"
hard_limit_usd = 0.007
on_exhausted = "cheapest"
"#;

fn engine() -> Engine {
    two_tier_engine(POLICY).build()
}

fn route(e: &Engine, team: &str, now: u64) -> Result<String, Error> {
    // 200 input tokens, 50 output: premium 3,500 µ$.
    let task = "word ".repeat(160);
    e.route(
        &RouteRequest {
            task: &task,
            team,
            expected_output_tokens: 50,
            ..Default::default()
        },
        0.5,
        now,
        now,
    )
    .map(|(d, _)| d.tier().name.clone())
}

#[test]
fn a_new_period_starts_with_the_full_budget() {
    let e = engine();
    // 2026-11-29 23:59:59 UTC, then midnight.
    let late = 1_795_996_799_000;
    assert_eq!(route(&e, "t", late).unwrap(), "premium");
    assert_eq!(route(&e, "t", late).unwrap(), "premium");
    let err = route(&e, "t", late).unwrap_err();
    let Error::Budget(b) = err else {
        panic!("{err:?}")
    };
    assert_eq!(b.budget, "team:t/day");
    assert_eq!(b.resets_ms, late + 1000);
    // The next day starts from zero; the old day's usage stays with the old day.
    assert_eq!(route(&e, "t", late + 1000).unwrap(), "premium");
    let use_now = e.books.budget_usage(&e.router.table().policy, late + 1000);
    assert_eq!(use_now[0].used_micros, 3_500);
    let use_then = e.books.budget_usage(&e.router.table().policy, late);
    assert_eq!(use_then[0].used_micros, 7_000);
    // Another team's budget is untouched.
    assert_eq!(use_now[1].used_micros, 0);
}

#[test]
fn fail_closed_budgets_hold_while_the_store_is_down_and_fail_open_ones_do_not() {
    let e = engine();
    let now = 1_795_934_463_000;
    e.books.set_store_down(true);
    assert!(matches!(route(&e, "t", now), Err(Error::Budget(_))));
    // Fail open: enforced on the local view, which has room.
    assert_eq!(route(&e, "u", now).unwrap(), "premium");
    e.books.set_store_down(false);
    assert_eq!(route(&e, "t", now).unwrap(), "premium");
}

/// The ledger hour of `now` and team u's daily budget, as a store holds them.
#[tokio::test]
async fn routes_from_many_threads_are_all_counted_and_labels_stay_capped() {
    let e = Arc::new(engine());
    let now = 1_796_000_000_000;
    // 8 threads × 300 calls, 150 distinct teams (over the cap of 100), no budget covers them.
    std::thread::scope(|s| {
        for t in 0..8 {
            let e = e.clone();
            s.spawn(move || {
                for i in 0..300 {
                    route(&e, &format!("team{}", (t * 300 + i) % 150), now).unwrap();
                }
            });
        }
    });
    let table = e.router.table();
    e.books.flush(&table.policy, e.store(), now).await.unwrap();
    assert_eq!(e.books.pending_cells(), 0);
    let ledger = &e.store().read_counters(&[ledger_hash(now)]).await.unwrap()[0];
    let tasks: Vec<(&str, i64)> = ledger
        .iter()
        .filter_map(|(f, v)| {
            let (m, team, _, _) = parse_ledger_field(f)?;
            (m == metric::TASKS).then_some((team, *v))
        })
        .collect();
    assert_eq!(tasks.iter().map(|(_, v)| v).sum::<i64>(), 2_400);
    let named = tasks.iter().filter(|(t, _)| *t != OTHER).count();
    assert_eq!(named, MAX_LEDGER_TEAMS, "{tasks:?}");
    // Each named team routed 16 times (2,400 / 150); the other 50 teams' 800 are `other`.
    assert!(
        tasks
            .iter()
            .all(|&(t, v)| if t == OTHER { v == 800 } else { v == 16 }),
        "{tasks:?}"
    );
}

async fn ledger_and_budget_of_u(store: &dyn StateStore, now: u64) -> Vec<HashMap<String, i64>> {
    store
        .read_counters(&[
            ledger_hash(now),
            budget_hash("team:u/day", Period::Day.start_ms(now)),
        ])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failed_flush_keeps_every_count_for_the_next_one() {
    let e = engine();
    let now = 1_795_934_463_000;
    route(&e, "u", now).unwrap();
    route(&e, "u", now).unwrap();
    let policy = e.router.table().policy.clone();
    assert!(
        e.books
            .flush(&policy, &FailingStore::down(), now)
            .await
            .is_err()
    );
    // Still counted locally: the budget sees both, and a working store gets both.
    assert_eq!(e.books.budget_usage(&policy, now)[1].used_micros, 7_000);
    let store = crate::store::MemoryStore::new();
    e.books.flush(&policy, &store, now).await.unwrap();
    assert_eq!(e.books.budget_usage(&policy, now)[1].used_micros, 7_000);
    let read = ledger_and_budget_of_u(&store, now).await;
    assert_eq!(read[0][&ledger_field(metric::TASKS, "u", "", "premium")], 2);
    assert_eq!(
        read[0][&ledger_field(metric::SPEND, "u", "", "premium")],
        7_000
    );
    assert_eq!(read[1][BUDGET_USED], 7_000);
}

#[tokio::test]
async fn a_write_that_landed_but_timed_out_is_not_counted_twice() {
    let e = engine();
    let now = 1_795_934_463_000;
    // Applies the first batch, then reports a timeout (as Redis can after EXEC).
    let store = FailingStore::new(crate::store::MemoryStore::new()).fail(
        Fault::on(Op::AddCounters)
            .times(1)
            .after_landing()
            .saying("redis call timed out"),
    );
    let policy = e.router.table().policy.clone();
    route(&e, "u", now).unwrap();
    assert!(e.books.flush(&policy, &store, now).await.is_err());
    // Still counted once locally, and once in the store after the resend.
    assert_eq!(e.books.budget_usage(&policy, now)[1].used_micros, 3_500);
    route(&e, "u", now).unwrap();
    e.books.flush(&policy, &store, now).await.unwrap();
    e.books.flush(&policy, &store, now).await.unwrap();
    assert_eq!(e.books.budget_usage(&policy, now)[1].used_micros, 7_000);
    let read = store.read_counters(&[ledger_hash(now)]).await.unwrap();
    assert_eq!(read[0][&ledger_field(metric::TASKS, "u", "", "premium")], 2);
}

/// A spill file in a directory of the test's own (the buffer refuses one others may write to),
/// and how to start an engine on a store with it.
fn with_spill() -> (std::path::PathBuf, impl Fn(Arc<dyn StateStore>) -> Engine) {
    let dir = std::env::temp_dir().join(format!("tw-books-{}", std::process::id()));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .recursive(true)
        .create(&dir)
        .unwrap();
    let path = dir.join(format!("carry-{}.jsonl", rand::random::<u32>()));
    let spill = path.clone();
    let start = move |store: Arc<dyn StateStore>| {
        two_tier_engine(POLICY)
            .store(
                store,
                crate::store::OutageBuffer::new(
                    0,
                    Some(spill.clone()),
                    crate::store::FileKeys::new(vec![[3u8; 32]]),
                )
                .unwrap(),
            )
            .build()
    };
    (path, start)
}

#[tokio::test]
async fn a_replica_killed_mid_outage_keeps_its_route_accounting_to_the_last_checkpoint() {
    // The probe of the hardening issue: SIGKILL during an outage lost Route's counts (20 of
    // 100 tasks in the report, and a negative spend once Feedback's corrections landed).
    let (_path, start) = with_spill();
    let now = 1_795_934_463_000;
    let e = start(Arc::new(FailingStore::down()));
    for _ in 0..3 {
        route(&e, "u", now).unwrap();
    }
    assert!(!e.refresh(now).await, "the store is down");
    // A second later, two more, and the next refresh checkpoints them too.
    route(&e, "u", now + 500).unwrap();
    route(&e, "u", now + 500).unwrap();
    assert!(!e.refresh(now + 1_500).await);
    // Killed: no shutdown, nothing flushed.
    drop(e);
    let store = Arc::new(crate::store::MemoryStore::new());
    let next = start(store.clone());
    assert!(next.refresh(now + 2_000).await);
    // Team u's budget downgraded three of them to the small tier: five tasks in all.
    let read = ledger_and_budget_of_u(store.as_ref(), now).await;
    let tasks = |tier: &str| read[0][&ledger_field(metric::TASKS, "u", "", tier)];
    assert_eq!(tasks("premium") + tasks("small"), 5);
    assert_eq!(read[1][BUDGET_USED], 7_000 + 3 * 300);
}

#[tokio::test]
async fn route_accounting_not_flushed_at_shutdown_is_sent_by_the_next_start() {
    let (path, start) = with_spill();
    let now = 1_795_934_463_000;
    let e = start(Arc::new(FailingStore::down()));
    route(&e, "u", now).unwrap();
    route(&e, "u", now).unwrap();
    // The store is down at shutdown: the counts are kept on disk, not dropped.
    e.shutdown(now).await;
    drop(e);
    let store = Arc::new(crate::store::MemoryStore::new());
    let next = start(store.clone());
    assert_eq!(next.books.resumed(), 1);
    assert!(next.refresh(now).await);
    assert_eq!(next.books.resumed(), 0);
    let read = ledger_and_budget_of_u(store.as_ref(), now).await;
    assert_eq!(read[0][&ledger_field(metric::TASKS, "u", "", "premium")], 2);
    assert_eq!(read[1][BUDGET_USED], 7_000);
    // Sent: the carry-over file is gone, and a third start has nothing to resend.
    assert!(!path.with_extension("carry").exists());
    drop(next);
    assert_eq!(start(store.clone()).books.resumed(), 0);
}

#[tokio::test]
async fn a_negative_budget_usage_written_into_the_store_counts_as_zero() {
    // The probe of the hardening issue: a direct counter write of -$100,000 would lift the
    // budget's limit for the rest of its period.
    let e = engine();
    let now = 1_795_934_463_000;
    let policy = e.router.table().policy.clone();
    let store = crate::store::MemoryStore::new();
    let b = &policy.budgets[1];
    let forged = crate::store::CounterAdd {
        hash: crate::domain::books::budget_hash(&b.id, b.period.start_ms(now)),
        field: crate::domain::books::BUDGET_USED.into(),
        delta: -100_000_000_000,
    };
    store.add_counters(77, &[forged]).await.unwrap();
    route(&e, "u", now).unwrap();
    e.books.flush(&policy, &store, now).await.unwrap();
    // The store now sums to -$100,000 + $0.0035: read as 0, not as a negative usage.
    assert_eq!(e.books.budget_usage(&policy, now)[1].used_micros, 0);
}

#[tokio::test]
async fn one_teams_junk_workflows_do_not_push_anothers_into_other() {
    // The probe of the hardening issue: team `ads` sends 250 distinct workflow labels; team
    // `search`'s one workflow still counts under its own name.
    let e = engine();
    let now = 1_795_934_463_000;
    let task = "word ".repeat(40);
    let ask = |team: &str, workflow: &str| {
        e.route(
            &RouteRequest {
                task: &task,
                team,
                workflow,
                expected_output_tokens: 50,
                ..Default::default()
            },
            0.5,
            now,
            now,
        )
        .unwrap();
    };
    for i in 0..250 {
        ask("ads", &format!("junk-{i}"));
    }
    ask("search", "faq");
    let store = crate::store::MemoryStore::new();
    let policy = e.router.table().policy.clone();
    e.books.flush(&policy, &store, now).await.unwrap();
    let read = store.read_counters(&[ledger_hash(now)]).await.unwrap();
    let fields = &read[0];
    let tasks_of = |team: &str, workflow: &str| {
        fields
            .iter()
            .filter(|(f, _)| {
                parse_ledger_field(f)
                    .is_some_and(|(m, t, w, _)| m == metric::TASKS && t == team && w == workflow)
            })
            .map(|(_, v)| *v)
            .sum::<i64>()
    };
    assert_eq!(tasks_of("search", "faq"), 1);
    assert_eq!(tasks_of("ads", OTHER), 250 - MAX_LEDGER_WORKFLOWS as i64);
}

#[tokio::test]
async fn one_team_spends_at_most_its_share_of_a_budget_over_several_teams() {
    // A global budget of $0.014 (four premium tasks) with team_share 0.5: team `a` may spend
    // $0.007 of it, however much it asks, and team `b` still gets its part.
    let policy = POLICY.replace(
        "[[budgets]]\nteam = \"t\"",
        "[[budgets]]\nperiod = \"day\"\nhard_limit_usd = 0.014\nteam_share = 0.5\non_exhausted = \"reject\"\n\n[[budgets]]\nteam = \"t\"",
    );
    let e = two_tier_engine(&policy).build();
    let now = 1_795_934_463_000;
    route(&e, "a", now).unwrap();
    route(&e, "a", now).unwrap();
    let err = route(&e, "a", now).unwrap_err();
    assert!(err.to_string().contains("team a's share"), "{err}");
    route(&e, "b", now).unwrap();
    route(&e, "b", now).unwrap();
    // The whole budget is now spent: b's third is refused by the budget itself.
    let err = route(&e, "b", now).unwrap_err();
    assert!(!err.to_string().contains("share"), "{err}");
    // The shares survive a flush and a read back from the store.
    let store = crate::store::MemoryStore::new();
    let p = e.router.table().policy.clone();
    e.books.flush(&p, &store, now).await.unwrap();
    let read = store
        .read_counters(&[budget_hash("default/day", Period::Day.start_ms(now))])
        .await
        .unwrap();
    assert_eq!(read[0]["used"], 14_000);
    assert_eq!(read[0]["used:a"], 7_000);
    assert_eq!(read[0]["used:b"], 7_000);
    let p = e.router.table().policy.clone();
    e.books.flush(&p, &store, now).await.unwrap();
    assert_eq!(e.books.budget_usage(&p, now)[0].used_micros, 14_000);
}
