//! The gRPC face: tonic services for `tokenwise.v1.Router` and `tokenwise.v1.Admin`, health and
//! reflection, and the server wiring. Handlers are one engine call plus the proto conversion.

mod admin;
pub mod auth;
mod background;
pub mod codec;
mod convert;
mod router;
mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::engine::Engine;
use admin::AdminService;
pub use background::serve_metrics;
pub use convert::report_request;
pub use router::{Counters, NoopRouter, RouterService};
pub use transport::CopiedWrites;
use transport::{PROBE_CONCURRENCY, protection};

/// Generated protobuf and gRPC types.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tokenwise.v1");
    /// Encoded descriptor set for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tokenwise_descriptor");
}

use pb::admin_server::AdminServer;
use pb::router_server::RouterServer;

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
    /// Concurrent requests of one team (known from its API key; with auth on only): beyond it
    /// the team's calls are shed, so one team cannot take the whole server's budget.
    pub max_concurrent_requests_per_team: usize,
    /// A listener of its own for health checks (`grpc.health.v1`), with its own budget: the
    /// probes of an orchestrator reach it even while the main port is saturated. `None`: health
    /// only on the main port.
    pub health_addr: Option<std::net::SocketAddr>,
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
    /// Seeds Route's exploration draws and decision nonces: with it, a replay sent one call at
    /// a time (`replay --addr --concurrency 1`) makes the draws the in-process replay of the
    /// same seed makes, so tests can hold the served path to the in-process figures with
    /// exploration on. `None` (always in production: seeded draws are predictable, and nonces
    /// repeat across restarts): fresh randomness.
    pub draw_seed: Option<u64>,
}

