//! The deployment config of `serve`: this process's settings — listen addresses, limits, the
//! store — read once at start and never replicated or hot-reloaded (that is the policy's
//! part). Each setting is taken from its flag, else its environment variable (names in
//! [`super::env`]), else the optional `--deployment` file (TOML: `[server]`, `[store]`), else
//! its default. A policy file's deprecated `[store]` table is read as the store only when none
//! of those names one.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::env;
use crate::grpc::ServeConfig;
use crate::store::config::{raw_store, redacted_url, validate_store};
use crate::store::{Password, RawStore, StoreConfig, StoreKind};

/// Where `serve` listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Where metrics and `/report` are served when nothing says otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// The deployment settings on the command line (each with its environment variable). Every one
/// is optional here: its default is stated once, where the server keeps it
/// ([`ServeConfig::default`], [`StoreConfig::default`], the constants above), and
/// `serve --print-deployment` shows what a start resolves to.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct DeploymentArgs {
    /// Deployment config file (TOML: `[server]`, `[store]`); its settings are overridden by
    /// flags and environment variables.
    #[arg(long, env = env::DEPLOYMENT)]
    pub deployment: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = env::LISTEN)]
    pub listen: Option<String>,
    /// Where to serve health checks (`grpc.health.v1`) on a port and budget of their own, for
    /// the orchestrator's probes; `off` for the main port only.
    #[arg(long, env = env::HEALTH_LISTEN)]
    pub health_listen: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`) and the books as a page (`GET
    /// /report`); `off` for nowhere.
    #[arg(long, env = env::METRICS_LISTEN)]
    pub metrics_listen: Option<String>,
    /// Largest task accepted, in bytes.
    #[arg(long, env = env::MAX_TASK_BYTES)]
    pub max_task_bytes: Option<usize>,
    /// Deadline of any one call, in milliseconds.
    #[arg(long, env = env::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: Option<u64>,
    /// How long feedback is accepted for a decision, in seconds.
    #[arg(long, env = env::DECISION_TTL_SECS)]
    pub decision_ttl_secs: Option<u64>,
    /// Concurrent calls in the whole server; beyond it calls are shed with RESOURCE_EXHAUSTED.
    #[arg(long, env = env::MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: Option<usize>,
    /// Concurrent calls of one team (the team of an API key; with --auth-keys only); beyond it
    /// that team's calls are shed with RESOURCE_EXHAUSTED. Default: half of
    /// --max-concurrent-requests.
    #[arg(long, env = env::MAX_CONCURRENT_REQUESTS_PER_TEAM)]
    pub max_concurrent_requests_per_team: Option<usize>,
    /// Route calls per second allowed per team (burst of the same size); beyond it
    /// RESOURCE_EXHAUSTED. Default: no limit.
    #[arg(long, env = env::RATE_LIMIT_PER_TEAM)]
    pub rate_limit_per_team: Option<NonZeroU32>,
    /// The state store.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The store settings on the command line (the `[store]` keys of the deployment file).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct StoreArgs {
    /// Store backend: memory, redis or redis-cluster. Default: redis with --store-url,
    /// redis-cluster with --store-nodes, else memory.
    #[arg(long, env = env::STORE_KIND)]
    pub store_kind: Option<String>,
    /// Redis URL (`redis://` or `rediss://`).
    #[arg(long, env = env::STORE_URL)]
    pub store_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated URLs.
    #[arg(long, env = env::STORE_NODES, value_delimiter = ',')]
    pub store_nodes: Vec<String>,
    /// Key prefix of the deployment (default: tokenwise).
    #[arg(long, env = env::STORE_PREFIX)]
    pub store_prefix: Option<String>,
    /// How often replicas re-read shared state, ms, 10 to 1000.
    #[arg(long, env = env::STORE_REFRESH_MS)]
    pub store_refresh_ms: Option<u64>,
    /// Deadline of one store call, ms.
    #[arg(long, env = env::STORE_TIMEOUT_MS)]
    pub store_timeout_ms: Option<u64>,
    /// Redis ACL user (its password: TOKENWISE_REDIS_PASSWORD or --store-password-file).
    #[arg(long, env = env::STORE_USERNAME)]
    pub store_username: Option<String>,
    /// File holding the Redis password (a mounted secret).
    #[arg(long, env = env::STORE_PASSWORD_FILE)]
    pub store_password_file: Option<String>,
    /// PEM file of the CA that signed a `rediss://` server's certificate.
    #[arg(long, env = env::STORE_CA_FILE)]
    pub store_ca_file: Option<String>,
    /// This replica's outage log (write-ahead, fsynced before Feedback answers). Default:
    /// a file in the service user's state directory named after the prefix and listen address.
    #[arg(long, env = env::SPILL_FILE)]
    pub spill_file: Option<String>,
}

