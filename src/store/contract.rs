//! The contract every implementation must pass, one function per behaviour:
//! [`crate::store_contract_tests!`] makes one test of each for a backend (the memory store in
//! its unit tests, Redis in `tests/it/store_redis.rs`); [`check`] runs them all on one store.
//!
//! Test support: compiled for this crate's unit tests and, with the `testsuite` feature, for
//! the integration tests (`cargo test` turns it on through a dev-dependency of the crate on
//! itself); never part of the product.
use super::*;

/// One test per behaviour of the [`contract`](crate::store::contract), for a backend: `$make` is an async expression
/// giving `Option<(guard, Arc<dyn StateStore>)>` on a fresh, empty store (`None` skips, e.g.
/// without redis-server); the guard lives as long as the test.
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@each $make;
            log_records_each_nonce_once_in_order,
            counters_add_up_and_a_resent_batch_applies_once,
            an_outcomes_accounting_applies_with_it_once,
            policy_changes_append_in_order,
            concurrent_records_of_one_nonce_one_wins,
            counters_saturate_at_the_limits,
            reuse_quotas_hold_per_team_and_per_decision);
    };
    (@each $make:expr; $($behaviour:ident),+) => {
        $(
            #[tokio::test]
            async fn $behaviour() {
                let Some((_guard, store)) = $make.await else {
                    return;
                };
                if let Err(why) = $crate::store::contract::$behaviour(&*store).await {
                    panic!("{}: {why}", stringify!($behaviour));
                }
            }
        )+
    };
}

/// An event for nonce `n`.
pub fn event(n: u64) -> OutcomeEvent {
    OutcomeEvent {
        nonce: n,
        expires_ms: 10_000_000,
        scope: crate::domain::policy::DEFAULT_SCOPE.into(),
        tier: "small".into(),
        band: (n % 20) as u8,
        score: (n % 3) as f64 / 2.0,
        input_tokens: 10 + n,
        output_tokens: 5,
        cached_input_tokens: 0,
        reasoning_tokens: 0,
        routed_tier: String::new(),
        workflow: format!("w{}", n % 4),
        team: String::new(),
        complexity: 0.5,
        gap: 0.0,
        cluster: None,
        sketch: Vec::new(),
        propensity: None,
        premium_propensity: None,
        shadow: None,
        shadow_asked: false,
        counters: Vec::new(),
        counters_only: false,
        quota: None,
    }
}

