//! Protection layers beyond shedding (tested in route_rpc.rs): the per-team rate limit, message
//! size limits, and TLS on the gRPC port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{TestServer, route_req};
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::grpc::pb::RouteRequest;
use tokenwise::grpc::pb::router_client::RouterClient;
use tonic::Code;

fn for_team(team: &str) -> RouteRequest {
    RouteRequest {
        team: team.into(),
        ..route_req("What is the capital of Peru?")
    }
}

#[tokio::test]
async fn a_team_over_its_rate_limit_is_refused_and_others_are_not() {
    let server = TestServer::with_config(Policy::embedded().unwrap(), Limits::default(), |c| {
        c.rate_limit_per_team = std::num::NonZeroU32::new(5);
    })
    .await;
    let mut c = server.router().await;
    let mut refused = 0;
    for _ in 0..20 {
        match c.route(for_team("noisy")).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(e.message().contains("noisy"), "{}", e.message());
                refused += 1;
            }
        }
    }
    // A burst of 5 passes; the rest of an immediate 20 is refused (a few may refill).
    assert!(refused >= 12, "{refused} refused");
    c.route(for_team("quiet")).await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_is_refused_by_the_transport() {
    let server = TestServer::with_policy(
        Policy::embedded().unwrap(),
        Limits {
            max_task_bytes: 1000,
        },
    )
    .await;
    let mut c = server.router().await;
    // Over the task limit but under the message limit: INVALID_ARGUMENT naming the task.
    let e = c.route(route_req(&"x".repeat(2000))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Over the message limit (task limit + 64 KiB): the transport refuses before decoding.
    let e = c.route(route_req(&"x".repeat(200_000))).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    c.route(route_req("still fine")).await.unwrap();
}

#[tokio::test]
async fn tls_on_the_grpc_port() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let server = TestServer::with_config(Policy::embedded().unwrap(), Limits::default(), |c| {
        c.tls = Some((cert_pem.clone().into_bytes(), key_pem.into_bytes()));
    })
    .await;
    let port = server.addr.port();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    let mut channel = None;
    for _ in 0..100 {
        let ep = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap();
        if let Ok(ch) = ep.connect().await {
            channel = Some(ch);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut c = RouterClient::new(channel.expect("TLS connect"));
    let d = c.route(route_req("over TLS")).await.unwrap().into_inner();
    assert!(!d.tier.is_empty());
    // Plaintext against the TLS port fails.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            RouterClient::new(ch)
                .route(route_req("plain"))
                .await
                .is_err()
        );
    }
}
