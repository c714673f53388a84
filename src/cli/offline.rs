//! Commands that need no server: train and eval the complexity model, replay recorded tasks in
//! process, validate a policy file, make an API key.

use std::path::PathBuf;

use anyhow::{Context, bail};

use clap::builder::TypedValueParser;

use super::{ReplayArgs, choices, load_records, path_str, split_parser};
use crate::domain::classifier::ComplexityModel;
use crate::domain::policy::{ExploreBy, Policy};
use crate::offline::dataset::Split;
use crate::offline::training::{self, Target, TrainOptions};

/// Arguments of `keygen`.
#[derive(Debug, clap::Args)]
pub(super) struct KeygenArgs {
    /// Name of the key, for logs and the audit trail, e.g. `search-prod`.
    #[arg(long)]
    name: String,
    /// Team the key acts for.
    #[arg(long)]
    team: String,
    /// `service` (Route, Feedback, its team's report) or `admin` (also policy and thresholds).
    #[arg(long, default_value = "service", value_parser = ["service", "admin"])]
    role: String,
}

/// Makes a new API key: the key on stdout, the --auth-keys entry (its hash) on stderr.
pub(super) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let KeygenArgs { name, team, role } = args;
    let (key, hash) = crate::grpc::auth::new_key();
    eprintln!(
        "key for {name} (give it to the caller as TOKENWISE_API_KEY / `authorization: Bearer <key>`; it is shown once):"
    );
    outln!("{key}");
    eprintln!("\nadd to the --auth-keys file:");
    eprintln!("[[keys]]\nname = {name:?}\nteam = {team:?}\nrole = {role:?}\nsha256 = {hash:?}");
    Ok(())
}

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub(super) struct TrainArgs {
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
    #[arg(long, value_parser = split_parser(), default_value = "all")]
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
    /// Also fit a premium-gap term with this L2 penalty on its weights (`irt` only): where the
    /// premium model gains more over the cheap one than the shared difficulty says. Off by
    /// default: the shipped model has none (see models/README.md).
    #[arg(long)]
    gap_alpha: Option<f64>,
    /// What the score means: `irt` (difficulty shared by both models), `cheap` (difficulty
    /// for the cheap model), `gap` (chance the premium model does better).
    #[arg(long, value_parser = target_parser(), default_value = "irt")]
    target: Target,
}

/// `--target` of train.
fn target_parser() -> impl TypedValueParser<Value = Target> {
    choices(Target::ALL, Target::name, |target| match target {
        Target::Irt => "Item response: one difficulty shared by both models, one ability each",
        Target::Cheap => "Difficulty for the cheap model alone (the chance it fails)",
        Target::Gap => "The chance the premium model does better than the cheap one",
    })
}

/// Trains the complexity model on a data file and writes the artifact.
pub(super) fn train(args: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
        data,
        cheap,
        premium,
        out,
        split,
        workflows,
        alpha,
        max_iterations,
        gap_alpha,
        target,
    } = args;
    let records = load_records(&data, split, &workflows)?;
    let opts = TrainOptions {
        cheap: cheap.clone(),
        premium: premium.clone(),
        alpha,
        max_iterations,
        gap_alpha,
        target,
    };
    let mut model = training::train(&records, &opts)?;
    let in_sample = training::evaluate(&model, &records, &cheap, &premium);
    model.training = serde_json::json!({
        "data": data.display().to_string(),
        "split": split.to_string(),
        "records": records.len(),
        "cheap": cheap,
        "premium": premium,
        "alpha": alpha,
        "gap_alpha": gap_alpha,
        "label": "item response: success (score >= 0.5) of each model, one shared difficulty per task",
        "hand_set_signals": training::HAND_SET
            .iter()
            .map(|(i, k)| serde_json::json!({"index": i, "sd_per_unit": k}))
            .collect::<Vec<_>>(),
        "in_sample": in_sample,
    });
    std::fs::write(&out, model.to_json()?).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} ({}) trained on {} records",
        out.display(),
        model.version,
        records.len()
    );
    Ok(())
}

