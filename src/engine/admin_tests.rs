//! Startup reconciliation of a replica's policy with the shared history, branch by branch, on
//! one in-memory store shared by the replicas of a deployment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use super::Engine;
use crate::domain::classifier::ComplexityModel;
use crate::domain::decision::Signer;
use crate::domain::policy::{EMBEDDED_POLICY, Policy};
use crate::store::{ChangeSource, MemoryStore, OutageBuffer, StateStore};

fn text(bar: &str) -> String {
    EMBEDDED_POLICY.replace("quality_bar = 0.7\n", &format!("quality_bar = {bar}\n"))
}

fn version(bar: &str) -> String {
    Policy::parse(&text(bar)).unwrap().version
}

/// A replica started with the policy file of bar `bar`, reconciled at startup.
async fn replica(store: &Arc<dyn StateStore>, bar: &str, now_ms: u64) -> Engine {
    let e = Engine::builder(
        Arc::new(ComplexityModel::bundled().unwrap()),
        Arc::new(Policy::parse(&text(bar)).unwrap()),
        Signer::new(b"k").unwrap(),
    )
    .store(store.clone(), OutageBuffer::in_memory(0))
    .build();
    e.init_policy(now_ms).await.unwrap();
    e
}

async fn sources(store: &Arc<dyn StateStore>) -> Vec<(String, String)> {
    store
        .policy_changes(0)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.source, c.version))
        .collect()
}

fn shared() -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn the_first_replica_records_its_file_as_the_first_policy() {
    let store = shared();
    let a = replica(&store, "0.7", 1).await;
    assert_eq!(a.policy().version, version("0.7"));
    let log = store.policy_changes(0).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].source, ChangeSource::Startup.as_str());
    assert_eq!(log[0].summary, ["first policy of this deployment"]);
}

#[tokio::test]
async fn a_replica_with_the_same_file_records_nothing() {
    let store = shared();
    replica(&store, "0.7", 1).await;
    let b = replica(&store, "0.7", 2).await;
    assert_eq!(b.policy().version, version("0.7"));
    assert_eq!(sources(&store).await.len(), 1);
}

#[tokio::test]
async fn an_api_change_since_the_file_survives_a_restart_with_that_file() {
    let store = shared();
    let a = replica(&store, "0.7", 1).await;
    a.apply_policy(&text("0.8"), ChangeSource::Api, "alice", "stricter", 2)
        .await
        .unwrap();
    // A restart with the file the history last saw: the API change wins.
    let b = replica(&store, "0.7", 3).await;
    assert_eq!(b.policy().version, version("0.8"));
    assert_eq!(sources(&store).await.len(), 2);
}

#[tokio::test]
async fn a_new_file_is_a_new_deployment_and_is_recorded_with_what_it_changes() {
    let store = shared();
    replica(&store, "0.7", 1).await;
    let b = replica(&store, "0.9", 2).await;
    assert_eq!(b.policy().version, version("0.9"));
    let log = store.policy_changes(0).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].source, ChangeSource::Startup.as_str());
    assert_eq!(log[1].summary, ["scope default: quality_bar 0.7 → 0.9"]);
}

#[tokio::test]
async fn an_old_file_restarting_mid_rollout_follows_the_history() {
    let store = shared();
    replica(&store, "0.7", 1).await;
    replica(&store, "0.9", 2).await;
    // A pod of the previous deployment restarts with the older file.
    let old = replica(&store, "0.7", 3).await;
    assert_eq!(old.policy().version, version("0.9"));
    assert_eq!(sources(&store).await.len(), 2, "nothing recorded");
}

/// The race of a store that lost its data: replica B restarts the history and a change is
/// applied on it before replica A looks again. The new history is as long as what A had seen
/// (so reading at A's cursor finds an entry): A must still see that it is another history and
/// follow its head instead of taking the change for one it already had.
#[tokio::test]
async fn after_the_store_loses_the_history_a_replica_follows_the_restarted_one() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn StateStore> = memory.clone();
    let a = replica(&store, "0.7", 1).await;
    a.apply_policy(&text("0.75"), ChangeSource::Api, "alice", "r", 2)
        .await
        .unwrap();
    let b = replica(&store, "0.7", 3).await;
    a.refresh_policy(false, 4).await.unwrap();
    b.refresh_policy(false, 4).await.unwrap();
    assert_eq!(sources(&store).await.len(), 2);

    memory.lose_policy_history();
    // B notices first: it records its live policy again, then an admin changes it on B.
    b.refresh_policy(false, 5).await.unwrap();
    b.apply_policy(&text("0.8"), ChangeSource::Api, "bob", "after the loss", 6)
        .await
        .unwrap();
    assert_eq!(sources(&store).await.len(), 2, "as long as A's view");
    a.refresh_policy(false, 7).await.unwrap();
    assert_eq!(a.policy().version, version("0.8"));
    // Nothing of A's was recorded over the restarted history.
    assert_eq!(sources(&store).await.len(), 2);
}

