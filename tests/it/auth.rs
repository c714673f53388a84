//! Authentication and authorization through the real server over gRPC: missing, unknown and
//! malformed keys are UNAUTHENTICATED (health stays open); a service key routes, posts feedback
//! and reads reports only for its own team; Admin RPCs need the admin role and the audit trail
//! names the key, not what the request claims; with auth off everything passes without a key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::common::{TestServer, feedback_req, route_req};
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::grpc::auth::{AUTHORIZATION, AuthedChannel, BearerKey, KeyRing, hash_key, new_key};
use tokenwise::grpc::pb::admin_client::AdminClient;
use tokenwise::grpc::pb::router_client::RouterClient;
use tokenwise::grpc::pb::{
    ApplyPolicyRequest, GetPolicyRequest, GetReportRequest, GetReportResponse,
    GetThresholdsRequest, ListPolicyVersionsRequest, RollbackPolicyRequest, RouteRequest,
    RouteResponse, ValidatePolicyRequest,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Key names in the key file (they show up in errors and the audit trail).
const SEARCH: &str = "search-prod";
const ADS: &str = "ads-prod";
const ADMIN: &str = "platform-ops";

/// Freshly minted keys; the server knows only their hashes.
struct Keys {
    search: String,
    ads: String,
    admin: String,
}

impl Keys {
    fn new() -> Self {
        Self {
            search: new_key().0,
            ads: new_key().0,
            admin: new_key().0,
        }
    }

    /// The key file text, built from the hashes (as an operator would ship it).
    fn file(&self) -> String {
        let entry = |name: &str, team: &str, role: &str, key: &str| {
            format!(
                "[[keys]]\nname = \"{name}\"\nteam = \"{team}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
                hash_key(key)
            )
        };
        [
            entry(SEARCH, "search", "service", &self.search),
            entry(ADS, "ads", "service", &self.ads),
            entry(ADMIN, "platform", "admin", &self.admin),
        ]
        .concat()
    }

    fn ring(&self) -> KeyRing {
        tokenwise::grpc::auth::parse_keys(&self.file()).unwrap()
    }
}

/// A server with authentication on, and the keys it accepts.
struct Fixture {
    server: TestServer,
    keys: Keys,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(policy()).await
    }

    async fn start_with(policy: Policy) -> Self {
        let keys = Keys::new();
        let ring = Arc::new(keys.ring());
        assert_eq!(ring.len(), 3);
        let server = TestServer::with_config(policy, Limits::default(), |cfg| {
            cfg.auth = Some(ring);
        })
        .await;
        Self { server, keys }
    }

    async fn channel(&self, key: Option<&str>) -> AuthedChannel {
        InterceptedService::new(self.server.channel().await, BearerKey::new(key).unwrap())
    }

    async fn router(&self, key: Option<&str>) -> RouterClient<AuthedChannel> {
        RouterClient::new(self.channel(key).await)
    }

    async fn admin(&self, key: Option<&str>) -> AdminClient<AuthedChannel> {
        AdminClient::new(self.channel(key).await)
    }
}

fn policy() -> Policy {
    Policy::parse(&crate::common::two_tier_policy("search", "ads")).unwrap()
}

fn routed(team: &str) -> RouteRequest {
    RouteRequest {
        team: team.into(),
        ..route_req("Summarise this paragraph in one sentence.")
    }
}

/// `request` with `authorization: <value>`.
fn with_auth<T>(request: T, value: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(request);
    r.metadata_mut()
        .insert(AUTHORIZATION, MetadataValue::try_from(value).unwrap());
    r
}

/// Asserts `result` failed with `code` and a message containing every one of `needles`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needles: &[&str]) {
    let s = result.unwrap_err();
    assert_eq!(s.code(), code, "{s:?}");
    for n in needles {
        assert!(s.message().contains(n), "{n:?} not in {:?}", s.message());
    }
}

/// A report over the last 24 h (the RPC flushes the books itself).
fn report_req(team: &str) -> GetReportRequest {
    GetReportRequest {
        team: team.into(),
        group_by: "team".into(),
        ..Default::default()
    }
}

fn tasks_by_group(r: &GetReportResponse) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = r.groups.iter().map(|g| (g.key.clone(), g.tasks)).collect();
    v.sort();
    v
}

fn total_tasks(r: &GetReportResponse) -> u64 {
    r.total.as_ref().unwrap().tasks
}

