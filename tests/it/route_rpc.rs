//! The Route RPC end to end over a real socket: complete decisions, bad input, health.

use crate::common::{TestServer, WORD_PROBLEM, route_req};
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tonic::Code;

#[tokio::test]
async fn route_returns_a_complete_decision() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let d = client
        .route(route_req("What is 2+2?"))
        .await
        .unwrap()
        .into_inner();
    assert!(!d.decision_id.is_empty());
    assert!(
        ["small", "medium", "frontier"].contains(&d.tier.as_str()),
        "{}",
        d.tier
    );
    assert!(!d.model.is_empty());
    assert!((0.0..=1.0).contains(&d.complexity));
    assert!(d.estimated_cost_usd > 0.0);
    assert_eq!(d.candidates.len(), 3);
    let names: Vec<&str> = d.candidates.iter().map(|c| c.tier.as_str()).collect();
    assert_eq!(names, ["small", "medium", "frontier"]);
    for c in &d.candidates {
        assert!((0.0..=1.0).contains(&c.predicted_quality));
        assert!(c.estimated_cost_usd > 0.0);
    }
    let chosen = d.candidates.iter().find(|c| c.tier == d.tier).unwrap();
    assert_eq!(chosen.estimated_cost_usd, d.estimated_cost_usd);
    if d.tier == "frontier" {
        assert_eq!(d.fallback_tier, "");
    } else {
        assert!(!d.fallback_tier.is_empty());
    }
    assert_eq!(d.policy_version.len(), 12);
    assert!(!d.reason.is_empty());
    assert_eq!(d.scope, "default");
    server.stop().await;
}

#[tokio::test]
async fn a_multi_step_word_problem_is_more_complex_than_a_greeting() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let greet = client
        .route(route_req("Hi! How are you today?"))
        .await
        .unwrap()
        .into_inner();
    let math = client
        .route(route_req(WORD_PROBLEM))
        .await
        .unwrap()
        .into_inner();
    assert!(
        math.complexity > greet.complexity,
        "math {} vs greeting {}",
        math.complexity,
        greet.complexity
    );
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field() {
    let limits = Limits {
        max_task_bytes: 4096,
    };
    let server = TestServer::with_policy(Policy::embedded().unwrap(), limits).await;
    let mut client = server.router().await;

    let err = client.route(route_req("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("task"), "{}", err.message());

    let err = client
        .route(route_req(&"x".repeat(4097)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("task") && err.message().contains("4096"),
        "{}",
        err.message()
    );

    // The structured bad-request detail names the field too.
    use tonic_types::StatusExt;
    let details = err.get_error_details();
    let violations = &details.bad_request().unwrap().field_violations;
    assert_eq!(violations[0].field, "task");

    // A task far beyond the transport limit is refused before decoding, never crashes.
    let err = client
        .route(route_req(&"y".repeat(200_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange
        ),
        "{err:?}"
    );

    // The server still answers after all that.
    assert!(client.route(route_req("still alive?")).await.is_ok());
}

#[tokio::test]
async fn unknown_workflow_and_team_route_with_the_default_policy() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let mut req = route_req("Summarise this paragraph in one line.");
    req.workflow = "never.seen".into();
    req.team = "nobody".into();
    let d = client.route(req).await.unwrap().into_inner();
    assert_eq!(d.scope, "default");
    let mut req = route_req("Summarise this paragraph in one line.");
    req.workflow = "support.reply".into();
    req.team = "support".into();
    let d = client.route(req).await.unwrap().into_inner();
    assert_eq!(d.scope, "team:support/workflow:support.reply");
    assert_ne!(d.tier, "small", "small is not allowed in this scope");
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    let r = health
        .check(HealthCheckRequest {
            service: "tokenwise.v1.Router".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 1, "SERVING");
}

#[tokio::test]
async fn shutdown_drains_and_stops() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut client = server.router().await;
    assert!(client.route(route_req("ping")).await.is_ok());
    server.stop().await;
    // The port no longer accepts new connections.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_resource_exhausted_not_queued() {
    let server = TestServer::with_config(Policy::embedded().unwrap(), Limits::default(), |c| {
        c.max_concurrent_requests = 2;
    })
    .await;
    let client = server.router().await;
    // 64 concurrent Route calls with 200 KB tasks against a server that takes 2 at a time.
    let big = "Explain each step of the proof. ".repeat(6_000);
    let calls = (0..64).map(|_| {
        let mut c = client.clone();
        let req = route_req(&big);
        tokio::spawn(async move { c.route(req).await.map(|_| ()).map_err(|e| e.code()) })
    });
    let mut ok = 0;
    let mut shed = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Code::ResourceExhausted) => shed += 1,
            Err(other) => panic!("unexpected status {other:?}"),
        }
    }
    assert!(shed > 0, "nothing was shed ({ok} ok)");
    assert!(ok > 0, "everything was shed");
    assert_eq!(ok + shed, 64);
    // Once the burst is over the server serves normally.
    let mut c = client.clone();
    assert!(c.route(route_req("after the burst")).await.is_ok());
}

