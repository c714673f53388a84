//! `tokenwise serve`: its arguments, the engine they build (policy, model, decision secret,
//! store), logging, and the server's run until a shutdown signal.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::secret::check_secret;
use super::{path_str, runtime};
use crate::domain::classifier::ComplexityModel;
use crate::domain::decision::Signer;
use crate::domain::policy::Policy;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy file (TOML); default: the embedded example policy (deploy/policy.toml).
    #[arg(long, env = "TOKENWISE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TOKENWISE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Complexity model artifact; default: the bundled model.
    #[arg(long, env = "TOKENWISE_MODEL")]
    model: Option<PathBuf>,
    /// Largest task accepted, in bytes.
    #[arg(long, default_value_t = crate::domain::routing::DEFAULT_MAX_TASK_BYTES)]
    max_task_bytes: usize,
    /// Deadline of any one call, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    request_timeout_ms: u64,
    /// Secret that signs decision ids; every replica of a deployment needs the same one. Prefer
    /// the environment or `--decision-secret-file`: a command line is visible to every user in
    /// `ps`. With `--config`, at least 32 bytes (`openssl rand -base64 32`). Default without
    /// `--config`: random per process (ids do not survive a restart).
    #[arg(long, env = "TOKENWISE_DECISION_SECRET", hide_env_values = true)]
    decision_secret: Option<String>,
    /// File holding the decision secret (trailing newline ignored), e.g. a mounted Kubernetes
    /// Secret.
    #[arg(
        long,
        env = "TOKENWISE_DECISION_SECRET_FILE",
        conflicts_with = "decision_secret"
    )]
    decision_secret_file: Option<PathBuf>,
    /// The secret being rotated out: ids it signed are still accepted, new ones use the new
    /// secret. Keep it configured for one decision TTL after a rotation, then remove it.
    #[arg(
        long,
        env = "TOKENWISE_PREVIOUS_DECISION_SECRET",
        hide_env_values = true
    )]
    previous_decision_secret: Option<String>,
    /// How long feedback is accepted for a decision, in seconds.
    #[arg(long, default_value_t = crate::engine::feedback::DEFAULT_DECISION_TTL_MS / 1000)]
    decision_ttl_secs: u64,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Concurrent calls in the whole server; beyond it calls are shed with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 2048)]
    max_concurrent_requests: usize,
    /// Concurrent calls of one team (the team of an API key; with --auth-keys only); beyond it
    /// that team's calls are shed with RESOURCE_EXHAUSTED. Default: half of
    /// --max-concurrent-requests.
    #[arg(long)]
    max_concurrent_requests_per_team: Option<usize>,
    /// Where to serve health checks (`grpc.health.v1`) on a port and budget of their own, for
    /// the orchestrator's probes; `off` for the main port only.
    #[arg(long, env = "TOKENWISE_HEALTH_LISTEN", default_value = "off")]
    health_listen: String,
    /// Benchmarks only: answer Route with an empty response, to measure the transport ceiling.
    #[arg(long, hide = true)]
    bench_noop: bool,
    /// API keys (a TOML file of hashed keys, see `tokenwise keygen`): callers must send
    /// `authorization: Bearer <key>`; the team comes from the key.
    #[arg(long, env = "TOKENWISE_AUTH_KEYS_FILE", conflicts_with = "no_auth")]
    auth_keys: Option<PathBuf>,
    /// Serve without authentication. Needed explicitly with --config; the embedded dev default
    /// (no --config) runs without it and says so in the log.
    #[arg(long)]
    no_auth: bool,
    /// Route calls per second allowed per team (burst of the same size); beyond it
    /// RESOURCE_EXHAUSTED. Default: no limit.
    #[arg(long)]
    rate_limit_per_team: Option<std::num::NonZeroU32>,
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key.
    #[arg(long, env = "TOKENWISE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "TOKENWISE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`) and the books as a page (`GET
    /// /report`); `off` for nowhere.
    #[arg(
        long,
        env = "TOKENWISE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: String,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per event.
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: escape codes in a log file are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A panic (a bug) is logged where operators look, with where it happened, before the
    // default hook prints it: a call it fails then never ends without a cause in the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panic");
        default_hook(info);
    }));
}

