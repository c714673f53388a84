//! The one-page HTML report: the page around its sections (headline, chart, groups, budgets,
//! each in a module of its own) with its stylesheet from `assets/report.css`.

mod budgets;
mod groups;
mod headline;

use std::fmt::{self, Write as _};

use self::budgets::write_budgets;
use self::groups::write_groups;
use self::headline::write_headline;
use super::chart::write_chart;
use super::{display_or_missing, enforcement_line, escape, utc};
use crate::report::Report;

/// Renders a self-contained HTML page (inline CSS, no JavaScript, no external resources).
///
/// Top to bottom: the report's five numbers as six cards, one fact each (spend by team and by
/// workflow, each its top three with their share, or the `--by` flag that shows them when the
/// grouping does not; cost per completed output; value created, with human time displaced and
/// revenue or risk impact under labels of their own; reuse rate; realized quality against the
/// bar); an inline SVG chart of spend per hour, or per day over more than four days (bars, left
/// axis, dollars) with realized quality (line, right axis 0–1) and the quality bar as a dashed
/// reference line, narrowed to the hours with traffic when they are few in the period, drawn
/// twice, wide and with larger text for small screens (without traffic, a note instead); spend
/// by group, the `MAX_GROUP_ROWS` (15) highest-spend groups with the rest summed up in one row,
/// and the total of everything as the last row, laid out to fit a 1280 px screen (long names
/// wrap, secondary numbers stack); budgets (when any). Every label from the report is
/// HTML-escaped.
pub fn html(r: &Report) -> String {
    let mut out = String::new();
    match write_html(&mut out, r) {
        Ok(()) => out,
        // Writing into a String cannot fail; keep whatever was written if it somehow does.
        Err(fmt::Error) => out,
    }
}

/// The page's stylesheet, inlined into its `<style>` element (starting on a line of its own).
const CSS: &str = include_str!("assets/report.css");

/// The page, top to bottom (see [`html`]).
fn write_html(o: &mut String, r: &Report) -> fmt::Result {
    let period = format!("{} → {} UTC", utc(r.since_ms), utc(r.until_ms));
    let group = group_title(r);
    writeln!(o, "<!DOCTYPE html>")?;
    writeln!(o, "<html lang=\"en\"><head><meta charset=\"utf-8\">")?;
    writeln!(
        o,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    writeln!(o, "<title>Model spend report · {}</title>", escape(&period))?;
    writeln!(o, "<style>\n{CSS}</style></head><body><main>")?;
    writeln!(o, "<h1>Model spend report</h1>")?;
    writeln!(
        o,
        "<p class=\"meta\">{} · grouped by {} · policy {} · generated {} UTC</p>",
        escape(&period),
        escape(&group),
        escape(display_or_missing(&r.policy_version)),
        utc(r.generated_ms),
    )?;

    write_headline(o, r)?;
    write_chart(o, r)?;
    write_groups(o, r, &group)?;
    if !r.budgets.is_empty() {
        write_budgets(o, &r.budgets, &r.total)?;
    } else if let Some(line) = enforcement_line(&r.total) {
        writeln!(
            o,
            "<section><p class=\"note\">{}</p></section>",
            escape(&line)
        )?;
    }
    let quality = super::quality_lines(&r.quality);
    if !quality.is_empty() {
        writeln!(o, "<section><h2>Quality kept vs premium</h2>")?;
        for line in quality {
            writeln!(o, "<p class=\"note\">{}</p>", escape(&line))?;
        }
        writeln!(o, "</section>")?;
    }

    writeln!(
        o,
        "<footer>Money in US dollars. Spend is the actual cost of decisions with feedback and \
         the estimate of the rest; savings compare it with running the same tokens on each \
         scope's premium tier. Value created (revenue, risk) counts completed outcomes at the \
         policy's value per success; human time displaced counts them at its human minutes per \
         success, worth its loaded cost per hour. Times in UTC.</footer>"
    )?;
    writeln!(o, "</main></body></html>")
}

/// "team", "workflow", "tier" or "team / workflow".
fn group_title(r: &Report) -> String {
    r.group_by.as_str().replace('_', " / ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::GroupReport;
    use crate::report::render::fixtures::sample;
    use crate::report::render::{csv, table};

    #[test]
    fn html_is_self_contained_escaped_and_charted() {
        let h = html(&sample());
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.trim_end().ends_with("</html>"));
        assert!(h.contains("<svg"), "chart missing");
        assert!(h.contains("<text"), "axis labels missing from the SVG");
        assert!(h.contains("spend per hour (USD)"));
        assert!(h.contains("03-04 06:00"), "hour tick label missing");
        assert!(h.contains("Spend by team"));
        assert!(h.contains("search"));
        assert!(h.contains("team&lt;x&gt;"));
        assert!(!h.contains("team<x>"));
        assert!(!h.to_lowercase().contains("<script"));
        assert!(
            !h.contains("<link") && !h.contains("src=\""),
            "no external resources"
        );
        assert!(h.contains("Budgets") && h.contains("team:search/month"));
        assert!(h.contains("$14.85"), "headline spend");
        assert!(h.contains("14%"), "headline reuse");
        assert!(h.contains("meets the bar"));
        assert!(h.contains("quality bar 0.75"));
        assert!(h.contains("Value created (revenue, risk) counts completed outcomes"));
    }

    #[test]
    fn html_without_traffic() {
        let mut r = sample();
        r.series.clear();
        r.groups.clear();
        r.budgets.clear();
        r.total = GroupReport {
            key: "total".into(),
            ..GroupReport::default()
        };
        let h = html(&r);
        assert!(h.contains("no traffic in this period"));
        assert!(!h.contains("<svg"));
        let t = table(&r);
        assert!(t.contains("total"));
        assert_eq!(csv(&r).unwrap().lines().count(), 2);
    }

    #[test]
    fn html_puts_the_chart_between_headline_and_tables() {
        let h = html(&sample());
        let at = |needle: &str| h.find(needle).unwrap_or_else(|| panic!("{needle} missing"));
        let headline = at("class=\"kpis\"");
        let chart = at("Spend and quality per hour");
        let svg = at("<svg");
        let groups = at("<h2>Spend by team</h2>");
        let budgets = at("<h2>Budgets</h2>");
        assert!(headline < chart && chart < svg && svg < groups && groups < budgets);

        // Also when the chart is only the no-traffic note.
        let mut r = sample();
        r.series.clear();
        let h = html(&r);
        assert!(
            h.find("no traffic in this period").unwrap()
                < h.find("<h2>Spend by team</h2>").unwrap()
        );
    }
}