impl StoreArgs {
    /// The store keys these flags set.
    fn raw(&self) -> RawStore {
        RawStore {
            kind: self.store_kind.clone(),
            url: self.store_url.clone(),
            nodes: (!self.store_nodes.is_empty()).then(|| self.store_nodes.clone()),
            prefix: self.store_prefix.clone(),
            refresh_ms: self.store_refresh_ms,
            timeout_ms: self.store_timeout_ms,
            username: self.store_username.clone(),
            password_file: self.store_password_file.clone(),
            ca_file: self.store_ca_file.clone(),
            spill_file: self.spill_file.clone(),
            buffer_capacity: None,
        }
    }
}

/// A deployment file as written (unknown keys rejected, naming their path).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploymentFile {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: Option<RawStore>,
}

/// The `[server]` table of a deployment file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    health_listen: Option<String>,
    metrics_listen: Option<String>,
    max_task_bytes: Option<usize>,
    request_timeout_ms: Option<u64>,
    decision_ttl_secs: Option<u64>,
    max_concurrent_requests: Option<usize>,
    max_concurrent_requests_per_team: Option<usize>,
    rate_limit_per_team: Option<NonZeroU32>,
}

/// A deployment setting that failed: which one and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{path}`: {reason}")]
pub struct DeploymentError {
    /// The setting: its flag when given there, else its key path (`server.listen`,
    /// `store.url`), prefixed with the file it came from.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl DeploymentError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// This process's server settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// gRPC listen address.
    pub listen: String,
    /// Health-only listener; `None`: the main port only.
    pub health_addr: Option<SocketAddr>,
    /// Metrics and `/report` listener; `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Largest task accepted, bytes.
    pub max_task_bytes: usize,
    /// Deadline of one call.
    pub request_timeout: Duration,
    /// How long feedback is accepted for a decision, ms.
    pub decision_ttl_ms: u64,
    /// Concurrent calls in the server.
    pub max_concurrent_requests: usize,
    /// Concurrent calls of one team.
    pub max_concurrent_requests_per_team: usize,
    /// Route calls per second per team.
    pub rate_limit_per_team: Option<NonZeroU32>,
}

/// Where the store settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSource {
    /// Nothing named a store: in memory.
    Default,
    /// Flags, environment or the deployment file.
    Deployment,
    /// The policy file's deprecated `[store]` table.
    DeprecatedPolicyTable,
}

/// A deprecated use the operator should hear about once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deprecation {
    /// The policy file's `[store]` table was read as the store.
    PolicyStoreUsed,
    /// The policy file has a `[store]` table, but the deployment config names the store: the
    /// table is ignored.
    PolicyStoreIgnored,
}

/// The resolved deployment config.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// Addresses and limits.
    pub server: Server,
    /// The state store.
    pub store: StoreConfig,
    /// Where `store` came from.
    pub store_source: StoreSource,
    /// What to warn about.
    pub deprecations: Vec<Deprecation>,
}

/// `Some(value)` from the flag, else the file; with the name to blame for a bad value.
fn pick<T>(flag: Option<T>, flag_name: &str, file: Option<T>, key: &str) -> Option<(T, String)> {
    match (flag, file) {
        (Some(v), _) => Some((v, flag_name.to_string())),
        (None, Some(v)) => Some((v, key.to_string())),
        (None, None) => None,
    }
}

