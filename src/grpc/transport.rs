//! Transport: the protection layers (admission with separate budgets for RPCs and probes, the
//! request timeout, precise statuses) and accepted connections without vectored writes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tonic::Status;
use tower_http::classify::GrpcFailureClass;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

/// Header that carries a call's request id: the caller's if it sent one, else a new UUID.
pub(super) const REQUEST_ID: &str = "x-request-id";

/// Gives every call a request id (kept if the caller sent `x-request-id`, else a new UUID).
pub(super) fn set_request_id() -> SetRequestIdLayer<RandomUuid> {
    SetRequestIdLayer::x_request_id(RandomUuid)
}

/// A version-4 UUID from the thread's generator: no system call per request (tower-http's
/// own `MakeRequestUuid` asks the kernel for every id).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RandomUuid;

impl MakeRequestId for RandomUuid {
    fn make_request_id<B>(&mut self, _: &tonic::codegen::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut text);
        tonic::codegen::http::HeaderValue::from_str(text)
            .ok()
            .map(RequestId::new)
    }
}

/// Echoes the call's request id in the response headers.
pub(super) fn propagate_request_id() -> PropagateRequestIdLayer {
    PropagateRequestIdLayer::x_request_id()
}

/// One span per call (debug level: free when the log level is info) with the RPC path and the
/// request id; handlers record the scope, tier and decision id in it. A refused call is logged
/// at debug too (the handlers log refusals that matter at info).
pub(super) fn trace() -> TraceLayer<
    GrpcClassifier,
    MakeRpcSpan,
    DefaultOnRequest,
    DefaultOnResponse,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    OnFailure,
> {
    TraceLayer::new_for_grpc()
        .make_span_with(rpc_span as MakeRpcSpan)
        .on_request(DefaultOnRequest::new().level(Level::DEBUG))
        .on_response(DefaultOnResponse::new().level(Level::DEBUG))
        .on_failure(log_failure as OnFailure)
}

type OnFailure = fn(GrpcFailureClass, Duration, &Span);

/// A refused call at debug (handlers log the refusals that matter); a call that failed with an
/// internal error (INTERNAL, UNKNOWN, DATA_LOSS) or in the transport at error, so none passes
/// without a line in the log.
fn log_failure(class: GrpcFailureClass, latency: Duration, _: &Span) {
    let ms = latency.as_millis() as u64;
    match class {
        GrpcFailureClass::Code(code) if matches!(code.get(), 2 | 13 | 15) => tracing::error!(
            code = code.get(),
            latency_ms = ms,
            "a call failed with an internal error"
        ),
        GrpcFailureClass::Code(code) => {
            tracing::debug!(code = code.get(), latency_ms = ms, "call refused")
        }
        GrpcFailureClass::Error(e) => {
            tracing::error!(error = %e, latency_ms = ms, "a call failed in the transport")
        }
    }
}

type GrpcClassifier =
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>;
type MakeRpcSpan = fn(&HttpRequest) -> Span;
type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;

fn rpc_span(req: &HttpRequest) -> Span {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug_span!(
        "rpc",
        path = %req.uri().path(),
        request_id = %id,
        scope = tracing::field::Empty,
        tier = tracing::field::Empty,
        decision_id = tracing::field::Empty,
    )
}

/// An accepted connection that tells h2 it has no vectored writes.
///
/// With vectored writes, h2 keeps any DATA payload of 256 bytes or more out of its frame buffer
/// and must flush before it can buffer the next frame: a Route response (~500 bytes) then
/// costs two `writev` calls (data, then trailers), and at saturation every response forces its
/// own flush instead of leaving in one write with its neighbours. Without them, h2 copies
/// payloads below 1 KB into the buffer (measured in the README's Performance section).
pub struct CopiedWrites(pub tokio::net::TcpStream);

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

/// The server-wide protection layers, outermost first: tower errors become precise gRPC
/// statuses; admission sheds a call at once when its budget is full (overload costs callers
/// microseconds, not a queue), with health checks and reflection on a small budget of their
/// own so that slow probes (which need no key) cannot take the permits Route and Feedback
/// need; and an admitted call that runs past the request timeout answers DEADLINE_EXCEEDED
/// instead of hanging. (tonic's own server timeout answers CANCELLED.)
pub(super) type Protection = tower::ServiceBuilder<
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
pub(super) const PROBE_CONCURRENCY: usize = 32;

pub(super) fn protection(
    max_concurrent_requests: usize,
    max_probes: usize,
    request_timeout: Duration,
    shed: Shed,
) -> Protection {
    tower::ServiceBuilder::new()
        .map_err(precise_status as fn(tower::BoxError) -> tower::BoxError)
        .layer(AdmissionLayer {
            rpc: Arc::new(tokio::sync::Semaphore::new(max_concurrent_requests)),
            probes: Arc::new(tokio::sync::Semaphore::new(max_probes)),
            shed,
        })
        .timeout(request_timeout)
}

/// Whether a request path is a health check or reflection (no key needed, own budget).
pub(super) fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// Counts of the calls [`AdmissionLayer`] sheds, one per budget
/// (`tokenwise_shed_calls_total{budget}`); unregistered by default.
#[derive(Clone, Default)]
pub(super) struct Shed {
    rpc: Counter,
    probes: Counter,
}

impl Shed {
    /// Counters registered in `metrics`.
    pub(super) fn registered(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            rpc: metrics.shed_calls("rpc"),
            probes: metrics.shed_calls("probe"),
        }
    }
}

/// Admits a call if its budget (RPC or probe) has a permit now, else sheds it with
/// RESOURCE_EXHAUSTED naming the budget, and counts it. The permit is held until the call's
/// response is ready.
#[derive(Clone)]
pub(super) struct AdmissionLayer {
    rpc: Arc<tokio::sync::Semaphore>,
    probes: Arc<tokio::sync::Semaphore>,
    shed: Shed,
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
pub(super) struct Admission<S> {
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
                if probe {
                    self.budgets.shed.probes.inc();
                } else {
                    self.budgets.shed.rpc.inc();
                }
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
pub(super) fn precise_status(e: tower::BoxError) -> tower::BoxError {
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
    use tokio::net::TcpListener;
    use tonic::Code;
    use tonic::transport::server::Connected;

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
        let metrics = crate::metrics::Metrics::new();
        let mut svc =
            protection(1, 1, Duration::from_millis(200), Shed::registered(&metrics)).service(slow);
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
        // Each shed counted once, under its budget.
        let text = metrics.render();
        for budget in ["rpc", "probe"] {
            let line = format!("tokenwise_shed_calls_total{{budget=\"{budget}\"}} 1");
            assert!(text.contains(&line), "{line} not in\n{text}");
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
