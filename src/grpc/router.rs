//! `tokenwise.v1.Router`: Route, Feedback and RecordReuse, each one call into the engine plus
//! the proto conversion; the per-team rate limit and the calls counters; the no-op handler.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rand::Rng;
use tonic::{Request, Response, Status};

use super::convert::to_proto;
use super::now_ms;
use super::pb;
use super::pb::router_server::Router as RouterRpc;
use crate::domain::routing::RouteRequest;
use crate::engine::Engine;
use crate::engine::feedback::{FeedbackInput, ReuseInput};
use crate::grpc::auth;
use crate::metrics::{ErrorLabels, code_label};

/// The RPC names the call counters carry.
const ROUTE: &str = "Route";
const FEEDBACK: &str = "Feedback";
const RECORD_REUSE: &str = "RecordReuse";

pub(super) type TeamLimiter = governor::DefaultKeyedRateLimiter<String>;

/// `tokenwise.v1.Router`.
pub struct RouterService {
    pub(super) engine: Arc<Engine>,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) counters: Arc<Counters>,
    pub(super) limiter: Option<(Arc<TeamLimiter>, u32)>,
    /// Seeded draws ([`ServeConfig::draw_seed`](super::ServeConfig::draw_seed)); `None`: fresh
    /// randomness.
    pub(super) draws: Option<Arc<std::sync::Mutex<rand::rngs::StdRng>>>,
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
    /// Refused calls by RPC and kind (`tokenwise_call_errors_total{rpc, kind}`).
    pub errors: Family<ErrorLabels, Counter>,
}

impl Counters {
    /// Counters registered in `metrics`.
    pub fn registered(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            route_ok: metrics.calls(ROUTE, true),
            route_err: metrics.calls(ROUTE, false),
            feedback_ok: metrics.calls(FEEDBACK, true),
            feedback_err: metrics.calls(FEEDBACK, false),
            reuse_ok: metrics.calls(RECORD_REUSE, true),
            reuse_err: metrics.calls(RECORD_REUSE, false),
            errors: metrics.call_errors.clone(),
        }
    }

    fn count<T>(&self, rpc: &'static str, ok: &Counter, err: &Counter, r: &Result<T, Status>) {
        match r {
            Ok(_) => ok.inc(),
            Err(s) => {
                err.inc();
                let kind = code_label(s.code());
                self.errors.get_or_create(&ErrorLabels { rpc, kind }).inc()
            }
        };
    }
}

/// A Route handler that does nothing: `serve --bench-noop` measures the transport's own ceiling
/// on this machine, so load results can be quoted as a ratio to it.
pub struct NoopRouter {
    pub(super) counters: Arc<Counters>,
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
        let c = &self.counters;
        c.count(ROUTE, &c.route_ok, &c.route_err, &result);
        self.metrics
            .route_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let result = self.feedback_inner(request).await;
        let c = &self.counters;
        c.count(FEEDBACK, &c.feedback_ok, &c.feedback_err, &result);
        result
    }

    async fn record_reuse(
        &self,
        request: Request<pb::RecordReuseRequest>,
    ) -> Result<Response<pb::RecordReuseResponse>, Status> {
        let result = self.record_reuse_inner(request).await;
        let c = &self.counters;
        c.count(RECORD_REUSE, &c.reuse_ok, &c.reuse_err, &result);
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
        crate::domain::routing::check_labels(&req)?;
        if let Some((limiter, per_s)) = &self.limiter
            && limiter.check_key(&team.to_string()).is_err()
        {
            return Err(Status::resource_exhausted(format!(
                "team {team:?} is over its rate limit of {per_s} Route calls per second"
            )));
        }
        // The exploration draw, then the nonce: the order the in-process replay draws them in.
        let (draw, nonce) = match &self.draws {
            Some(seeded) => {
                let mut rng = seeded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (rng.random::<f64>(), rng.random())
            }
            None => {
                let mut rng = rand::rng();
                (rng.random::<f64>(), rng.random())
            }
        };
        let (d, id) = self.engine.route(&req, draw, now_ms(), nonce)?;
        tracing::Span::current()
            .record("scope", d.scope.as_str())
            .record("tier", d.tier().name.as_str())
            .record("decision_id", id.as_str());
        tracing::debug!(complexity = d.complexity, explored = d.explored, "routed");
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
            cached_input_tokens: r.cached_input_tokens,
            reasoning_tokens: r.reasoning_tokens,
            reused: r.reused,
            served_tier: &r.served_tier,
            caller_team: service_team(caller),
            shadow_score: r.shadow_score,
            shadow_input_tokens: r.shadow_input_tokens,
            shadow_output_tokens: r.shadow_output_tokens,
        };
        match self.engine.feedback(&input, now_ms()).await {
            Ok(ack) => {
                tracing::Span::current()
                    .record("scope", ack.scope.as_str())
                    .record("tier", ack.tier.as_str())
                    .record("decision_id", r.decision_id.as_str());
                tracing::debug!(score = r.score, "feedback applied");
                Ok(Response::new(pb::FeedbackResponse {
                    scope: ack.scope,
                    tier: ack.tier,
                    actual_cost_usd: ack.actual_cost_usd,
                    shadow_cost_usd: ack.shadow_cost_micros as f64 / 1e6,
                }))
            }
            Err(e) => {
                tracing::info!(error = %e, "feedback refused");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[tokio::test]
    async fn an_oversized_team_is_refused_before_the_rate_limiter_keys_it() {
        let engine = Engine::builder(
            Arc::new(crate::domain::classifier::ComplexityModel::bundled().unwrap()),
            Arc::new(crate::domain::policy::Policy::embedded().unwrap()),
            crate::domain::decision::Signer::new(b"test-secret").unwrap(),
        )
        .decision_ttl_ms(60_000)
        .build();
        let limiter = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(
            std::num::NonZeroU32::new(100).unwrap(),
        )));
        let svc = RouterService {
            engine: Arc::new(engine),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            counters: Arc::default(),
            limiter: Some((limiter.clone(), 100)),
            draws: None,
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
}