/// `host:port`, or `off` (or empty) for none.
fn addr_or_off(value: &str, name: &str) -> Result<Option<SocketAddr>, DeploymentError> {
    match value {
        "off" | "" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|_| DeploymentError::new(name, format!("{a:?} is not host:port (or off)"))),
    }
}

impl DeploymentArgs {
    /// Resolves the settings: the flags (and environment) over `file_text` (the deployment
    /// file's text, if any; `file_name` names it in errors) over `policy_store` (a policy
    /// file's deprecated `[store]` table) over the defaults. `redis_password` is the value of
    /// [`env::REDIS_PASSWORD`].
    pub fn resolve(
        &self,
        file_name: &str,
        file_text: Option<&str>,
        policy_store: Option<toml::Table>,
        redis_password: Option<String>,
    ) -> Result<Deployment, DeploymentError> {
        let file = match file_text {
            Some(text) => parse_file(file_name, text)?,
            None => RawDeploymentFile::default(),
        };
        let in_file = |key: &str| match file_text {
            Some(_) => format!("{file_name}: {key}"),
            None => key.to_string(),
        };
        let f = file.server;
        let defaults = ServeConfig::default();
        let listen = pick(
            self.listen.clone(),
            "--listen",
            f.listen,
            &in_file("server.listen"),
        )
        .map_or_else(|| DEFAULT_LISTEN.to_string(), |(v, _)| v);
        let addr = |flag: Option<String>,
                    flag_name: &str,
                    file: Option<String>,
                    key: &str,
                    default: &str| {
            match pick(flag, flag_name, file, &in_file(key)) {
                Some((v, name)) => addr_or_off(&v, &name),
                None => addr_or_off(default, key),
            }
        };
        let health_addr = addr(
            self.health_listen.clone(),
            "--health-listen",
            f.health_listen,
            "server.health_listen",
            "off",
        )?;
        let metrics_addr = addr(
            self.metrics_listen.clone(),
            "--metrics-listen",
            f.metrics_listen,
            "server.metrics_listen",
            DEFAULT_METRICS_LISTEN,
        )?;
        let positive = |v: Option<(usize, String)>, default: usize| match v {
            Some((0, name)) => Err(DeploymentError::new(name, "must be at least 1")),
            Some((v, _)) => Ok(v),
            None => Ok(default),
        };
        let max_task_bytes = positive(
            pick(
                self.max_task_bytes,
                "--max-task-bytes",
                f.max_task_bytes,
                &in_file("server.max_task_bytes"),
            ),
            crate::domain::routing::DEFAULT_MAX_TASK_BYTES,
        )?;
        let request_timeout = match pick(
            self.request_timeout_ms,
            "--request-timeout-ms",
            f.request_timeout_ms,
            &in_file("server.request_timeout_ms"),
        ) {
            Some((0, name)) => return Err(DeploymentError::new(name, "must be at least 1")),
            Some((ms, _)) => Duration::from_millis(ms),
            None => defaults.request_timeout,
        };
        let decision_ttl_ms = pick(
            self.decision_ttl_secs,
            "--decision-ttl-secs",
            f.decision_ttl_secs,
            &in_file("server.decision_ttl_secs"),
        )
        .map_or(
            crate::engine::feedback::DEFAULT_DECISION_TTL_MS,
            |(s, _)| s.saturating_mul(1000),
        );
        let max_concurrent_requests = positive(
            pick(
                self.max_concurrent_requests,
                "--max-concurrent-requests",
                f.max_concurrent_requests,
                &in_file("server.max_concurrent_requests"),
            ),
            defaults.max_concurrent_requests,
        )?;
        let max_concurrent_requests_per_team = positive(
            pick(
                self.max_concurrent_requests_per_team,
                "--max-concurrent-requests-per-team",
                f.max_concurrent_requests_per_team,
                &in_file("server.max_concurrent_requests_per_team"),
            ),
            (max_concurrent_requests / 2).max(1),
        )?;
        let rate_limit_per_team = self.rate_limit_per_team.or(f.rate_limit_per_team);

        // The store: flags over the file, key by key; the policy's deprecated table only when
        // neither names a backend.
        let deployed = file.store.unwrap_or_default().overlaid(self.store.raw());
        let mut deprecations = Vec::new();
        let (raw, store_source) = match policy_store {
            Some(_) if deployed.names_store() => {
                deprecations.push(Deprecation::PolicyStoreIgnored);
                (deployed, StoreSource::Deployment)
            }
            Some(table) => {
                deprecations.push(Deprecation::PolicyStoreUsed);
                let from_policy = raw_store(table).map_err(|e| {
                    DeploymentError::new(format!("policy file: {}", e.path), e.reason)
                })?;
                (
                    from_policy.overlaid(deployed),
                    StoreSource::DeprecatedPolicyTable,
                )
            }
            None if deployed.names_store() => (deployed, StoreSource::Deployment),
            None => (deployed, StoreSource::Default),
        };
        let mut store = validate_store(raw).map_err(|e| {
            let path = match store_source {
                StoreSource::DeprecatedPolicyTable => format!("policy file: {}", e.path),
                _ => e.path,
            };
            DeploymentError::new(path, e.reason)
        })?;
        store.password = redis_password.filter(|p| !p.is_empty()).map(Password);
        Ok(Deployment {
            server: Server {
                listen,
                health_addr,
                metrics_addr,
                max_task_bytes,
                request_timeout,
                decision_ttl_ms,
                max_concurrent_requests,
                max_concurrent_requests_per_team,
                rate_limit_per_team,
            },
            store,
            store_source,
            deprecations,
        })
    }
}

