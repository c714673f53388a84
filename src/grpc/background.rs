//! Background duties of a running server: the refresher (store sync, policy follow, books
//! flush, store health, SIGHUP reload) and the Prometheus metrics endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::auth::KeyRing;
use super::router::TeamLimiter;
use super::{STORE_HEALTH_SERVICE, ServeError};

use super::now_ms;
use crate::engine::Engine;
use crate::metrics::Metrics;

/// SIGHUP (tokenwise targets Linux).
pub(super) fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reload the policy by editing the file");
            None
        }
    }
}

/// Serves `GET /metrics` (OpenMetrics text) and `GET /report` (the books as the HTML page) on
/// `listener` until the task is aborted. `/report` is behind the same keys as the Admin
/// service's `GetReport` when `auth` is on.
pub async fn serve_metrics(
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    auth: Option<Arc<KeyRing>>,
    listener: TcpListener,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let metrics_engine = engine.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let engine = metrics_engine.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render_with(&engine, now_ms()),
                    )
                }
            }),
        )
        .route(
            "/report",
            axum::routing::get(
                move |query: axum::extract::RawQuery, headers: axum::http::HeaderMap| {
                    let (engine, auth) = (engine.clone(), auth.clone());
                    async move { report_page(&engine, auth.as_deref(), query.0, headers).await }
                },
            ),
        );
    axum::serve(listener, app).await
}

/// The query parameters `/report` reads, each as `tokenwise report`'s flag of the same name.
const REPORT_PARAMS: [&str; 5] = ["since", "until", "by", "team", "workflow"];

/// `GET /report[?since=…&until=…&by=…&team=…&workflow=…]`: the books as the one-page HTML
/// report, built afresh on every load (`since` defaults to `24h`, `by` to `team`). A parameter
/// that cannot be read is 400 naming it; a missing or unknown key 401, another team's books 403
/// (as `GetReport`); a store that cannot answer 503.
async fn report_page(
    engine: &Engine,
    auth: Option<&KeyRing>,
    query: Option<String>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let plain = |code: StatusCode, text: String| {
        (
            code,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            text + "\n",
        )
            .into_response()
    };
    let caller = match auth {
        None => None,
        Some(ring) => {
            match ring.authenticate(&tonic::metadata::MetadataMap::from_headers(headers)) {
                Ok(c) => Some(c),
                Err(s) => return plain(StatusCode::UNAUTHORIZED, s.message().to_string()),
            }
        }
    };
    let mut params: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for (key, value) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let Some(name) = REPORT_PARAMS.iter().find(|p| **p == key) else {
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: unknown parameter; /report reads {}",
                    crate::domain::labels::shown(&key),
                    REPORT_PARAMS.join(", ")
                ),
            );
        };
        if params.insert(name, value.into_owned()).is_some() {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("{name}: given more than once"),
            );
        }
    }
    let get = |k: &str, default: &str| params.get(k).map_or(default, String::as_str).to_owned();
    let request = match super::convert::report_request(
        &get("since", "24h"),
        params.get("until").map(String::as_str),
        &get("by", "team"),
        &get("team", ""),
        &get("workflow", ""),
        now_ms(),
    ) {
        Ok(r) => r,
        Err((name, why)) => return plain(StatusCode::BAD_REQUEST, format!("{name}: {why}")),
    };
    match super::admin::report_for(engine, caller.as_ref(), request).await {
        Ok(report) => (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, "no-store"),
            ],
            crate::report::render::html(&report),
        )
            .into_response(),
        Err(s) => {
            let code = match s.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            plain(code, s.message().to_string())
        }
    }
}

/// The store health status for `ok`.
pub(super) fn store_status(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Refreshes the engine every `every` (store sync, policy follow, books flush) and on SIGHUP
/// reloads the policy file; reports the store's health when it changes. Starts from `healthy`.
pub(super) fn spawn_refresher(
    engine: Arc<Engine>,
    reporter: HealthReporter,
    every: Duration,
    healthy: bool,
) -> JoinHandle<()> {
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
}

/// Binds `addr` and serves `/metrics` and `/report` there until aborted.
pub(super) async fn spawn_metrics(
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    auth: Option<Arc<KeyRing>>,
    addr: SocketAddr,
) -> Result<JoinHandle<()>, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Metrics { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "serving Prometheus metrics on /metrics, the books on /report");
    Ok(tokio::spawn(async move {
        if let Err(e) = serve_metrics(engine, metrics, auth, listener).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    }))
}

/// Serves `grpc.health.v1` alone on `addr`, on a probe budget of its own: nothing that reaches
/// the main port can starve it.
pub(super) async fn spawn_health<S>(
    health: S,
    addr: SocketAddr,
) -> Result<JoinHandle<()>, ServeError>
where
    S: tower::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Health { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "serving health checks on their own port");
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(super::transport::protection(
                super::transport::PROBE_CONCURRENCY,
                super::transport::PROBE_CONCURRENCY,
                std::time::Duration::from_secs(2),
                // Sheds of the health port are not counted: its callers are the orchestrator's
                // probes, and a full budget there shows as failed probes.
                super::transport::Shed::default(),
            ))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health server stopped");
        }
    }))
}

/// Forgets teams idle for long enough to be back at a full burst, so the keyed limiter state
/// stays as small as the set of active teams. Ends when the server (and the limiter) is gone.
pub(super) fn spawn_limiter_cleanup(limiter: Weak<TeamLimiter>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                break;
            };
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
}
