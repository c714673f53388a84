//! The command line: `serve`, `route`, `thresholds`, `train`, `eval`, `check-config`.
//!
//! Commands print their results on stdout (that is their purpose, through [`out!`] and
//! [`outln!`]); logs go to stderr.

use std::path::PathBuf;

/// `print!` for command output: when stdout is closed early (`tokenwise report | head`) the
/// command ends quietly with status 0, as git and ripgrep do, instead of panicking on EPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(e);
        }
    }};
}

/// `println!` for command output; see [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            stdout_failed(e);
        }
    }};
}

/// Ends the process after a failed write to stdout: quietly when the reader has gone.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to stdout: {e}");
    std::process::exit(1);
}

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::classifier::ComplexityModel;
use crate::dataset::{self, Split};
use crate::policy::Policy;
use crate::training::{self, TrainOptions};

/// tokenwise — cost-aware model router.
#[derive(Debug, Parser)]
#[command(name = "tokenwise", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (embedded policy and model unless given).
    Serve(ServeArgs),
    /// Ask a running server to route one task and print the decision.
    Route {
        /// Server address, host:port or http://host:port (or `TOKENWISE_ADDR`).
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Workflow label.
        #[arg(long, default_value = "")]
        workflow: String,
        /// Team.
        #[arg(long, default_value = "")]
        team: String,
        /// Expected output tokens (hint).
        #[arg(long, default_value_t = 0)]
        expected_output_tokens: u32,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
        /// The task text.
        task: String,
    },
    /// Record that a decision's output was used again (reopened, sent, imported): counted in
    /// the report's reuse rate and reuse events, up to the scope's reuse_retention_days.
    Reuse {
        /// Server address, host:port or http://host:port (or `TOKENWISE_ADDR`).
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Reuse events this stands for (e.g. a macro sent 400 times).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        /// Your id of this reuse event: the same id for the same decision counts once.
        #[arg(long, default_value = "")]
        event_id: String,
        /// Free text, e.g. the consumer's name (logged by the server, not counted).
        #[arg(long, default_value = "")]
        note: String,
        /// The decision_id Route returned.
        decision_id: String,
    },
    /// Print the learned thresholds of a running server, per scope and tier.
    Thresholds {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Only this scope.
        #[arg(long, default_value = "")]
        scope: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the books of a running server: spend, outcomes, cost per completed output,
    /// savings, value, reuse and budgets, per team or workflow.
    Report {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Start: `day`, `week` or `month` (the current calendar period, UTC), a duration back
        /// from now (`24h`, `7d`), or a UTC date or time (`2026-11-01`, `2026-11-01T08:00:00Z`).
        #[arg(long, default_value = "24h")]
        since: String,
        /// End (same forms as a date or time); default now.
        #[arg(long)]
        until: Option<String>,
        /// Group by `team`, `workflow`, `tier` or `team_workflow`.
        #[arg(long, default_value = "team")]
        by: String,
        /// Only this team.
        #[arg(long, default_value = "")]
        team: String,
        /// Only this workflow.
        #[arg(long, default_value = "")]
        workflow: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Table: every column at full width. Without it, a table printed to a terminal wraps
        /// its cells to fit the terminal's width.
        #[arg(long)]
        wide: bool,
    },
    /// Make a new API key: prints the key (give it to the caller; it is not stored) and the
    /// entry for the --auth-keys file (its hash).
    Keygen {
        /// Name of the key, for logs and the audit trail, e.g. `search-prod`.
        #[arg(long)]
        name: String,
        /// Team the key acts for.
        #[arg(long)]
        team: String,
        /// `service` (Route, Feedback, its team's report) or `admin` (also policy and thresholds).
        #[arg(long, default_value = "service", value_parser = ["service", "admin"])]
        role: String,
    },
    /// Policy administration on a running server: show, versions, diff, what-if, apply,
    /// rollback.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Train the complexity model on graded task records.
    Train {
        /// JSON Lines file of tasks with per-model outcomes (.jsonl or .jsonl.gz).
        #[arg(long)]
        data: PathBuf,
        /// Model id of the cheap tier in the records.
        #[arg(long)]
        cheap: String,
        /// Model id of the premium tier in the records.
        #[arg(long)]
        premium: String,
        /// Where to write the model artifact (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Part of the file to train on (the held-out fifth is `fnv1a(id) % 5 == 0`).
        #[arg(long, value_enum, default_value = "all")]
        split: Split,
        /// Keep only workflows with these prefixes; `!prefix` leaves one out
        /// (e.g. `'!gsm8k,!mmlu/high_school'`).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        workflows: Vec<String>,
        /// L2 penalty on the difficulty weights.
        #[arg(long, default_value_t = 3.0)]
        alpha: f64,
        /// Full-batch optimiser steps.
        #[arg(long, default_value_t = 2000)]
        max_iterations: u64,
        /// What the score means: `irt` (difficulty shared by both models), `cheap` (difficulty
        /// for the cheap model), `gap` (chance the premium model does better).
        #[arg(long, value_enum, default_value = "irt")]
        target: training::Target,
    },
    /// RouteLLM metrics (APGR, CPT(50%), CPT(80%), saving at 95%) of a model on a data file.
    Eval {
        /// JSON Lines file of tasks with per-model outcomes.
        #[arg(long)]
        data: PathBuf,
        /// Model id of the cheap tier in the records.
        #[arg(long)]
        cheap: String,
        /// Model id of the premium tier in the records.
        #[arg(long)]
        premium: String,
        /// Model artifact; default: the bundled model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Part of the file to evaluate on.
        #[arg(long, value_enum, default_value = "all")]
        split: Split,
        /// Keep only workflows with these prefixes; `!prefix` leaves one out
        /// (e.g. `'!gsm8k,!mmlu/high_school'`).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        workflows: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replay recorded tasks through routing and learning; report quality and cost vs premium.
    Replay {
        /// JSON Lines file of tasks with per-model outcomes.
        #[arg(long)]
        data: PathBuf,
        /// Policy file whose tiers' model ids appear in the records' outcomes.
        #[arg(long, conflicts_with = "tiers")]
        config: Option<PathBuf>,
        /// Comma-separated model ids: a one-scope policy with these as tiers (ordered by mean cost).
        #[arg(long, value_delimiter = ',', required_unless_present_any = ["config", "addr"])]
        tiers: Vec<String>,
        /// Override every scope's quality bar (default with --tiers: 0.9).
        #[arg(long)]
        bar: Option<f64>,
        /// Keep the cold-start thresholds (the baseline learning must beat).
        #[arg(long)]
        no_learning: bool,
        /// Seed of the exploration draws (and of --shuffle).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Shuffle the records first: interleaved workflows, as live traffic is (data files are
        /// often grouped by workflow).
        #[arg(long)]
        shuffle: bool,
        /// Model artifact; default: the bundled model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Part of the file to replay.
        #[arg(long, value_enum, default_value = "all")]
        split: Split,
        /// Keep only workflows with these prefixes; `!prefix` leaves one out
        /// (e.g. `'!gsm8k,!mmlu/high_school'`).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        workflows: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Send the records to a running server instead (Route, then the chosen model's
        /// recorded outcome as Feedback): traffic for its books and thresholds.
        #[arg(long)]
        addr: Option<String>,
        /// With --addr: at most this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// With --addr: calls in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Validate a policy file: exit 0 if valid, else print the key path and reason.
    CheckConfig {
        /// Policy file (TOML).
        file: PathBuf,
    },
}

fn path_str(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

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
    #[arg(long, default_value_t = crate::routing::DEFAULT_MAX_TASK_BYTES)]
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
    #[arg(long, default_value_t = crate::feedback::DEFAULT_DECISION_TTL_MS / 1000)]
    decision_ttl_secs: u64,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Concurrent calls in the whole server; beyond it calls are shed with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 2048)]
    max_concurrent_requests: usize,
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
    /// Where to serve Prometheus metrics (`GET /metrics`); `off` for nowhere.
    #[arg(
        long,
        env = "TOKENWISE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    metrics_listen: String,
}

