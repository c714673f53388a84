//! Shared helpers for integration tests: an in-process server on a free loopback port, and a
//! private Redis.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod redis;

use std::sync::Arc;

use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::decision::Signer;
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::engine::Engine;
use tokenwise::grpc::pb::admin_client::AdminClient;
use tokenwise::grpc::pb::router_client::RouterClient;
use tokenwise::grpc::{ServeConfig, run};
use tonic::transport::Channel;

/// A policy and the store a test server runs with: the policy holds no deployment settings.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub policy: Policy,
    pub store: tokenwise::store::StoreConfig,
}

impl From<Policy> for Deployed {
    /// The policy on the in-memory store.
    fn from(policy: Policy) -> Self {
        Self {
            policy,
            store: tokenwise::store::StoreConfig::default(),
        }
    }
}

/// A policy text whose deprecated `[store]` table gives the store, read as `serve` reads one at
/// startup (the deployment config's resolution), or the error naming the setting.
pub fn try_deployed(text: &str) -> Result<Deployed, tokenwise::cli::deployment::DeploymentError> {
    let table = tokenwise::domain::policy::split_store(text).unwrap().store;
    let d = tokenwise::cli::deployment::DeploymentArgs::default().resolve("", None, table, None)?;
    Ok(Deployed {
        policy: Policy::parse(text).unwrap(),
        store: d.store,
    })
}

/// [`try_deployed`], valid.
pub fn deployed(text: &str) -> Deployed {
    try_deployed(text).unwrap()
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A running server; dropped → shut down.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub engine: Arc<Engine>,
    /// What its `/metrics` exports (the engine's telemetry).
    pub metrics: Arc<tokenwise::metrics::Metrics>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with the embedded policy and bundled model.
    pub async fn start() -> Self {
        Self::with_policy(Policy::embedded().unwrap(), Limits::default()).await
    }

    /// Starts a server with a given policy (and store) and limits.
    pub async fn with_policy(policy: impl Into<Deployed>, limits: Limits) -> Self {
        Self::with_config(policy, limits, |_| {}).await
    }

    /// Starts a server with a given policy (and store) and limits, and adjusted server
    /// settings.
    pub async fn with_config(
        policy: impl Into<Deployed>,
        limits: Limits,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let Deployed { policy, store } = policy.into();
        let model = Arc::new(ComplexityModel::bundled().unwrap());
        let name = format!(
            "test-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let signer = Signer::new(b"test-secret").unwrap();
        let keys = tokenwise::store::FileKeys::new(signer.file_keys());
        let refresh = std::time::Duration::from_millis(store.refresh_ms);
        let (store, buffer) = tokenwise::store::open(&store, &name, keys).unwrap();
        let metrics = Arc::new(tokenwise::metrics::Metrics::new());
        let engine = Arc::new(
            Engine::builder(model, Arc::new(policy), signer)
                .limits(limits)
                .decision_ttl_ms(tokenwise::domain::calendar::DAY_MS)
                .store(store, buffer)
                .telemetry(metrics.clone())
                .build(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut config = ServeConfig {
            refresh_interval: refresh,
            max_message_bytes: limits.max_task_bytes + 64 * 1024,
            ..ServeConfig::default()
        };
        tweak(&mut config);
        let (e, m) = (engine.clone(), metrics.clone());
        let handle = tokio::spawn(async move {
            run(e, m, config, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            engine,
            metrics,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    pub async fn router(&self) -> RouterClient<Channel> {
        RouterClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// Stops accepting, drains, and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A port for a server a test starts itself on a fixed address (a child process, the metrics
/// listener, redis-server). Taken below the kernel's ephemeral range (32768–60999), so no
/// outgoing connection of a test running in parallel can take it between this check and the
/// server's bind (binding port 0 and reusing the number raced exactly that way); every call
/// moves on, so two calls never return the same port.
pub fn spare_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A directory of this test process's own (0700) for spill files: the server refuses a
/// directory that others may write to, as the shared temporary directory is.
pub fn private_tmp() -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("tokenwise-it-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .unwrap();
    dir
}

/// A channel to a server at `addr`, retrying while it starts (up to 5 s).
pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    let ep = format!("http://{addr}");
    for _ in 0..250 {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(ep.clone())
            .unwrap()
            .connect()
            .await
        {
            return ch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("server at {ep} did not come up");
}

/// A Feedback for `decision_id` with `score` and small, valid token counts.
pub fn feedback_req(decision_id: &str, score: f64) -> tokenwise::grpc::pb::FeedbackRequest {
    tokenwise::grpc::pb::FeedbackRequest {
        decision_id: decision_id.to_string(),
        score,
        input_tokens: Some(50),
        output_tokens: Some(20),
        cached_input_tokens: None,
        reasoning_tokens: None,
        served_tier: String::new(),
        reused: false,
        ..Default::default()
    }
}

/// Routes `n` tasks from `tasks` through `client` and reports each outcome with `score`.
pub async fn teach(client: &mut RouterClient<Channel>, tasks: &[&str], n: usize, score: f64) {
    for i in 0..n {
        let d = client
            .route(route_req(tasks[i % tasks.len()]))
            .await
            .unwrap()
            .into_inner();
        client
            .feedback(feedback_req(&d.decision_id, score))
            .await
            .unwrap();
    }
}

/// A Route request for a task with default labels.
pub fn route_req(task: &str) -> tokenwise::grpc::pb::RouteRequest {
    tokenwise::grpc::pb::RouteRequest {
        task: task.to_string(),
        workflow: "default".into(),
        team: String::new(),
        hints: None,
    }
}

pub const WORD_PROBLEM: &str = "A bakery sells muffins for $3 each and cookies for $1.50 each. \
On Monday it sold 48 muffins and twice as many cookies. On Tuesday it sold 25% fewer muffins \
than Monday and 30 more cookies than Monday. Each muffin costs $1.20 to make and each cookie \
$0.40. After paying $85 in rent for the two days, how much profit did the bakery make in total \
over Monday and Tuesday? Show each step.";

/// Two tiers priced in whole micro-dollars per token (small $1/$2, premium $10/$30 per 1M
/// tokens in/out), bar 0.5, no exploration, $0.01 per success; team `cheap` always routes to
/// small (pinned threshold 1.0), team `rich` always to premium (threshold 0.0).
pub fn two_tier_policy(cheap: &str, rich: &str) -> String {
    format!(
        r#"
[[tiers]]
name = "small"
model = "s"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[tiers]]
name = "premium"
model = "p"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[default]
quality_bar = 0.5
exploration_rate = 0.0
value_per_success_usd = 0.01

[[policies]]
team = "{cheap}"
thresholds = {{ small = 1.0 }}

[[policies]]
team = "{rich}"
thresholds = {{ small = 0.0 }}
"#
    )
}

/// Waits (up to 10 s, checking every 20 ms) until `cond` holds; fails naming `what` otherwise.
/// Tests wait for what they need to see, never for a fixed time.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `GET path` over plain HTTP/1.1 with extra `headers`; the whole response (status line,
/// headers and body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The port may still be binding just after the server started.
    let mut tries = 0;
    let mut s = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{addr}: {e}"),
        }
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// GetThresholds of `scope` (empty: every scope), which must succeed.
pub async fn thresholds(
    admin: &mut AdminClient<Channel>,
    scope: &str,
) -> tokenwise::grpc::pb::GetThresholdsResponse {
    admin
        .get_thresholds(tokenwise::grpc::pb::GetThresholdsRequest {
            scope: scope.into(),
        })
        .await
        .unwrap()
        .into_inner()
}