/// The safe choice for `task`: a decision that did not explore (5% do, at random).
async fn safe_route(
    client: &mut tokenwise::grpc::pb::router_client::RouterClient<tonic::transport::Channel>,
    task: &str,
) -> tokenwise::grpc::pb::RouteResponse {
    planned_route(client, route_req(task)).await
}

/// The decision for `req` that did not explore: what the plan itself chose (a share of calls
/// explores by random posterior draws, and may pick another tier).
#[allow(clippy::unwrap_used)]
async fn planned_route(
    client: &mut tokenwise::grpc::pb::router_client::RouterClient<tonic::transport::Channel>,
    req: tokenwise::grpc::pb::RouteRequest,
) -> tokenwise::grpc::pb::RouteResponse {
    loop {
        let d = client.route(req.clone()).await.unwrap().into_inner();
        if !d.explored {
            return d;
        }
    }
}

/// Regression: on a fresh server, one feedback (the README's example: score 1, 12 input and 3
/// output tokens, on a top-tier decision) used to reprice the whole scope from that single task:
/// `small` went to threshold 1.00 and every task, a proof included, went to `small`.
#[tokio::test]
async fn one_feedback_does_not_reprice_the_scope() {
    const PROOF: &str = "Prove that every finite integral domain is a field, then show that the \
        multiplicative group of a finite field is cyclic, and derive how many primitive roots \
        modulo a prime p there are. Justify every step rigorously.";
    for score in [1.0, 0.0] {
        let server = TestServer::start().await;
        let mut client = server.router().await;
        let mut admin = server.admin().await;
        let thresholds = |r: tokenwise::grpc::pb::GetThresholdsResponse| -> Vec<(String, f64)> {
            r.thresholds
                .into_iter()
                .filter(|t| t.scope == "default" && t.workflow.is_empty())
                .map(|t| (t.tier, t.threshold))
                .collect()
        };
        let before = thresholds(
            admin
                .get_thresholds(tokenwise::grpc::pb::GetThresholdsRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
        let hard_before = safe_route(&mut client, PROOF).await;
        let d = client
            .route(route_req("What is 2+2?"))
            .await
            .unwrap()
            .into_inner();
        let mut fb = crate::common::feedback_req(&d.decision_id, score);
        fb.input_tokens = Some(12);
        fb.output_tokens = Some(3);
        client.feedback(fb).await.unwrap();
        // The learner folds the outcome in the background; wait until it shows.
        let mut after = before.clone();
        for _ in 0..100 {
            let r = admin
                .get_thresholds(tokenwise::grpc::pb::GetThresholdsRequest::default())
                .await
                .unwrap()
                .into_inner();
            let seen = r
                .thresholds
                .iter()
                .any(|t| t.scope == "default" && t.evidence > 0.0);
            after = thresholds(r);
            if seen {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // A per-task threshold sits where a tier's estimate crosses the bar; one outcome moves
        // an estimate by ~3%, which can shift a flat crossing by a few bands, never the scope.
        for ((tier, a), (_, b)) in before.iter().zip(&after) {
            assert!(
                (a - b).abs() <= 0.2 + 1e-9,
                "score {score}: {tier} moved {a} → {b} on one feedback ({before:?} → {after:?})"
            );
        }
        assert!(after[0].1 < 1.0, "{after:?}");
        let hard_after = safe_route(&mut client, PROOF).await;
        assert_eq!(hard_after.tier, hard_before.tier, "{}", hard_after.reason);
        assert_ne!(hard_after.tier, "small", "{}", hard_after.reason);
        server.stop().await;
    }
}

#[tokio::test]
async fn empty_and_default_workflow_mean_the_same() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let task = "Summarise the causes of the French Revolution in three sentences.";
    // The plan's own choices: a call that explores may get another tier whatever its label.
    let named = planned_route(&mut client, route_req(task)).await;
    let mut req = route_req(task);
    req.workflow = String::new();
    let empty = planned_route(&mut client, req).await;
    assert_eq!(named.complexity, empty.complexity);
    assert_eq!(named.tier, empty.tier);
    server.stop().await;
}

#[tokio::test]
async fn an_absurd_output_hint_is_capped_and_said_so() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let mut req = route_req("Write a haiku about autumn.");
    req.hints = Some(tokenwise::grpc::pb::RouteHints {
        expected_output_tokens: u32::MAX - 1,
        task_type: String::new(),
    });
    let d = client.route(req).await.unwrap().into_inner();
    assert!(d.reason.contains("capped at 32768"), "{}", d.reason);
    let frontier = d.candidates.iter().find(|c| c.tier == "frontier").unwrap();
    // 32,768 output tokens at $30 per 1M: about $1, not $128,000.
    assert!(
        frontier.estimated_cost_usd < 1.1,
        "{}",
        frontier.estimated_cost_usd
    );
    server.stop().await;
}

/// What a client sends when its `task` is not valid UTF-8 (field 1 as raw bytes).
#[derive(Clone, PartialEq, prost::Message)]
struct RawRoute {
    #[prost(bytes = "vec", tag = "1")]
    task: Vec<u8>,
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument() {
    let server = TestServer::start().await;
    let grpc = tonic::client::Grpc::new(server.channel().await);
    let call = |task: Vec<u8>| {
        let mut grpc = grpc.clone();
        async move {
            grpc.ready().await.unwrap();
            grpc.unary::<_, tokenwise::grpc::pb::RouteResponse, _>(
                tonic::Request::new(RawRoute { task }),
                tonic::codegen::http::uri::PathAndQuery::from_static("/tokenwise.v1.Router/Route"),
                tonic_prost::ProstCodec::default(),
            )
            .await
        }
    };
    // Valid bytes route as usual.
    assert!(call(b"What is 2+2?".to_vec()).await.is_ok());
    // Invalid UTF-8 in a string field: the caller's error, not the server's.
    let e = call(vec![0xff, 0xfe, b'x']).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("does not decode"), "{}", e.message());
}

#[tokio::test]
async fn every_call_carries_a_request_id_and_a_callers_own_is_echoed() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let fresh = client.route(route_req("What is 2+2?")).await.unwrap();
    let id = fresh
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let mut mine = tonic::Request::new(route_req("What is 2+2?"));
    mine.metadata_mut()
        .insert("x-request-id", "trace-me-42".parse().unwrap());
    let echoed = client.route(mine).await.unwrap();
    assert_eq!(
        echoed.metadata().get("x-request-id").unwrap(),
        "trace-me-42"
    );
    // Refusals carry it too (in the response headers of the error).
    let refused = client.route(route_req("")).await.unwrap_err();
    assert!(refused.metadata().get("x-request-id").is_some());
    server.stop().await;
}
