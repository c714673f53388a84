//! The gRPC face: tonic services for `tokenwise.v1.Router` and `tokenwise.v1.Admin`, health and
//! reflection, and the server wiring. Handlers only convert proto ↔ domain and map errors.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use rand::Rng;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth;
use prometheus_client::metrics::counter::Counter;

use crate::engine::{Engine, RouteRefused};
use crate::feedback::{FeedbackError, FeedbackInput, ReuseInput};
use crate::policy::Period;
use crate::report::{self, build::ReportQuery};
use crate::routing::{Decision, RouteError, RouteRequest};

/// Generated protobuf and gRPC types.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tokenwise.v1");
    /// Encoded descriptor set for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tokenwise_descriptor");
}

use pb::admin_server::{Admin, AdminServer};
use pb::router_server::{Router as RouterRpc, RouterServer};

/// Server settings beyond the engine.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Deadline for any one call once admitted: past it the call answers DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Largest request message accepted by the transport (the task limit is checked separately
    /// so an oversized task gets INVALID_ARGUMENT naming `task`).
    pub max_message_bytes: usize,
    /// Concurrent requests per connection; beyond it the connection's calls are shed.
    pub concurrency_per_connection: usize,
    /// Concurrent requests in the whole server; beyond it calls are shed at once with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    pub max_concurrent_requests: usize,
    /// How often shared state is re-read (and buffered feedback replayed).
    pub refresh_interval: Duration,
    /// Serve a no-op Route handler instead of the router (benchmarks only).
    pub bench_noop: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None` for nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Route calls per second allowed per team (burst of the same size); `None`: no limit.
    pub rate_limit_per_team: Option<std::num::NonZeroU32>,
    /// TLS certificate chain and private key (PEM) for the gRPC port; `None`: plaintext.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// API keys; `None` turns authentication off (the embedded dev default, logged as a
    /// warning).
    pub auth: Option<Arc<auth::KeyRing>>,
}

/// Health service name that reports the state store: NOT_SERVING while it is unreachable
/// (Route keeps answering from the last snapshot; the Router service stays SERVING).
pub const STORE_HEALTH_SERVICE: &str = "tokenwise.v1.Store";

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(2),
            max_message_bytes: crate::routing::DEFAULT_MAX_TASK_BYTES + 64 * 1024,
            concurrency_per_connection: 256,
            max_concurrent_requests: 2048,
            refresh_interval: Duration::from_millis(250),
            bench_noop: false,
            metrics_addr: None,
            auth: None,
            rate_limit_per_team: None,
            tls: None,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// INVALID_ARGUMENT in the one form every refusal uses: `field: what is wrong` as the message,
/// and a `google.rpc.BadRequest` detail with the field and what is wrong.
fn invalid(field: &str, message: String) -> Status {
    let what = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(&message)
        .to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {what}"),
        ErrorDetails::with_bad_request_violation(field, what),
    )
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Self {
        invalid(e.field(), e.to_string())
    }
}

impl From<RouteRefused> for Status {
    fn from(e: RouteRefused) -> Self {
        match e {
            RouteRefused::Invalid(e) => e.into(),
            RouteRefused::Budget(b) => {
                let text = b.to_string();
                Status::with_error_details(
                    Code::ResourceExhausted,
                    text.clone(),
                    ErrorDetails::with_quota_failure_violation(b.budget, text),
                )
            }
        }
    }
}

impl From<FeedbackError> for Status {
    fn from(e: FeedbackError) -> Self {
        match e {
            FeedbackError::InvalidArgument { field, reason } => invalid(field, reason),
            FeedbackError::Token(t) => invalid("decision_id", t.to_string()),
            FeedbackError::Expired { .. }
            | FeedbackError::BeforeStoreReset
            | FeedbackError::OutsideReuseWindow { .. } => {
                Status::failed_precondition(e.to_string())
            }
            FeedbackError::AlreadyRecorded | FeedbackError::ReuseRecorded(_) => {
                Status::already_exists(e.to_string())
            }
            FeedbackError::PermissionDenied { .. } => Status::permission_denied(e.to_string()),
            FeedbackError::Unavailable(_) => Status::unavailable(e.to_string()),
            FeedbackError::Full(_) => Status::resource_exhausted(e.to_string()),
        }
    }
}

/// Moves the decision into its proto form (no string copies on the hot path).
fn to_proto(d: Decision, decision_id: String) -> pb::RouteResponse {
    let (chosen, fallback) = (d.chosen, d.fallback);
    let tier = d.candidates[chosen].name.clone();
    let model = d.candidates[chosen].model.clone();
    let estimated_cost_usd = d.candidates[chosen].estimated_cost_usd;
    let fallback_tier = fallback
        .map(|i| d.candidates[i].name.clone())
        .unwrap_or_default();
    pb::RouteResponse {
        decision_id,
        tier,
        model,
        complexity: d.complexity,
        estimated_cost_usd,
        candidates: d
            .candidates
            .into_iter()
            .map(|c| pb::Candidate {
                tier: c.name,
                model: c.model,
                predicted_quality: c.predicted_quality,
                estimated_cost_usd: c.estimated_cost_usd,
                threshold: c.threshold,
            })
            .collect(),
        fallback_tier,
        policy_version: d.policy_version,
        reason: d.reason,
        scope: d.scope,
        explored: d.explored,
    }
}

// ---- report ↔ proto ----

impl From<report::TierShare> for pb::TierShare {
    fn from(t: report::TierShare) -> Self {
        Self {
            tier: t.tier,
            tasks: t.tasks,
            spend_micros: t.spend_micros,
        }
    }
}

impl From<pb::TierShare> for report::TierShare {
    fn from(t: pb::TierShare) -> Self {
        Self {
            tier: t.tier,
            tasks: t.tasks,
            spend_micros: t.spend_micros,
        }
    }
}

/// Maps the fields shared by a proto and a domain group, both ways.
macro_rules! group_fields {
    ($from:expr, $to:ident) => {{
        let g = $from;
        $to {
            key: g.key,
            spend_micros: g.spend_micros,
            tasks: g.tasks,
            outcomes: g.outcomes,
            completed: g.completed,
            cost_per_completed_micros: g.cost_per_completed_micros,
            realized_quality: g.realized_quality,
            quality_bar: g.quality_bar,
            tier_mix: g.tier_mix.into_iter().map(Into::into).collect(),
            premium_micros: g.premium_micros,
            savings_micros: g.savings_micros,
            value_micros: g.value_micros,
            human_hours: g.human_hours,
            human_value_micros: g.human_value_micros,
            net_value_micros: g.net_value_micros,
            reused: g.reused,
            reuse_events: g.reuse_events,
            reuse_rate: g.reuse_rate,
            budget_downgrades: g.budget_downgrades,
            budget_rejections: g.budget_rejections,
        }
    }};
}

/// Same for budgets.
macro_rules! budget_fields {
    ($from:expr, $to:ident) => {{
        let b = $from;
        $to {
            id: b.id,
            team: b.team,
            workflow: b.workflow,
            period: b.period,
            period_start_ms: b.period_start_ms,
            soft_limit_micros: b.soft_limit_micros,
            hard_limit_micros: b.hard_limit_micros,
            used_micros: b.used_micros,
            left_micros: b.left_micros,
            state: b.state,
        }
    }};
}

/// Same for series points.
macro_rules! point_fields {
    ($from:expr, $to:ident) => {{
        let p = $from;
        $to {
            start_ms: p.start_ms,
            spend_micros: p.spend_micros,
            tasks: p.tasks,
            outcomes: p.outcomes,
            realized_quality: p.realized_quality,
        }
    }};
}

impl From<report::Report> for pb::GetReportResponse {
    fn from(r: report::Report) -> Self {
        use pb::{BudgetStatus, GroupReport, SeriesPoint};
        Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            group_by: r.group_by.as_str().to_string(),
            groups: r
                .groups
                .into_iter()
                .map(|g| group_fields!(g, GroupReport))
                .collect(),
            total: Some(group_fields!(r.total, GroupReport)),
            budgets: r
                .budgets
                .into_iter()
                .map(|b| budget_fields!(b, BudgetStatus))
                .collect(),
            series: r
                .series
                .into_iter()
                .map(|p| point_fields!(p, SeriesPoint))
                .collect(),
            policy_version: r.policy_version,
            generated_ms: r.generated_ms,
        }
    }
}

impl From<pb::GetReportResponse> for report::Report {
    fn from(r: pb::GetReportResponse) -> Self {
        use report::{BudgetStatus, GroupReport, SeriesPoint};
        Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            group_by: report::GroupBy::parse(&r.group_by).unwrap_or_default(),
            groups: r
                .groups
                .into_iter()
                .map(|g| group_fields!(g, GroupReport))
                .collect(),
            total: group_fields!(r.total.unwrap_or_default(), GroupReport),
            budgets: r
                .budgets
                .into_iter()
                .map(|b| budget_fields!(b, BudgetStatus))
                .collect(),
            series: r
                .series
                .into_iter()
                .map(|p| point_fields!(p, SeriesPoint))
                .collect(),
            policy_version: r.policy_version,
            generated_ms: r.generated_ms,
        }
    }
}

/// Validates a report request into a query.
fn report_query(r: &pb::GetReportRequest, now: u64) -> Result<ReportQuery, Status> {
    let group_by = report::GroupBy::parse(&r.group_by).ok_or_else(|| {
        invalid(
            "group_by",
            format!(
                "must be \"team\", \"workflow\", \"tier\" or \"team_workflow\", got {:?}",
                r.group_by
            ),
        )
    })?;
    let until_ms = if r.until_ms == 0 { now } else { r.until_ms };
    let since_ms = match r.period.as_str() {
        "" if r.since_ms == 0 => until_ms.saturating_sub(24 * 3_600_000),
        "" => r.since_ms,
        "day" => Period::Day.start_ms(now),
        "week" => Period::Week.start_ms(now),
        "month" => Period::Month.start_ms(now),
        other => {
            return Err(invalid(
                "period",
                format!("must be \"day\", \"week\", \"month\" or empty, got {other:?}"),
            ));
        }
    };
    let until_ms = if r.period.is_empty() { until_ms } else { now };
    if since_ms >= until_ms {
        return Err(invalid(
            "since_ms",
            format!("must be before until_ms ({until_ms}), got {since_ms}"),
        ));
    }
    Ok(ReportQuery {
        since_ms,
        until_ms,
        team: r.team.clone(),
        workflow: r.workflow.clone(),
        group_by,
    })
}

type TeamLimiter = governor::DefaultKeyedRateLimiter<String>;

/// `tokenwise.v1.Router`.
pub struct RouterService {
    engine: Arc<Engine>,
    counters: Arc<Counters>,
    limiter: Option<(Arc<TeamLimiter>, u32)>,
}

/// Calls served, by outcome: the server's own count (load generators see only HTTP status,
/// while gRPC errors travel in trailers).
/// Exported as `tokenwise_calls_total{rpc, outcome}`; unregistered by default (the no-op
/// benchmark server).
#[derive(Debug, Default)]
pub struct Counters {
    /// Route calls answered OK.
    pub route_ok: Counter,
    /// Route calls answered with an error status.
    pub route_err: Counter,
    /// Feedback calls accepted.
    pub feedback_ok: Counter,
    /// Feedback calls refused.
    pub feedback_err: Counter,
    /// RecordReuse calls accepted.
    pub reuse_ok: Counter,
    /// RecordReuse calls refused.
    pub reuse_err: Counter,
}

impl Counters {
    /// Counters registered in `metrics`.
    pub fn registered(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            route_ok: metrics.calls("Route", true),
            route_err: metrics.calls("Route", false),
            feedback_ok: metrics.calls("Feedback", true),
            feedback_err: metrics.calls("Feedback", false),
            reuse_ok: metrics.calls("RecordReuse", true),
            reuse_err: metrics.calls("RecordReuse", false),
        }
    }

    fn count<T>(ok: &Counter, err: &Counter, r: &Result<T, Status>) {
        match r {
            Ok(_) => ok.inc(),
            Err(_) => err.inc(),
        };
    }
}

/// A Route handler that does nothing: `serve --bench-noop` measures the transport's own ceiling
/// on this machine, so load results can be quoted as a ratio to it.
pub struct NoopRouter {
    counters: Arc<Counters>,
}

#[tonic::async_trait]
impl RouterRpc for NoopRouter {
    async fn route(
        &self,
        _request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        self.counters.route_ok.inc();
        Ok(Response::new(pb::RouteResponse::default()))
    }

    async fn feedback(
        &self,
        _request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        Err(Status::unimplemented("no-op benchmark server"))
    }

    async fn record_reuse(
        &self,
        _request: Request<pb::RecordReuseRequest>,
    ) -> Result<Response<pb::RecordReuseResponse>, Status> {
        Err(Status::unimplemented("no-op benchmark server"))
    }
}

#[tonic::async_trait]
impl RouterRpc for RouterService {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let started = std::time::Instant::now();
        let result = self.route_inner(request);
        Counters::count(&self.counters.route_ok, &self.counters.route_err, &result);
        self.engine
            .metrics()
            .route_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let result = self.feedback_inner(request).await;
        Counters::count(
            &self.counters.feedback_ok,
            &self.counters.feedback_err,
            &result,
        );
        result
    }

    async fn record_reuse(
        &self,
        request: Request<pb::RecordReuseRequest>,
    ) -> Result<Response<pb::RecordReuseResponse>, Status> {
        let result = self.record_reuse_inner(request).await;
        Counters::count(&self.counters.reuse_ok, &self.counters.reuse_err, &result);
        result
    }
}

impl RouterService {
    async fn record_reuse_inner(
        &self,
        request: Request<pb::RecordReuseRequest>,
    ) -> Result<Response<pb::RecordReuseResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let caller = extensions.get::<auth::Caller>();
        let input = ReuseInput {
            decision_id: &r.decision_id,
            count: r.count,
            event_id: &r.event_id,
            note: &r.note,
            caller_team: service_team(caller),
        };
        match self.engine.reuse(&input, now_ms()).await {
            Ok(ack) => Ok(Response::new(pb::RecordReuseResponse {
                scope: ack.scope,
                workflow: ack.workflow,
                count: ack.count,
                first_reuse: ack.first,
            })),
            Err(e) => {
                tracing::info!(error = %e, "reuse refused");
                Err(e.into())
            }
        }
    }
}

/// The team a service key acts for; `None` with auth off or for an admin key (which may
/// report on any team's decisions).
fn service_team(caller: Option<&auth::Caller>) -> Option<&str> {
    caller
        .filter(|c| c.role == auth::Role::Service)
        .map(|c| c.team.as_str())
}

impl RouterService {
    fn route_inner(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        // Take the message and the caller apart: no copy of either on the hot path.
        let (_, extensions, r) = request.into_parts();
        let caller = extensions.get::<auth::Caller>();
        let team = auth::effective_team(caller, &r.team, "team")?;
        let hints = r.hints.unwrap_or_default();
        let req = RouteRequest {
            task: &r.task,
            workflow: &r.workflow,
            team,
            expected_output_tokens: hints.expected_output_tokens,
            task_type: &hints.task_type,
        };
        // Labels are checked before the rate limiter keys anything by them: a 300 KB team name
        // must not become a limiter entry.
        crate::routing::check_labels(&req)?;
        if let Some((limiter, per_s)) = &self.limiter
            && limiter.check_key(&team.to_string()).is_err()
        {
            return Err(Status::resource_exhausted(format!(
                "team {team:?} is over its rate limit of {per_s} Route calls per second"
            )));
        }
        let mut rng = rand::rng();
        let (d, id) = self
            .engine
            .route(&req, rng.random::<f64>(), now_ms(), rng.random())?;
        tracing::debug!(scope = %d.scope, tier = %d.tier().name, complexity = d.complexity, explored = d.explored, "routed");
        Ok(Response::new(to_proto(d, id)))
    }

    async fn feedback_inner(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        // Take the message and the caller apart: no copy of either on the hot path.
        let (_, extensions, r) = request.into_parts();
        let caller = extensions.get::<auth::Caller>();
        let input = FeedbackInput {
            decision_id: &r.decision_id,
            score: r.score,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            reused: r.reused,
            caller_team: service_team(caller),
        };
        match self.engine.feedback(&input, now_ms()).await {
            Ok(ack) => {
                tracing::debug!(scope = %ack.scope, tier = %ack.tier, score = r.score, "feedback applied");
                Ok(Response::new(pb::FeedbackResponse {
                    scope: ack.scope,
                    tier: ack.tier,
                    actual_cost_usd: ack.actual_cost_usd,
                }))
            }
            Err(e) => {
                tracing::info!(error = %e, "feedback refused");
                Err(e.into())
            }
        }
    }
}

/// `tokenwise.v1.Admin` (read-only).
pub struct AdminService {
    engine: Arc<Engine>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_thresholds(
        &self,
        request: Request<pb::GetThresholdsRequest>,
    ) -> Result<Response<pb::GetThresholdsResponse>, Status> {
        auth::require_admin(auth::caller(&request), "GetThresholds")?;
        let want = request.into_inner().scope;
        let t = self.engine.thresholds(&want).map_err(|scope| {
            Status::not_found(format!("scope {scope:?} is not in the live policy"))
        })?;
        Ok(Response::new(pb::GetThresholdsResponse {
            thresholds: t.rows.into_iter().map(threshold_to_proto).collect(),
            policy_version: t.policy_version,
        }))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        // Service keys read their own team's books; admins any team's.
        let (_, extensions, mut q) = request.into_parts();
        let caller = extensions.get::<auth::Caller>();
        q.team = auth::effective_team(caller, &q.team, "team")?.to_string();
        let mut r = self.report(q).await?;
        // A shared budget's usage is every team's spend: a service key sees only its own
        // team's budgets (a shared one that refuses it is named in the Route refusal).
        if let Some(c) = caller
            && c.role != auth::Role::Admin
        {
            r.budgets.retain(|b| b.team == c.team);
        }
        Ok(Response::new(r.into()))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        auth::require_admin(auth::caller(&request), "GetPolicy")?;
        let p = self.engine.policy();
        Ok(Response::new(pb::GetPolicyResponse {
            version: p.version.clone(),
            text: p.source.to_string(),
        }))
    }

    async fn validate_policy(
        &self,
        request: Request<pb::ValidatePolicyRequest>,
    ) -> Result<Response<pb::ValidatePolicyResponse>, Status> {
        auth::require_admin(auth::caller(&request), "ValidatePolicy")?;
        let r = request.into_inner();
        let check = self
            .engine
            .check_policy(&r.text, r.what_if)
            .await
            .map_err(policy_invalid)?;
        let what_if = check
            .what_if
            .map(|w| {
                w.scopes
                    .into_iter()
                    .chain(std::iter::once(w.total))
                    .map(what_if_to_proto)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ValidatePolicyResponse {
            version: check.version,
            changes: check.changes,
            what_if,
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        auth::require_admin(auth::caller(&request), "ApplyPolicy")?;
        let author = author_of(&request);
        let r = request.into_inner();
        require_reason(&r.reason)?;
        let author = author.unwrap_or_else(|| anonymous_or(r.author.clone()));
        let change = self
            .engine
            .apply_policy(&r.text, "api", &author, &r.reason, now_ms())
            .await
            .map_err(admin_error)?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn list_policy_versions(
        &self,
        request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        auth::require_admin(auth::caller(&request), "ListPolicyVersions")?;
        let changes =
            self.engine.policy_versions().await.map_err(|e| {
                Status::unavailable(format!("version history needs the store: {e}"))
            })?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            changes: changes.into_iter().map(change_to_proto).collect(),
            live_version: self.engine.policy().version.clone(),
        }))
    }

    async fn rollback_policy(
        &self,
        request: Request<pb::RollbackPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        auth::require_admin(auth::caller(&request), "RollbackPolicy")?;
        let author = author_of(&request);
        let r = request.into_inner();
        require_reason(&r.reason)?;
        let author = author.unwrap_or_else(|| anonymous_or(r.author.clone()));
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        let change = self
            .engine
            .rollback_policy(version, &author, &r.reason, now_ms())
            .await
            .map_err(admin_error)?;
        Ok(Response::new(change_to_proto(change)))
    }
}

/// With authentication on, the audit trail names the key, not what the request claims.
fn author_of<T>(request: &Request<T>) -> Option<String> {
    auth::caller(request).map(|c| format!("{} (team {})", c.name, c.team))
}

/// Without authentication the request names the author; an empty one is recorded as such.
fn anonymous_or(author: String) -> String {
    if author.trim().is_empty() {
        "anonymous (auth off)".into()
    } else {
        author
    }
}

fn require_reason(reason: &str) -> Result<(), Status> {
    if reason.trim().is_empty() {
        return Err(invalid(
            "reason",
            "must say why the policy changes (it goes in the audit trail)".into(),
        ));
    }
    Ok(())
}

fn policy_invalid(e: crate::policy::PolicyError) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid policy: {e}"),
        ErrorDetails::with_bad_request_violation(e.path.clone(), e.reason.clone()),
    )
}

fn admin_error(e: crate::engine::AdminError) -> Status {
    use crate::engine::AdminError;
    match e {
        AdminError::Invalid(p) => policy_invalid(p),
        AdminError::AlreadyLive(_) => Status::already_exists(e.to_string()),
        AdminError::UnknownVersion(_) => Status::not_found(e.to_string()),
        AdminError::Store(_) => Status::unavailable(e.to_string()),
    }
}

fn change_to_proto(c: crate::store::PolicyChange) -> pb::PolicyChange {
    pb::PolicyChange {
        seq: c.seq,
        version: c.version,
        source: c.source,
        author: c.author,
        reason: c.reason,
        at_ms: c.at_ms,
        summary: c.summary,
    }
}

fn what_if_to_proto(w: crate::engine::WhatIfScope) -> pb::WhatIfScope {
    pb::WhatIfScope {
        scope: w.scope,
        tasks: w.tasks,
        actual_spend_micros: w.actual_spend_micros,
        actual_quality: w.actual_quality,
        live_spend_micros: w.live_spend_micros,
        live_quality: w.live_quality,
        proposed_spend_micros: w.proposed_spend_micros,
        proposed_quality: w.proposed_quality,
        live_bar: w.live_bar,
        proposed_bar: w.proposed_bar,
        actual_mix: w.actual_mix.into_iter().collect(),
        proposed_mix: w.proposed_mix.into_iter().collect(),
    }
}

impl AdminService {
    async fn report(&self, r: pb::GetReportRequest) -> Result<report::Report, Status> {
        let now = now_ms();
        let q = report_query(&r, now)?;
        self.engine
            .report(&q, now)
            .await
            .map_err(|e| Status::unavailable(format!("report needs the store: {e}")))
    }
}

fn threshold_to_proto(t: crate::learning::ThresholdRow) -> pb::TierThreshold {
    pb::TierThreshold {
        scope: t.scope,
        tier: t.tier,
        threshold: t.threshold,
        evidence: t.evidence,
        observed_quality: t.observed_quality,
        last_move: t.last_move,
        bar: t.bar,
        scope_quality: t.scope_quality,
        workflow: t.workflow,
        pinned: t.pinned,
        team_plan: t.team.is_some(),
        team: t.team.unwrap_or_default(),
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the descriptor set.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics port could not be bound.
    #[error("cannot serve metrics on {addr} (--metrics-listen; `off` to disable): {source}")]
    Metrics {
        /// Address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// SIGHUP (tokenwise targets Linux).
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reload the policy by editing the file");
            None
        }
    }
}

/// Serves `GET /metrics` (OpenMetrics text) on `listener` until the task is aborted.
pub async fn serve_metrics(engine: Arc<Engine>, listener: TcpListener) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let engine = engine.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    engine.render_metrics(now_ms()),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

/// An accepted connection that tells h2 it has no vectored writes.
///
/// With vectored writes, h2 keeps any DATA payload of 256 bytes or more out of its frame buffer
/// and must flush before it can buffer the next frame: a Route response (~500 bytes) then
/// costs two `writev` calls (data, then trailers), and at saturation every response forces its
/// own flush instead of leaving in one write with its neighbours. Without them, h2 copies
/// payloads below 1 KB into the buffer (measured in the README's Performance section).
pub struct CopiedWrites(tokio::net::TcpStream);

impl tokio::io::AsyncRead for CopiedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CopiedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    // `is_write_vectored` keeps its default, `false`: that is the point of this type.
}

impl tonic::transport::server::Connected for CopiedWrites {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight calls.
pub async fn run(
    engine: Arc<Engine>,
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RouterServer<RouterService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The error details (google.rpc.BadRequest): so grpcurl can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // grpcurl 1.8 speaks only v1alpha reflection.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Reconcile the policy with the shared version history, catch up with shared state before
    // taking traffic, then keep refreshing in the background.
    if let Err(e) = engine.init_policy(now_ms()).await {
        tracing::warn!(error = %e, "policy history not reachable at startup; serving the file's policy");
    }
    let healthy = engine.refresh(now_ms()).await;
    let store_status = |ok: bool| {
        if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    health_reporter
        .set_service_status(STORE_HEALTH_SERVICE, store_status(healthy))
        .await;
    let refresher = {
        let engine = engine.clone();
        let reporter = health_reporter.clone();
        let every = config.refresh_interval;
        tokio::spawn(async move {
            let mut last = healthy;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut hangup = hangup_signal();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!("SIGHUP: reloading the policy file");
                        if let Err(e) = engine.refresh_policy(true, now_ms()).await {
                            tracing::warn!(error = %e, "policy reload not recorded: store unreachable");
                        }
                        continue;
                    }
                }
                let ok = engine.refresh(now_ms()).await && !engine.is_degraded();
                if ok != last {
                    reporter
                        .set_service_status(STORE_HEALTH_SERVICE, store_status(ok))
                        .await;
                    last = ok;
                }
            }
        })
    };

    let metrics_server = match config.metrics_addr {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Metrics { addr, source })?;
            tracing::info!(addr = ?listener.local_addr().ok(), "serving Prometheus metrics on /metrics");
            let engine = engine.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = serve_metrics(engine, listener).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }))
        }
    };

    let interceptor = auth::AuthInterceptor::new(config.auth.clone());
    match &config.auth {
        Some(ring) => tracing::info!(
            keys = ring.len(),
            "authentication on: API keys required on Router and Admin"
        ),
        None => tracing::warn!(
            "authentication is OFF: any caller may route, post feedback and change policy; start with --auth-keys FILE in production"
        ),
    }
    let counters = Arc::new(Counters::registered(engine.metrics()));
    let (router, noop) = if config.bench_noop {
        tracing::warn!("serving a NO-OP Route handler (--bench-noop): benchmarks only");
        let noop = RouterServer::new(NoopRouter {
            counters: counters.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes);
        (
            None,
            Some(InterceptedService::new(noop, interceptor.clone())),
        )
    } else {
        let limiter = config.rate_limit_per_team.map(|n| {
            let limiter = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(n)));
            // Forget teams idle for long enough to be back at a full burst, so the keyed state
            // stays as small as the set of active teams.
            // Ends when the server (and with it the limiter) is gone.
            let weak = Arc::downgrade(&limiter);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let Some(limiter) = weak.upgrade() else { break };
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            });
            (limiter, n.get())
        });
        let router = RouterServer::new(RouterService {
            engine: engine.clone(),
            counters: counters.clone(),
            limiter,
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        (
            Some(InterceptedService::new(router, interceptor.clone())),
            None,
        )
    };
    let admin = InterceptedService::new(
        AdminServer::new(AdminService {
            engine: engine.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes),
        interceptor,
    );

    // Announced once every port is bound: a clash on the metrics port fails before this.
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "listening: serving tokenwise.v1.Router and tokenwise.v1.Admin");
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls {
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
        tracing::info!("TLS on the gRPC port");
    }
    let served = builder
        // Bound per-connection concurrency so one noisy client cannot take every worker, and
        // shed (RESOURCE_EXHAUSTED) rather than queue when a connection is at its limit.
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .load_shed(true)
        .layer(protection(
            config.max_concurrent_requests,
            PROBE_CONCURRENCY,
            config.request_timeout,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(router)
        .add_optional_service(noop)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            // TCP_NODELAY on every accepted socket: a response is written as headers, data and
            // trailers; with Nagle on, the last piece waits for a delayed ACK (~40 ms).
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map_ok(CopiedWrites),
            shutdown,
        )
        .await;
    if let Some(m) = metrics_server {
        m.abort();
    }
    refresher.abort();
    // Wait until it is gone, so its drain cannot overlap the shutdown drain.
    let _ = refresher.await;
    // In-flight calls are drained; record or persist what is still buffered.
    engine.shutdown(now_ms()).await;
    served?;
    tracing::info!(
        route_ok = counters.route_ok.get(),
        route_err = counters.route_err.get(),
        feedback_ok = counters.feedback_ok.get(),
        feedback_err = counters.feedback_err.get(),
        reuse_ok = counters.reuse_ok.get(),
        reuse_err = counters.reuse_err.get(),
        "server stopped"
    );
    Ok(())
}

/// The server-wide protection layers, outermost first: tower errors become precise gRPC
/// statuses; admission sheds a call at once when its budget is full (overload costs callers
/// microseconds, not a queue), with health checks and reflection on a small budget of their
/// own so that slow probes (which need no key) cannot take the permits Route and Feedback
/// need; and an admitted call that runs past the request timeout answers DEADLINE_EXCEEDED
/// instead of hanging. (tonic's own server timeout answers CANCELLED.)
type Protection = tower::ServiceBuilder<
    tower::layer::util::Stack<
        tower::timeout::TimeoutLayer,
        tower::layer::util::Stack<
            AdmissionLayer,
            tower::layer::util::Stack<
                tower::util::MapErrLayer<fn(tower::BoxError) -> tower::BoxError>,
                tower::layer::util::Identity,
            >,
        >,
    >,
>;

/// Concurrent health and reflection calls admitted, apart from the RPC budget.
const PROBE_CONCURRENCY: usize = 32;

fn protection(
    max_concurrent_requests: usize,
    max_probes: usize,
    request_timeout: Duration,
) -> Protection {
    tower::ServiceBuilder::new()
        .map_err(precise_status as fn(tower::BoxError) -> tower::BoxError)
        .layer(AdmissionLayer {
            rpc: Arc::new(tokio::sync::Semaphore::new(max_concurrent_requests)),
            probes: Arc::new(tokio::sync::Semaphore::new(max_probes)),
        })
        .timeout(request_timeout)
}

/// Whether a request path is a health check or reflection (no key needed, own budget).
fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// Admits a call if its budget (RPC or probe) has a permit now, else sheds it with
/// RESOURCE_EXHAUSTED naming the budget. The permit is held until the call's response is ready.
#[derive(Clone)]
struct AdmissionLayer {
    rpc: Arc<tokio::sync::Semaphore>,
    probes: Arc<tokio::sync::Semaphore>,
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            budgets: self.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] builds.
#[derive(Clone)]
struct Admission<S> {
    inner: S,
    budgets: AdmissionLayer,
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Admission<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let probe = is_probe(req.uri().path());
        let budget = if probe {
            &self.budgets.probes
        } else {
            &self.budgets.rpc
        };
        match budget.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(req);
                Box::pin(async move {
                    let out = call.await.map_err(Into::into);
                    drop(permit);
                    out
                })
            }
            Err(_) => {
                let status = if probe {
                    Status::resource_exhausted(format!(
                        "health and reflection calls at their limit of {PROBE_CONCURRENCY} concurrent calls: retry with backoff"
                    ))
                } else {
                    Status::resource_exhausted(
                        "server at its limit of concurrent requests (--max-concurrent-requests): retry with backoff",
                    )
                };
                Box::pin(async move { Err(Box::new(status) as tower::BoxError) })
            }
        }
    }
}

/// Shedding and timeouts as the statuses a caller can act on; tonic turns a `Status` error into
/// its response as is.
fn precise_status(e: tower::BoxError) -> tower::BoxError {
    if e.is::<tower::timeout::error::Elapsed>() {
        Box::new(Status::deadline_exceeded(
            "not answered within the server's request timeout (--request-timeout-ms)",
        ))
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tonic::transport::server::Connected;

    #[tokio::test]
    async fn an_oversized_team_is_refused_before_the_rate_limiter_keys_it() {
        let engine = Engine::builder(
            Arc::new(crate::classifier::ComplexityModel::bundled().unwrap()),
            Arc::new(crate::policy::Policy::embedded().unwrap()),
            crate::decision::Signer::new(b"test-secret").unwrap(),
        )
        .decision_ttl_ms(60_000)
        .build();
        let limiter = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(
            std::num::NonZeroU32::new(100).unwrap(),
        )));
        let svc = RouterService {
            engine: Arc::new(engine),
            counters: Arc::default(),
            limiter: Some((limiter.clone(), 100)),
        };
        let call = |team: String| {
            svc.route_inner(Request::new(pb::RouteRequest {
                task: "What is 2+2?".into(),
                team,
                ..Default::default()
            }))
        };
        let e = call("t".repeat(300 * 1024)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("team"), "{}", e.message());
        assert!(e.message().len() < 200, "the error must not echo the label");
        assert_eq!(limiter.len(), 0);
        call("search".into()).unwrap();
        assert_eq!(limiter.len(), 1);
    }

    /// One call through a protection stack whose service sleeps `ms` and answers it.
    async fn through<S>(svc: &mut S, path: &str, ms: u64) -> Result<u64, Status>
    where
        S: tower::Service<
                tonic::codegen::http::Request<u64>,
                Response = u64,
                Error = tower::BoxError,
            >,
    {
        use tower::ServiceExt;
        let req = tonic::codegen::http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(ms)
            .map_err(|e| Status::internal(e.to_string()))?;
        svc.ready()
            .await
            .map_err(Status::from_error)?
            .call(req)
            .await
            .map_err(Status::from_error)
    }

    #[tokio::test]
    async fn protection_answers_deadline_exceeded_and_names_the_exhausted_limit() {
        const ROUTE: &str = "/tokenwise.v1.Router/Route";
        const HEALTH: &str = "/grpc.health.v1.Health/Check";
        let slow = tower::service_fn(|req: tonic::codegen::http::Request<u64>| async move {
            tokio::time::sleep(Duration::from_millis(*req.body())).await;
            Ok::<_, tower::BoxError>(*req.body())
        });
        let mut svc = protection(1, 1, Duration::from_millis(200)).service(slow);
        // Fast enough: answered.
        assert_eq!(through(&mut svc, ROUTE, 1).await.unwrap(), 1);
        // Too slow: DEADLINE_EXCEEDED, naming the flag.
        let e = through(&mut svc, ROUTE, 10_000).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("--request-timeout-ms"));
        // While one call holds a budget, the next call on that budget is shed at once, naming
        // it, and the other budget still admits.
        for (held_path, other, needle) in [
            (HEALTH, ROUTE, "health"),
            (ROUTE, HEALTH, "--max-concurrent-requests"),
        ] {
            let mut holder = svc.clone();
            let (held, ()) = tokio::join!(through(&mut holder, held_path, 100), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert_eq!(through(&mut svc, other, 1).await.unwrap(), 1);
                let e = through(&mut svc, held_path, 1).await.unwrap_err();
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains(needle), "{}", e.message());
            });
            assert_eq!(held.unwrap(), 100);
        }
    }

    #[tokio::test]
    async fn accepted_connections_report_no_vectored_writes_and_pass_bytes_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"ping").await.expect("write");
            let mut back = [0u8; 4];
            c.read_exact(&mut back).await.expect("read");
            back
        });
        let (stream, _) = listener.accept().await.expect("accept");
        assert!(
            stream.is_write_vectored(),
            "tokio's TcpStream does vectored writes"
        );
        let mut conn = CopiedWrites(stream);
        assert!(!conn.is_write_vectored());
        assert_eq!(
            conn.connect_info().remote_addr().map(|a| a.ip()),
            Some(addr.ip())
        );
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).await.expect("read");
        conn.write_all(&got).await.expect("write");
        conn.flush().await.expect("flush");
        assert_eq!(client.await.expect("client"), *b"ping");
    }
}