/// The probe of the hardening issue: an entry written straight into the store's policy log (bar
/// 0, so hard tasks would go to the cheapest tier) never becomes live on any replica, at a
/// refresh or at a start; nor does a real, sealed entry copied to the end of the log (an old,
/// looser policy replayed); the entries the replicas write themselves verify.
#[tokio::test]
async fn a_policy_entry_written_into_the_store_without_the_secret_never_becomes_live() {
    let store = shared();
    let a = replica(&store, "0.7", 1).await;
    a.apply_policy(&text("0.75"), ChangeSource::Api, "alice", "looser", 2)
        .await
        .unwrap();
    a.apply_policy(&text("0.8"), ChangeSource::Api, "alice", "stricter", 3)
        .await
        .unwrap();
    let at_end = |mut c: crate::store::PolicyChange, seq: u64| {
        c.seq = seq;
        c
    };
    let log = store.policy_changes(0).await.unwrap();
    // Forged: a sealed entry's fields changed.
    let mut forged = at_end(log[0].clone(), 3);
    forged.version = version("0");
    forged.text = text("0");
    store.append_policy_change(&forged).await.unwrap();
    // Sealed with another deployment's secret.
    let other = Signer::new(b"another deployment").unwrap().policy_keys()[0];
    store
        .append_policy_change(&at_end(forged.clone(), 4).seal(&other))
        .await
        .unwrap();
    // Replayed: the real, sealed 0.75 entry copied to the end as it is.
    store
        .append_policy_change(&at_end(log[1].clone(), 5))
        .await
        .unwrap();
    a.refresh_policy(false, 4).await.unwrap();
    assert_eq!(a.policy().version, version("0.8"));
    let b = replica(&store, "0.7", 5).await;
    assert_eq!(b.policy().version, version("0.8"));
    assert_eq!(b.policy_versions().await.unwrap().len(), 3);
    // A real change, made on A, still reaches B.
    a.apply_policy(
        &text("0.9"),
        ChangeSource::Api,
        "alice",
        "stricter still",
        6,
    )
    .await
    .unwrap();
    b.refresh_policy(false, 7).await.unwrap();
    assert_eq!(b.policy().version, version("0.9"));
}

/// The review's find: once a rotation's previous secret is removed, entries it sealed no longer
/// verify, so the history looked lost and a restart went back to the policy file. The head is
/// sealed again with the current secret while both are held, and the API change outlives it.
#[tokio::test]
async fn an_api_change_outlives_a_decision_secret_rotation() {
    let store = shared();
    let with = |signer: Signer, now: u64| {
        let store = store.clone();
        async move {
            let e = Engine::builder(
                Arc::new(ComplexityModel::bundled().unwrap()),
                Arc::new(Policy::parse(&text("0.7")).unwrap()),
                signer,
            )
            .store(store, OutageBuffer::in_memory(0))
            .build();
            e.init_policy(now).await.unwrap();
            e
        }
    };
    let old = || Signer::new(b"old-secret").unwrap();
    let new = || Signer::new(b"new-secret").unwrap();
    let a = with(old(), 1).await;
    a.apply_policy(&text("0.8"), ChangeSource::Api, "alice", "stricter", 2)
        .await
        .unwrap();
    // Rotation, step 1: the new secret, the old one still accepted.
    let b = with(new().accepting(old()), 3).await;
    assert_eq!(b.policy().version, version("0.8"));
    b.refresh_policy(false, 4).await.unwrap();
    // Step 2: the old secret removed; a replica restarts with the policy file.
    let c = with(new(), 5).await;
    assert_eq!(
        c.policy().version,
        version("0.8"),
        "the API change survived"
    );
}

/// The bug of the hardening issue (item 9) and issue 35: replicas whose policy files differ
/// only in a deprecated `[store]` table (the old two-replica recipe gave each its spill file)
/// ended on different policy versions. The table is not policy: the version is of the text
/// without it, so both start on one version, and a later policy with one changes no store.
#[tokio::test]
async fn replicas_whose_files_differ_only_in_store_end_on_one_version() {
    let store = shared();
    let own = |capacity: u32| {
        format!(
            "{}\n[store]\nkind = \"memory\"\nbuffer_capacity = {capacity}\n",
            text("0.7")
        )
    };
    let start = |t: String, now: u64| {
        let store = store.clone();
        async move {
            let e = Engine::builder(
                Arc::new(ComplexityModel::bundled().unwrap()),
                Arc::new(Policy::parse(&t).unwrap()),
                Signer::new(b"k").unwrap(),
            )
            .store(store, OutageBuffer::in_memory(0))
            .build();
            e.init_policy(now).await.unwrap();
            e
        }
    };
    let a = start(own(100), 1).await;
    let b = start(own(200), 2).await;
    a.refresh_policy(false, 3).await.unwrap();
    assert_eq!(a.policy().version, b.policy().version);
    assert_eq!(a.policy().version, version("0.7"));
    // One startup entry: the second replica found its very version recorded.
    assert_eq!(sources(&store).await.len(), 1);
    assert!(!a.policy().source.contains("[store]"));
    // A change (with a [store] table of its own) made on one reaches the other all the same,
    // and the shared history never holds the table.
    // (Even one naming another backend: it is ignored, never a reason to refuse the change.)
    let elsewhere = format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"redis://elsewhere:1\"\n",
        text("0.8")
    );
    let applied = b
        .apply_policy(&elsewhere, ChangeSource::Api, "bob", "stricter", 4)
        .await
        .unwrap();
    assert_eq!(applied.version, version("0.8"));
    assert!(!applied.text.contains("[store]"), "{}", applied.text);
    a.refresh_policy(false, 5).await.unwrap();
    assert_eq!(a.policy().version, version("0.8"));
}