/// A deployment file's text as its raw tables; an unknown key or a wrong type is named by its
/// key path.
fn parse_file(name: &str, text: &str) -> Result<RawDeploymentFile, DeploymentError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| DeploymentError::new(name, e.message().trim().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        DeploymentError::new(
            format!("{name}: {}", e.path()),
            e.inner().message().trim().to_string(),
        )
    })
}

impl Deployment {
    /// Logs the deprecated uses found (once, at start).
    pub fn warn_deprecations(&self) {
        for d in &self.deprecations {
            match d {
                Deprecation::PolicyStoreUsed => tracing::warn!(
                    setting = "store",
                    from = "policy file [store]",
                    "deprecated: the policy file's [store] table is deployment config; move it to --deployment FILE's [store] or the --store-* flags (TOKENWISE_STORE_*)"
                ),
                Deprecation::PolicyStoreIgnored => tracing::warn!(
                    setting = "store",
                    from = "deployment config",
                    "deprecated: the policy file's [store] table is ignored, the deployment config names the store; remove the table"
                ),
            }
        }
    }

    /// The settings as `key = value` lines (no password; URLs redacted), for
    /// `serve --print-deployment` and the start log.
    pub fn describe(&self) -> Vec<String> {
        let s = &self.server;
        let addr = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        let store = match &self.store.kind {
            StoreKind::Memory => "memory".to_string(),
            StoreKind::Redis { url, prefix } => {
                format!("redis {} prefix {prefix}", redacted_url(url))
            }
            StoreKind::RedisCluster { nodes, prefix } => {
                let nodes: Vec<String> = nodes.iter().map(|n| redacted_url(n)).collect();
                format!("redis-cluster {} prefix {prefix}", nodes.join(","))
            }
        };
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        vec![
            format!("listen = {}", s.listen),
            format!("health_listen = {}", addr(s.health_addr)),
            format!("metrics_listen = {}", addr(s.metrics_addr)),
            format!("max_task_bytes = {}", s.max_task_bytes),
            format!("request_timeout_ms = {}", s.request_timeout.as_millis()),
            format!("decision_ttl_secs = {}", s.decision_ttl_ms / 1000),
            format!("max_concurrent_requests = {}", s.max_concurrent_requests),
            format!(
                "max_concurrent_requests_per_team = {}",
                s.max_concurrent_requests_per_team
            ),
            format!(
                "rate_limit_per_team = {}",
                s.rate_limit_per_team
                    .map_or_else(|| "-".into(), |r| r.to_string())
            ),
            format!("store = {store}"),
            format!("store_source = {:?}", self.store_source),
            format!("store.refresh_ms = {}", self.store.refresh_ms),
            format!("store.timeout_ms = {}", self.store.timeout_ms),
            format!("store.spill_file = {}", opt(&self.store.spill_file)),
            format!("store.username = {}", opt(&self.store.username)),
            format!("store.password_file = {}", opt(&self.store.password_file)),
            format!("store.ca_file = {}", opt(&self.store.ca_file)),
            format!(
                "store.password_from_env = {}",
                self.store.password.is_some()
            ),
        ]
    }