/// What `tokenwise policy` does.
#[derive(Debug, Subcommand)]
enum PolicyAction {
    /// Print the live policy text.
    Show {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
    },
    /// The version history and audit trail.
    Versions {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
    },
    /// Validate FILE against the live policy and print what would change.
    Diff {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Proposed policy file.
        file: PathBuf,
    },
    /// Replay the server's recent decisions and outcomes under FILE: projected spend, quality
    /// and tier mix per scope, next to what happened and what the live policy would do now.
    WhatIf {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Proposed policy file.
        file: PathBuf,
    },
    /// Make FILE the live policy on every replica.
    Apply {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
        /// Who (ignored when the server authenticates callers: the key's name is used).
        #[arg(long, env = "USER", default_value = "")]
        author: String,
        /// Policy file.
        file: PathBuf,
    },
    /// Make an earlier version live again.
    Rollback {
        /// Server address.
        #[arg(long, env = "TOKENWISE_ADDR", default_value = "127.0.0.1:50051")]
        addr: String,
        /// Version to restore (default: the one before the live one).
        #[arg(long, default_value = "")]
        version: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who.
        #[arg(long, env = "USER", default_value = "")]
        author: String,
    },
}

fn print_change(c: &crate::server::pb::PolicyChange) {
    outln!(
        "#{:<3} {}  {:<8} {:<10} by {:<20} {}",
        c.seq,
        c.version,
        c.source,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.at_ms)
        ),
        c.author,
        c.reason
    );
    for line in &c.summary {
        outln!("       · {line}");
    }
}