fn add(hash: &str, field: &str, delta: i64) -> CounterAdd {
    CounterAdd {
        hash: hash.into(),
        field: field.into(),
        delta,
    }
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// Runs every check, one after another, on one empty store; `Err` says which failed.
pub async fn check(store: &dyn StateStore) -> Result<(), String> {
    log_records_each_nonce_once_in_order(store).await?;
    counters_add_up_and_a_resent_batch_applies_once(store).await?;
    an_outcomes_accounting_applies_with_it_once(store).await?;
    policy_changes_append_in_order(store).await?;
    concurrent_records_of_one_nonce_one_wins(store).await?;
    counters_saturate_at_the_limits(store).await?;
    reuse_quotas_hold_per_team_and_per_decision(store).await
}

const NOW: u64 = 1_000_000;

fn e(x: StoreError) -> String {
    x.to_string()
}

fn want(pairs: &[(&str, i64)]) -> std::collections::HashMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Events are recorded once per nonce (a duplicate changes nothing), come back in order and
/// whole, and the cursor advances past them, page by page.
pub async fn log_records_each_nonce_once_in_order(store: &dyn StateStore) -> Result<(), String> {
    store.ping().await.map_err(e)?;
    let (first, base) = store.events_since(0, 100).await.map_err(e)?;
    ensure(first.is_empty(), || {
        format!("empty store returned {first:?} / {base}")
    })?;
    for n in [1, 2, 3] {
        let r = store.record(&event(n), NOW).await.map_err(e)?;
        ensure(r == Recorded::New, || {
            format!("first record of {n} was {r:?}")
        })?;
    }
    let r = store.record(&event(2), NOW).await.map_err(e)?;
    ensure(r == Recorded::Duplicate, || {
        format!("second record of 2 was {r:?}")
    })?;
    let (got, cursor) = store.events_since(base, 100).await.map_err(e)?;
    ensure(got == vec![event(1), event(2), event(3)], || {
        format!("log is {got:?}")
    })?;
    ensure(cursor == base + 3, || {
        format!("cursor after 3 events is {cursor}")
    })?;
    let (tail, c2) = store.events_since(base + 2, 100).await.map_err(e)?;
    ensure(tail == vec![event(3)] && c2 == base + 3, || {
        format!("events_since(2) = {tail:?} / {c2}")
    })?;
    let (page, c3) = store.events_since(base, 2).await.map_err(e)?;
    ensure(page.len() == 2 && c3 == base + 2, || {
        format!("a page of 2 = {page:?} / {c3}")
    })?;
    let (nothing, c4) = store.events_since(base + 3, 100).await.map_err(e)?;
    ensure(nothing.is_empty() && c4 == base + 3, || {
        format!("caught-up read = {nothing:?} / {c4}")
    })
}

/// Counter batches add up, fields and hashes stay apart, unknown hashes read empty, and a
/// resent batch (same id) is applied once.
pub async fn counters_add_up_and_a_resent_batch_applies_once(
    store: &dyn StateStore,
) -> Result<(), String> {
    store
        .add_counters(
            1,
            &[add("h1", "a", 5), add("h1", "b", -2), add("h2", "a", 1)],
        )
        .await
        .map_err(e)?;
    for _ in 0..2 {
        store
            .add_counters(2, &[add("h1", "a", 7), add("h1", "a", -1)])
            .await
            .map_err(e)?;
    }
    let read = store
        .read_counters(&["h1".into(), "nope".into(), "h2".into()])
        .await
        .map_err(e)?;
    ensure(
        read == vec![want(&[("a", 11), ("b", -2)]), want(&[]), want(&[("a", 1)])],
        || format!("counters read back as {read:?}"),
    )
}

/// Reuse events are recorded within their quota: a team's unexpired ids and a decision's
/// events. A refused one changes nothing; a duplicate is a duplicate even at the limit; ids
/// that leave the window give their room back; another team's quota is its own.
pub async fn reuse_quotas_hold_per_team_and_per_decision(
    store: &dyn StateStore,
) -> Result<(), String> {
    let reuse = |nonce: u64, team: &str, decision: u64, events: u64, expires_ms: u64| {
        let mut e = event(nonce);
        e.counters_only = true;
        e.expires_ms = expires_ms;
        e.counters = vec![add("quota", team, 1)];
        e.quota = Some(ReuseQuota {
            team: team.into(),
            team_ids: 3,
            decision,
            decision_events: 10,
            events,
        });
        e
    };
    let at = |n, team, decision, events| reuse(n, team, decision, events, NOW + 1_000);
    for (n, decision) in [(700, 1), (701, 2), (702, 3)] {
        let r = store
            .record(&at(n, "ads", decision, 1), NOW)
            .await
            .map_err(e)?;
        ensure(r == Recorded::New, || format!("reuse {n}: {r:?}"))?;
    }
    // The team holds 3 ids, its limit: a fourth is refused; a repeat is still a duplicate.
    let full = store.record(&at(703, "ads", 4, 1), NOW).await;
    ensure(matches!(full, Err(StoreError::Full(_))), || {
        format!("a 4th id of ads: {full:?}")
    })?;
    let dup = store.record(&at(700, "ads", 1, 1), NOW).await.map_err(e)?;
    ensure(dup == Recorded::Duplicate, || {
        format!("repeat of 700: {dup:?}")
    })?;
    // Another team is not refused for ads' flood; its decision holds 10 events at most.
    let r = store
        .record(&at(710, "search", 9, 8), NOW)
        .await
        .map_err(e)?;
    ensure(r == Recorded::New, || format!("search's first: {r:?}"))?;
    let over = store.record(&at(711, "search", 9, 3), NOW).await;
    ensure(matches!(over, Err(StoreError::Full(_))), || {
        format!("8 + 3 events on one decision: {over:?}")
    })?;
    let r = store
        .record(&at(712, "search", 9, 2), NOW)
        .await
        .map_err(e)?;
    ensure(r == Recorded::New, || format!("8 + 2 events: {r:?}"))?;
    // Refusals changed nothing; after the window the room comes back.
    let read = store.read_counters(&["quota".into()]).await.map_err(e)?;
    ensure(read == vec![want(&[("ads", 3), ("search", 2)])], || {
        format!("counters of recorded reuse: {read:?}")
    })?;
    let later = store
        .record(&reuse(713, "ads", 4, 1, NOW + 5_000), NOW + 2_000)
        .await
        .map_err(e)?;
    ensure(later == Recorded::New, || {
        format!("ads after its ids left the window: {later:?}")
    })
}

/// A counter pushed past the limits of i64 stays at the limit (money never wraps to the
/// other sign), in a batch and with an outcome, and the rest of the write still applies.
pub async fn counters_saturate_at_the_limits(store: &dyn StateStore) -> Result<(), String> {
    let near = i64::MAX - 10;
    store
        .add_counters(40, &[add("sat", "up", near), add("sat", "down", -near)])
        .await
        .map_err(e)?;
    store
        .add_counters(
            41,
            &[
                add("sat", "up", 100),
                add("sat", "down", -100),
                add("sat", "after", 3),
            ],
        )
        .await
        .map_err(e)?;
    let mut with = event(600);
    with.counters = vec![add("sat", "up", 5), add("sat", "after", 1)];
    store.record(&with, NOW).await.map_err(e)?;
    let read = store.read_counters(&["sat".into()]).await.map_err(e)?;
    ensure(
        read == vec![want(&[("up", i64::MAX), ("down", i64::MIN), ("after", 4)])],
        || format!("counters at the limits read back as {read:?}"),
    )
}

/// An outcome's accounting applies with it, once: not again for a duplicate, and it stays
/// out of the log.
pub async fn an_outcomes_accounting_applies_with_it_once(
    store: &dyn StateStore,
) -> Result<(), String> {
    let (_, base) = store.events_since(0, 100).await.map_err(e)?;
    let mut with = event(500);
    with.counters = vec![add("h3", "spend", 40), add("h3", "outcomes", 1)];
    for _ in 0..2 {
        store.record(&with, NOW).await.map_err(e)?;
    }
    let read = store.read_counters(&["h3".into()]).await.map_err(e)?;
    ensure(
        read == vec![want(&[("spend", 40), ("outcomes", 1)])],
        || format!("outcome accounting applied as {read:?}"),
    )?;
    let (logged, _) = store.events_since(base, 100).await.map_err(e)?;
    ensure(logged == vec![event(500)], || {
        format!("logged outcome is {logged:?}")
    })
}

/// Policy changes are appended in order, each only at the position it names (another is
/// refused with nothing written), and read back from any position with `seq` set.
pub async fn policy_changes_append_in_order(store: &dyn StateStore) -> Result<(), String> {
    let change = |v: &str| PolicyChange {
        seq: 0,
        version: v.into(),
        source: ChangeSource::Api.as_str().into(),
        author: "a".into(),
        reason: "r".into(),
        at_ms: 7,
        summary: vec!["x".into()],
        text: format!("text {v}"),
        mac: format!("mac of {v}"),
    };
    let none = store.policy_changes(0).await.map_err(e)?;
    ensure(none.is_empty(), || format!("fresh policy log has {none:?}"))?;
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        let len = store.policy_log_len().await.map_err(e)?;
        ensure(len == i as u64, || format!("log length {len} before {v}"))?;
        let stale = store.append_policy_change(&change(v)).await;
        ensure(
            i == 0 || matches!(stale, Err(StoreError::Conflict(_))),
            || format!("append of {v} at position 0: {stale:?}"),
        )?;
        let at = if i == 0 {
            stale.map_err(e)?
        } else {
            let at_end = PolicyChange {
                seq: i as u64,
                ..change(v)
            };
            store.append_policy_change(&at_end).await.map_err(e)?
        };
        ensure(at == i as u64, || format!("change {v} appended at {at}"))?;
    }
    let tail = store.policy_changes(1).await.map_err(e)?;
    let want: Vec<PolicyChange> = [("v2", 1), ("v3", 2)]
        .iter()
        .map(|(v, seq)| PolicyChange {
            seq: *seq,
            ..change(v)
        })
        .collect();
    ensure(tail == want, || format!("policy_changes(1) = {tail:?}"))
}

/// Many concurrent records of one nonce: exactly one wins.
pub async fn concurrent_records_of_one_nonce_one_wins(
    store: &dyn StateStore,
) -> Result<(), String> {
    let racer = event(99);
    let results = futures::future::join_all((0..16).map(|_| store.record(&racer, NOW))).await;
    let wins = results
        .iter()
        .filter(|r| matches!(r, Ok(Recorded::New)))
        .count();
    ensure(wins == 1, || {
        format!("{wins} concurrent records of one nonce won")
    })
}
