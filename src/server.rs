//! The gRPC face: tonic services for `tokenwise.v1.Router` and `tokenwise.v1.Admin`, health and
//! reflection, and the server wiring. Handlers only convert proto ↔ domain and map errors.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_types::{ErrorDetails, StatusExt};

use crate::feedback::{Engine, FeedbackError, FeedbackInput};
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
    /// Deadline for any one call.
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
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn invalid(field: &str, message: String) -> Status {
    let text = if message.starts_with(field) {
        message.clone()
    } else {
        format!("{field}: {message}")
    };
    Status::with_error_details(
        Code::InvalidArgument,
        text,
        ErrorDetails::with_bad_request_violation(field, message.clone()),
    )
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Self {
        invalid(e.field(), e.to_string())
    }
}

impl From<FeedbackError> for Status {
    fn from(e: FeedbackError) -> Self {
        match e {
            FeedbackError::InvalidArgument { field, reason } => invalid(field, reason),
            FeedbackError::Token(t) => invalid("decision_id", t.to_string()),
            FeedbackError::Expired { .. } => Status::failed_precondition(e.to_string()),
            FeedbackError::AlreadyRecorded => Status::already_exists(e.to_string()),
            FeedbackError::Unavailable(_) => Status::unavailable(e.to_string()),
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

/// `tokenwise.v1.Router`.
pub struct RouterService {
    engine: Arc<Engine>,
    counters: Arc<Counters>,
}

/// Calls served, by outcome: the server's own count (load generators see only HTTP status,
/// while gRPC errors travel in trailers).
#[derive(Debug, Default)]
pub struct Counters {
    /// Route calls answered OK.
    pub route_ok: AtomicU64,
    /// Route calls answered with an error status.
    pub route_err: AtomicU64,
    /// Feedback calls accepted.
    pub feedback_ok: AtomicU64,
    /// Feedback calls refused.
    pub feedback_err: AtomicU64,
}

impl Counters {
    fn count<T>(ok: &AtomicU64, err: &AtomicU64, r: &Result<T, Status>) {
        match r {
            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => err.fetch_add(1, Ordering::Relaxed),
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
        self.counters.route_ok.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::RouteResponse::default()))
    }

    async fn feedback(
        &self,
        _request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        Err(Status::unimplemented("no-op benchmark server"))
    }
}

#[tonic::async_trait]
impl RouterRpc for RouterService {
    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let result = self.route_inner(request);
        Counters::count(&self.counters.route_ok, &self.counters.route_err, &result);
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
}

impl RouterService {
    fn route_inner(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let r = request.into_inner();
        let hints = r.hints.unwrap_or_default();
        let req = RouteRequest {
            task: &r.task,
            workflow: &r.workflow,
            team: &r.team,
            expected_output_tokens: hints.expected_output_tokens,
            task_type: &hints.task_type,
        };
        let d = self.engine.router.route(&req, rand::random::<f64>())?;
        let id = self
            .engine
            .learner
            .issue(&d, &r.team, &r.workflow, now_ms(), rand::random());
        tracing::debug!(scope = %d.scope, tier = %d.tier().name, complexity = d.complexity, explored = d.explored, "routed");
        Ok(Response::new(to_proto(d, id)))
    }

    async fn feedback_inner(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let r = request.into_inner();
        let input = FeedbackInput {
            decision_id: &r.decision_id,
            score: r.score,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            reused: r.reused,
        };
        match self
            .engine
            .learner
            .feedback(&self.engine.router, &input, now_ms())
            .await
        {
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
        let want = request.into_inner().scope;
        let table = self.engine.router.table();
        if !want.is_empty() && !table.plans.contains_key(&want) {
            return Err(Status::not_found(format!(
                "scope {want:?} is not in the live policy"
            )));
        }
        let mut keys: Vec<&String> = table
            .plans
            .keys()
            .filter(|k| want.is_empty() || **k == want)
            .collect();
        keys.sort();
        let mut thresholds = Vec::new();
        for key in keys {
            let plan = &table.plans[key];
            for t in &plan.tiers {
                thresholds.push(pb::TierThreshold {
                    scope: key.clone(),
                    tier: table.policy.tiers[t.tier].name.clone(),
                    threshold: t.threshold,
                    evidence: t.evidence,
                    observed_quality: t.observed_quality,
                    last_move: t.last_move,
                    bar: plan.policy.quality_bar,
                    scope_quality: plan.realized_quality,
                });
            }
        }
        Ok(Response::new(pb::GetThresholdsResponse {
            thresholds,
            policy_version: table.policy.version.clone(),
        }))
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
        .build_v1()?;
    // grpcurl 1.8 speaks only v1alpha reflection.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Catch up with shared state before taking traffic, then keep refreshing in the background.
    let healthy = engine.learner.refresh(&engine.router, now_ms()).await;
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
            loop {
                tick.tick().await;
                let ok = engine.learner.refresh(&engine.router, now_ms()).await
                    && !engine.learner.is_degraded();
                if ok != last {
                    reporter
                        .set_service_status(STORE_HEALTH_SERVICE, store_status(ok))
                        .await;
                    last = ok;
                }
            }
        })
    };

    let counters = Arc::new(Counters::default());
    let (router, noop) = if config.bench_noop {
        tracing::warn!("serving a NO-OP Route handler (--bench-noop): benchmarks only");
        let noop = RouterServer::new(NoopRouter {
            counters: counters.clone(),
        });
        (
            None,
            Some(noop.max_decoding_message_size(config.max_message_bytes)),
        )
    } else {
        let router = RouterServer::new(RouterService {
            engine: engine.clone(),
            counters: counters.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
        (Some(router), None)
    };
    let admin = AdminServer::new(AdminService {
        engine: engine.clone(),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);

    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving tokenwise.v1.Router and tokenwise.v1.Admin");
    let served = tonic::transport::Server::builder()
        // Every call gets a deadline: a stuck call answers DEADLINE_EXCEEDED, never hangs.
        .timeout(config.request_timeout)
        // Bound per-connection concurrency so one noisy client cannot take every worker, and
        // shed (RESOURCE_EXHAUSTED) rather than queue when a connection is at its limit.
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .load_shed(true)
        // Server-wide: one semaphore for all connections; load_shed outside it answers at once
        // when the server is full, so overload costs callers microseconds, not a queue.
        .layer(tower::ServiceBuilder::new().load_shed().layer(
            tower::limit::GlobalConcurrencyLimitLayer::new(config.max_concurrent_requests),
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
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    refresher.abort();
    // Wait until it is gone, so its drain cannot overlap the shutdown drain.
    let _ = refresher.await;
    // In-flight calls are drained; record or persist what is still buffered.
    engine.learner.shutdown(now_ms()).await;
    served?;
    tracing::info!(
        route_ok = counters.route_ok.load(Ordering::Relaxed),
        route_err = counters.route_err.load(Ordering::Relaxed),
        feedback_ok = counters.feedback_ok.load(Ordering::Relaxed),
        feedback_err = counters.feedback_err.load(Ordering::Relaxed),
        "server stopped"
    );
    Ok(())
}
