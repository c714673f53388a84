//! The command line: the subcommands and their dispatch. `serve` runs the server, `client`
//! talks to a running one, `offline` needs none; commands print results on stdout, logs on stderr.

use std::path::PathBuf;

use std::str::FromStr;

use anyhow::Context;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use crate::offline::dataset::Split;

/// `print!` for command output: when stdout is closed early (`tokenwise report | head`) the
/// command ends quietly with status 0, as git and ripgrep do, instead of panicking on EPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

/// `println!` for command output; see [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e);
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

mod client;
pub mod deployment;
pub mod env;
mod offline;
mod secret;
mod serve;

pub use secret::check_secret;
pub use serve::{ServeArgs, engine_from_args, startup_config};

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
    // Boxed: its deployment settings make it several times larger than the other commands.
    Serve(Box<ServeArgs>),
    /// Ask a running server to route one task and print the decision.
    Route(client::RouteArgs),
    /// Record that a decision's output was used again (reopened, sent, imported): counted in
    /// the report's reuse rate and reuse events, up to the scope's reuse_retention_days.
    Reuse(client::ReuseArgs),
    /// Print the learned thresholds of a running server, per scope and tier.
    Thresholds(client::ThresholdsArgs),
    /// Print the books of a running server: spend, outcomes, cost per completed output,
    /// savings, value, reuse and budgets, per team or workflow.
    Report(client::ReportArgs),
    /// Make a new API key: prints the key (give it to the caller; it is not stored) and the
    /// entry for the --auth-keys file (its hash).
    Keygen(offline::KeygenArgs),
    /// Policy administration on a running server: show, versions, diff, what-if, apply,
    /// rollback.
    Policy {
        #[command(subcommand)]
        action: client::PolicyAction,
    },
    /// Train the complexity model on graded task records.
    Train(offline::TrainArgs),
    /// RouteLLM metrics (APGR, CPT(50%), CPT(80%), saving at 95%) of a model on a data file.
    Eval(offline::EvalArgs),
    /// Replay recorded tasks through routing and learning; report quality and cost vs premium.
    Replay(ReplayArgs),
    /// Validate a policy file: exit 0 if valid, else print the key path and reason.
    CheckConfig(offline::CheckConfigArgs),
}

/// Arguments of `replay`: in process (`offline`), or with `--addr` against a running server
/// (`client`).
#[derive(Debug, clap::Args)]
struct ReplayArgs {
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
    #[arg(long, value_parser = split_parser(), default_value = "all")]
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
    /// The team every task is routed for. Default: in process the anonymous team; with
    /// --addr each workflow's family (`mmlu` for `mmlu/anatomy`), for books by team.
    #[arg(long)]
    team: Option<String>,
    /// Route every task without its workflow label, as a caller that sends none; the
    /// report still groups by the true label.
    #[arg(long)]
    strip_labels: bool,
    /// In process: set every scope's shadow_rate (at most 0.2); shadowed decisions post the
    /// shadow tier's recorded outcome as their shadow score, and the JSON gets `shadow`:
    /// quality kept with its interval and whether it covers the truth.
    #[arg(long)]
    shadow_rate: Option<f64>,
    /// In process: set every scope's explore_by. `pairs`: an explored task is served by the
    /// plan's tier and the drawn tier's recorded outcome is posted as its shadow pair (the
    /// pair's cost counts in the replay's cost and in exploration's).
    /// `auto` (the policies' default): pairs while the caller runs them, substitution while
    /// it does not (learning on: with --no-learning the plan never sees whether it does).
    #[arg(long, value_parser = ["substitution", "pairs", "auto"])]
    explore_by: Option<String>,
    /// Run no shadow tier: every Feedback goes without a shadow score, as from a caller that
    /// ignores `shadow_tier` (in process, and with --addr).
    #[arg(long)]
    no_shadow_runs: bool,
    /// In process: write one JSON line per routed task to this file: the tier served and
    /// planned, the plan's target and expected quality, and every allowed tier's predicted
    /// quality and recorded score (the data behind the report's calibration).
    #[arg(long, conflicts_with = "addr")]
    trace: Option<PathBuf>,
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::serve(*args),
        Command::Route(args) => client::route(args),
        Command::Reuse(args) => client::reuse(args),
        Command::Thresholds(args) => client::thresholds(args),
        Command::Report(args) => client::report(args),
        Command::Keygen(args) => offline::keygen(args),
        Command::Policy { action } => client::policy(action),
        Command::Train(args) => offline::train(args),
        Command::Eval(args) => offline::eval(args),
        Command::Replay(mut args) => match args.addr.take() {
            Some(addr) => client::replay(&addr, args),
            None => offline::replay(args),
        },
        Command::CheckConfig(args) => offline::check_config(args),
    }
}

/// The records of `split` of a data file whose workflows match `workflows` (see
/// [`crate::offline::dataset::filter_workflows`]).
fn load_records(
    data: &std::path::Path,
    split: Split,
    workflows: &[String],
) -> anyhow::Result<Vec<crate::offline::dataset::Record>> {
    let records = crate::offline::dataset::load(path_str(data)?, split)?;
    Ok(crate::offline::dataset::filter_workflows(
        records, workflows,
    ))
}

/// `p` as the `&str` the loaders take.
fn path_str(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// The runtime a command's gRPC calls (or the server) run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A clap parser for a domain enum: clap checks the name against `all` (so `--help` lists the
/// values with their `help` lines, and a wrong one is refused with the list), then `FromStr`
/// reads it.
fn choices<T, const N: usize>(
    all: [T; N],
    name: fn(T) -> &'static str,
    help: fn(T) -> &'static str,
) -> impl TypedValueParser<Value = T>
where
    T: Copy + FromStr + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(all.map(|v| PossibleValue::new(name(v)).help(help(v))))
        .try_map(|s| s.parse::<T>())
}

/// `--split` of train, eval and replay.
fn split_parser() -> impl TypedValueParser<Value = Split> {
    choices(Split::ALL, Split::name, |split| match split {
        Split::All => "Every record",
        Split::Train => "Records whose id does not hash into the held-out fifth",
        Split::Holdout => "The held-out fifth: `fnv1a(id) % 5 == 0`",
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
