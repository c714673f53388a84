//! The Feedback RPC end to end: accepted once, every bad case refused with no state change.

use crate::common::feedback_req as fb;

use crate::common::{TestServer, route_req};
use base64::Engine as _;
use tokenwise::grpc::pb;
use tonic::Code;

async fn evidence_total(server: &TestServer) -> u64 {
    server
        .engine
        .evidence()
        .await
        .values()
        .map(|e| e.feedbacks())
        .sum()
}

#[tokio::test]
async fn feedback_is_applied_exactly_once() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let d = client
        .route(route_req("Name the capital of France."))
        .await
        .unwrap()
        .into_inner();
    let ack = client
        .feedback(fb(&d.decision_id, 1.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.scope, d.scope);
    assert_eq!(ack.tier, d.tier);
    assert!(ack.actual_cost_usd > 0.0);
    assert_eq!(evidence_total(&server).await, 1);

    let again = client.feedback(fb(&d.decision_id, 0.0)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(
        evidence_total(&server).await,
        1,
        "a duplicate must not count"
    );
}

#[tokio::test]
async fn bad_feedback_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let d = client
        .route(route_req("Name the capital of Spain."))
        .await
        .unwrap()
        .into_inner();
    let thresholds_before = server.engine.table();

    let cases: Vec<(pb::FeedbackRequest, Code, &str)> = vec![
        (fb(&d.decision_id, f64::NAN), Code::InvalidArgument, "score"),
        (fb(&d.decision_id, 1.5), Code::InvalidArgument, "score"),
        (fb(&d.decision_id, -0.1), Code::InvalidArgument, "score"),
        (
            pb::FeedbackRequest {
                input_tokens: Some(-1),
                ..fb(&d.decision_id, 1.0)
            },
            Code::InvalidArgument,
            "input_tokens",
        ),
        (
            pb::FeedbackRequest {
                output_tokens: Some(-5),
                ..fb(&d.decision_id, 1.0)
            },
            Code::InvalidArgument,
            "output_tokens",
        ),
        (
            pb::FeedbackRequest {
                output_tokens: Some(i64::MAX),
                ..fb(&d.decision_id, 1.0)
            },
            Code::InvalidArgument,
            "output_tokens",
        ),
        (
            pb::FeedbackRequest {
                cached_input_tokens: Some(-1),
                ..fb(&d.decision_id, 1.0)
            },
            Code::InvalidArgument,
            "cached_input_tokens",
        ),
        (
            pb::FeedbackRequest {
                reasoning_tokens: Some(-7),
                ..fb(&d.decision_id, 1.0)
            },
            Code::InvalidArgument,
            "reasoning_tokens",
        ),
        (
            pb::FeedbackRequest {
                served_tier: "no-such-tier".into(),
                ..fb(&d.decision_id, 1.0)
            },
            Code::InvalidArgument,
            "served_tier",
        ),
        (fb("", 1.0), Code::InvalidArgument, "decision_id"),
        (fb("made-up-id", 1.0), Code::InvalidArgument, "decision_id"),
        (
            fb("eyJzIjoiZGVmYXVsdCJ9.AAAAAAAAAAAAAAAAAAAAAA", 1.0),
            Code::InvalidArgument,
            "decision_id",
        ),
    ];
    for (req, code, field) in cases {
        let err = client.feedback(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?} → {err:?}");
        assert!(
            err.message().starts_with(field),
            "{req:?} → {}",
            err.message()
        );
    }

    // An altered id: same signature, claims changed to another tier.
    let (payload, tag) = d.decision_id.split_once('.').unwrap();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims = engine.decode(payload).unwrap();
    let original = claims.clone();
    // The tier name is the second length-prefixed string after 23 fixed bytes: swap it for
    // another tier of the same length where possible, else just flip the band byte.
    let other = if d.tier == "small" { "large" } else { "small" };
    let at = 23 + 2 + u16::from_le_bytes([claims[23], claims[24]]) as usize + 2;
    if claims[at..].starts_with(d.tier.as_bytes()) && other.len() == d.tier.len() {
        claims[at..at + other.len()].copy_from_slice(other.as_bytes());
    } else {
        claims[21] ^= 1;
    }
    assert_ne!(claims, original);
    let altered = claims;
    let forged = format!("{}.{tag}", engine.encode(altered));
    let err = client.feedback(fb(&forged, 1.0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("signature"), "{}", err.message());

    assert_eq!(
        evidence_total(&server).await,
        0,
        "no refused feedback may change state"
    );
    assert!(std::sync::Arc::ptr_eq(
        &thresholds_before,
        &server.engine.table()
    ));

    // The real id still works after all the refusals.
    client.feedback(fb(&d.decision_id, 1.0)).await.unwrap();
    assert_eq!(evidence_total(&server).await, 1);
}

#[tokio::test]
async fn expired_decisions_get_a_clear_error() {
    use tokenwise::domain::routing::RouteRequest;
    use tokenwise::engine::Error;
    use tokenwise::engine::feedback::{FeedbackError, FeedbackInput};
    let server = TestServer::start().await;
    let engine = &server.engine;
    let issued = 1_000_000u64;
    let (_, id) = engine
        .route(
            &RouteRequest {
                task: "hello",
                ..Default::default()
            },
            0.9,
            issued,
            7,
        )
        .unwrap();
    let input = FeedbackInput {
        decision_id: &id,
        score: 1.0,
        input_tokens: Some(1),
        output_tokens: Some(1),
        ..Default::default()
    };
    let day = tokenwise::domain::calendar::DAY_MS;
    let err = engine.feedback(&input, issued + day + 1).await.unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::Expired { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"));
    let status: tonic::Status = err.into();
    assert_eq!(status.code(), Code::FailedPrecondition);
    // Within the TTL it is accepted.
    engine.feedback(&input, issued + day - 1).await.unwrap();
}

#[tokio::test]
async fn thresholds_view_lists_every_scope_and_tier() {
    let server = TestServer::start().await;
    let mut admin = server.admin().await;
    let r = crate::common::thresholds(&mut admin, "").await;
    let scopes: std::collections::BTreeSet<&str> =
        r.thresholds.iter().map(|t| t.scope.as_str()).collect();
    assert!(
        scopes.contains("default") && scopes.contains("workflow:gsm8k"),
        "{scopes:?}"
    );
    for t in &r.thresholds {
        assert!((0.0..=1.0).contains(&t.threshold));
    }
    let one = crate::common::thresholds(&mut admin, "default").await;
    assert_eq!(one.thresholds.len(), 3);
    let err = admin
        .get_thresholds(pb::GetThresholdsRequest {
            scope: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn thresholds_of_many_long_workflows_come_back_whole() {
    // The probe of the hardening issue: 180 workflows with long labels made the answer
    // (643 KB) larger than the server would encode (the task limit + 64 KiB).
    let server = TestServer::start().await;
    let mut router = server.router().await;
    for i in 0..180 {
        let workflow = format!("{i:03}-{}", "w".repeat(250));
        let d = router
            .route(pb::RouteRequest {
                workflow,
                ..route_req("Summarise the quarterly report in two sentences.")
            })
            .await
            .unwrap()
            .into_inner();
        router.feedback(fb(&d.decision_id, 1.0)).await.unwrap();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    server.engine.refresh(now).await;
    let mut admin = server.admin().await;
    let r = crate::common::thresholds(&mut admin, "").await;
    let long = r
        .thresholds
        .iter()
        .filter(|t| t.workflow.len() > 250)
        .count();
    assert!(long >= 180, "{long} rows of long workflows");
    assert!(
        prost::Message::encoded_len(&r) > 330 * 1024,
        "{}",
        prost::Message::encoded_len(&r)
    );
}

/// A shadow pair over gRPC: taken once with its decision's feedback (ALREADY_EXISTS after), and
/// refused without a trace for a decision that named no shadow tier or with a bad score.
#[tokio::test]
async fn shadow_scores_are_taken_once_and_only_for_shadowed_decisions() {
    let policy = crate::common::two_tier_policy("cheap", "rich").replace(
        "exploration_rate = 0.0",
        "exploration_rate = 0.0\nshadow_rate = 0.2",
    );
    let server = TestServer::with_policy(
        tokenwise::domain::policy::Policy::parse(&policy).unwrap(),
        tokenwise::domain::routing::Limits::default(),
    )
    .await;
    let mut client = server.router().await;
    let (mut shadowed, mut plain) = (None, None);
    for _ in 0..400 {
        let mut req = route_req("Name the capital of Italy.");
        req.team = "cheap".into();
        let d = client.route(req).await.unwrap().into_inner();
        match d.shadow_tier.as_deref() {
            Some(t) => {
                assert_eq!((t, d.tier.as_str()), ("premium", "small"));
                shadowed.get_or_insert(d);
            }
            None => {
                plain.get_or_insert(d);
            }
        }
        if shadowed.is_some() && plain.is_some() {
            break;
        }
    }
    let (shadowed, plain) = (shadowed.unwrap(), plain.unwrap());
    let with_shadow = |id: &str, s: f64| pb::FeedbackRequest {
        shadow_score: Some(s),
        shadow_output_tokens: Some(30),
        ..fb(id, 1.0)
    };
    let refused = [
        (
            with_shadow(&plain.decision_id, 1.0),
            Code::FailedPrecondition,
        ),
        (
            with_shadow(&shadowed.decision_id, -0.5),
            Code::InvalidArgument,
        ),
        (
            pb::FeedbackRequest {
                shadow_input_tokens: Some(-3),
                ..with_shadow(&shadowed.decision_id, 1.0)
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in refused {
        let e = client.feedback(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().starts_with("shadow_"), "{e:?}");
    }
    assert_eq!(
        evidence_total(&server).await,
        0,
        "a refusal records nothing"
    );
    let ack = client
        .feedback(with_shadow(&shadowed.decision_id, 0.5))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.shadow_cost_usd > ack.actual_cost_usd, "{ack:?}");
    let again = client
        .feedback(with_shadow(&shadowed.decision_id, 0.5))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    client.feedback(fb(&plain.decision_id, 1.0)).await.unwrap();
    assert_eq!(evidence_total(&server).await, 2);
}

/// The default exploration over the wire: Route names a cheaper tier to run beside the plan's;
/// a Feedback without its score turns the scope's exploration to substitution (GetThresholds
/// says so), and one with it turns pairs back on.
#[tokio::test]
async fn exploration_pairs_until_the_caller_leaves_them_unanswered_and_again_once_it_answers() {
    let server = TestServer::start().await;
    let mut client = server.router().await;
    let mut admin = server.admin().await;
    let hard = "Prove that every finite integral domain is a field, then compute the number of \
                elements of order 6 in S_7 and justify each step.";
    let mut pair = async || {
        for _ in 0..400 {
            let d = client.route(route_req(hard)).await.unwrap().into_inner();
            if d.explored && d.shadow_tier.is_some() {
                return d;
            }
        }
        panic!("no exploration pair in 400 decisions of a new scope");
    };
    let first = pair().await;
    assert!(
        first.reason.contains("exploring: also run it on"),
        "{}",
        first.reason
    );
    let second = pair().await;
    let explores_by = async |admin: &mut tokenwise::grpc::pb::admin_client::AdminClient<_>| {
        let r = crate::common::thresholds(admin, "default").await;
        r.thresholds
            .iter()
            .map(|t| t.explore_by.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let only = |by: &str| std::collections::BTreeSet::from([by.to_string()]);
    assert_eq!(explores_by(&mut admin).await, only("pairs"));
    client.feedback(fb(&first.decision_id, 0.9)).await.unwrap();
    assert_eq!(explores_by(&mut admin).await, only("substitution"));
    client
        .feedback(pb::FeedbackRequest {
            shadow_score: Some(1.0),
            shadow_output_tokens: Some(30),
            ..fb(&second.decision_id, 0.9)
        })
        .await
        .unwrap();
    assert_eq!(explores_by(&mut admin).await, only("pairs"));
}