fn changed_policy() -> String {
    crate::common::two_tier_policy("search", "ads")
        .replace("quality_bar = 0.5", "quality_bar = 0.6")
}

// ---- authentication ----

#[tokio::test]
async fn calls_without_a_key_are_unauthenticated() {
    let f = Fixture::start().await;
    let mut router = f.router(None).await;
    let mut admin = f.admin(None).await;
    let missing = ["missing `authorization`"];

    assert_refused(
        router.route(routed("")).await,
        Code::Unauthenticated,
        &missing,
    );
    // A real decision id changes nothing: the call is refused before it is looked at.
    let d = f
        .router(Some(&f.keys.search))
        .await
        .route(routed(""))
        .await
        .unwrap()
        .into_inner();
    assert_refused(
        router.feedback(feedback_req(&d.decision_id, 1.0)).await,
        Code::Unauthenticated,
        &missing,
    );
    assert_refused(
        admin.get_report(report_req("")).await,
        Code::Unauthenticated,
        &missing,
    );
    assert_refused(
        admin.get_thresholds(GetThresholdsRequest::default()).await,
        Code::Unauthenticated,
        &missing,
    );
    assert_refused(
        admin.get_policy(GetPolicyRequest {}).await,
        Code::Unauthenticated,
        &missing,
    );
    assert_refused(
        admin
            .apply_policy(ApplyPolicyRequest {
                text: changed_policy(),
                author: "anonymous".into(),
                reason: "no key".into(),
            })
            .await,
        Code::Unauthenticated,
        &missing,
    );
    // Nothing was recorded: the rightful key can still post the outcome, the policy is as
    // started.
    f.router(Some(&f.keys.search))
        .await
        .feedback(feedback_req(&d.decision_id, 1.0))
        .await
        .unwrap();
    let live = f
        .admin(Some(&f.keys.admin))
        .await
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.version, policy().version);
}

#[tokio::test]
async fn unknown_key_is_unauthenticated_and_not_echoed() {
    let f = Fixture::start().await;
    let (stranger, stranger_hash) = new_key();
    for s in [
        f.router(Some(&stranger))
            .await
            .route(routed("search"))
            .await
            .unwrap_err(),
        f.admin(Some(&stranger))
            .await
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap_err(),
        // The hash of a known key is not a key.
        f.router(Some(&hash_key(&f.keys.admin)))
            .await
            .route(routed(""))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert_eq!(s.message(), "unknown API key");
        assert!(!s.message().contains(&stranger));
        assert!(!s.message().contains(&stranger_hash));
    }
}

