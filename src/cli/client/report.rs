//! `tokenwise report`: asks a running server for its books over a period and renders them as a
//! table, JSON, CSV or an HTML page.

use std::path::PathBuf;

use super::{ConnectArgs, admin_client, status_error};
use crate::cli::runtime;

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub(in crate::cli) struct ReportArgs {
    #[command(flatten)]
    server: ConnectArgs,
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
}

/// Prints (or writes) the server's books.
pub(in crate::cli) fn report(args: ReportArgs) -> anyhow::Result<()> {
    let ReportArgs {
        server,
        since,
        until,
        by,
        team,
        workflow,
        format,
        out,
        wide,
    } = args;
    runtime()?.block_on(async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let request =
            crate::grpc::report_request(&since, until.as_deref(), &by, &team, &workflow, now)
                .map_err(|(_, why)| anyhow::anyhow!(why))?;
        let mut client = admin_client(&server.addr).await?;
        let r = client
            .get_report(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let r: crate::report::Report = r.into();
        use crate::report::render;
        let text = match format {
            // Fit the terminal only when printing to one: a file or a pipe gets full rows.
            ReportFormat::Table => {
                let tty =
                    !wide && out.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout());
                // comfy-table reads the terminal's width.
                let width = if tty {
                    comfy_table::Table::new().width()
                } else {
                    None
                };
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
    })
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
