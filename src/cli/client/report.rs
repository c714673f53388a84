//! `tokenwise report`: asks a running server for its books over a period and renders them as a
//! table, JSON, CSV or an HTML page.

use std::path::PathBuf;

use super::{admin_client, status_error};
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
        let mut client = admin_client(&addr).await?;
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
    let bad = |why: &str| {
        anyhow::anyhow!(
            "cannot read time {s:?} (a duration like 24h, a date like 2026-11-01, or 2026-11-01T08:00:00Z): {why}"
        )
    };
    if s.trim() == "0" {
        return Ok(now_ms);
    }
    // A duration ago: `24h`, `7d`, `2h 30m`, `90 minutes`; days are 24 hours, and months and
    // years 30.44 and 365.25 days (as before).
    if let Ok(span) = s.parse::<jiff::Span>() {
        if span.is_negative() {
            return Err(bad("a duration ago is positive"));
        }
        let calendar_days =
            f64::from(span.get_years()) * 365.25 + f64::from(span.get_months()) * 30.44;
        let rest = span
            .years(0)
            .months(0)
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|e| bad(&e.to_string()))?;
        let ms = rest.as_millis() as f64 + calendar_days * 86_400_000.0;
        return Ok(now_ms.saturating_sub(ms as u64));
    }
    let at = s.parse::<jiff::Timestamp>().or_else(|_| {
        s.parse::<jiff::civil::DateTime>()
            .or_else(|_| s.parse::<jiff::civil::Date>().map(|d| d.at(0, 0, 0, 0)))
            .and_then(|dt| dt.to_zoned(TimeZone::UTC))
            .map(|z| z.timestamp())
    });
    match at {
        Ok(t) if t.as_millisecond() > 0 => Ok(t.as_millisecond() as u64),
        Ok(_) => Err(bad("before 1970")),
        Err(e) => Err(bad(&e.to_string())),
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
        // As humantime read them: months and years at 30.44 and 365.25 days, "0" is now.
        assert_eq!(
            parse_instant("1month", now).unwrap(),
            now - (30.44 * 86_400_000.0) as u64
        );
        assert_eq!(
            parse_instant("1y", now).unwrap(),
            now - (365.25 * 86_400_000.0) as u64
        );
        assert_eq!(parse_instant("0", now).unwrap(), now);
        assert_eq!(parse_instant("2h 30m", now).unwrap(), now - 9_000_000);
        // Never a silent "0" (which the server reads as its default window).
        for wrong in ["-2h", "2h ago", "1969-12-31"] {
            let e = parse_instant(wrong, now).unwrap_err().to_string();
            assert!(e.contains("cannot read time"), "{wrong}: {e}");
        }
    }
}