/// Largest Admin response (and what the CLI accepts): thresholds and reports grow with the
/// workflows a scope has learned, up to the engine's caps (1,024 workflows of 256-byte labels).
pub const MAX_ADMIN_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Health service name that reports the state store: NOT_SERVING while it is unreachable
/// (Route keeps answering from the last snapshot; the Router service stays SERVING).
pub const STORE_HEALTH_SERVICE: &str = "tokenwise.v1.Store";

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(2),
            max_message_bytes: crate::domain::routing::DEFAULT_MAX_TASK_BYTES + 64 * 1024,
            concurrency_per_connection: 256,
            max_concurrent_requests: 2048,
            max_concurrent_requests_per_team: 1024,
            health_addr: None,
            // The store's default refresh: one default, stated there.
            refresh_interval: Duration::from_millis(
                crate::store::StoreConfig::default().refresh_ms,
            ),
            bench_noop: false,
            metrics_addr: None,
            auth: None,
            rate_limit_per_team: None,
            tls: None,
            draw_seed: None,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    /// The health port could not be bound.
    #[error("cannot serve health checks on {addr} (--health-listen): {source}")]
    Health {
        /// Address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics port could not be bound.
    #[error("cannot serve metrics on {addr} (--metrics-listen; `off` to disable): {source}")]
    Metrics {
        /// Address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The reflection services' builder: the API, health and the error details
/// (google.rpc.BadRequest), so grpcurl can decode them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Says at startup whether callers need API keys.
fn log_auth(auth: Option<&Arc<auth::KeyRing>>) {
    match auth {
        Some(ring) => tracing::info!(
            keys = ring.len(),
            "authentication on: API keys required on Router and Admin"
        ),
        None => tracing::warn!(
            "authentication is OFF: any caller may route, post feedback and change policy; start with --auth-keys FILE in production"
        ),
    }
}

/// A Router implementation behind the auth interceptor.
type Intercepted<S> = InterceptedService<RouterServer<S>, auth::AuthInterceptor>;

/// The Router service: the real one, or with `--bench-noop` the no-op handler the load
/// benchmarks compare against (exactly one of the two is `Some`).
fn router_services(
    engine: &Arc<Engine>,
    metrics: &Arc<crate::metrics::Metrics>,
    config: &ServeConfig,
    counters: &Arc<Counters>,
    interceptor: &auth::AuthInterceptor,
) -> (
    Option<Intercepted<RouterService>>,
    Option<Intercepted<NoopRouter>>,
) {
    if config.bench_noop {
        tracing::warn!("serving a NO-OP Route handler (--bench-noop): benchmarks only");
        let noop = RouterServer::new(NoopRouter {
            counters: counters.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes);
        return (
            None,
            Some(InterceptedService::new(noop, interceptor.clone())),
        );
    }
    let limiter = config.rate_limit_per_team.map(|n| {
        let limiter = Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(n)));
        background::spawn_limiter_cleanup(Arc::downgrade(&limiter));
        (limiter, n.get())
    });
    let router = RouterServer::new(RouterService {
        engine: engine.clone(),
        metrics: metrics.clone(),
        counters: counters.clone(),
        limiter,
        draws: config.draw_seed.map(|seed| {
            use rand::SeedableRng;
            Arc::new(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(
                seed,
            )))
        }),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    (
        Some(InterceptedService::new(router, interceptor.clone())),
        None,
    )
}

/// Serves until `shutdown` resolves, then stops accepting and drains in-flight calls.
pub async fn run(
    engine: Arc<Engine>,
    metrics: Arc<crate::metrics::Metrics>,
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

    let reflection_v1 = reflection().build_v1()?;
    // grpcurl 1.8 speaks only v1alpha reflection.
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // Reconcile the policy with the shared version history, catch up with shared state before
    // taking traffic, then keep refreshing in the background.
    if let Err(e) = engine.init_policy(now_ms()).await {
        tracing::warn!(error = %e, "policy history not reachable at startup; serving the file's policy");
    }
    let healthy = engine.refresh(now_ms()).await;
    health_reporter
        .set_service_status(STORE_HEALTH_SERVICE, background::store_status(healthy))
        .await;
    let refresher = background::spawn_refresher(
        engine.clone(),
        health_reporter.clone(),
        config.refresh_interval,
        healthy,
    );
    let metrics_server = match config.metrics_addr {
        None => None,
        Some(addr) => Some(
            background::spawn_metrics(engine.clone(), metrics.clone(), config.auth.clone(), addr)
                .await?,
        ),
    };

    let interceptor = auth::AuthInterceptor::new(config.auth.clone())
        .per_team(config.max_concurrent_requests_per_team)
        .counting_sheds(metrics.shed_calls("team"));
    let health_server = match config.health_addr {
        None => None,
        Some(addr) => Some(background::spawn_health(health_service.clone(), addr).await?),
    };
    log_auth(config.auth.as_ref());
    let counters = Arc::new(Counters::registered(&metrics));
    let (router, noop) = router_services(&engine, &metrics, &config, &counters, &interceptor);
    let admin = InterceptedService::new(
        AdminServer::new(AdminService {
            engine: engine.clone(),
        })
        .max_decoding_message_size(config.max_message_bytes)
        // Admin answers (thresholds of many workflows, long reports) may be far larger than any
        // request: bounded by what the engine keeps, not by the task limit.
        .max_encoding_message_size(MAX_ADMIN_RESPONSE_BYTES),
        interceptor,
    );

    // Announced once every port is bound: a clash on the metrics port fails before this.
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening: serving tokenwise.v1.Router and tokenwise.v1.Admin");
    }
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
        // Outermost of our layers: the request id first, so the call's span carries it, and
        // the response echoes it whatever the inner layers answer. (tonic applies the
        // per-connection limit and shedding above all of them: a call shed there gets neither.)
        .layer(transport::set_request_id())
        .layer(transport::trace())
        .layer(transport::propagate_request_id())
        .layer(protection(
            config.max_concurrent_requests,
            PROBE_CONCURRENCY,
            config.request_timeout,
            transport::Shed::registered(&metrics),
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
    if let Some(h) = health_server {
        h.abort();
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
