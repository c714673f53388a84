//! Shared state on a real Redis: the store contract, replicas learning together, a Redis
//! outage under traffic, and a replica restart. Each test runs its own `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::feedback_req as fb;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::common::{Deployed, TestServer, route_req};
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::grpc::pb;
use tokenwise::store::{RedisStore, StateStore, contract};

fn unique_prefix(name: &str) -> String {
    format!(
        "tw-test-{}-{name}-{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn policy_on(redis: &RedisServer, prefix: &str) -> Deployed {
    policy_with_timeout(redis, prefix, 100)
}

/// A store timeout long enough that a loaded test machine does not push outcomes into the
/// outage buffer (tests that count on the shared nonce ledger answering at once).
fn patient_policy_on(redis: &RedisServer, prefix: &str) -> Deployed {
    policy_with_timeout(redis, prefix, 2_000)
}

fn policy_with_timeout(redis: &RedisServer, prefix: &str, timeout_ms: u64) -> Deployed {
    let text = format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nrefresh_ms = 100\ntimeout_ms = {timeout_ms}\n",
        tokenwise::domain::policy::EMBEDDED_POLICY,
        redis.url()
    );
    crate::common::deployed(&text)
}

fn thresholds(server: &TestServer) -> Vec<(String, Vec<f64>)> {
    let table = server.engine.table();
    let of =
        |p: &tokenwise::domain::learning::ScopePlan| p.tiers.iter().map(|t| t.threshold).collect();
    // Each scope's shared plan, then each team's own ("scope@team").
    let mut v: Vec<(String, Vec<f64>)> = table
        .plans
        .iter()
        .flat_map(|(k, p)| {
            std::iter::once((k.clone(), of(p))).chain(
                p.teams
                    .iter()
                    .map(move |(t, tp)| (format!("{k}@{t}"), of(tp))),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

const TASKS: [&str; 6] = [
    "What is the capital of Peru?",
    "Translate 'thank you' into German.",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h? Show each step.",
    "Which of these is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
    "Summarise the plot of Hamlet in two sentences.",
    "If 3x + 7 = 22, what is x, and what is 2x squared minus x?",
];

/// The store contract on Redis, one test per behaviour, each on its own redis-server.
mod contract_on_redis {
    use super::*;
    use std::sync::Arc;

    tokenwise::store_contract_tests!(async {
        let redis = RedisServer::start()?;
        let store: Arc<dyn StateStore> = Arc::new(
            RedisStore::new(
                &redis.url(),
                &unique_prefix("contract"),
                Duration::from_millis(500),
            )
            .unwrap(),
        );
        Some((redis, store))
    });
}

#[tokio::test]
async fn an_unreadable_event_in_the_log_is_skipped_counted_and_moved_past() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("poison");
    let store = RedisStore::new(&redis.url(), &prefix, Duration::from_millis(500)).unwrap();
    store.record(&contract::event(1), 0).await.unwrap();
    // Someone (a bug, an operator, a different version) appends what is not an event.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{prefix}:events"))
        .arg("{not an event")
        .query_async(&mut con)
        .await
        .unwrap();
    store.record(&contract::event(2), 0).await.unwrap();
    let (events, cursor) = store.events_since(0, 100).await.unwrap();
    let nonces: Vec<u64> = events.iter().map(|e| e.nonce).collect();
    assert_eq!(nonces, vec![1, 2]);
    assert_eq!(cursor, 3, "the cursor moves past the bad event");
    assert_eq!(store.skipped_events(), 1);
    // Reading on from there neither stalls nor sees it again.
    store.record(&contract::event(3), 0).await.unwrap();
    let (more, next) = store.events_since(cursor, 100).await.unwrap();
    assert_eq!(more.iter().map(|e| e.nonce).collect::<Vec<_>>(), vec![3]);
    assert_eq!((next, store.skipped_events()), (4, 1));
}

#[tokio::test]
async fn feedback_on_one_replica_moves_the_thresholds_the_other_routes_with() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("replicas");
    two_replicas_learn_together(&|| patient_policy_on(&redis, &prefix)).await;
}

/// A three-master Redis Cluster: the deployment's keys share the hash tag `{prefix}`, so every
/// script's keys sit in one slot (without it each script fails with CROSSSLOT). The store
/// contract passes and two replicas learn together, as on one Redis.
#[tokio::test]
async fn a_redis_cluster_passes_the_contract_and_replicas_learn_together() {
    let Some(mut cluster) = crate::common::redis::RedisCluster::start() else {
        return;
    };
    let prefix = unique_prefix("cluster");
    let nodes = cluster.nodes_toml();
    let policy = || {
        crate::common::deployed(&format!(
            "{}\n[store]\nkind = \"redis-cluster\"\nnodes = {nodes}\nprefix = \"{prefix}\"\n\
             refresh_ms = 100\ntimeout_ms = 2000\n",
            tokenwise::domain::policy::EMBEDDED_POLICY,
        ))
    };
    let mut store_cfg = policy().store;
    store_cfg.kind = tokenwise::store::StoreKind::RedisCluster {
        nodes: cluster.nodes.iter().map(|n| n.url()).collect(),
        prefix: format!("{prefix}-contract"),
    };
    store_cfg.spill_file = Some(
        crate::common::private_tmp()
            .join(format!("{prefix}-contract.jsonl"))
            .display()
            .to_string(),
    );
    let (store, _) =
        tokenwise::store::open(&store_cfg, "contract", tokenwise::store::FileKeys::random())
            .unwrap();
    assert_eq!(store.kind(), "redis-cluster");
    contract::check(store.as_ref()).await.unwrap();
    two_replicas_learn_together(&policy).await;

    // The master that holds the deployment's slot dies (no replica to fail over to): Route
    // keeps answering, feedback is buffered, and every acknowledged outcome lands once when
    // the node is back.
    let server = TestServer::with_policy(policy(), Limits::default()).await;
    let mut client = server.router().await;
    let owner = cluster.owner_of(&prefix);
    cluster.nodes[owner].stop();
    let mut acknowledged = HashSet::new();
    for i in 0..50 {
        let d = client
            .route(route_req(TASKS[i % TASKS.len()]))
            .await
            .unwrap()
            .into_inner();
        client.feedback(fb(&d.decision_id, 1.0)).await.unwrap();
        acknowledged.insert(decode_nonce(&d.decision_id));
    }
    assert!(server.engine.buffered() > 0, "the outage was not noticed");
    cluster.nodes[owner].restart();
    // The deployment's own log (the contract above used another prefix).
    let mut cfg = policy().store;
    cfg.spill_file = Some(
        crate::common::private_tmp()
            .join(format!("{prefix}-reader.jsonl"))
            .display()
            .to_string(),
    );
    let (store, _) =
        tokenwise::store::open(&cfg, "reader", tokenwise::store::FileKeys::random()).unwrap();
    let start = Instant::now();
    loop {
        let (log, _) = match store.events_since(0, 100_000).await {
            Ok(page) => page,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        let unique: HashSet<u64> = nonces.iter().copied().collect();
        assert_eq!(unique.len(), nonces.len(), "an outcome was recorded twice");
        if acknowledged.is_subset(&unique) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} of {} acknowledged outcomes in the log",
            acknowledged.intersection(&unique).count(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn two_replicas_learn_together(policy: &dyn Fn() -> Deployed) {
    let a = TestServer::with_policy(policy(), Limits::default()).await;
    let b = TestServer::with_policy(policy(), Limits::default()).await;
    assert_eq!(thresholds(&a), thresholds(&b));
    let before = thresholds(&b);

    // Only replica A hears that every tier's answers are perfect.
    let mut client = a.router().await;
    crate::common::teach(&mut client, &TASKS, 300, 1.0).await;
    let learned = thresholds(&a);
    assert_ne!(learned, before, "replica A should have learned");

    // B converges on exactly A's thresholds within its refresh interval (100 ms) plus slack.
    let start = Instant::now();
    while thresholds(&b) != learned {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "B did not converge: {:?} vs {learned:?}",
            thresholds(&b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "replica B converged {:?} after A's last feedback",
        start.elapsed()
    );
    // And a duplicate sent to B is refused: the nonce ledger is shared.
    let d = client
        .route(route_req("one more"))
        .await
        .unwrap()
        .into_inner();
    client.feedback(fb(&d.decision_id, 1.0)).await.unwrap();
    // On a loaded machine A may have buffered the outcome (a store call past its timeout) and
    // record it on its next refresh; once it is in Redis, B must refuse the duplicate.
    let recorded = std::time::Instant::now();
    while a.engine.buffered() > 0 {
        assert!(
            recorded.elapsed() < Duration::from_secs(10),
            "A never recorded its buffered outcome"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut bc = b.router().await;
    let err = bc.feedback(fb(&d.decision_id, 1.0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_no_route_and_no_feedback() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("outage");
    let server = TestServer::with_policy(policy_on(&redis, &prefix), Limits::default()).await;
    let client = server.router().await;
    let mut health = HealthClient::new(server.channel().await);
    let store_status = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "tokenwise.v1.Store".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    assert_eq!(
        store_status(&mut health).await,
        1,
        "SERVING before the outage"
    );

    let mut accepted: Vec<u64> = Vec::new();
    let mut route_errors = 0;
    let mut saw_degraded = false;
    let step = |phase: &'static str, i: usize| {
        let mut client = client.clone();
        async move {
            let r = client.route(route_req(TASKS[i % TASKS.len()])).await;
            let d = match r {
                Ok(d) => d.into_inner(),
                Err(e) => return (Err(format!("{phase}: route {e:?}")), None),
            };
            let nonce = decode_nonce(&d.decision_id);
            match client.feedback(fb(&d.decision_id, (i % 2) as f64)).await {
                Ok(_) => (Ok(()), Some(nonce)),
                Err(e) => (Err(format!("{phase}: feedback {e:?}")), None),
            }
        }
    };
    for i in 0..100 {
        let (r, n) = step("before", i).await;
        if r.is_err() {
            route_errors += 1;
        }
        accepted.extend(n);
    }
    redis.stop();
    let outage_start = Instant::now();
    let mut i = 100;
    while outage_start.elapsed() < Duration::from_secs(3) {
        let (r, n) = step("during", i).await;
        assert!(r.is_ok(), "{r:?}");
        accepted.extend(n);
        i += 1;
        if i % 20 == 0 && store_status(&mut health).await == 2 {
            saw_degraded = true;
        }
    }
    let during = i - 100;
    assert!(
        saw_degraded,
        "health should report the store NOT_SERVING during the outage"
    );
    assert!(server.engine.buffered() > 0);
    redis.restart();
    for j in 0..100 {
        let (r, n) = step("after", i + j).await;
        if r.is_err() {
            route_errors += 1;
        }
        accepted.extend(n);
    }
    assert_eq!(route_errors, 0);

    // Every accepted outcome is in the shared log exactly once.
    let start = Instant::now();
    loop {
        // Read as any client would, right after the restart: a connect that times out on a
        // busy host is retried until the deadline below, not a failure of what is checked.
        let read = match RedisStore::new(&redis.url(), &prefix, Duration::from_millis(500)) {
            Ok(store) => store
                .events_since(0, 100_000)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let log = match read {
            Ok((log, _)) => log,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the restarted Redis did not answer: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        let unique: HashSet<u64> = nonces.iter().copied().collect();
        assert_eq!(unique.len(), nonces.len(), "an outcome was recorded twice");
        if unique == accepted.iter().copied().collect::<HashSet<u64>>() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "log has {} of {} accepted outcomes",
            unique.len(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{} feedbacks accepted during a 3 s outage, all recorded once",
        during
    );
    // Health comes back.
    let start = Instant::now();
    while store_status(&mut health).await != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "store health did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The replica's own evidence counts each outcome once too, once its refresher has folded
    // what the outage buffer drained (the log can hold it a refresh before the fold does).
    let start = Instant::now();
    loop {
        let counted: u64 = server
            .engine
            .evidence()
            .await
            .values()
            .map(|e| e.feedbacks())
            .sum();
        assert!(
            counted <= accepted.len() as u64,
            "{counted} folded, {} accepted",
            accepted.len()
        );
        if counted == accepted.len() as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{counted} of {} accepted outcomes folded",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restarted_replica_routes_with_the_learned_state() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("restart");
    let a = TestServer::with_policy(policy_on(&redis, &prefix), Limits::default()).await;
    let cold = thresholds(&a);
    let mut client = a.router().await;
    crate::common::teach(&mut client, &TASKS, 300, 1.0).await;
    let learned = thresholds(&a);
    assert_ne!(learned, cold);
    // What the replica that learned answers for the task (its learned curves, or those of
    // the discovered cluster it falls in).
    let a_default_workflow: Vec<f64> = client
        .route(route_req("first call"))
        .await
        .unwrap()
        .into_inner()
        .candidates
        .iter()
        .map(|c| c.threshold)
        .collect();
    a.stop().await;
    // A new process of the same deployment: it has learned nothing itself.
    let restarted = TestServer::with_policy(policy_on(&redis, &prefix), Limits::default()).await;
    // Its very first answer already uses the shared state (it syncs before serving).
    let d = restarted
        .router()
        .await
        .route(route_req("first call"))
        .await
        .unwrap()
        .into_inner();
    let first: Vec<f64> = d.candidates.iter().map(|c| c.threshold).collect();
    // The candidates carry the thresholds of the task's workflow (or its cluster).
    let learned_default: &Vec<f64> = &a_default_workflow;
    let cold_default = &cold.iter().find(|(k, _)| k == "default").unwrap().1;
    assert_eq!(
        &first, learned_default,
        "restarted replica must route from the shared state"
    );
    assert_ne!(&first, cold_default);
    assert_eq!(thresholds(&restarted), learned);
}

fn decode_nonce(id: &str) -> u64 {
    use base64::Engine as _;
    let payload = id.split('.').next().unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    // Binary claims: version byte, issued_ms (8), then the nonce (8), little-endian.
    u64::from_le_bytes(claims[9..17].try_into().unwrap())
}

/// A `tokenwise serve` child process; killed on drop.
struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_replica(config: &std::path::Path, port: u16) -> Replica {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwise"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "off",
            "--no-auth",
            "--config",
        ])
        .arg(config)
        .env(
            "TOKENWISE_DECISION_SECRET",
            "q7Vv1mZ3xKp0sT9wNcR2yLbH5uJdE8aG",
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Replica(child)
}

async fn connect(port: u16) -> tonic::transport::Channel {
    crate::common::connect(([127, 0, 0, 1], port).into()).await
}

async fn default_thresholds(ch: &tonic::transport::Channel) -> Vec<f64> {
    let mut admin = pb::admin_client::AdminClient::new(ch.clone());
    let r = crate::common::thresholds(&mut admin, "default").await;
    r.thresholds.iter().map(|t| t.threshold).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_an_outage_loses_no_acknowledged_feedback() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("sigkill");
    let spill = crate::common::private_tmp().join(format!("{prefix}-spill.jsonl"));
    let text = format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nrefresh_ms = 100\n\
         timeout_ms = 100\nspill_file = \"{}\"\n",
        tokenwise::domain::policy::EMBEDDED_POLICY,
        redis.url(),
        spill.display()
    );
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(&config, text).unwrap();
    let port = crate::common::spare_port();
    let replica = spawn_replica(&config, port);
    let mut router = pb::router_client::RouterClient::new(connect(port).await);
    redis.stop();
    let mut acknowledged = HashSet::new();
    for i in 0..300 {
        let d = router
            .route(route_req(TASKS[i % TASKS.len()]))
            .await
            .unwrap()
            .into_inner();
        if router.feedback(fb(&d.decision_id, 1.0)).await.is_ok() {
            acknowledged.insert(decode_nonce(&d.decision_id));
        }
        // Reuse of the first 20 outputs, 2 uses each, and a retry refused during the outage.
        if i < 20 {
            let reuse = pb::RecordReuseRequest {
                decision_id: d.decision_id.clone(),
                count: 2,
                event_id: "sent".into(),
                note: String::new(),
            };
            router.record_reuse(reuse.clone()).await.unwrap();
            let e = router.record_reuse(reuse).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        }
    }
    assert_eq!(
        acknowledged.len(),
        300,
        "every feedback is taken during the outage"
    );
    // SIGKILL: no shutdown, no flush. Then the store returns and the replica starts again.
    drop(replica);
    redis.restart();
    let _again = spawn_replica(&config, crate::common::spare_port());
    let store = RedisStore::new(&redis.url(), &prefix, Duration::from_millis(500)).unwrap();
    let start = Instant::now();
    loop {
        let (log, _) = store.events_since(0, 100_000).await.unwrap();
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        let unique: HashSet<u64> = nonces.iter().copied().collect();
        assert_eq!(unique.len(), nonces.len(), "an outcome was recorded twice");
        if unique == acknowledged {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the log has {} of {} acknowledged outcomes",
            unique.len(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The acknowledged reuse landed too, once: 20 reused outputs, 40 uses.
    let hour = tokenwise::domain::calendar::HOUR_MS;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hashes: Vec<String> = [now - hour, now]
        .iter()
        .map(|&t| tokenwise::domain::books::ledger_hash(t))
        .collect();
    let sum = |cells: &[std::collections::HashMap<String, i64>], metric: &str| -> i64 {
        cells
            .iter()
            .flatten()
            .filter(|(f, _)| {
                tokenwise::domain::books::parse_ledger_field(f).is_some_and(|p| p.0 == metric)
            })
            .map(|(_, v)| *v)
            .sum()
    };
    loop {
        let cells = store.read_counters(&hashes).await.unwrap();
        let got = (sum(&cells, "reused"), sum(&cells, "reuse_events"));
        if got == (20, 40) {
            break;
        }
        assert!(got.0 <= 20 && got.1 <= 40, "reuse counted twice: {got:?}");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "reuse in the store: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn a_password_from_a_file_opens_a_protected_redis() {
    let Some(redis) = RedisServer::start_with(&["--requirepass", "s3cret-from-a-file"]) else {
        return;
    };
    let prefix = unique_prefix("acl");
    let file = std::env::temp_dir().join(format!("{prefix}.password"));
    std::fs::write(&file, "s3cret-from-a-file\n").unwrap();
    let config = |password_file: Option<String>| tokenwise::store::StoreConfig {
        kind: tokenwise::store::StoreKind::Redis {
            url: redis.url(),
            prefix: prefix.clone(),
        },
        password_file,
        spill_file: Some(
            crate::common::private_tmp()
                .join(format!("{prefix}-{}.jsonl", rand::random::<u32>()))
                .display()
                .to_string(),
        ),
        ..Default::default()
    };
    let (store, _) = tokenwise::store::open(
        &config(Some(file.display().to_string())),
        "a",
        tokenwise::store::FileKeys::random(),
    )
    .unwrap();
    assert_eq!(
        store.record(&contract::event(1), 0).await.unwrap(),
        tokenwise::store::Recorded::New
    );
    // Without it, or with a wrong one, Redis refuses: a configuration error (the server
    // refuses to start on it), not an outage to wait out.
    let (store, _) =
        tokenwise::store::open(&config(None), "b", tokenwise::store::FileKeys::random()).unwrap();
    assert!(store.record(&contract::event(2), 0).await.is_err());
    let e = store.ping().await.unwrap_err();
    assert!(
        matches!(&e, tokenwise::store::StoreError::Config(m) if m.contains("credentials")),
        "{e}"
    );
    std::fs::write(&file, "wrong\n").unwrap();
    let (store, _) = tokenwise::store::open(
        &config(Some(file.display().to_string())),
        "c",
        tokenwise::store::FileKeys::random(),
    )
    .unwrap();
    let e = store.ping().await.unwrap_err();
    assert!(matches!(e, tokenwise::store::StoreError::Config(_)), "{e}");
    let _ = std::fs::remove_file(&file);
}

/// Whether this machine's `redis-server` was built with TLS (Debian's is).
fn redis_has_tls() -> bool {
    std::process::Command::new("redis-server")
        // Exits at once either way: without a key file, or on an unknown directive.
        .args(["--port", "0", "--tls-port", "1"])
        .output()
        .map(|o| !String::from_utf8_lossy(&o.stderr).contains("Bad directive"))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_tls_redis_with_a_private_ca_passes_the_contract_and_an_unknown_one_is_refused() {
    if !redis_has_tls() {
        eprintln!("skipped: this redis-server has no TLS support");
        return;
    }
    // A self-signed server certificate for 127.0.0.1: its own CA.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(unique_prefix("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let tls_port = crate::common::spare_port().to_string();
    let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
    let Some(_redis) = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &crt_s,
        "--tls-key-file",
        &key_s,
        "--tls-ca-cert-file",
        &crt_s,
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    let prefix = unique_prefix("tls");
    let config = |ca_file: Option<String>| {
        let text = format!(
            "{}\n[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{tls_port}\"\nprefix = \"{prefix}\"\ntimeout_ms = 2000\n{}spill_file = \"{}\"\n",
            tokenwise::domain::policy::EMBEDDED_POLICY,
            ca_file
                .map(|f| format!("ca_file = \"{f}\"\n"))
                .unwrap_or_default(),
            dir.join(format!("spill-{}.jsonl", rand::random::<u32>()))
                .display()
        );
        crate::common::deployed(&text).store
    };
    // (A patient timeout: a loaded machine's TLS handshake must not fail the contract.)
    let (store, _) = tokenwise::store::open(
        &config(Some(crt_s.clone())),
        "a",
        tokenwise::store::FileKeys::random(),
    )
    .unwrap();
    contract::check(store.as_ref()).await.unwrap();
    // Without the CA the server's certificate is not trusted: nothing is written.
    let (store, _) =
        tokenwise::store::open(&config(None), "b", tokenwise::store::FileKeys::random()).unwrap();
    assert!(store.ping().await.is_err());
    // A CA file needs a TLS url.
    let e = crate::common::try_deployed(&format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nca_file = \"x.pem\"\n",
        tokenwise::domain::policy::EMBEDDED_POLICY
    ))
    .unwrap_err();
    assert_eq!(e.path, "policy file: store.ca_file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn data_since_is_now_on_an_empty_store_and_zero_for_an_upgraded_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let fresh = RedisStore::new(
        &redis.url(),
        &unique_prefix("fresh"),
        Duration::from_millis(500),
    )
    .unwrap();
    assert_eq!(fresh.data_since_ms(1_000).await.unwrap(), 1_000);
    // Set once: asked again later, the same instant.
    assert_eq!(fresh.data_since_ms(9_000).await.unwrap(), 1_000);
    // A deployment whose log predates the key (an upgrade): its ids stay valid.
    let old = RedisStore::new(
        &redis.url(),
        &unique_prefix("old"),
        Duration::from_millis(500),
    )
    .unwrap();
    old.record(&contract::event(1), 0).await.unwrap();
    assert_eq!(old.data_since_ms(5_000).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_issued_before_redis_lost_its_data_are_refused_not_counted_again() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("data-loss");
    let server =
        TestServer::with_policy(patient_policy_on(&redis, &prefix), Limits::default()).await;
    let mut c = server.router().await;
    let recorded = c.route(route_req("before")).await.unwrap().into_inner();
    let pending = c.route(route_req("pending")).await.unwrap().into_inner();
    c.feedback(fb(&recorded.decision_id, 1.0)).await.unwrap();
    // The old ids must be older than the new data by more than the tolerated clock skew.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Redis restarts empty: the ledger of spent nonces is gone.
    redis.restart_empty();
    // Until a refresh has read the store again (reconnect, then every 100 ms here), a replay
    // could slip through: that window is documented. Wait it out.
    let start = Instant::now();
    while !server.engine.data_reset_seen() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refresh saw the reset"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&recorded.decision_id, &pending.decision_id] {
        let e = c.feedback(fb(id, 1.0)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("lost its data"), "{e:?}");
    }
    // A decision made now is fine.
    let fresh = c.route(route_req("after")).await.unwrap().into_inner();
    c.feedback(fb(&fresh.decision_id, 1.0)).await.unwrap();
}

#[tokio::test]
async fn two_server_processes_learn_together_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("processes");
    let text = format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nrefresh_ms = 100\n",
        tokenwise::domain::policy::EMBEDDED_POLICY,
        redis.url()
    );
    let config = std::env::temp_dir().join(format!("{prefix}.toml"));
    std::fs::write(&config, text).unwrap();
    let (pa, pb_port) = (crate::common::spare_port(), crate::common::spare_port());
    let _a = spawn_replica(&config, pa);
    let _b = spawn_replica(&config, pb_port);
    let (ca, cb) = (connect(pa).await, connect(pb_port).await);
    let before = default_thresholds(&cb).await;

    // Feedback only to process A.
    let mut router_a = pb::router_client::RouterClient::new(ca.clone());
    crate::common::teach(&mut router_a, &TASKS, 200, 1.0).await;
    let learned = default_thresholds(&ca).await;
    assert_ne!(learned, before);
    let start = Instant::now();
    while default_thresholds(&cb).await != learned {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "process B did not pick up A's learning"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A decision issued by A is accepted once, by B too (shared secret and nonce ledger).
    let d = router_a
        .route(route_req("cross-replica"))
        .await
        .unwrap()
        .into_inner();
    let mut router_b = pb::router_client::RouterClient::new(cb);
    router_b.feedback(fb(&d.decision_id, 1.0)).await.unwrap();
    assert_eq!(
        router_a
            .feedback(fb(&d.decision_id, 1.0))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::AlreadyExists
    );
    let _ = std::fs::remove_file(&config);
}

/// The Redis ACL that `deploy/k8s/redis.yaml` writes (one user, the deployment's keys, no
/// dangerous commands) admits everything the store does: the contract passes under it, and the
/// default user is off.
#[tokio::test]
async fn the_manifests_redis_acl_admits_the_store_and_nothing_else() {
    let manifest = include_str!("../../deploy/k8s/redis.yaml");
    let rule = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("printf '"))
        .and_then(|l| l.split('\'').next())
        .expect("redis.yaml writes its ACL file with printf")
        .replace("\\n", "\n")
        .replace("%s", "acl-test-password");
    let dir = crate::common::private_tmp();
    let acl = dir.join(format!("{}.acl", unique_prefix("acl")));
    std::fs::write(&acl, rule).unwrap();
    let acl_s = acl.display().to_string();
    let Some(redis) = RedisServer::start_with(&["--aclfile", &acl_s]) else {
        return;
    };
    let password = dir.join(format!("{}.password", unique_prefix("acl")));
    std::fs::write(&password, "acl-test-password\n").unwrap();
    let config = |user: &str, prefix: String| tokenwise::store::StoreConfig {
        kind: tokenwise::store::StoreKind::Redis {
            url: redis.url(),
            prefix,
        },
        username: Some(user.into()),
        password_file: Some(password.display().to_string()),
        spill_file: Some(
            dir.join(format!("{}.jsonl", unique_prefix("acl")))
                .display()
                .to_string(),
        ),
        ..Default::default()
    };
    // The manifests' prefix is `tokenwise`; the ACL admits keys under it.
    let prefix = format!("tokenwise-{}", unique_prefix("acl"));
    let (store, _) = tokenwise::store::open(
        &config("tokenwise", prefix),
        "a",
        tokenwise::store::FileKeys::random(),
    )
    .unwrap();
    contract::check(store.as_ref()).await.unwrap();
    // Another prefix's keys, or the default user: refused.
    let (other, _) = tokenwise::store::open(
        &config("tokenwise", unique_prefix("elsewhere")),
        "b",
        tokenwise::store::FileKeys::random(),
    )
    .unwrap();
    assert!(other.record(&contract::event(1), 0).await.is_err());
    let (anonymous, _) = tokenwise::store::open(
        &config("default", "tokenwise".into()),
        "c",
        tokenwise::store::FileKeys::random(),
    )
    .unwrap();
    assert!(anonymous.ping().await.is_err());
}

/// The probe of the hardening issue: two deployments on different Redis servers with the same
/// prefix and the same secret accepted each other's decision ids. Each store now holds a
/// random deployment id that the signing key is derived from.
#[tokio::test]
async fn deployments_on_different_stores_refuse_each_others_ids_despite_one_secret_and_prefix() {
    let (Some(one), Some(two)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let prefix = unique_prefix("deployments");
    let config = |redis: &RedisServer, name: &str| {
        let text = format!(
            "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nrefresh_ms = 100\n",
            tokenwise::domain::policy::EMBEDDED_POLICY,
            redis.url()
        );
        let path = std::env::temp_dir().join(format!("{prefix}-{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (pa, pb_port) = (crate::common::spare_port(), crate::common::spare_port());
    let _a = spawn_replica(&config(&one, "a"), pa);
    let _b = spawn_replica(&config(&two, "b"), pb_port);
    let mut a = pb::router_client::RouterClient::new(connect(pa).await);
    let mut b = pb::router_client::RouterClient::new(connect(pb_port).await);
    let d = a
        .route(route_req("which deployment?"))
        .await
        .unwrap()
        .into_inner();
    let e = b.feedback(fb(&d.decision_id, 1.0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("signature"), "{e:?}");
    a.feedback(fb(&d.decision_id, 1.0)).await.unwrap();
    // Each store holds its own id, set once.
    let id = |redis: &RedisServer| {
        std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "get"])
            .arg(format!("{prefix}:deployment-id"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap()
    };
    let (ida, idb) = (id(&one), id(&two));
    assert_eq!(ida.len(), 32, "{ida:?}");
    assert_ne!(ida, idb);
}

/// Polls the policy version `port` serves until it is `want` (5 s at most).
async fn until_serving(port: u16, want: &str) {
    let start = Instant::now();
    loop {
        let v = pb::admin_client::AdminClient::new(connect(port).await)
            .get_policy(pb::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version;
        if v == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "replica on {port} serves {v}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Applies the embedded policy with bar `bar` (not its own 0.7) on the replica at `port`, as
/// `author`; the new version.
async fn change_policy_on(port: u16, bar: &str, author: &str) -> String {
    let text = tokenwise::domain::policy::EMBEDDED_POLICY
        .replace("quality_bar = 0.7\n", &format!("quality_bar = {bar}\n"));
    assert_ne!(text, tokenwise::domain::policy::EMBEDDED_POLICY);
    pb::admin_client::AdminClient::new(connect(port).await)
        .apply_policy(pb::ApplyPolicyRequest {
            text,
            author: author.into(),
            reason: format!("{author}'s change on one replica"),
        })
        .await
        .unwrap()
        .into_inner()
        .version
}

/// Issue 35: two `serve` processes on one Redis with one policy file and different
/// deployment settings — one from flags, the other from the environment and a deployment file
/// (own spill files, prefixes given differently, different refresh intervals). They start on
/// one policy version, and a change applied on one of them reaches the other.
#[tokio::test]
async fn two_replicas_with_their_own_deployment_settings_end_on_one_policy_version() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("deployment");
    let dir = crate::common::private_tmp();
    let policy = dir.join(format!("{prefix}-policy.toml"));
    std::fs::write(&policy, tokenwise::domain::policy::EMBEDDED_POLICY).unwrap();
    let file = dir.join(format!("{prefix}-b.toml"));
    std::fs::write(
        &file,
        format!(
            "[server]\nmetrics_listen = \"off\"\n\n[store]\nprefix = \"{prefix}\"\nrefresh_ms = 50\n\
             spill_file = \"{}\"\n",
            dir.join(format!("{prefix}-b.jsonl")).display()
        ),
    )
    .unwrap();
    let (pa, pb_port) = (crate::common::spare_port(), crate::common::spare_port());
    let spawn = |port: u16, args: Vec<String>, envs: Vec<(&str, String)>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokenwise"))
            .args(["serve", "--no-auth", "--config"])
            .arg(&policy)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .envs(envs)
            .env(
                "TOKENWISE_DECISION_SECRET",
                "q7Vv1mZ3xKp0sT9wNcR2yLbH5uJdE8aG",
            )
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(Replica)
            .unwrap()
    };
    let _a = spawn(
        pa,
        vec![
            "--metrics-listen".into(),
            "off".into(),
            "--store-url".into(),
            redis.url(),
            "--store-prefix".into(),
            prefix.clone(),
            "--store-refresh-ms".into(),
            "100".into(),
            "--spill-file".into(),
            dir.join(format!("{prefix}-a.jsonl")).display().to_string(),
        ],
        vec![],
    );
    let _b = spawn(
        pb_port,
        vec!["--deployment".into(), file.display().to_string()],
        vec![("TOKENWISE_STORE_URL", redis.url())],
    );
    let v0 = Policy::parse(tokenwise::domain::policy::EMBEDDED_POLICY)
        .unwrap()
        .version;
    until_serving(pa, &v0).await;
    until_serving(pb_port, &v0).await;
    let v1 = change_policy_on(pa, "0.75", "alice").await;
    assert_ne!(v1, v0);
    until_serving(pb_port, &v1).await;
    // And the other way.
    let v2 = change_policy_on(pb_port, "0.8", "bob").await;
    until_serving(pa, &v2).await;
    let _ = std::fs::remove_file(&policy);
    let _ = std::fs::remove_file(&file);
}

/// The deprecated form still works: two `serve` processes on one Redis whose policy files each
/// carry their own spill file in a `[store]` table (the old two-replica recipe). The table is
/// not policy, so they start on one version — the version of the file without it — and a change
/// on one reaches the other.
#[tokio::test]
async fn two_replicas_whose_policy_files_differ_only_in_store_end_on_one_version() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("recipe");
    let config = |name: &str| {
        let spill = crate::common::private_tmp().join(format!("{prefix}-{name}.jsonl"));
        let text = format!(
            "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nrefresh_ms = 100\nspill_file = \"{}\"\n",
            tokenwise::domain::policy::EMBEDDED_POLICY,
            redis.url(),
            spill.display()
        );
        let path = std::env::temp_dir().join(format!("{prefix}-{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (pa, pb_port) = (crate::common::spare_port(), crate::common::spare_port());
    let _a = spawn_replica(&config("a"), pa);
    let _b = spawn_replica(&config("b"), pb_port);
    let v0 = Policy::parse(tokenwise::domain::policy::EMBEDDED_POLICY)
        .unwrap()
        .version;
    until_serving(pa, &v0).await;
    until_serving(pb_port, &v0).await;
    let v1 = change_policy_on(pb_port, "0.75", "alice").await;
    until_serving(pa, &v1).await;
}
