//! `tokenwise serve`: its arguments, the engine they build (policy, model, decision secret,
//! store), logging, and the server's run until a shutdown signal.

use std::path::PathBuf;

use anyhow::{Context, bail};

use super::deployment::{Deployment, DeploymentArgs};
use super::secret::check_secret;
use super::{env, path_str, runtime};
use crate::domain::classifier::ComplexityModel;
use crate::domain::decision::Signer;
use crate::domain::policy::Policy;

/// Arguments of `serve`: the policy and model, the decision secrets and authentication, and
/// the deployment config (addresses, limits, the store: [`DeploymentArgs`]).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy file (TOML); default: the embedded example policy (deploy/policy.toml).
    #[arg(long, env = env::CONFIG)]
    config: Option<PathBuf>,
    /// Complexity model artifact; default: the bundled model.
    #[arg(long, env = env::MODEL)]
    model: Option<PathBuf>,
    /// Secret that signs decision ids; every replica of a deployment needs the same one. Prefer
    /// the environment or `--decision-secret-file`: a command line is visible to every user in
    /// `ps`. With `--config`, at least 32 bytes (`openssl rand -base64 32`). Default without
    /// `--config`: random per process (ids do not survive a restart).
    #[arg(long, env = env::DECISION_SECRET, hide_env_values = true)]
    decision_secret: Option<String>,
    /// File holding the decision secret (trailing newline ignored), e.g. a mounted Kubernetes
    /// Secret.
    #[arg(
        long,
        env = env::DECISION_SECRET_FILE,
        conflicts_with = "decision_secret"
    )]
    decision_secret_file: Option<PathBuf>,
    /// The secret being rotated out: ids it signed are still accepted, new ones use the new
    /// secret. Keep it configured for one decision TTL after a rotation, then remove it.
    #[arg(long, env = env::PREVIOUS_DECISION_SECRET, hide_env_values = true)]
    previous_decision_secret: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Benchmarks only: answer Route with an empty response, to measure the transport ceiling.
    #[arg(long, hide = true)]
    bench_noop: bool,
    /// API keys (a TOML file of hashed keys, see `tokenwise keygen`): callers must send
    /// `authorization: Bearer <key>`; the team comes from the key.
    #[arg(long, env = env::AUTH_KEYS_FILE, conflicts_with = "no_auth")]
    auth_keys: Option<PathBuf>,
    /// Serve without authentication. Needed explicitly with --config; the embedded dev default
    /// (no --config) runs without it and says so in the log.
    #[arg(long)]
    no_auth: bool,
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key.
    #[arg(long, env = env::TLS_CERT, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = env::TLS_KEY, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Print the deployment settings this start resolves to (flags, environment, file,
    /// defaults; no secrets) and exit without serving.
    #[arg(long)]
    print_deployment: bool,
    /// Addresses, limits and the store.
    #[command(flatten)]
    deployment: DeploymentArgs,
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
    if std::env::var(env::DECISION_SECRET).ok().as_ref() != Some(s) {
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

/// The policy `serve` starts with (the file, else the embedded one) and its deprecated
/// `[store]` table, if it has one.
fn startup_policy(args: &ServeArgs) -> anyhow::Result<(Policy, Option<toml::Table>)> {
    let Some(p) = &args.config else {
        let policy = Policy::embedded().map_err(|e| anyhow::anyhow!("embedded policy: {e}"))?;
        return Ok((policy, None));
    };
    let invalid = |e| anyhow::anyhow!("{}: invalid policy: {e}", p.display());
    let text = std::fs::read_to_string(path_str(p)?).map_err(|e| {
        invalid(crate::domain::policy::PolicyError {
            path: p.display().to_string(),
            reason: format!("cannot read policy file: {e}"),
        })
    })?;
    let store = crate::domain::policy::split_store(&text)
        .map_err(invalid)?
        .store;
    Ok((Policy::parse(&text).map_err(invalid)?, store))
}

/// The policy and the deployment config `serve` starts with (the deprecations logged).
pub fn startup_config(args: &ServeArgs) -> anyhow::Result<(Policy, Deployment)> {
    let (policy, policy_store) = startup_policy(args)?;
    let deployment = super::deployment::load(&args.deployment, policy_store)?;
    Ok((policy, deployment))
}

/// Builds the engine that `serve` runs from its arguments, its policy and its deployment.
pub async fn engine_from_args(
    args: &ServeArgs,
    policy: Policy,
    deployment: &Deployment,
    telemetry: std::sync::Arc<dyn crate::engine::Telemetry>,
) -> anyhow::Result<crate::engine::Engine> {
    let model = match &args.model {
        Some(p) => ComplexityModel::load(path_str(p)?)?,
        None => ComplexityModel::bundled()?,
    };
    tracing::info!(policy = %policy.version, model = %model.version, tiers = policy.tiers.len(), scopes = policy.scopes.len() + 1, "loaded");
    let store_cfg = &deployment.store;
    // Ids are bound to the deployment: a Redis deployment is its key prefix and the id its
    // store holds; a memory store lives and dies with this process (and its nonce ledger with
    // it), so its ids do too.
    let base = match &store_cfg.kind {
        crate::store::StoreKind::Redis { prefix, .. } => format!("redis:{prefix}"),
        crate::store::StoreKind::RedisCluster { prefix, .. } => format!("redis-cluster:{prefix}"),
        crate::store::StoreKind::Memory => format!("memory:{:016x}", rand::random::<u64>()),
    };
    let secrets = secrets(args)?;
    // The replica's own files are signed with a key of the secret and the prefix: they are
    // read before the store can be asked for its id.
    let files = signer_for(secrets.as_ref(), &base)?;
    let keys = crate::store::FileKeys::new(files.file_keys());
    let (store, buffer) = crate::store::open(store_cfg, &deployment.server.listen, keys)?;
    let (signer, deployment_id) = match store_cfg.kind {
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
        max_task_bytes: deployment.server.max_task_bytes,
    })
    .decision_ttl_ms(deployment.server.decision_ttl_ms)
    .store(store, buffer)
    .telemetry(telemetry);
    if let Some(id) = deployment_id {
        builder = builder.deployment(id);
    }
    Ok(builder.build())
}

/// Runs the gRPC server until SIGINT or SIGTERM, then drains in-flight calls.
pub(super) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let (policy, deployment) = startup_config(&args)?;
    deployment.warn_deprecations();
    if args.print_deployment {
        for line in deployment.describe() {
            outln!("{line}");
        }
        return Ok(());
    }
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let rt = runtime()?;
    let engine = std::sync::Arc::new(rt.block_on(engine_from_args(
        &args,
        policy,
        &deployment,
        metrics.clone(),
    ))?);
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
        auth,
        bench_noop: args.bench_noop,
        ..deployment.serve_config()
    };
    let listen = deployment.server.listen.clone();
    rt.block_on(async move {
        // A store that is down is an outage the server rides out; one that refuses the
        // credentials is a configuration error that waiting will not fix.
        if let Err(crate::store::StoreError::Config(why)) = engine.store().ping().await {
            bail!("store: {why}");
        }
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("--listen {listen}: cannot listen there"))?;
        engine
            .set_policy_source(&format!("replica {listen}"), args.config.clone())
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