/// The decision secret from its file, the environment or the command line (warned: visible in
/// `ps`); `None` when none is given.
fn decision_secret(args: &ServeArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(f) = &args.decision_secret_file {
        let mut bytes =
            std::fs::read(f).with_context(|| format!("--decision-secret-file {}", f.display()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        return Ok(Some(bytes));
    }
    let Some(s) = args.decision_secret.as_ref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if std::env::var("TOKENWISE_DECISION_SECRET").ok().as_ref() != Some(s) {
        tracing::warn!(
            "--decision-secret on the command line is visible to every user of this host (ps); use TOKENWISE_DECISION_SECRET or --decision-secret-file"
        );
    }
    Ok(Some(s.as_bytes().to_vec()))
}

/// The decision secrets `serve` signs with: the current one and, during a rotation, the
/// previous one, each checked (with `--config`); `None`: no secret configured.
fn secrets(args: &ServeArgs) -> anyhow::Result<Option<Secrets>> {
    let Some(secret) = decision_secret(args)? else {
        if args.config.is_some() {
            bail!(
                "with --config, a decision secret is required (TOKENWISE_DECISION_SECRET, \
                 --decision-secret-file, or --decision-secret): every replica must share it, e.g. \
                 `openssl rand -base64 32`"
            );
        }
        tracing::warn!(
            "no decision secret configured: decision ids are signed with a random per-process key and will not verify after a restart or on another replica"
        );
        return Ok(None);
    };
    if args.config.is_some() {
        check_secret("decision secret", &secret)?;
    }
    let previous = match args
        .previous_decision_secret
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        Some(old) => {
            // The secret being rotated out signs nothing new but still admits ids: it must be
            // as hard to guess as the current one.
            if args.config.is_some() {
                check_secret("previous decision secret", old.as_bytes())?;
            }
            tracing::info!("accepting ids signed with the previous decision secret (rotation)");
            Some(old.as_bytes().to_vec())
        }
        None => None,
    };
    Ok(Some(Secrets { secret, previous }))
}

/// The decision secret and, during a rotation, the one being rotated out.
struct Secrets {
    secret: Vec<u8>,
    previous: Option<Vec<u8>>,
}

/// A signer for `deployment` from the secrets (a random key without any).
fn signer_for(secrets: Option<&Secrets>, deployment: &str) -> anyhow::Result<Signer> {
    Ok(match secrets {
        None => Signer::random()?,
        Some(Secrets { secret, previous }) => {
            let signer = Signer::for_deployment(secret, deployment)?;
            match previous {
                Some(old) => signer.accepting(Signer::for_deployment(old, deployment)?),
                None => signer,
            }
        }
    })
}

/// The shared store's deployment id: the one it holds, or, as the first replica of a new
/// deployment (or of one whose store lost its data), the one this replica kept from an
/// earlier start, else a new random one. Kept beside the spill file, so a replica can start
/// while the store is down; without it and without the store there is no id to sign with.
async fn deployment_id(
    store: &dyn crate::store::StateStore,
    buffer: &crate::store::OutageBuffer,
) -> anyhow::Result<String> {
    let kept = buffer.recall_deployment();
    let proposed = kept
        .clone()
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    match store.deployment_id(&proposed).await {
        Ok(id) => {
            if kept.as_ref() != Some(&id)
                && let Err(e) = buffer.remember_deployment(&id)
            {
                tracing::warn!(error = %e, "deployment id not kept for a start while the store is down");
            }
            Ok(id)
        }
        Err(crate::store::StoreError::Config(why)) => bail!("store: {why}"),
        Err(e) => match kept {
            Some(id) => {
                tracing::warn!(error = %e, "store unreachable at start: signing with the deployment id kept from an earlier start");
                Ok(id)
            }
            None => bail!(
                "the store is unreachable ({e}) and this replica kept no deployment id from an \
                 earlier start: it cannot sign ids the other replicas accept; start it once the \
                 store answers"
            ),
        },
    }
}

/// Builds the engine that `serve` runs from its arguments.
pub async fn engine_from_args(
    args: &ServeArgs,
    telemetry: std::sync::Arc<dyn crate::engine::Telemetry>,
) -> anyhow::Result<crate::engine::Engine> {
    let policy = match &args.config {
        Some(p) => Policy::load(path_str(p)?)
            .map_err(|e| anyhow::anyhow!("{}: invalid policy: {e}", p.display()))?,
        None => Policy::embedded().map_err(|e| anyhow::anyhow!("embedded policy: {e}"))?,
    };
    let model = match &args.model {
        Some(p) => ComplexityModel::load(path_str(p)?)?,
        None => ComplexityModel::bundled()?,
    };
    tracing::info!(policy = %policy.version, model = %model.version, tiers = policy.tiers.len(), scopes = policy.scopes.len() + 1, "loaded");
    // Ids are bound to the deployment: a Redis deployment is its key prefix and the id its
    // store holds; a memory store lives and dies with this process (and its nonce ledger with
    // it), so its ids do too.
    let base = match &policy.store.kind {
        crate::store::StoreKind::Redis { prefix, .. } => format!("redis:{prefix}"),
        crate::store::StoreKind::RedisCluster { prefix, .. } => format!("redis-cluster:{prefix}"),
        crate::store::StoreKind::Memory => format!("memory:{:016x}", rand::random::<u64>()),
    };
    let secrets = secrets(args)?;
    // The replica's own files are signed with a key of the secret and the prefix: they are
    // read before the store can be asked for its id.
    let files = signer_for(secrets.as_ref(), &base)?;
    let keys = crate::store::FileKeys::new(files.file_keys());
    let (store, buffer) = crate::store::open(&policy.store, &args.listen, keys)?;
    let (signer, deployment) = match policy.store.kind {
        crate::store::StoreKind::Memory => (files, None),
        _ => {
            let id = deployment_id(store.as_ref(), &buffer).await?;
            let signer = signer_for(secrets.as_ref(), &format!("{base}:{id}"))?;
            (signer, Some(id))
        }
    };
    let mut builder = crate::engine::Engine::builder(
        std::sync::Arc::new(model),
        std::sync::Arc::new(policy),
        signer,
    )
    .limits(crate::domain::routing::Limits {
        max_task_bytes: args.max_task_bytes,
    })
    .decision_ttl_ms(args.decision_ttl_secs.saturating_mul(1000))
    .store(store, buffer)
    .telemetry(telemetry);
    if let Some(id) = deployment {
        builder = builder.deployment(id);
    }
    Ok(builder.build())
}

/// Runs the gRPC server until SIGINT or SIGTERM, then drains in-flight calls.
pub(super) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let rt = runtime()?;
    let engine = std::sync::Arc::new(rt.block_on(engine_from_args(&args, metrics.clone()))?);
    let addr_or_off = |flag: &str, a: &str| -> anyhow::Result<Option<std::net::SocketAddr>> {
        match a {
            "off" | "" => Ok(None),
            a => Ok(Some(a.parse().with_context(|| {
                format!("{flag} {a:?} is not host:port (or off)")
            })?)),
        }
    };
    let metrics_addr = addr_or_off("--metrics-listen", &args.metrics_listen)?;
    let health_addr = addr_or_off("--health-listen", &args.health_listen)?;
    let auth = match (&args.auth_keys, args.no_auth, &args.config) {
        (Some(f), _, _) => Some(std::sync::Arc::new(crate::grpc::auth::load_keys(f)?)),
        (None, true, _) | (None, false, None) => None,
        (None, false, Some(_)) => bail!(
            "with --config, choose authentication: --auth-keys FILE (or TOKENWISE_AUTH_KEYS_FILE), or --no-auth to run without it"
        ),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("cannot read {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("cannot read {}", k.display()))?,
        )),
        _ => None,
    };
    let config = crate::grpc::ServeConfig {
        tls,
        rate_limit_per_team: args.rate_limit_per_team,
        auth,
        metrics_addr,
        refresh_interval: std::time::Duration::from_millis(engine.policy().store.refresh_ms),
        request_timeout: std::time::Duration::from_millis(args.request_timeout_ms),
        bench_noop: args.bench_noop,
        max_concurrent_requests: args.max_concurrent_requests,
        max_concurrent_requests_per_team: args
            .max_concurrent_requests_per_team
            .unwrap_or(args.max_concurrent_requests / 2)
            .max(1),
        health_addr,
        max_message_bytes: args.max_task_bytes + 64 * 1024,
        ..Default::default()
    };
    rt.block_on(async move {
        // A store that is down is an outage the server rides out; one that refuses the
        // credentials is a configuration error that waiting will not fix.
        if let Err(crate::store::StoreError::Config(why)) = engine.store().ping().await {
            bail!("store: {why}");
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
        engine
            .set_policy_source(&format!("replica {}", args.listen), args.config.clone())
            .await;
        crate::grpc::run(engine, metrics, config, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received: draining in-flight calls");
}