/// Arguments of `eval`.
#[derive(Debug, clap::Args)]
pub(super) struct EvalArgs {
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
    #[arg(long, value_parser = split_parser(), default_value = "all")]
    split: Split,
    /// Keep only workflows with these prefixes; `!prefix` leaves one out
    /// (e.g. `'!gsm8k,!mmlu/high_school'`).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    workflows: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Prints RouteLLM metrics of a model on a data file.
pub(super) fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        data,
        cheap,
        premium,
        model,
        split,
        workflows,
        json,
    } = args;
    let model = match model {
        Some(p) => ComplexityModel::load(path_str(&p)?)?,
        None => ComplexityModel::bundled()?,
    };
    let records = load_records(&data, split, &workflows)?;
    let Some(r) = training::evaluate(&model, &records, &cheap, &premium) else {
        bail!(
            "no record in {} has outcomes for both {cheap:?} and {premium:?}",
            data.display()
        );
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

/// Replays a data file in process (routing and learning, in-memory state) and prints what it
/// measured.
pub(super) fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let ReplayArgs {
        data,
        config,
        tiers,
        bar,
        no_learning,
        seed,
        shuffle,
        model,
        split,
        workflows,
        json,
        team,
        strip_labels,
        shadow_rate,
        explore_by,
        no_shadow_runs,
        trace,
        ..
    } = args;
    if let Some(b) = bar
        && !(0.0..=1.0).contains(&b)
    {
        bail!("--bar must be in [0, 1], got {b}");
    }
    let model = match model {
        Some(p) => ComplexityModel::load(path_str(&p)?)?,
        None => ComplexityModel::bundled()?,
    };
    let mut records = load_records(&data, split, &workflows)?;
    if shuffle {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        records.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    let policy = match config {
        Some(p) => Policy::load(path_str(&p)?)
            .map_err(|e| anyhow::anyhow!("{}: invalid policy: {e}", p.display()))?,
        None => crate::offline::replay::policy_from_models(&records, &tiers, bar.unwrap_or(0.9))?,
    };
    let opts = crate::offline::replay::ReplayOptions {
        bar,
        learning: !no_learning,
        seed,
        team: team.unwrap_or_default(),
        strip_labels,
        shadow_rate,
        explore_by: explore_by.map(|e| match e.as_str() {
            "pairs" => ExploreBy::Pairs,
            "auto" => ExploreBy::Auto,
            _ => ExploreBy::Substitution,
        }),
        no_shadow_runs,
        trace: trace.is_some(),
    };
    let r = crate::offline::replay::replay(std::sync::Arc::new(model), policy, &records, &opts)?;
    if let Some(path) = &trace {
        write_trace(path, &r.trace)?;
    }
    if json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!("tasks              {} ({} skipped)", r.tasks, r.skipped);
        outln!(
            "learning           {}",
            if r.learning { "on" } else { "off" }
        );
        outln!(
            "quality            {:.4}  (bar {:.4}: {})",
            r.quality,
            r.bar,
            if r.bar_met { "met" } else { "MISSED" }
        );
        outln!("cost               ${:.4}", r.cost_usd);
        outln!("premium quality    {:.4}", r.premium_quality);
        outln!("premium cost       ${:.4}", r.premium_cost_usd);
        outln!("saving vs premium  {:.4}", r.saving_vs_premium);
        outln!(
            "explored           {:.4}  (cost vs the plan's choices ${:+.4}, score {:+.1})",
            r.explored_share,
            r.exploration_cost_usd,
            r.exploration_score_delta
        );
        outln!(
            "second half        quality {:.4}, saving {:.4}",
            r.late_quality,
            r.late_saving_vs_premium
        );
        match r.feedbacks_to_bar {
            Some(n) => outln!(
                "within 0.01 of bar after {n} feedbacks (trailing {} tasks)",
                crate::offline::replay::WINDOW
            ),
            None => outln!(
                "never within 0.01 of bar over a trailing {} tasks",
                crate::offline::replay::WINDOW
            ),
        }
        if let Some(h) = &r.hindsight {
            outln!(
                "hindsight          one fixed tier mix per workflow: quality {:.4}, cost ${:.4}, saving {:.4}",
                h.quality,
                h.cost_usd,
                h.saving_vs_premium
            );
        }
        for (t, s) in &r.tier_share {
            outln!(
                "tier {t:<28} {s:.4}  threshold now {:.2}",
                r.final_thresholds.get(t).copied().unwrap_or(f64::NAN)
            );
        }
        outln!("calibration, second half: predicted − recorded, on every task (on those served)");
        for (w, tiers) in &r.calibration {
            for (t, c) in tiers {
                outln!(
                    "  {w:<24} {t:<28} {:+.3} over {} ({:+.3} over {})",
                    c.predicted - c.recorded,
                    c.tasks,
                    c.served_predicted - c.served_recorded,
                    c.served
                );
            }
        }
    }
    Ok(())
}

