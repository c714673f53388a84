//! `tokenwise report`: asks a running server for its books over a period and renders them as a
//! table, JSON, CSV or an HTML page.

use std::path::PathBuf;

use super::{connect, status_error};
use crate::cli::runtime;
use crate::grpc::pb;

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub(in crate::cli) struct ReportArgs {
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
}

/// Prints (or writes) the server's books.
pub(in crate::cli) fn report(args: ReportArgs) -> anyhow::Result<()> {
    let ReportArgs {
        addr,
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
        let (period, since_ms) = match since.as_str() {
            "day" | "week" | "month" => (since.clone(), 0),
            _ => (String::new(), parse_instant(&since, now)?),
        };
        let until_ms = until
            .as_deref()
            .map(|u| parse_instant(u, now))
            .transpose()?
            .unwrap_or(0);
        let mut client = pb::admin_client::AdminClient::new(connect(&addr).await?);
        let r = client
            .get_report(pb::GetReportRequest {
                since_ms,
                until_ms,
                period,
                team,
                workflow,
                group_by: by,
            })
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

/// A point in time from the command line: a UTC date, an RFC 3339 time, or a duration ago.
fn parse_instant(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    use jiff::tz::TimeZone;
    let ms = |t: jiff::Timestamp| u64::try_from(t.as_millisecond()).unwrap_or(0);
    // A duration ago, days being 24 hours: `24h`, `7d`, `2h 30m`, `90 minutes`.
    if let Ok(d) = s
        .parse::<jiff::Span>()
        .and_then(|span| span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()))
    {
        return Ok(now_ms.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(ms(t));
    }
    let civil = s
        .parse::<jiff::civil::DateTime>()
        .or_else(|_| s.parse::<jiff::civil::Date>().map(|d| d.at(0, 0, 0, 0)));
    match civil.and_then(|dt| dt.to_zoned(TimeZone::UTC)) {
        Ok(z) => Ok(ms(z.timestamp())),
        Err(e) => anyhow::bail!(
            "cannot read time {s:?} (a duration like 24h, a date like 2026-11-01, or 2026-11-01T08:00:00Z): {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_instant;

    #[test]
    fn instants_are_durations_ago_dates_or_times() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_instant("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_instant("2026-11-01", now).unwrap(), 1_793_491_200_000);
        assert_eq!(
            parse_instant("2026-11-01T08:00:00Z", now).unwrap(),
            1_793_491_200_000 + 8 * 3_600_000
        );
        assert!(parse_instant("yesterday", now).is_err());
    }
}
