//! Policy administration through the real server: invalid policies via ApplyPolicy, the file and
//! SIGHUP are rejected with the key path while the old policy keeps serving; valid ones take
//! effect without dropping a request; rollback; the audit trail; what-if; and a change on one
//! replica reaching another through Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use crate::common::redis::RedisServer;
use crate::common::{TestServer, WORD_PROBLEM, route_req};
use tokenwise::domain::policy::{EMBEDDED_POLICY, Policy};
use tokenwise::domain::routing::Limits;
use tokenwise::grpc::pb::{
    ApplyPolicyRequest, GetPolicyRequest, ListPolicyVersionsRequest, RollbackPolicyRequest,
    ValidatePolicyRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

fn with_bar(bar: &str) -> String {
    EMBEDDED_POLICY.replace("quality_bar = 0.7\n", &format!("quality_bar = {bar}\n"))
}

const INVALID: &str =
    "[[tiers]]\nname = \"only\"\nmodel = \"m\"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n";

async fn live_version(server: &TestServer) -> String {
    server
        .admin()
        .await
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .version
}

/// Waits (up to 10 s) until `server` serves policy version `want`: a policy change reaches a
/// replica at its next refresh or file check, so tests poll instead of sleeping a fixed time.
async fn until_version(server: &TestServer, want: &str) {
    crate::common::eventually(&format!("the server serves {want}"), || async {
        live_version(server).await == want
    })
    .await;
}

/// The key path of an INVALID_ARGUMENT's BadRequest detail.
fn key_path(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("BadRequest detail");
    bad.field_violations[0].field.clone()
}

/// Routes continuously until told to stop; returns (ok, errors).
/// Routes in a loop until told to stop; returns once the loop has made its first 11 calls, so
/// the change a test makes next happens under traffic however slow the machine is.
async fn route_loop(
    server: &TestServer,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(usize, usize)>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = server.addr;
    let handle = tokio::spawn(async move {
        let mut c = tokenwise::grpc::pb::router_client::RouterClient::new(
            crate::common::connect(addr).await,
        );
        let (mut ok, mut err) = (0, 0);
        let mut warm = Some(warm_tx);
        while rx.try_recv().is_err() {
            match c.route(route_req(WORD_PROBLEM)).await {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            if ok + err > 10
                && let Some(w) = warm.take()
            {
                let _ = w.send(());
            }
        }
        (ok, err)
    });
    // A loop that failed to start drops its sender: the test's assertions report it.
    let _ = warm_rx.await;
    (tx, handle)
}

#[tokio::test]
async fn apply_validate_rollback_and_the_audit_trail() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let v0 = live_version(&server).await;

    // Invalid via ApplyPolicy: the key path, and the old policy keeps serving.
    let err = admin
        .apply_policy(ApplyPolicyRequest {
            text: INVALID.into(),
            author: "alice".into(),
            reason: "try".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(key_path(&err), "tiers");
    let err = admin
        .apply_policy(ApplyPolicyRequest {
            text: with_bar("1.5"),
            author: "alice".into(),
            reason: "try".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(key_path(&err), "default.quality_bar");
    // A reason is required.
    let err = admin
        .apply_policy(ApplyPolicyRequest {
            text: with_bar("0.8"),
            author: "alice".into(),
            reason: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(key_path(&err), "reason");
    // A deprecated [store] table, even naming another store, is no policy change: it is left
    // out (and logged), never applied to the running store.
    let checked = admin
        .validate_policy(ValidatePolicyRequest {
            text: format!("{EMBEDDED_POLICY}\n[store]\nkind = \"redis\"\nurl = \"redis://x:1\"\n"),
            what_if: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.version, v0);
    assert_eq!(live_version(&server).await, v0);

    // Valid: validate shows the change, apply makes it live without dropping a request.
    let v = admin
        .validate_policy(ValidatePolicyRequest {
            text: with_bar("0.8"),
            what_if: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.changes, vec!["scope default: quality_bar 0.7 → 0.8"]);
    let (stop, traffic) = route_loop(&server).await;
    let applied = admin
        .apply_policy(ApplyPolicyRequest {
            text: with_bar("0.8"),
            author: "alice".into(),
            reason: "stricter default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    stop.send(()).unwrap();
    let (ok, errors) = traffic.await.unwrap();
    assert!(ok > 10 && errors == 0, "{ok} ok, {errors} errors");
    assert_eq!(applied.version, v.version);
    assert_eq!(live_version(&server).await, v.version);
    let d = server
        .router()
        .await
        .route(route_req("hi"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.policy_version, v.version);
    // The same text again is not a change.
    let again = admin
        .apply_policy(ApplyPolicyRequest {
            text: with_bar("0.8"),
            author: "alice".into(),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    // Rollback restores the previous version.
    let back = admin
        .rollback_policy(RollbackPolicyRequest {
            version: String::new(),
            author: "bob".into(),
            reason: "too strict".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.version, v0);
    assert_eq!(live_version(&server).await, v0);
    let missing = admin
        .rollback_policy(RollbackPolicyRequest {
            version: "nope".into(),
            author: "bob".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The audit trail: startup, the apply, the rollback — who, why, what.
    let log = admin
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(&str, &str, &str)> = log
        .changes
        .iter()
        .map(|c| (c.source.as_str(), c.author.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        rows[1..],
        [
            ("api", "alice", "stricter default"),
            ("rollback", "bob", "too strict")
        ]
    );
    assert_eq!(log.changes[0].source, "startup");
    assert_eq!(
        log.changes[2].summary,
        vec!["scope default: quality_bar 0.8 → 0.7"]
    );
    assert_eq!(log.live_version, v0);
}

#[tokio::test]
async fn the_policy_file_hot_reloads_and_a_bad_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("tw-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(&file, EMBEDDED_POLICY).unwrap();
    let server = TestServer::with_config(
        Policy::load(file.to_str().unwrap()).unwrap(),
        Limits::default(),
        |c| {
            c.refresh_interval = Duration::from_millis(50);
        },
    )
    .await;
    server
        .engine
        .set_policy_source("test-replica", Some(file.clone()))
        .await;
    let v0 = live_version(&server).await;

    // An invalid file: logged with its key path, the old policy keeps serving.
    std::fs::write(&file, with_bar("2")).unwrap();
    // Nothing must happen: give the file check time to run (a wait, not a synchronization).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live_version(&server).await, v0);

    // A valid one takes effect without dropping a request.
    let (stop, traffic) = route_loop(&server).await;
    std::fs::write(&file, with_bar("0.6")).unwrap();
    let v1 = Policy::parse(&with_bar("0.6")).unwrap().version;
    until_version(&server, &v1).await;
    stop.send(()).unwrap();
    let (ok, errors) = traffic.await.unwrap();
    assert!(ok > 10 && errors == 0, "{ok} ok, {errors} errors");
    let log = server
        .admin()
        .await
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let last = log.changes.last().unwrap();
    assert_eq!(
        (
            last.source.as_str(),
            last.author.as_str(),
            last.reason.as_str()
        ),
        ("file", "test-replica", "file changed")
    );
    assert_eq!(
        log.changes.len(),
        2,
        "the invalid file left no version: {:?}",
        log.changes
    );

    // Then one through the API and a rollback: the trail lists file, API and rollback changes.
    let mut admin = server.admin().await;
    admin
        .apply_policy(ApplyPolicyRequest {
            text: with_bar("0.9"),
            author: "alice".into(),
            reason: "stricter".into(),
        })
        .await
        .unwrap();
    admin
        .rollback_policy(RollbackPolicyRequest {
            version: String::new(),
            author: "bob".into(),
            reason: "undo".into(),
        })
        .await
        .unwrap();
    assert_eq!(live_version(&server).await, v1);
    let log = admin
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let sources: Vec<&str> = log.changes.iter().map(|c| c.source.as_str()).collect();
    assert_eq!(sources, ["startup", "file", "api", "rollback"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn what_if_projects_lower_spend_and_quality_for_a_lower_bar() {
    // A bar the cheap tier misses, so the live policy mixes tiers; an average bar, where the
    // price of quality trades spend for quality smoothly.
    // No exploration: the same traffic teaches the same thresholds every run.
    let averaged =
        |bar: &str| with_bar(bar).replace("bar_mode = \"per_task\"", "bar_mode = \"average\"");
    let live = averaged("0.8").replace("exploration_rate = 0.05", "exploration_rate = 0.0");
    let server = TestServer::with_policy(Policy::parse(&live).unwrap(), Limits::default()).await;
    let mut c = server.router().await;
    let tasks = [
        WORD_PROBLEM,
        "What is the capital of France?",
        "Translate 'good morning' into Spanish.",
        "Prove that the square root of 2 is irrational.",
        "List three prime numbers greater than 100.",
    ];
    // Outcomes that depend on the tier, as real ones do.
    for i in 0..60 {
        let d = c
            .route(route_req(tasks[i % tasks.len()]))
            .await
            .unwrap()
            .into_inner();
        // Small fails every third task, medium every fifth, frontier never.
        let fails = match d.tier.as_str() {
            "small" => i % 3 == 0,
            "medium" => i % 5 == 0,
            _ => false,
        };
        let score = if fails { 0.0 } else { 1.0 };
        c.feedback(crate::common::feedback_req(&d.decision_id, score))
            .await
            .unwrap();
    }
    let mut admin = server.admin().await;
    let what_if = |text: String| {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .validate_policy(ValidatePolicyRequest {
                    text,
                    what_if: true,
                })
                .await
                .unwrap()
                .into_inner();
            r.what_if.into_iter().find(|w| w.scope == "total").unwrap()
        }
    };
    // The live policy itself: the projection is the live one, exactly.
    let same = what_if(live.clone()).await;
    assert_eq!(same.tasks, 60);
    assert_eq!(same.proposed_spend_micros, same.live_spend_micros);
    assert_eq!(same.proposed_quality, same.live_quality);
    assert!(same.actual_spend_micros > 0);

    let lower = what_if(averaged("0.5")).await;
    let higher = what_if(averaged("0.95")).await;
    eprintln!("live {same:?}\nlower {lower:?}\nhigher {higher:?}");
    assert!(
        lower.proposed_spend_micros < same.live_spend_micros,
        "{lower:?}"
    );
    assert!(lower.proposed_quality <= same.live_quality);
    assert!(
        higher.proposed_spend_micros > same.live_spend_micros,
        "{higher:?}"
    );
    assert!(higher.proposed_quality >= same.live_quality);
    assert!((lower.proposed_bar - 0.5).abs() < 1e-9);
    // Nothing was applied.
    assert_eq!(
        admin
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .text,
        live
    );
}

#[tokio::test]
async fn a_change_on_one_replica_reaches_the_other_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = format!("policy-{}", std::process::id());
    let text = |bar: &str| {
        format!(
            "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\nrefresh_ms = 50\n",
            with_bar(bar),
            redis.url()
        )
    };
    let a =
        TestServer::with_policy(crate::common::deployed(&text("0.75")), Limits::default()).await;
    let b =
        TestServer::with_policy(crate::common::deployed(&text("0.75")), Limits::default()).await;
    let applied = a
        .admin()
        .await
        .apply_policy(ApplyPolicyRequest {
            text: text("0.8"),
            author: "alice".into(),
            reason: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    until_version(&b, &applied.version).await;
    // A replica that starts later with the same file keeps the API change.
    let c =
        TestServer::with_policy(crate::common::deployed(&text("0.75")), Limits::default()).await;
    assert_eq!(live_version(&c).await, applied.version);
    // A rollout: a replica with a new file takes the fleet to it...
    let d = TestServer::with_policy(crate::common::deployed(&text("0.9")), Limits::default()).await;
    let v09 = Policy::parse(&text("0.9")).unwrap().version;
    assert_eq!(live_version(&d).await, v09);
    until_version(&b, &v09).await;
    // ...and an old pod restarting with the old file mid-rollout does not take it back.
    let e =
        TestServer::with_policy(crate::common::deployed(&text("0.75")), Limits::default()).await;
    assert_eq!(live_version(&e).await, v09);
    // Nothing must change: a refresh later, the fleet is still on the rollout's version.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live_version(&b).await, v09);

    // Every replica lists the same history: startup(s), the change, the rollout.
    let log = b
        .admin()
        .await
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    // (Replicas starting at the same moment on an empty history may each record their startup.)
    let sources: Vec<&str> = log.changes.iter().map(|c| c.source.as_str()).collect();
    let api = sources
        .iter()
        .position(|s| *s == "api")
        .expect("the API change");
    assert!(
        sources[..api].iter().all(|s| *s == "startup"),
        "{sources:?}"
    );
    assert_eq!(sources[api + 1..], ["startup"], "{sources:?}");

    // Redis loses its data: the replicas record the live policy again and keep following
    // changes made after it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    // The loss is seen at a's next refresh: it records its live policy again.
    crate::common::eventually("a records its policy again after the loss", || async {
        let log = a
            .admin()
            .await
            .list_policy_versions(ListPolicyVersionsRequest {})
            .await
            .unwrap()
            .into_inner();
        log.changes
            .iter()
            .any(|c| c.summary == ["history restarted"])
    })
    .await;
    let applied = a
        .admin()
        .await
        .apply_policy(ApplyPolicyRequest {
            text: text("0.6"),
            author: "alice".into(),
            reason: "after the loss".into(),
        })
        .await
        .unwrap()
        .into_inner();
    until_version(&b, &applied.version).await;
    until_version(&e, &applied.version).await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_file_and_refuses_a_bad_one() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("tw-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    // Same length and mtime for every version, so only SIGHUP (not the file watcher) reloads.
    let padded = |text: String| format!("{text}\n# {}\n", "x".repeat(200 - text.len() % 200));
    let v0_text = padded(EMBEDDED_POLICY.to_string());
    let len = v0_text.len();
    let write_same_stamp = |text: String| {
        let text = format!("{text}{}", " ".repeat(len.saturating_sub(text.len())));
        assert_eq!(text.len(), len);
        let before = std::fs::metadata(&file).ok().map(|m| m.modified().unwrap());
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        if let Some(t) = before {
            f.set_modified(t).unwrap();
        }
    };
    write_same_stamp(v0_text.clone());
    let port = crate::common::spare_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwise"))
        .args(["serve", "--no-auth", "--metrics-listen", "off", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(&file)
        .env(
            "TOKENWISE_DECISION_SECRET",
            "q7Vv1mZ3xKp0sT9wNcR2yLbH5uJdE8aG",
        )
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut admin =
        tokenwise::grpc::pb::admin_client::AdminClient::new(crate::common::connect(addr).await);
    let version =
        |admin: &mut tokenwise::grpc::pb::admin_client::AdminClient<tonic::transport::Channel>| {
            let mut admin = admin.clone();
            async move {
                admin
                    .get_policy(GetPolicyRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .version
            }
        };
    let v0 = version(&mut admin).await;
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };

    // Bad file + SIGHUP: refused, old policy serves.
    write_same_stamp(with_bar("-1"));
    assert!(hup().success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(version(&mut admin).await, v0);

    // Good file + SIGHUP: live.
    let good = format!("{}{}", with_bar("0.6"), " ".repeat(0));
    write_same_stamp(good.clone());
    let want = Policy::parse(&format!("{good}{}", " ".repeat(len - good.len())))
        .unwrap()
        .version;
    assert!(hup().success());
    let start = std::time::Instant::now();
    while version(&mut admin).await != want {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "SIGHUP did not load the good file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = admin
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let last = log.changes.last().unwrap();
    assert_eq!(
        (last.source.as_str(), last.reason.as_str()),
        ("file", "SIGHUP")
    );
    assert_eq!(log.changes.len(), 2);
    child.kill().ok();
    child.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
}
