//! Writes report pages to look at (they check nothing by themselves):
//!
//! - `cargo run --example report_pages -- [DIR]`: the sample pages (HTML, and the terminal
//!   table as text) into DIR (default `/tmp`), as `tests/screenshots/report.sh` uses them;
//! - `cargo run --example report_pages -- --real REPORT.json [OUT.html]`: a real report saved
//!   with `tokenwise report --format json` rendered as a page (default `/tmp/real.html`).
//!
//! The samples are the views' test fixtures (`tokenwise::report::render::fixtures`, built with
//! the `testsuite` feature, which `cargo` turns on for examples).

use anyhow::Context;
use tokenwise::report::render::fixtures::{
    by_team_workflow, by_workflow, many_days, one_day, sample,
};
use tokenwise::report::render::{html, table};
use tokenwise::report::{GroupBy, Report};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, json, rest @ ..] if flag == "--real" && rest.len() <= 1 => {
            let out = rest.first().map_or("/tmp/real.html", String::as_str);
            let text =
                std::fs::read_to_string(json).with_context(|| format!("cannot read {json}"))?;
            let r: Report =
                serde_json::from_str(&text).with_context(|| format!("{json} is not a report"))?;
            write(out, html(&r))
        }
        [] => samples("/tmp"),
        [dir] if !dir.starts_with("--") => samples(dir),
        _ => anyhow::bail!("usage: report_pages [DIR] | --real REPORT.json [OUT.html]"),
    }
}

/// The sample pages, into `dir`.
fn samples(dir: &str) -> anyhow::Result<()> {
    let at = |name: &str| format!("{dir}/{name}");
    write(&at("report-sample.html"), html(&sample()))?;
    write(&at("report-sample.txt"), table(&sample()))?;
    let mut single = sample();
    single.series.truncate(1);
    write(&at("report-single.html"), html(&single))?;
    single.series.clear();
    write(&at("report-empty.html"), html(&single))?;
    write(&at("report-day.html"), html(&one_day()))?;
    write(&at("report-workflow.html"), html(&by_workflow()))?;
    write(&at("report-team-workflow.html"), html(&by_team_workflow()))?;
    write(&at("report-days.html"), html(&many_days()))?;
    let mut tier = sample();
    tier.group_by = GroupBy::Tier;
    write(&at("report-tier.html"), html(&tier))
}

fn write(path: &str, text: String) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {path}"))
}