#[tokio::test]
async fn malformed_authorization_is_unauthenticated() {
    let f = Fixture::start().await;
    let mut router = f.router(None).await;
    let key = &f.keys.search;
    for bad in [
        "Basic xyz".to_string(),
        format!("Basic {key}"),
        key.clone(),            // no scheme
        format!("Bearer{key}"), // no space
        "Bearer".to_string(),   // no key
    ] {
        let s = router.route(with_auth(routed(""), &bad)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{bad:?}: {s:?}");
        assert!(s.message().contains("malformed"), "{bad:?}: {s:?}");
        assert!(!s.message().contains(key.as_str()), "{bad:?}: {s:?}");
    }

    // Two credentials are one too many, even when both are valid.
    let mut two = with_auth(routed(""), &format!("Bearer {key}"));
    two.metadata_mut().append(
        AUTHORIZATION,
        MetadataValue::try_from(format!("Bearer {}", f.keys.admin).as_str()).unwrap(),
    );
    assert_refused(
        router.route(two).await,
        Code::Unauthenticated,
        &["more than one"],
    );

    // The scheme is case-insensitive: the same key with `bearer` is accepted.
    let d = router
        .route(with_auth(routed(""), &format!("bearer {key}")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.scope, "team:search");
}

#[tokio::test]
async fn health_check_needs_no_key() {
    let f = Fixture::start().await;
    let mut health = HealthClient::new(f.server.channel().await);
    for service in ["tokenwise.v1.Router", "tokenwise.v1.Admin", ""] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn health_checks_have_a_port_of_their_own_and_need_no_key_there() {
    let port = crate::common::spare_port();
    let keys = Keys::new();
    let ring = Arc::new(keys.ring());
    let server = TestServer::with_config(policy(), Limits::default(), |cfg| {
        cfg.auth = Some(ring);
        cfg.health_addr = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    let channel = crate::common::connect(([127, 0, 0, 1], port).into()).await;
    let mut health = HealthClient::new(channel.clone());
    let r = health
        .check(HealthCheckRequest {
            service: "tokenwise.v1.Router".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    // Health only: the router is not served on that port.
    let e = RouterClient::new(channel)
        .route(routed("search"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    drop(server);
}

// ---- Route: the team comes from the key ----

#[tokio::test]
async fn service_key_routes_for_its_own_team_only() {
    let f = Fixture::start().await;
    let mut search = f.router(Some(&f.keys.search)).await;

    // Empty team means "mine"; naming its own team is the same.
    let d = search.route(routed("")).await.unwrap().into_inner();
    assert_eq!(d.scope, "team:search", "{d:?}");
    assert_eq!(d.tier, "small", "{d:?}");
    let d = search.route(routed("search")).await.unwrap().into_inner();
    assert_eq!(d.scope, "team:search", "{d:?}");

    // Another team is refused, naming the field, the key and both teams.
    let s = search.route(routed("ads")).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let m = s.message();
    assert!(m.starts_with("team: "), "{m}");
    for part in [SEARCH, "\"search\"", "\"ads\""] {
        assert!(m.contains(part), "{part:?} not in {m}");
    }
    assert!(!m.contains(f.keys.search.as_str()), "{m}");

    // The books agree: two tasks for search, none for ads (the refused one was not counted).
    let r = f
        .admin(Some(&f.keys.admin))
        .await
        .get_report(report_req(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tasks_by_group(&r), [("search".to_string(), 2)]);

    // An admin acts for whatever team the request names, not its own.
    let mut admin = f.router(Some(&f.keys.admin)).await;
    let d = admin.route(routed("ads")).await.unwrap().into_inner();
    assert_eq!(d.scope, "team:ads", "{d:?}");
    assert_eq!(d.tier, "premium", "{d:?}");
    let d = admin.route(routed("")).await.unwrap().into_inner();
    assert_eq!(d.scope, "default", "{d:?}");
}

// ---- Feedback: only for the team's own decisions ----

#[tokio::test]
async fn cross_team_feedback_is_denied_and_changes_nothing() {
    let f = Fixture::start().await;
    let mut search = f.router(Some(&f.keys.search)).await;
    let mut ads = f.router(Some(&f.keys.ads)).await;
    let d: RouteResponse = search.route(routed("")).await.unwrap().into_inner();

    let s = ads
        .feedback(feedback_req(&d.decision_id, 0.0))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("\"search\"") && s.message().contains("\"ads\""),
        "{s:?}"
    );
    // Refused again: the first refusal recorded nothing either way.
    assert_refused(
        ads.feedback(feedback_req(&d.decision_id, 0.0)).await,
        Code::PermissionDenied,
        &["\"search\""],
    );

    // The rightful key can still post it (not ALREADY_EXISTS) ...
    let ack = search
        .feedback(feedback_req(&d.decision_id, 1.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.scope, "team:search");
    // ... exactly once.
    assert_refused(
        search.feedback(feedback_req(&d.decision_id, 1.0)).await,
        Code::AlreadyExists,
        &[],
    );

    // One outcome, with the rightful key's score.
    let r = f
        .admin(Some(&f.keys.admin))
        .await
        .get_report(report_req("search"))
        .await
        .unwrap()
        .into_inner();
    let total = r.total.unwrap();
    assert_eq!((total.tasks, total.outcomes), (1, 1), "{total:?}");
    assert_eq!(total.realized_quality, Some(1.0), "{total:?}");
}

#[tokio::test]
async fn cross_team_reuse_is_denied_and_the_owner_may_record_it() {
    let f = Fixture::start().await;
    let mut search = f.router(Some(&f.keys.search)).await;
    let mut ads = f.router(Some(&f.keys.ads)).await;
    let d: RouteResponse = search.route(routed("")).await.unwrap().into_inner();
    let reuse = |event_id: &str| tokenwise::grpc::pb::RecordReuseRequest {
        decision_id: d.decision_id.clone(),
        count: 3,
        event_id: event_id.into(),
        note: String::new(),
    };
    assert_refused(
        ads.record_reuse(reuse("e1")).await,
        Code::PermissionDenied,
        &["\"search\"", "\"ads\""],
    );
    // The refusal spent nothing: the owner's first report of e1 counts, and is its first reuse.
    let ack = search.record_reuse(reuse("e1")).await.unwrap().into_inner();
    assert!(ack.first_reuse && ack.count == 3, "{ack:?}");
    assert_refused(
        search.record_reuse(reuse("e1")).await,
        Code::AlreadyExists,
        &["event_id"],
    );
}

#[tokio::test]
async fn admin_may_post_feedback_for_any_team() {
    let f = Fixture::start().await;
    let from_search = f
        .router(Some(&f.keys.search))
        .await
        .route(routed(""))
        .await
        .unwrap()
        .into_inner();
    let from_ads = f
        .router(Some(&f.keys.ads))
        .await
        .route(routed(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(from_ads.scope, "team:ads");

    let mut admin = f.router(Some(&f.keys.admin)).await;
    for (d, scope) in [(&from_search, "team:search"), (&from_ads, "team:ads")] {
        let ack = admin
            .feedback(feedback_req(&d.decision_id, 1.0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.scope, scope);
    }
    // Recorded for real: the owning team's key now finds it taken.
    assert_refused(
        f.router(Some(&f.keys.ads))
            .await
            .feedback(feedback_req(&from_ads.decision_id, 1.0))
            .await,
        Code::AlreadyExists,
        &[],
    );
}

// ---- GetReport: a service key reads its own team's books ----

#[tokio::test]
async fn service_key_reads_only_its_own_report() {
    let f = Fixture::start().await;
    let mut search = f.router(Some(&f.keys.search)).await;
    let mut ads = f.router(Some(&f.keys.ads)).await;
    for _ in 0..3 {
        search.route(routed("")).await.unwrap();
    }
    for _ in 0..2 {
        ads.route(routed("")).await.unwrap();
    }

    let mut search_admin = f.admin(Some(&f.keys.search)).await;
    for team in ["", "search"] {
        let r = search_admin
            .get_report(report_req(team))
            .await
            .unwrap_or_else(|s| panic!("team {team:?}: {s:?}"))
            .into_inner();
        assert_eq!(total_tasks(&r), 3, "team {team:?}: {r:?}");
        assert_eq!(tasks_by_group(&r), [("search".to_string(), 3)]);
    }
    assert_refused(
        search_admin.get_report(report_req("ads")).await,
        Code::PermissionDenied,
        &["team: ", SEARCH, "\"ads\""],
    );

    let r = f
        .admin(Some(&f.keys.ads))
        .await
        .get_report(report_req(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(total_tasks(&r), 2, "{r:?}");
    assert_eq!(tasks_by_group(&r), [("ads".to_string(), 2)]);

    // An admin reads any team, or all of them.
    let mut admin = f.admin(Some(&f.keys.admin)).await;
    let all = admin.get_report(report_req("")).await.unwrap().into_inner();
    assert_eq!(total_tasks(&all), 5);
    assert_eq!(
        tasks_by_group(&all),
        [("ads".to_string(), 2), ("search".to_string(), 3)]
    );
    for (team, n) in [("ads", 2), ("search", 3)] {
        let r = admin
            .get_report(report_req(team))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(total_tasks(&r), n, "{team}");
    }
}

#[tokio::test]
async fn service_key_sees_its_own_budgets_not_shared_ones() {
    let text = format!(
        "{}\n[[budgets]]\nteam = \"search\"\nperiod = \"day\"\nhard_limit_usd = 5.0\n\
         [[budgets]]\nteam = \"ads\"\nperiod = \"day\"\nhard_limit_usd = 5.0\n\
         [[budgets]]\nperiod = \"month\"\nhard_limit_usd = 50.0\n",
        crate::common::two_tier_policy("search", "ads")
    );
    let f = Fixture::start_with(Policy::parse(&text).unwrap()).await;
    let ids = |r: &GetReportResponse| {
        let mut v: Vec<String> = r.budgets.iter().map(|b| b.id.clone()).collect();
        v.sort();
        v
    };
    let search = f
        .admin(Some(&f.keys.search))
        .await
        .get_report(report_req(""))
        .await
        .unwrap()
        .into_inner();
    // The shared budget's usage is every team's spend: not for a service key.
    assert_eq!(ids(&search), ["team:search/day"]);
    let admin = f
        .admin(Some(&f.keys.admin))
        .await
        .get_report(report_req(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&admin).len(), 3, "{:?}", ids(&admin));
}

// ---- Admin RPCs: the admin role ----

#[tokio::test]
async fn admin_rpcs_refuse_a_service_key() {
    let f = Fixture::start().await;
    let mut admin = f.admin(Some(&f.keys.search)).await;
    let results: Vec<(&str, Result<(), Status>)> = vec![
        (
            "GetThresholds",
            admin
                .get_thresholds(GetThresholdsRequest::default())
                .await
                .map(drop),
        ),
        (
            "GetPolicy",
            admin.get_policy(GetPolicyRequest {}).await.map(drop),
        ),
        (
            "ValidatePolicy",
            admin
                .validate_policy(ValidatePolicyRequest {
                    text: changed_policy(),
                    what_if: false,
                })
                .await
                .map(drop),
        ),
        (
            "ApplyPolicy",
            admin
                .apply_policy(ApplyPolicyRequest {
                    text: changed_policy(),
                    author: ADMIN.into(),
                    reason: "sneaky".into(),
                })
                .await
                .map(drop),
        ),
        (
            "ListPolicyVersions",
            admin
                .list_policy_versions(ListPolicyVersionsRequest {})
                .await
                .map(drop),
        ),
        (
            "RollbackPolicy",
            admin
                .rollback_policy(RollbackPolicyRequest {
                    version: String::new(),
                    author: ADMIN.into(),
                    reason: "sneaky".into(),
                })
                .await
                .map(drop),
        ),
    ];
    for (rpc, result) in results {
        assert_refused(
            result,
            Code::PermissionDenied,
            &[
                &format!("admin role required for tokenwise.v1.Admin/{rpc}"),
                SEARCH,
            ],
        );
    }

    // The refused ApplyPolicy changed nothing.
    let mut real = f.admin(Some(&f.keys.admin)).await;
    let live = real
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.version, policy().version);
    let log = real
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.live_version, policy().version);
    assert!(
        log.changes.iter().all(|c| c.source != "api"),
        "{:?}",
        log.changes
    );
}

#[tokio::test]
async fn admin_key_changes_policy_and_is_the_audited_author() {
    let f = Fixture::start().await;
    let mut admin = f.admin(Some(&f.keys.admin)).await;
    let audited = format!("{ADMIN} (team platform)");
    let original = policy().version;

    let th = admin
        .get_thresholds(GetThresholdsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(th.policy_version, original);
    assert!(
        th.thresholds.iter().any(|t| t.scope == "team:search"),
        "{th:?}"
    );

    let live = admin
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.version, original);
    assert_eq!(live.text, crate::common::two_tier_policy("search", "ads"));

    let proposed = admin
        .validate_policy(ValidatePolicyRequest {
            text: changed_policy(),
            what_if: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(proposed.version, original);

    // The request claims to be someone else; the audit trail names the key.
    let change = admin
        .apply_policy(ApplyPolicyRequest {
            text: changed_policy(),
            author: "mallory".into(),
            reason: "raise the bar".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(change.version, proposed.version);
    assert_eq!(change.author, audited);
    assert_eq!(change.reason, "raise the bar");

    let log = admin
        .list_policy_versions(ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.live_version, proposed.version);
    let last = log.changes.last().unwrap();
    assert_eq!(
        (
            last.version.as_str(),
            last.source.as_str(),
            last.author.as_str()
        ),
        (proposed.version.as_str(), "api", audited.as_str())
    );
    assert!(
        log.changes.iter().all(|c| !c.author.contains("mallory")),
        "{:?}",
        log.changes
    );

    // Rolling back is audited the same way.
    let back = admin
        .rollback_policy(RollbackPolicyRequest {
            version: String::new(),
            author: "mallory".into(),
            reason: "undo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.version, original);
    assert_eq!(back.author, audited);
    let live = admin
        .get_policy(GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.version, original);
}

// ---- auth off ----

#[tokio::test]
async fn auth_off_serves_calls_without_a_key() {
    let server = TestServer::with_config(policy(), Limits::default(), |cfg| {
        cfg.auth = None;
    })
    .await;
    let mut router = server.router().await;
    let mut admin = server.admin().await;

    // The request's team is taken as sent.
    let d = router.route(routed("ads")).await.unwrap().into_inner();
    assert_eq!(d.scope, "team:ads");
    let d2 = router.route(routed("search")).await.unwrap().into_inner();
    assert_eq!(d2.scope, "team:search");
    router
        .feedback(feedback_req(&d.decision_id, 1.0))
        .await
        .unwrap();
    // A header, even a bogus one, is ignored.
    router
        .feedback(with_auth(feedback_req(&d2.decision_id, 1.0), "Basic xyz"))
        .await
        .unwrap();

    let r = admin.get_report(report_req("")).await.unwrap().into_inner();
    assert_eq!(total_tasks(&r), 2);
    // Each scope's shared rows, and the rows of the plan its reporting team learned itself.
    let th = admin
        .get_thresholds(GetThresholdsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .thresholds;
    for team in ["ads", "search"] {
        let scope = format!("team:{team}");
        assert!(
            th.iter().any(|t| t.scope == scope && !t.team_plan),
            "{th:?}"
        );
        assert!(
            th.iter()
                .any(|t| t.scope == scope && t.team_plan && t.team == team),
            "{th:?}"
        );
    }
    assert_eq!(
        admin
            .get_policy(GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .version,
        policy().version
    );
    // Without a key the audit trail keeps what the request says.
    let change = admin
        .apply_policy(ApplyPolicyRequest {
            text: changed_policy(),
            author: "alice".into(),
            reason: "raise the bar".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(change.author, "alice");
}

// ---- what errors echo ----

#[tokio::test]
async fn errors_echo_at_most_a_short_escaped_stretch_of_what_the_caller_sent() {
    let f = Fixture::start().await;
    // 200 KB of caller text, with a line break and an escape sequence at its start.
    let big = format!("x\nERROR forged\u{1b}[31m{}", "y".repeat(200_000));
    let short = |s: Status, field: &str| {
        assert!(
            s.message().len() < 512,
            "{field}: {} bytes",
            s.message().len()
        );
        assert!(
            !s.message().contains('\n') && !s.message().contains('\u{1b}'),
            "{s:?}"
        );
        assert!(s.message().contains("bytes)"), "{field}: {:?}", s.message());
    };
    let mut search = f.router(Some(&f.keys.search)).await;
    short(search.route(routed(&big)).await.unwrap_err(), "route team");
    let mut as_search = f.admin(Some(&f.keys.search)).await;
    short(
        as_search.get_report(report_req(&big)).await.unwrap_err(),
        "report team",
    );
    let mut admin = f.admin(Some(&f.keys.admin)).await;
    let mut by = report_req("");
    by.group_by = big.clone();
    short(admin.get_report(by).await.unwrap_err(), "group_by");
    let mut period = report_req("");
    period.period = big.clone();
    short(admin.get_report(period).await.unwrap_err(), "period");
    short(
        admin
            .get_thresholds(GetThresholdsRequest { scope: big.clone() })
            .await
            .unwrap_err(),
        "thresholds scope",
    );
    short(
        admin
            .rollback_policy(RollbackPolicyRequest {
                version: big.clone(),
                reason: "roll back to a version that does not exist".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "rollback version",
    );
    // The audit trail's free text is one line: a newline would forge a log line.
    let forged = admin
        .apply_policy(ApplyPolicyRequest {
            text: changed_policy(),
            author: "ops\nERROR forged".into(),
            reason: "tighten the bar".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument, "{forged:?}");
    assert!(forged.message().starts_with("author:"), "{forged:?}");
}

#[tokio::test]
async fn the_report_page_takes_the_same_keys_as_get_report() {
    let keys = Keys::new();
    let ring = Arc::new(keys.ring());
    let port = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::spare_port()));
    let _server = TestServer::with_config(policy(), Limits::default(), |cfg| {
        cfg.auth = Some(ring);
        cfg.metrics_addr = Some(port);
    })
    .await;
    let get = |path: &'static str, key: Option<String>| async move {
        let header = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| ("authorization", h))
            .into_iter()
            .collect();
        crate::common::http_get(port, path, &headers).await
    };
    let missing = get("/report", None).await;
    assert!(missing.starts_with("HTTP/1.1 401"), "{missing}");
    assert!(missing.contains("missing `authorization`"), "{missing}");
    let unknown = get("/report", Some("tw_not-a-key".into())).await;
    assert!(unknown.starts_with("HTTP/1.1 401") && !unknown.contains("tw_not-a-key"));
    // A service key reads its own team's books, not another's; an admin reads any.
    let own = get("/report?team=search", Some(keys.search.clone())).await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
    let other = get("/report?team=ads", Some(keys.search.clone())).await;
    assert!(other.starts_with("HTTP/1.1 403"), "{other}");
    assert!(other.contains("cannot act for team"), "{other}");
    let admin = get("/report?team=ads", Some(keys.admin.clone())).await;
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    // /metrics stays open for scrapers.
    assert!(get("/metrics", None).await.starts_with("HTTP/1.1 200"));
}
