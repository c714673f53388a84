//! The Route RPC end to end over a real socket: complete decisions, bad input, health.

mod common;

use common::{TestServer, WORD_PROBLEM, route_req};
use tokenwise::policy::Policy;
use tokenwise::routing::Limits;
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