async fn policy_command(action: PolicyAction) -> anyhow::Result<()> {
    use crate::server::pb;
    let addr = match &action {
        PolicyAction::Show { addr }
        | PolicyAction::Versions { addr }
        | PolicyAction::Diff { addr, .. }
        | PolicyAction::WhatIf { addr, .. }
        | PolicyAction::Apply { addr, .. }
        | PolicyAction::Rollback { addr, .. } => addr.clone(),
    };
    let what_if = matches!(action, PolicyAction::WhatIf { .. });
    let mut admin = pb::admin_client::AdminClient::new(connect(&addr).await?);
    let read = |f: &PathBuf| {
        std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))
    };
    match action {
        PolicyAction::Show { .. } => {
            let p = admin
                .get_policy(pb::GetPolicyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("# live policy version {}", p.version);
            out!("{}", p.text);
        }
        PolicyAction::Versions { .. } => {
            let v = admin
                .list_policy_versions(pb::ListPolicyVersionsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for c in &v.changes {
                print_change(c);
            }
            outln!("live: {}", v.live_version);
        }
        PolicyAction::Diff { file, .. } | PolicyAction::WhatIf { file, .. } => {
            let r = admin
                .validate_policy(pb::ValidatePolicyRequest {
                    text: read(&file)?,
                    what_if,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            outln!("{}: valid (version {})", file.display(), r.version);
            if r.changes.is_empty() {
                outln!("no change against the live policy");
            }
            for c in &r.changes {
                outln!("  · {c}");
            }
            if what_if {
                outln!();
                outln!(
                    "{:<36} {:>6}  {:>22}  {:>22}  {:>22}",
                    "scope (recent window)",
                    "tasks",
                    "actual spend / q",
                    "live now spend / q",
                    "proposed spend / q"
                );
                for w in &r.what_if {
                    let cell = |m: i64, q: f64| format!("{} / {:.3}", crate::report::usd(m), q);
                    outln!(
                        "{:<36} {:>6}  {:>22}  {:>22}  {:>22}   bar {:.2} → {:.2}",
                        w.scope,
                        w.tasks,
                        cell(w.actual_spend_micros, w.actual_quality),
                        cell(w.live_spend_micros, w.live_quality),
                        cell(w.proposed_spend_micros, w.proposed_quality),
                        w.live_bar,
                        w.proposed_bar
                    );
                }
            }
        }
        PolicyAction::Apply {
            file,
            reason,
            author,
            ..
        } => {
            let c = admin
                .apply_policy(pb::ApplyPolicyRequest {
                    text: read(&file)?,
                    author,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_change(&c);
        }
        PolicyAction::Rollback {
            version,
            reason,
            author,
            ..
        } => {
            let c = admin
                .rollback_policy(pb::RollbackPolicyRequest {
                    version,
                    author,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_change(&c);
        }
    }
    Ok(())
}

/// Views of the report.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    /// Aligned tables for a terminal.
    Table,
    /// The whole report as JSON.
    Json,
    /// One row per group.
    Csv,
    /// A self-contained page with tables and a chart.
    Html,
}

/// A point in time from the command line: a UTC date, an RFC 3339 time, or a duration ago.
fn parse_instant(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00")
    } else {
        s.trim_end_matches('Z').to_string()
    };
    match humantime::parse_rfc3339_weak(&full) {
        Ok(t) => Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64),
        Err(e) => anyhow::bail!(
            "cannot read time {s:?} (a duration like 24h, a date like 2026-11-01, or 2026-11-01T08:00:00Z): {e}"
        ),
    }
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
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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

/// Refuses a decision secret anyone could guess: shorter than 32 bytes, of fewer than 8
/// distinct bytes, or a placeholder from an example file.
pub fn check_secret(secret: &[u8]) -> anyhow::Result<()> {
    let lower = String::from_utf8_lossy(secret).to_lowercase();
    let distinct = secret
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    if secret.len() < 32 {
        bail!(
            "the decision secret is {} bytes: use at least 32 random bytes (`openssl rand -base64 32`)",
            secret.len()
        );
    }
    if distinct < 8 {
        bail!(
            "the decision secret repeats too few bytes to be random: use `openssl rand -base64 32`"
        );
    }
    if ["replace", "change-me", "changeme", "example", "placeholder"]
        .iter()
        .any(|p| lower.contains(p))
    {
        bail!(
            "the decision secret is an example placeholder: generate one with `openssl rand -base64 32`"
        );
    }
    Ok(())
}

/// Builds the engine that `serve` runs from its arguments.
pub fn engine_from_args(args: &ServeArgs) -> anyhow::Result<crate::engine::Engine> {
    let policy = match &args.config {
        Some(p) => Policy::load(path_str(p)?)
            .map_err(|e| anyhow::anyhow!("{}: invalid policy: {e}", p.display()))?,
        None => Policy::embedded().map_err(|e| anyhow::anyhow!("embedded policy: {e}"))?,
    };
    let model = match &args.model {
        Some(p) => ComplexityModel::load(path_str(p)?)?,
        None => ComplexityModel::bundled()?,
    };
    // Ids are bound to the deployment: a Redis deployment is its key prefix; a memory store
    // lives and dies with this process (and its nonce ledger with it), so its ids do too.
    let deployment = match &policy.store.kind {
        crate::store::StoreKind::Redis { prefix, .. } => format!("redis:{prefix}"),
        crate::store::StoreKind::RedisCluster { prefix, .. } => format!("redis-cluster:{prefix}"),
        crate::store::StoreKind::Memory => format!("memory:{:016x}", rand::random::<u64>()),
    };
    let signer = match decision_secret(args)? {
        Some(secret) => {
            if args.config.is_some() {
                check_secret(&secret)?;
            }
            let signer = crate::decision::Signer::for_deployment(&secret, &deployment)?;
            match args
                .previous_decision_secret
                .as_deref()
                .filter(|s| !s.is_empty())
            {
                Some(old) => {
                    tracing::info!(
                        "accepting ids signed with the previous decision secret (rotation)"
                    );
                    signer.accepting(crate::decision::Signer::for_deployment(
                        old.as_bytes(),
                        &deployment,
                    )?)
                }
                None => signer,
            }
        }
        None if args.config.is_some() => bail!(
            "with --config, a decision secret is required (TOKENWISE_DECISION_SECRET, \
             --decision-secret-file, or --decision-secret): every replica must share it, e.g. \
             `openssl rand -base64 32`"
        ),
        None => {
            tracing::warn!(
                "no decision secret configured: decision ids are signed with a random per-process key and will not verify after a restart or on another replica"
            );
            crate::decision::Signer::random()?
        }
    };
    tracing::info!(policy = %policy.version, model = %model.version, tiers = policy.tiers.len(), scopes = policy.scopes.len() + 1, "loaded");
    let (store, buffer) = crate::store::open(&policy.store, &args.listen)?;
    Ok(crate::engine::Engine::builder(
        std::sync::Arc::new(model),
        std::sync::Arc::new(policy),
        signer,
    )
    .limits(crate::routing::Limits {
        max_task_bytes: args.max_task_bytes,
    })
    .decision_ttl_ms(args.decision_ttl_secs.saturating_mul(1000))
    .store(store, buffer)
    .build())
}

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

fn endpoint(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A channel to `addr` that sends the API key in `TOKENWISE_API_KEY`, if set. An `https://`
/// address speaks TLS, trusting the CA certificate (PEM) in `TOKENWISE_CA_CERT`.
async fn connect(addr: &str) -> anyhow::Result<crate::auth::AuthedChannel> {
    let ep = endpoint(addr);
    let mut endpoint = tonic::transport::Endpoint::from_shared(ep.clone())?;
    if ep.starts_with("https://") {
        let ca = std::env::var("TOKENWISE_CA_CERT")
            .context("https:// needs TOKENWISE_CA_CERT: the CA certificate (PEM file) to trust")?;
        let pem = std::fs::read(&ca).with_context(|| format!("cannot read {ca}"))?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {ep}"))?;
    let key = std::env::var("TOKENWISE_API_KEY").ok();
    let bearer = crate::auth::BearerKey::new(key.as_deref()).map_err(status_error)?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel, bearer,
    ))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            let engine = std::sync::Arc::new(engine_from_args(&args)?);
            let metrics_addr = match args.metrics_listen.as_str() {
                "off" | "" => None,
                a => Some(a.parse().with_context(|| format!("--metrics-listen {a:?} is not host:port (or off)"))?),
            };
            let auth = match (&args.auth_keys, args.no_auth, &args.config) {
                (Some(f), _, _) => Some(std::sync::Arc::new(crate::auth::load_keys(f)?)),
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
            let config = crate::server::ServeConfig {
                tls,
                rate_limit_per_team: args.rate_limit_per_team,
                auth,
                metrics_addr,
                refresh_interval: std::time::Duration::from_millis(engine.policy().store.refresh_ms),
                request_timeout: std::time::Duration::from_millis(args.request_timeout_ms),
                bench_noop: args.bench_noop,
                max_concurrent_requests: args.max_concurrent_requests,
                max_message_bytes: args.max_task_bytes + 64 * 1024,
                ..Default::default()
            };
            runtime()?.block_on(async move {
                // A store that is down is an outage the server rides out; one that refuses the
                // credentials is a configuration error that waiting will not fix.
                if let Err(crate::store::StoreError::Config(why)) = engine.store().ping().await {
                    bail!("store: {why}");
                }
                let listener = tokio::net::TcpListener::bind(&args.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", args.listen))?;
                engine.set_policy_source(&format!("replica {}", args.listen), args.config.clone()).await;
                crate::server::run(engine, config, listener, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Route { addr, workflow, team, expected_output_tokens, json, task } => runtime()?.block_on(async move {
            use crate::server::pb;
            let mut client = pb::router_client::RouterClient::new(connect(&addr).await?);
            let d = client
                .route(pb::RouteRequest {
                    task,
                    workflow,
                    team,
                    hints: Some(pb::RouteHints { expected_output_tokens, task_type: String::new() }),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let candidates: Vec<serde_json::Value> = d
                    .candidates
                    .iter()
                    .map(|c| serde_json::json!({"tier": c.tier, "model": c.model, "predicted_quality": c.predicted_quality, "estimated_cost_usd": c.estimated_cost_usd, "threshold": c.threshold}))
                    .collect();
                outln!("{}", serde_json::json!({
                    "decision_id": d.decision_id, "tier": d.tier, "model": d.model, "complexity": d.complexity,
                    "estimated_cost_usd": d.estimated_cost_usd, "candidates": candidates, "fallback_tier": d.fallback_tier,
                    "policy_version": d.policy_version, "reason": d.reason, "scope": d.scope, "explored": d.explored,
                }));
            } else {
                outln!("tier        {}  ({})", d.tier, d.model);
                outln!("complexity  {:.3}", d.complexity);
                outln!("est. cost   ${:.6}", d.estimated_cost_usd);
                outln!("fallback    {}", if d.fallback_tier.is_empty() { "-" } else { &d.fallback_tier });
                outln!("scope       {}  (policy {})", d.scope, d.policy_version);
                outln!("reason      {}", d.reason);
                outln!();
                outln!("{:<12} {:<28} {:>9} {:>12} {:>9}", "candidate", "model", "quality", "est. cost", "threshold");
                for c in &d.candidates {
                    let mark = if c.tier == d.tier { "*" } else { " " };
                    outln!("{mark}{:<11} {:<28} {:>9.3} {:>12.6} {:>9.2}", c.tier, c.model, c.predicted_quality, c.estimated_cost_usd, c.threshold);
                }
                outln!();
                outln!("decision_id {}", d.decision_id);
            }
            Ok(())
        }),
        Command::Reuse { addr, count, event_id, note, decision_id } => runtime()?.block_on(async move {
            use crate::server::pb;
            let mut client = pb::router_client::RouterClient::new(connect(&addr).await?);
            let r = client
                .record_reuse(pb::RecordReuseRequest { decision_id, count, event_id, note })
                .await
                .map_err(status_error)?
                .into_inner();
            outln!(
                "recorded {} reuse event{} for scope {} workflow {}{}",
                r.count,
                if r.count == 1 { "" } else { "s" },
                r.scope,
                if r.workflow.is_empty() { "(none)" } else { &r.workflow },
                if r.first_reuse { " (first reuse of this output)" } else { "" }
            );
            Ok(())
        }),
        Command::Thresholds { addr, scope, json } => runtime()?.block_on(async move {
            use crate::server::pb;
            let mut client = pb::admin_client::AdminClient::new(connect(&addr).await?);
            let r = client
                .get_thresholds(pb::GetThresholdsRequest { scope })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let rows: Vec<serde_json::Value> = r
                    .thresholds
                    .iter()
                    .map(|t| serde_json::json!({"scope": t.scope, "workflow": t.workflow, "tier": t.tier, "threshold": t.threshold, "pinned": t.pinned, "evidence": t.evidence, "observed_quality": t.observed_quality, "last_move": t.last_move, "bar": t.bar, "scope_quality": t.scope_quality, "team_plan": t.team_plan, "team": t.team}))
                    .collect();
                outln!("{}", serde_json::json!({"policy_version": r.policy_version, "thresholds": rows}));
            } else {
                outln!("policy {}", r.policy_version);
                // Columns as wide as their longest entry, so long scope names stay aligned.
                let sw = r.thresholds.iter().map(|t| t.scope.chars().count()).max().unwrap_or(0).max(5);
                let ww = r.thresholds.iter().map(|t| t.workflow.chars().count()).max().unwrap_or(0).max(8);
                let tw = r.thresholds.iter().map(|t| t.tier.chars().count()).max().unwrap_or(0).max(4);
                // The shared plan's rows, then each team's own plan.
                let team_of = |t: &pb::TierThreshold| match (t.team_plan, t.team.as_str()) {
                    (false, _) => "(shared)".to_string(),
                    (true, "") => "(no team)".to_string(),
                    (true, team) => team.to_string(),
                };
                let mw = r.thresholds.iter().map(|t| team_of(t).chars().count()).max().unwrap_or(0).max(4);
                outln!("{:<sw$} {:<mw$} {:<ww$} {:<tw$} {:>9} {:>9} {:>9} {:>9} {:>6}", "scope", "team", "workflow", "tier", "threshold", "evidence", "observed", "last move", "bar");
                for t in &r.thresholds {
                    let observed = if t.evidence > 0.0 { format!("{:.3}", t.observed_quality) } else { "-".into() };
                    let workflow = if t.workflow.is_empty() { "(all)" } else { t.workflow.as_str() };
                    // A pinned threshold is the policy's, not learned: marked with `*`.
                    let threshold = format!("{:.2}{}", t.threshold, if t.pinned { "*" } else { " " });
                    outln!("{:<sw$} {:<mw$} {:<ww$} {:<tw$} {:>9} {:>9.1} {:>9} {:>+9.2} {:>6.2}", t.scope, team_of(t), workflow, t.tier, threshold, t.evidence, observed, t.last_move, t.bar);
                }
                if r.thresholds.iter().any(|t| t.pinned) {
                    outln!("* pinned by the policy (`thresholds = {{...}}`): learning does not move it");
                }
            }
            Ok(())
        }),
        Command::Report { addr, since, until, by, team, workflow, format, out, wide } => runtime()?.block_on(async move {
            use crate::server::pb;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
            let (period, since_ms) = match since.as_str() {
                "day" | "week" | "month" => (since.clone(), 0),
                _ => (String::new(), parse_instant(&since, now)?),
            };
            let until_ms = until.as_deref().map(|u| parse_instant(u, now)).transpose()?.unwrap_or(0);
            let mut client = pb::admin_client::AdminClient::new(connect(&addr).await?);
            let r = client
                .get_report(pb::GetReportRequest { since_ms, until_ms, period, team, workflow, group_by: by })
                .await
                .map_err(status_error)?
                .into_inner();
            let r: crate::report::Report = r.into();
            use crate::report::render;
            let text = match format {
                // Fit the terminal only when printing to one: a file or a pipe gets full rows.
                ReportFormat::Table => {
                    let tty = !wide && out.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout());
                    // comfy-table reads the terminal's width.
                    let width = if tty { comfy_table::Table::new().width() } else { None };
                    render::table_fitting(&r, width)
                }
                ReportFormat::Json => render::json(&r)?,
                ReportFormat::Csv => render::csv(&r)?,
                ReportFormat::Html => render::html(&r),
            };
            match out {
                Some(path) => {
                    std::fs::write(&path, text)?;
                    eprintln!("report written to {}", path.display());
                }
                None => out!("{text}"),
            }
            Ok(())
        }),
        Command::Policy { action } => runtime()?.block_on(policy_command(action)),
        Command::Keygen { name, team, role } => {
            let (key, hash) = crate::auth::new_key();
            eprintln!("key for {name} (give it to the caller as TOKENWISE_API_KEY / `authorization: Bearer <key>`; it is shown once):");
            outln!("{key}");
            eprintln!("\nadd to the --auth-keys file:");
            eprintln!("[[keys]]\nname = {name:?}\nteam = {team:?}\nrole = {role:?}\nsha256 = {hash:?}");
            Ok(())
        }
        Command::Train {
            data,
            cheap,
            premium,
            out,
            split,
            workflows,
            alpha,
            max_iterations,
            target,
        } => {
            let records = dataset::filter_workflows(dataset::load(path_str(&data)?, split)?, &workflows);
            let opts = TrainOptions {
                cheap: cheap.clone(),
                premium: premium.clone(),
                alpha,
                max_iterations,
                target,
            };
            let mut model = training::train(&records, &opts)?;
            let in_sample = training::evaluate(&model, &records, &cheap, &premium);
            model.training = serde_json::json!({
                "data": data.display().to_string(),
                "split": format!("{split:?}").to_lowercase(),
                "records": records.len(),
                "cheap": cheap,
                "premium": premium,
                "alpha": alpha,
                "label": "item response: success (score >= 0.5) of each model, one shared difficulty per task",
                "hand_set_signals": training::HAND_SET.iter().map(|(i, k)| serde_json::json!({"index": i, "sd_per_unit": k})).collect::<Vec<_>>(),
                "in_sample": in_sample,
            });
            std::fs::write(&out, model.to_json()?)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({}) trained on {} records", out.display(), model.version, records.len());
            Ok(())
        }
        Command::Eval {
            data,
            cheap,
            premium,
            model,
            split,
            workflows,
            json,
        } => {
            let model = match model {
                Some(p) => ComplexityModel::load(path_str(&p)?)?,
                None => ComplexityModel::bundled()?,
            };
            let records = dataset::filter_workflows(dataset::load(path_str(&data)?, split)?, &workflows);
            let Some(r) = training::evaluate(&model, &records, &cheap, &premium) else {
                bail!("no record in {} has outcomes for both {cheap:?} and {premium:?}", data.display());
            };
            if json {
                outln!("{}", serde_json::to_string(&r)?);
            } else {
                outln!("model            {}", model.version);
                outln!("tasks            {}", r.tasks);
                outln!("cheap quality    {:.4}  ({cheap})", r.cheap_quality);
                outln!("premium quality  {:.4}  ({premium})", r.premium_quality);
                outln!("APGR             {:.4}  (random routing: 0.5)", r.apgr);
                outln!("CPT(50%)         {:.4}  premium share", r.cpt50);
                outln!("CPT(80%)         {:.4}  premium share", r.cpt80);
                outln!("saving at 95%    {:.4}  vs always-premium", r.saving_at_95);
            }
            Ok(())
        }
        Command::Replay { data, split, workflows, addr: Some(addr), limit, concurrency, json, .. } => {
            let mut records = dataset::filter_workflows(dataset::load(path_str(&data)?, split)?, &workflows);
            records.truncate(limit.unwrap_or(usize::MAX));
            runtime()?.block_on(async move {
                let started = std::time::Instant::now();
                let s = crate::replay::replay_remote(connect(&addr).await?, &records, concurrency.max(1)).await;
                if json {
                    outln!("{}", serde_json::to_string(&s)?);
                } else {
                    outln!("routed {} · feedback {} · no recorded outcome {} · refused {:?} · {:.1} s", s.routed, s.fed_back, s.no_outcome, s.refused, started.elapsed().as_secs_f64());
                }
                Ok(())
            })
        }
        Command::Replay { data, config, tiers, bar, no_learning, seed, shuffle, model, split, workflows, json, .. } => {
            if let Some(b) = bar
                && !(0.0..=1.0).contains(&b)
            {
                bail!("--bar must be in [0, 1], got {b}");
            }
            let model = match model {
                Some(p) => ComplexityModel::load(path_str(&p)?)?,
                None => ComplexityModel::bundled()?,
            };
            let mut records = dataset::filter_workflows(dataset::load(path_str(&data)?, split)?, &workflows);
            if shuffle {
                use rand::SeedableRng;
                use rand::seq::SliceRandom;
                records.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            }
            let policy = match config {
                Some(p) => Policy::load(path_str(&p)?).map_err(|e| anyhow::anyhow!("{}: invalid policy: {e}", p.display()))?,
                None => crate::replay::policy_from_models(&records, &tiers, bar.unwrap_or(0.9))?,
            };
            let opts = crate::replay::ReplayOptions { bar, learning: !no_learning, seed };
            let r = crate::replay::replay(std::sync::Arc::new(model), policy, &records, &opts)?;
            if json {
                outln!("{}", serde_json::to_string(&r)?);
            } else {
                outln!("tasks              {} ({} skipped)", r.tasks, r.skipped);
                outln!("learning           {}", if r.learning { "on" } else { "off" });
                outln!("quality            {:.4}  (bar {:.4}: {})", r.quality, r.bar, if r.bar_met { "met" } else { "MISSED" });
                outln!("cost               ${:.4}", r.cost_usd);
                outln!("premium quality    {:.4}", r.premium_quality);
                outln!("premium cost       ${:.4}", r.premium_cost_usd);
                outln!("saving vs premium  {:.4}", r.saving_vs_premium);
                outln!("explored           {:.4}", r.explored_share);
                outln!("second half        quality {:.4}, saving {:.4}", r.late_quality, r.late_saving_vs_premium);
                match r.feedbacks_to_bar {
                    Some(n) => outln!("within 0.01 of bar after {n} feedbacks (trailing {} tasks)", crate::replay::WINDOW),
                    None => outln!("never within 0.01 of bar over a trailing {} tasks", crate::replay::WINDOW),
                }
                if let Some(h) = &r.hindsight {
                    outln!("hindsight          one fixed tier mix per workflow: quality {:.4}, cost ${:.4}, saving {:.4}", h.quality, h.cost_usd, h.saving_vs_premium);
                }
                for (t, s) in &r.tier_share {
                    outln!("tier {t:<28} {s:.4}  threshold now {:.2}", r.final_thresholds.get(t).copied().unwrap_or(f64::NAN));
                }
            }
            Ok(())
        }
        Command::CheckConfig { file } => match Policy::load(path_str(&file)?) {
            Ok(p) => {
                let store = match &p.store.kind {
                    crate::store::StoreKind::Memory => "memory".to_string(),
                    crate::store::StoreKind::Redis { url, prefix } => format!("redis {url} prefix {prefix}"),
                    crate::store::StoreKind::RedisCluster { nodes, prefix } => format!("redis-cluster {} prefix {prefix}", nodes.join(",")),
                };
                outln!(
                    "{}: ok (version {}, {} tiers, {} scopes, {} budgets, store {store})",
                    file.display(),
                    p.version,
                    p.tiers.len(),
                    p.scopes.len() + 1,
                    p.budgets.len()
                );
                Ok(())
            }
            Err(e) => bail!("{}: invalid policy: {e}", file.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weak_or_placeholder_secrets_are_refused() {
        for bad in [
            "short",
            "change-me-shared-by-all-replicas",
            "replace-me-with-32-random-bytes-please",
            &"a".repeat(64),
            "abababababababababababababababababab",
        ] {
            assert!(super::check_secret(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(super::check_secret(b"q7Vv1mZ3xKp0sT9wNcR2yLbH5uJdE8aG").is_ok());
    }
}