    /// The server settings as the gRPC server takes them (TLS, auth and the rest of the
    /// per-start settings are the caller's).
    pub fn serve_config(&self) -> ServeConfig {
        let s = &self.server;
        ServeConfig {
            request_timeout: s.request_timeout,
            max_message_bytes: s.max_task_bytes + 64 * 1024,
            max_concurrent_requests: s.max_concurrent_requests,
            max_concurrent_requests_per_team: s.max_concurrent_requests_per_team,
            health_addr: s.health_addr,
            metrics_addr: s.metrics_addr,
            rate_limit_per_team: s.rate_limit_per_team,
            refresh_interval: Duration::from_millis(self.store.refresh_ms),
            ..ServeConfig::default()
        }
    }
}

/// Reads the deployment config of `args`: its file (if any), then resolves it over
/// `policy_store`, with the Redis password from the environment.
pub fn load(
    args: &DeploymentArgs,
    policy_store: Option<toml::Table>,
) -> anyhow::Result<Deployment> {
    let (name, text) = match &args.deployment {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--deployment {}: cannot read: {e}", p.display()))?;
            (p.display().to_string(), Some(text))
        }
        None => (String::new(), None),
    };
    let password = std::env::var(env::REDIS_PASSWORD).ok();
    args.resolve(&name, text.as_deref(), policy_store, password)
        .map_err(|e| anyhow::anyhow!("deployment config: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `serve`'s deployment flags as parsed from `argv` (no environment: tests never set it;
    /// the flag-over-environment order is clap's, checked against the binary in tests/it).
    fn flags(argv: &[&str]) -> DeploymentArgs {
        #[derive(Parser)]
        struct Cmd {
            #[command(flatten)]
            d: DeploymentArgs,
        }
        Cmd::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .unwrap()
            .d
    }

    fn legacy(text: &str) -> Option<toml::Table> {
        crate::domain::policy::split_store(text).unwrap().store
    }

    #[test]
    fn defaults_are_the_servers_own() {
        let d = flags(&[]).resolve("", None, None, None).unwrap();
        let s = &d.server;
        assert_eq!(s.listen, DEFAULT_LISTEN);
        assert_eq!(s.health_addr, None);
        assert_eq!(
            s.metrics_addr,
            Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
        assert_eq!(s.request_timeout, ServeConfig::default().request_timeout);
        assert_eq!(
            s.max_concurrent_requests,
            ServeConfig::default().max_concurrent_requests
        );
        assert_eq!(
            s.max_concurrent_requests_per_team,
            s.max_concurrent_requests / 2
        );
        assert_eq!(d.store, StoreConfig::default());
        assert_eq!(d.store_source, StoreSource::Default);
        assert!(d.deprecations.is_empty());
        // The server's own default refresh is the store's.
        assert_eq!(
            d.serve_config().refresh_interval,
            ServeConfig::default().refresh_interval
        );
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults_key_by_key() {
        let file = r#"
[server]
listen = "0.0.0.0:7000"
metrics_listen = "off"
request_timeout_ms = 900
max_concurrent_requests = 100

[store]
url = "redis://file:6379"
prefix = "team-a"
spill_file = "/file/spill.jsonl"
"#;
        let d = flags(&[
            "--listen",
            "127.0.0.1:7001",
            "--spill-file",
            "/flag/spill.jsonl",
        ])
        .resolve("d.toml", Some(file), None, Some("pw".into()))
        .unwrap();
        assert_eq!(d.server.listen, "127.0.0.1:7001");
        assert_eq!(d.server.metrics_addr, None);
        assert_eq!(d.server.request_timeout, Duration::from_millis(900));
        assert_eq!(d.server.max_concurrent_requests_per_team, 50);
        assert_eq!(
            d.store.kind,
            StoreKind::Redis {
                url: "redis://file:6379".into(),
                prefix: "team-a".into()
            }
        );
        assert_eq!(d.store.spill_file.as_deref(), Some("/flag/spill.jsonl"));
        assert_eq!(d.store.password, Some(Password("pw".into())));
        assert_eq!(d.store_source, StoreSource::Deployment);
        assert!(!d.describe().join("\n").contains("pw\n"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_setting() {
        let err = |argv: &[&str], file: &str| {
            flags(argv)
                .resolve("d.toml", Some(file), None, None)
                .unwrap_err()
        };
        let e = err(&[], "[server]\nlistn = \"x\"\n");
        assert_eq!(e.path, "d.toml: server.listn", "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");
        let e = err(&[], "[store]\nurll = \"x\"\n");
        assert_eq!(e.path, "d.toml: store.urll", "{e}");
        let e = err(&[], "[servr]\n");
        assert_eq!(e.path, "d.toml: servr", "{e}");
        let e = err(&[], "[server]\nmax_task_bytes = \"big\"\n");
        assert_eq!(e.path, "d.toml: server.max_task_bytes", "{e}");
        let e = err(&[], "[server]\nmetrics_listen = \"nowhere\"\n");
        assert_eq!(e.path, "d.toml: server.metrics_listen", "{e}");
        // A bad value from a flag names the flag.
        let e = err(&["--health-listen", "nowhere"], "");
        assert_eq!(e.path, "--health-listen", "{e}");
        let e = err(&["--max-concurrent-requests", "0"], "");
        assert_eq!(e.path, "--max-concurrent-requests", "{e}");
        let e = err(&["--store-url", "http://x"], "");
        assert_eq!(e.path, "store.url", "{e}");
        let e = err(&[], "[store]\nkind = \"redis\"\nurl = 3\n");
        assert_eq!(e.path, "d.toml: store.url", "{e}");
    }

    #[test]
    fn a_policys_store_table_is_the_store_only_when_the_deployment_names_none() {
        let policy = format!(
            "{}\n[store]\nkind = \"redis\"\nurl = \"redis://legacy:6379\"\nspill_file = \"/legacy.jsonl\"\n",
            crate::domain::policy::EMBEDDED_POLICY
        );
        // Nothing else names a store: the table is used, with a deprecation warning; a
        // deployment setting that names no backend (this replica's spill file) still applies.
        let d = flags(&["--spill-file", "/mine.jsonl"])
            .resolve("", None, legacy(&policy), None)
            .unwrap();
        assert_eq!(d.store_source, StoreSource::DeprecatedPolicyTable);
        assert_eq!(d.deprecations, [Deprecation::PolicyStoreUsed]);
        assert_eq!(
            d.store.kind,
            StoreKind::Redis {
                url: "redis://legacy:6379".into(),
                prefix: "tokenwise".into()
            }
        );
        assert_eq!(d.store.spill_file.as_deref(), Some("/mine.jsonl"));
        // The deployment names the store: the table is ignored, with a warning.
        let d = flags(&["--store-url", "redis://new:6379"])
            .resolve("", None, legacy(&policy), None)
            .unwrap();
        assert_eq!(d.store_source, StoreSource::Deployment);
        assert_eq!(d.deprecations, [Deprecation::PolicyStoreIgnored]);
        assert_eq!(
            d.store.kind,
            StoreKind::Redis {
                url: "redis://new:6379".into(),
                prefix: "tokenwise".into()
            }
        );
        assert_eq!(d.store.spill_file, None);
        // A bad table is refused when it is used, naming where it is.
        let bad = policy.replace("kind = \"redis\"", "kind = \"etcd\"");
        let e = flags(&[])
            .resolve("", None, legacy(&bad), None)
            .unwrap_err();
        assert_eq!(e.path, "policy file: store.kind", "{e}");
        let e = flags(&[])
            .resolve("", None, legacy(&format!("{policy}urll = 1\n")), None)
            .unwrap_err();
        assert_eq!(e.path, "policy file: store.urll", "{e}");
    }
}