/// Writes a traced replay's rows as JSON Lines.
fn write_trace(
    path: &std::path::Path,
    rows: &[crate::offline::replay::TraceRow],
) -> anyhow::Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("--trace {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub(super) struct CheckConfigArgs {
    /// Policy file (TOML), or with --deployment a deployment config file.
    file: PathBuf,
    /// FILE is a deployment config (`serve --deployment`: `[server]`, `[store]`), not a policy.
    #[arg(long)]
    deployment: bool,
}

/// Validates a policy file (or a deployment file): a one-line summary when valid, else the key
/// path and reason. A policy's deprecated `[store]` table is checked as the store it would give
/// at startup.
pub(super) fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let CheckConfigArgs { file, deployment } = args;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let name = file.display().to_string();
    let store_line = |d: &super::deployment::Deployment| {
        d.describe()
            .into_iter()
            .find(|l| l.starts_with("store = "))
            .unwrap_or_default()
    };
    if deployment {
        let d = super::deployment::DeploymentArgs::default()
            .resolve(&name, Some(&text), None, None)
            .map_err(|e| anyhow::anyhow!("invalid deployment config: {e}"))?;
        outln!(
            "{name}: ok (deployment config: listen {}, {})",
            d.server.listen,
            store_line(&d)
        );
        return Ok(());
    }
    let p = Policy::parse(&text).map_err(|e| anyhow::anyhow!("{name}: invalid policy: {e}"))?;
    let legacy = match crate::domain::policy::split_store(&text)
        .map_err(|e| anyhow::anyhow!("{name}: invalid policy: {e}"))?
        .store
    {
        Some(table) => {
            let d = super::deployment::DeploymentArgs::default()
                .resolve("", None, Some(table), None)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            format!(
                "; deprecated [store] table, read at startup as {}: move it to the deployment config",
                store_line(&d)
            )
        }
        None => String::new(),
    };
    outln!(
        "{name}: ok (version {}, {} tiers, {} scopes, {} budgets{legacy})",
        p.version,
        p.tiers.len(),
        p.scopes.len() + 1,
        p.budgets.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use crate::offline::dataset::Split;
    use crate::offline::training::Target;

    fn train(extra: &[&str]) -> Result<(Split, Target), clap::Error> {
        let args = [
            "tokenwise",
            "train",
            "--data",
            "d",
            "--cheap",
            "c",
            "--premium",
            "p",
            "--out",
            "o",
        ];
        match Cli::try_parse_from(args.iter().chain(extra))?.command {
            Command::Train(args) => Ok((args.split, args.target)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn split_and_target_are_read_by_name_with_defaults() {
        assert_eq!(train(&[]).unwrap(), (Split::All, Target::Irt));
        assert_eq!(
            train(&["--split", "holdout", "--target", "gap"]).unwrap(),
            (Split::Holdout, Target::Gap)
        );
        let err = train(&["--split", "Holdout"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(
            err.to_string()
                .contains("[possible values: all, train, holdout]"),
            "{err}"
        );
    }
}
