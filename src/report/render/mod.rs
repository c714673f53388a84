//! Views of a [`Report`](super::Report): the terminal table (`table`), CSV (`csv`), JSON (`json`)
//! and the HTML page with its SVG chart; here, the formatting they share.
//!
//! Every view takes the same [`Report`](super::Report); none of them computes anything new
//! beyond shares and percentages for display. Money stays integer micro-dollars until the last
//! moment: the table and HTML use [`usd`], the CSV carries both the exact micros and dollars
//! with six decimals. Times are shown in UTC.

mod csv;
#[cfg(test)]
mod fixtures;
mod json;
mod table;

pub use self::csv::csv;
pub use self::json::json;
pub use self::table::{table, table_fitting};

use std::fmt::{self, Write as _};

use super::{BudgetStatus, GroupBy, GroupReport, Report, SeriesPoint, thousands, usd};

/// Shown for a value that does not exist (e.g. cost per completed output without completions).
const MISSING: &str = "–";
/// One hour in milliseconds: the series bucket width.
const HOUR_MS: u64 = 3_600_000;
/// Longest period, in hours, the chart spans before it narrows to the hours with traffic.
const MAX_AXIS_HOURS: u64 = 24 * 93;
/// Size of the SVG chart, pixels (it scales down with the page).
const CHART_SIZE: (u32, u32) = (1120, 360);

// ---------------------------------------------------------------------------------------------
// A group's numbers as text (table and HTML)
// ---------------------------------------------------------------------------------------------

/// `41.0 h ($2,870)`: hours displaced and their price; `–` when none were.
fn human_time_text(g: &GroupReport) -> String {
    if g.human_hours <= 0.0 && g.human_value_micros == 0 {
        return MISSING.to_owned();
    }
    format!("{:.1} h ({})", g.human_hours, usd(g.human_value_micros))
}

/// The sentence a finance reader wants: "≈ 41 hours of human work displaced, worth $2,870 (≈
/// $70/h), for $212 of model spend." `None` when no scope sets human time.
fn human_time_sentence(t: &GroupReport) -> Option<String> {
    if !t.human_hours.is_finite() || t.human_hours <= 0.0 {
        return None;
    }
    let worth = if t.human_value_micros > 0 {
        format!(
            ", worth {} (≈ {}/h)",
            usd(t.human_value_micros),
            usd((t.human_value_micros as f64 / t.human_hours).round() as i64)
        )
    } else {
        String::new()
    };
    Some(format!(
        "≈ {} hours of human work displaced{worth}, for {} of model spend.",
        thousands(t.human_hours.round() as u64),
        usd(t.spend_micros)
    ))
}

/// Decimals to show realized quality and bar with, and whether realized is *visibly* below
/// the bar at those decimals. Two decimals, unless realized is below the bar but rounds to
/// the same two decimals: then three, or four. Below the bar yet equal even at four decimals
/// counts as on the bar (two decimals, not below), so whatever is flagged reads as lower.
fn quality_precision(q: Option<f64>, b: Option<f64>) -> (usize, bool) {
    let (Some(q), Some(b)) = (q, b) else {
        return (2, false);
    };
    if q.is_nan() || b.is_nan() || q >= b {
        return (2, false);
    }
    // Rounding is monotonic, so differing strings mean realized shows strictly lower.
    (2..=4)
        .find(|&d| format!("{q:.d$}") != format!("{b:.d$}"))
        .map_or((2, false), |d| (d, true))
}

/// Share of decisions per tier, e.g. `small 60% · medium 30% · frontier 10%`.
fn tier_mix_text(g: &GroupReport) -> String {
    let shares = tier_shares(g);
    if shares.is_empty() {
        return MISSING.to_owned();
    }
    shares
        .iter()
        .map(|(tier, share)| format!("{tier} {}", percent(*share)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `(tier, share of decisions)` per tier, in the report's order; empty without decisions.
fn tier_shares(g: &GroupReport) -> Vec<(&str, f64)> {
    // Saturating: counters come from a store and may be anything a u64 holds.
    let total = g
        .tier_mix
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.tasks));
    if total == 0 {
        return Vec::new();
    }
    g.tier_mix
        .iter()
        .map(|t| (t.tier.as_str(), t.tasks as f64 / total as f64))
        .collect()
}

/// Used / (hard else soft) limit; `None` without a positive limit.
fn budget_fraction(s: &BudgetStatus) -> Option<f64> {
    let limit = s.hard_limit_micros.or(s.soft_limit_micros)?;
    (limit > 0).then(|| s.used_micros as f64 / limit as f64)
}

/// The budget enforcement sentence, `None` when budgets neither lowered nor refused anything.
fn enforcement_line(total: &GroupReport) -> Option<String> {
    if total.budget_downgrades == 0 && total.budget_rejections == 0 {
        return None;
    }
    Some(format!(
        "budgets: {} decision{} downgraded to a cheaper tier, {} route call{} rejected",
        total.budget_downgrades,
        plural(total.budget_downgrades),
        total.budget_rejections,
        plural(total.budget_rejections),
    ))
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

/// Renders a self-contained HTML page (inline CSS, no JavaScript, no external resources).
///
/// Top to bottom: the five headline numbers for the total (spend, cost per completed output,
/// value created with savings against the premium tier, reuse rate, realized quality against
/// the bar); an inline SVG chart of spend per hour (bars, left axis, dollars) with realized
/// quality per hour (line, right axis 0–1) and the quality bar as a dashed reference line
/// (without traffic, a note instead); spend by group, the [`MAX_GROUP_ROWS`] highest-spend
/// groups with the rest summed up in one row, and the total of everything as the last row;
/// budgets (when any). Every label from the report is HTML-escaped.
pub fn html(r: &Report) -> String {
    let mut out = String::new();
    match write_html(&mut out, r) {
        Ok(()) => out,
        // Writing into a String cannot fail; keep whatever was written if it somehow does.
        Err(fmt::Error) => out,
    }
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's stylesheet, inlined into its `<style>` element (starting on a line of its own).
const CSS: &str = include_str!("assets/report.css");

/// Tier colours, cheapest first.
const TIER_COLOURS: [&str; 6] = [
    "#93c5fd", "#3b82f6", "#1e3a8a", "#a78bfa", "#f59e0b", "#10b981",
];

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

    write_headline(o, &r.total)?;
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

    writeln!(
        o,
        "<footer>Money in US dollars. Spend is the actual cost of decisions with feedback and \
         the estimate of the rest; savings compare it with running the same tokens on each \
         scope's premium tier; value counts completed outcomes at the policy's value per \
         success. Times in UTC.</footer>"
    )?;
    writeln!(o, "</main></body></html>")
}

/// "team", "workflow", "tier" or "team / workflow".
fn group_title(r: &Report) -> String {
    r.group_by.as_str().replace('_', " / ")
}

/// The five headline numbers.
fn write_headline(o: &mut String, t: &GroupReport) -> fmt::Result {
    writeln!(o, "<section class=\"kpis\">")?;

    kpi(
        o,
        "Spend",
        &usd(t.spend_micros),
        &format!(
            "<b>{}</b> task{} routed",
            thousands(t.tasks),
            plural(t.tasks)
        ),
    )?;

    kpi(
        o,
        "Cost per completed",
        &t.cost_per_completed_micros
            .map(usd)
            .unwrap_or_else(|| MISSING.to_owned()),
        &format!(
            "<b>{}</b> completed of {} outcome{}",
            thousands(t.completed),
            thousands(t.outcomes),
            plural(t.outcomes)
        ),
    )?;

    let savings_share = if t.premium_micros > 0 {
        format!(
            " ({})",
            percent(t.savings_micros as f64 / t.premium_micros as f64)
        )
    } else {
        String::new()
    };
    kpi(
        o,
        "Value created (revenue, risk)",
        &usd(t.value_micros),
        &format!(
            "net <b class=\"{}\">{}</b><br>saved <b>{}</b>{} vs premium{}",
            if t.net_value_micros < 0 {
                "bad"
            } else {
                "good"
            },
            usd(t.net_value_micros),
            usd(t.savings_micros),
            savings_share,
            human_time_sentence(t)
                .map(|s| format!("<br>{}", escape(&s)))
                .unwrap_or_default(),
        ),
    )?;

    kpi(
        o,
        "Reuse rate",
        &t.reuse_rate
            .map(percent)
            .unwrap_or_else(|| MISSING.to_owned()),
        &format!(
            "<b>{}</b> of {} completed output{} reused, <b>{}</b> use{} in all{}",
            thousands(t.reused),
            thousands(t.completed),
            plural(t.completed),
            thousands(t.reuse_events),
            plural(t.reuse_events),
            if t.reused > 0 {
                format!(
                    " ({:.1} per reused output)",
                    t.reuse_events as f64 / t.reused as f64
                )
            } else {
                String::new()
            }
        ),
    )?;

    let (value, sub) = match (t.realized_quality, t.quality_bar) {
        (Some(q), Some(b)) => {
            let (d, below) = quality_precision(Some(q), Some(b));
            let (class, verdict) = if below {
                (
                    "bad",
                    format!("<b class=\"bad\">below the bar</b> (−{:.d$})", b - q),
                )
            } else if q >= b {
                (
                    "good",
                    format!("<b class=\"good\">meets the bar</b> (+{:.2})", q - b),
                )
            } else {
                ("good", "<b class=\"good\">at the bar</b>".to_owned())
            };
            (
                format!("<span class=\"{class}\">{q:.d$}</span> <small>/ {b:.d$}</small>"),
                verdict,
            )
        }
        (Some(q), None) => (format!("{q:.2}"), "no quality bar".to_owned()),
        (None, b) => (
            MISSING.to_owned(),
            format!("no outcomes yet · bar {}", opt_fixed(b, 2)),
        ),
    };
    kpi_raw(o, "Quality vs bar", &value, &sub)?;

    writeln!(o, "</section>")
}

/// One headline card; `value` is escaped, `sub` is trusted markup built here.
fn kpi(o: &mut String, label: &str, value: &str, sub: &str) -> fmt::Result {
    kpi_raw(o, label, &escape(value), sub)
}

/// One headline card with trusted markup for value and sub line.
fn kpi_raw(o: &mut String, label: &str, value: &str, sub: &str) -> fmt::Result {
    writeln!(
        o,
        "<div class=\"kpi\"><div class=\"label\">{}</div><div class=\"value\">{value}</div>\
         <div class=\"sub\">{sub}</div></div>",
        escape(label)
    )
}

/// Columns of the groups table.
const GROUP_COLUMNS: usize = 12;

/// Spend by group: the [`MAX_GROUP_ROWS`] highest-spend groups, one row summing up the rest
/// when there are more, and the total of everything as the footer row.
fn write_groups(o: &mut String, r: &Report, group: &str) -> fmt::Result {
    let tiers = tier_order(r);
    write!(
        o,
        "<section><div class=\"head\"><h2>Spend by {}</h2>",
        escape(group)
    )?;
    if !tiers.is_empty() {
        write!(
            o,
            "<div class=\"legend\" title=\"share of decisions per tier; hover a bar for the numbers\">tier mix:"
        )?;
        for (i, tier) in tiers.iter().enumerate() {
            write!(
                o,
                "<span><span class=\"sw\" style=\"background:{}\"></span>{}</span>",
                tier_colour(i),
                escape(tier)
            )?;
        }
        write!(o, "</div>")?;
    }
    writeln!(o, "</div>")?;

    writeln!(
        o,
        "<div class=\"scroll\"><table class=\"groups\"><thead><tr>"
    )?;
    write!(o, "<th>{}</th>", escape(group))?;
    for h in [
        "spend",
        "tasks",
        // Broken by hand: a header's one-line width would widen its column.
        "completed<br>/ outcomes",
        "cost /<br>completed",
        "quality<br>/ bar",
        "savings vs<br>premium",
        "value<br>(revenue, risk)",
        "human<br>time",
        "net<br>value",
        "reuse",
    ] {
        write!(o, "<th>{h}</th>")?;
    }
    writeln!(o, "<th class=\"l\">tier<br>mix</th></tr></thead><tbody>")?;
    if r.groups.is_empty() {
        writeln!(
            o,
            "<tr><td colspan=\"{GROUP_COLUMNS}\" class=\"empty\">no traffic in this period</td></tr>"
        )?;
    }
    let (shown, rest) = split_groups(&r.groups);
    for g in shown {
        write!(o, "<tr>")?;
        group_row(o, g, &g.key, Some(r.total.spend_micros), &tiers)?;
        writeln!(o, "</tr>")?;
    }
    if !rest.is_empty() {
        let spend = rest
            .iter()
            .fold(0i64, |a, g| a.saturating_add(g.spend_micros));
        let tasks = rest.iter().fold(0u64, |a, g| a.saturating_add(g.tasks));
        writeln!(
            o,
            "<tr class=\"more\"><td colspan=\"{GROUP_COLUMNS}\">… {} more {}: <b>{}</b> spend, \
             <b>{}</b> task{} (full list: <code>tokenwise report --by {} --format csv</code>)</td></tr>",
            thousands(rest.len() as u64),
            group_noun(r.group_by, rest.len()),
            escape(&usd(spend)),
            thousands(tasks),
            plural(tasks),
            r.group_by.as_str(),
        )?;
    }
    writeln!(o, "</tbody><tfoot><tr>")?;
    group_row(o, &r.total, "total", None, &tiers)?;
    writeln!(o, "</tr></tfoot></table></div></section>")
}

/// What `n` groups are called: `team`, `workflows`, `team / workflow pairs`…
fn group_noun(by: GroupBy, n: usize) -> &'static str {
    let one = n == 1;
    match by {
        GroupBy::Team if one => "team",
        GroupBy::Team => "teams",
        GroupBy::Workflow if one => "workflow",
        GroupBy::Workflow => "workflows",
        GroupBy::Tier if one => "tier",
        GroupBy::Tier => "tiers",
        GroupBy::TeamWorkflow if one => "team / workflow pair",
        GroupBy::TeamWorkflow => "team / workflow pairs",
    }
}

/// Most groups the HTML table lists one by one.
const MAX_GROUP_ROWS: usize = 15;

/// The groups the HTML table lists (highest spend first, at most [`MAX_GROUP_ROWS`]) and the
/// rest, summed up in one row. All of them when they fit.
fn split_groups(groups: &[GroupReport]) -> (Vec<&GroupReport>, Vec<&GroupReport>) {
    let mut sorted: Vec<&GroupReport> = groups.iter().collect();
    // Stable: equal spend keeps the report's order.
    sorted.sort_by_key(|g| std::cmp::Reverse(g.spend_micros));
    if sorted.len() <= MAX_GROUP_ROWS {
        return (sorted, Vec::new());
    }
    let rest = sorted.split_off(MAX_GROUP_ROWS);
    (sorted, rest)
}

/// Tier names in colour order: the total's tiers (cheapest first), then any other tier in the
/// order groups mention it. A tier keeps its colour in every row.
fn tier_order(r: &Report) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for t in r
        .total
        .tier_mix
        .iter()
        .chain(r.groups.iter().flat_map(|g| &g.tier_mix))
    {
        if !out.contains(&t.tier.as_str()) {
            out.push(&t.tier);
        }
    }
    out
}

/// The cells of one group row; `total_spend` draws the share-of-spend bar, `tiers` fixes the
/// tier colours (see [`tier_order`]).
fn group_row(
    o: &mut String,
    g: &GroupReport,
    label: &str,
    total_spend: Option<i64>,
    tiers: &[&str],
) -> fmt::Result {
    // Long labels (`mmlu/high_school_european_history`) may wrap after a slash.
    write!(
        o,
        "<td class=\"key\" title=\"{}\">{}</td>",
        escape(label),
        escape(label).replace('/', "/<wbr>")
    )?;
    let share = match total_spend {
        Some(total) if total > 0 => {
            let pct = (g.spend_micros as f64 / total as f64 * 100.0).clamp(0.0, 100.0);
            format!(
                "<span class=\"share\" title=\"{pct:.0}% of spend\"><i style=\"width:{pct:.1}%\"></i></span>"
            )
        }
        _ => String::new(),
    };
    write!(o, "<td>{}{share}</td>", escape(&usd(g.spend_micros)))?;
    write!(
        o,
        "<td>{}</td><td>{}<span class=\"pct\">/ {}</span></td>",
        thousands(g.tasks),
        thousands(g.completed),
        thousands(g.outcomes)
    )?;
    write!(
        o,
        "<td>{}</td>",
        escape(
            &g.cost_per_completed_micros
                .map(usd)
                .unwrap_or_else(|| MISSING.to_owned())
        )
    )?;
    let (d, below) = quality_precision(g.realized_quality, g.quality_bar);
    match (g.realized_quality, g.quality_bar) {
        (None, None) => write!(o, "<td>{MISSING}</td>")?,
        (q, b) => write!(
            o,
            "<td{}>{}<span class=\"pct\">/ {}</span></td>",
            if below { " class=\"bad\"" } else { "" },
            opt_fixed(q, d),
            opt_fixed(b, d),
        )?,
    }
    if g.premium_micros > 0 {
        write!(
            o,
            "<td>{}<span class=\"pct\">{}</span></td>",
            escape(&usd(g.savings_micros)),
            escape(&percent(g.savings_micros as f64 / g.premium_micros as f64)),
        )?;
    } else {
        write!(o, "<td>{}</td>", escape(&usd(g.savings_micros)))?;
    }
    write!(o, "<td>{}</td>", escape(&usd(g.value_micros)))?;
    write!(o, "<td>{}</td>", escape(&human_time_text(g)))?;
    let nclass = if g.net_value_micros < 0 {
        " class=\"bad\""
    } else {
        ""
    };
    write!(o, "<td{nclass}>{}</td>", escape(&usd(g.net_value_micros)))?;
    if g.reuse_rate.is_none() && g.reused == 0 {
        write!(o, "<td>{MISSING}</td>")?;
    } else {
        write!(
            o,
            "<td>{}<span class=\"pct\">({}; {} use{})</span></td>",
            escape(&g.reuse_rate.map_or(MISSING.to_owned(), percent)),
            thousands(g.reused),
            thousands(g.reuse_events),
            plural(g.reuse_events)
        )?;
    }

    write!(o, "<td class=\"l\">")?;
    let shares = tier_shares(g);
    if shares.is_empty() {
        write!(o, "{MISSING}")?;
    } else {
        write!(
            o,
            "<div class=\"mix\" title=\"{}\">",
            escape(&tier_mix_text(g))
        )?;
        for (tier, share) in shares {
            let colour = tiers
                .iter()
                .position(|t| *t == tier)
                .map_or("#8c959f", tier_colour);
            write!(
                o,
                "<i style=\"width:{:.2}%;background:{colour}\"></i>",
                share * 100.0,
            )?;
        }
        write!(o, "</div>")?;
    }
    write!(o, "</td>")
}

fn tier_colour(i: usize) -> &'static str {
    TIER_COLOURS[i % TIER_COLOURS.len()]
}

/// Budgets table plus the enforcement note.
fn write_budgets(o: &mut String, budgets: &[BudgetStatus], total: &GroupReport) -> fmt::Result {
    writeln!(
        o,
        "<section><h2>Budgets</h2><div class=\"scroll\"><table><thead><tr>"
    )?;
    for (h, left) in [
        ("budget", true),
        ("scope", true),
        ("period", true),
        ("period start (UTC)", true),
        ("soft limit", false),
        ("hard limit", false),
        ("used", false),
        ("left", false),
        ("state", true),
    ] {
        write!(o, "<th{}>{h}</th>", if left { " class=\"l\"" } else { "" })?;
    }
    writeln!(o, "</tr></thead><tbody>")?;
    for s in budgets {
        let scope = match (s.team.is_empty(), s.workflow.is_empty()) {
            (true, true) => "everything".to_owned(),
            (false, true) => format!("team {}", s.team),
            (true, false) => format!("workflow {}", s.workflow),
            (false, false) => format!("team {} · workflow {}", s.team, s.workflow),
        };
        let state_class = match s.state.as_str() {
            "ok" | "soft" | "exhausted" => s.state.as_str(),
            _ => "",
        };
        let meter_colour = match s.state.as_str() {
            "exhausted" => "#cf222e",
            "soft" => "#d4a72c",
            _ => "#2da44e",
        };
        let meter = budget_fraction(s)
            .map(|f| {
                format!(
                    "<span class=\"pct\">{}</span><span class=\"meter\"><i style=\"width:{:.1}%;background:{meter_colour}\"></i></span>",
                    escape(&percent(f)),
                    (f * 100.0).clamp(0.0, 100.0)
                )
            })
            .unwrap_or_default();
        writeln!(
            o,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td><td>{}{meter}</td><td>{}</td>\
             <td class=\"l\"><span class=\"badge {state_class}\">{}</span></td></tr>",
            escape(&s.id),
            escape(&scope),
            escape(&s.period),
            utc(s.period_start_ms),
            escape(&opt_usd(s.soft_limit_micros)),
            escape(&opt_usd(s.hard_limit_micros)),
            escape(&usd(s.used_micros)),
            escape(&opt_usd(s.left_micros)),
            escape(display_or_missing(&s.state)),
        )?;
    }
    writeln!(o, "</tbody></table></div>")?;
    if let Some(line) = enforcement_line(total) {
        writeln!(o, "<p class=\"note\">{}</p>", escape(&line))?;
    }
    writeln!(o, "</section>")
}

/// The hourly chart section (or the no-traffic note).
fn write_chart(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "<section><h2>Spend and quality per hour (UTC)</h2>")?;
    if r.series.is_empty() {
        writeln!(
            o,
            "<div class=\"notraffic\">no traffic in this period</div></section>"
        )?;
        return Ok(());
    }
    write!(
        o,
        "<div class=\"legend\"><span><span class=\"sw bar\"></span>spend per hour (left axis, USD)</span>\
         <span><span class=\"sw line\"></span>realized quality (right axis, 0–1)</span>"
    )?;
    if let Some(bar) = r.total.quality_bar {
        write!(
            o,
            "<span><span class=\"sw dash\"></span>quality bar {bar:.2}</span>"
        )?;
    }
    writeln!(o, "</div>")?;
    match chart_svg(r) {
        Ok(svg) => writeln!(o, "<div class=\"chart\">{svg}</div>")?,
        Err(e) => writeln!(
            o,
            "<div class=\"notraffic\">chart unavailable: {}</div>",
            escape(&e.to_string())
        )?,
    }
    writeln!(o, "</section>")
}

/// The hourly spend bars and quality line as an SVG document (plotters' SVG backend).
///
/// The x axis spans the report period in hours (narrowed to the hours with traffic when the
/// period is unknown or very long); bar `i` covers hour `i`, ticks sit on hour boundaries.
fn chart_svg(r: &Report) -> Result<String, Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let (lo_h, hi_h) = axis_hours(r).ok_or("no series points")?;
    let span = (hi_h - lo_h) as f64;
    let x_of = |p: &SeriesPoint| (p.start_ms / HOUR_MS).saturating_sub(lo_h) as f64;

    let max_spend = r
        .series
        .iter()
        .map(|p| p.spend_micros.max(0))
        .max()
        .unwrap_or(0) as f64
        / 1e6;
    let y_max = nice_ceiling(max_spend * 1.08);
    let step = tick_step(hi_h - lo_h);
    let ticks: Vec<f64> = (lo_h..=hi_h)
        .filter(|h| h.is_multiple_of(step))
        .map(|h| (h - lo_h) as f64)
        .collect();
    let x_label = |x: &f64| {
        let ms = (lo_h + x.round().max(0.0) as u64) * HOUR_MS;
        let s = utc(ms);
        // "YYYY-MM-DD HH:MM" → "MM-DD HH:MM", or "MM-DD" for daily ticks.
        if step >= 24 {
            s.get(5..10).unwrap_or(&s).to_owned()
        } else {
            s.get(5..).unwrap_or(&s).to_owned()
        }
    };
    let y_label = |y: &f64| money_tick(*y, y_max);
    let q_label = |q: &f64| format!("{q:.1}");

    let grey = RGBColor(87, 96, 106);
    let grid = RGBColor(234, 238, 242);
    let bar_colour = RGBColor(59, 130, 246);
    let line_colour = RGBColor(234, 88, 12);
    let ref_colour = RGBColor(110, 119, 129);
    let label_font = ("sans-serif", 17).into_font().color(&grey);
    let desc_font = ("sans-serif", 17).into_font().color(&grey);

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(14)
            .margin_bottom(6)
            .margin_left(8)
            .margin_right(8)
            .x_label_area_size(38)
            .y_label_area_size(96)
            .right_y_label_area_size(76)
            .build_cartesian_2d(HourAxis::new(span, ticks), 0f64..y_max)?
            .set_secondary_coord(HourAxis::new(span, Vec::new()), 0f64..1f64);

        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(grid)
            .light_line_style(TRANSPARENT)
            .axis_style(grey)
            .y_labels(6)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .y_desc("spend per hour (USD)")
            .label_style(label_font.clone())
            .axis_desc_style(desc_font.clone())
            .draw()?;
        chart
            .configure_secondary_axes()
            .axis_style(grey)
            .y_labels(6)
            .y_label_formatter(&q_label)
            .y_desc("realized quality")
            .label_style(label_font)
            .axis_desc_style(desc_font)
            .draw()?;

        chart.draw_series(r.series.iter().map(|p| {
            let x = x_of(p);
            let y = (p.spend_micros.max(0) as f64 / 1e6).min(y_max);
            Rectangle::new([(x + 0.12, y), (x + 0.88, 0.0)], bar_colour.filled())
        }))?;

        if let Some(bar) = r.total.quality_bar {
            let bar = bar.clamp(0.0, 1.0);
            chart.draw_secondary_series(DashedLineSeries::new(
                [(0.0, bar), (span, bar)],
                8,
                5,
                ref_colour.stroke_width(2),
            ))?;
        }

        let mut quality: Vec<(f64, f64)> = r
            .series
            .iter()
            .filter_map(|p| {
                p.realized_quality
                    .filter(|q| q.is_finite())
                    .map(|q| (x_of(p) + 0.5, q.clamp(0.0, 1.0)))
            })
            .collect();
        quality.sort_by(|a, b| a.0.total_cmp(&b.0));
        // One line per run of consecutive hours: an hour without outcomes leaves a gap.
        let mut start = 0;
        for end in 1..=quality.len() {
            let breaks = quality
                .get(end)
                .zip(quality.get(end - 1))
                .is_none_or(|(next, prev)| next.0 - prev.0 > 1.5);
            if breaks {
                if let Some(run) = quality.get(start..end).filter(|run| run.len() > 1) {
                    chart.draw_secondary_series(LineSeries::new(
                        run.iter().copied(),
                        line_colour.stroke_width(2),
                    ))?;
                }
                start = end;
            }
        }
        chart.draw_secondary_series(
            quality
                .iter()
                .map(|&(x, q)| Circle::new((x, q), 3, line_colour.filled())),
        )?;
        root.present()?;
    }
    Ok(buf)
}

/// The chart's x axis: hours from the axis start, `0..span`, with ticks exactly at `ticks`
/// (plotters' own f64 axis picks fractional ticks, and its `with_key_points` wrapper loses the
/// label formatter).
struct HourAxis {
    span: f64,
    ticks: Vec<f64>,
}

impl HourAxis {
    fn new(span: f64, ticks: Vec<f64>) -> Self {
        Self { span, ticks }
    }
}

impl plotters::prelude::Ranged for HourAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = if self.span > 0.0 {
            value / self.span
        } else {
            0.0
        };
        limit.0 + (f64::from(limit.1 - limit.0) * frac).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.span
    }
}

/// `[first hour, end hour)` of the chart's x axis, in hours since the epoch; `None` without
/// points. The report period when it is known, covers every point and is not too long;
/// otherwise the hours from the first to the last point.
fn axis_hours(r: &Report) -> Option<(u64, u64)> {
    let first = r.series.iter().map(|p| p.start_ms / HOUR_MS).min()?;
    let last = r.series.iter().map(|p| p.start_ms / HOUR_MS).max()?;
    let (lo, hi) = (first, last + 1);
    if r.since_ms > 0 && r.until_ms > r.since_ms {
        let plo = r.since_ms / HOUR_MS;
        let phi = r.until_ms.div_ceil(HOUR_MS);
        if plo <= lo && phi >= hi && phi - plo <= MAX_AXIS_HOURS {
            return Some((plo, phi));
        }
    }
    Some((lo, hi))
}

/// Hours between x-axis ticks: at most about eight ticks, on UTC-friendly steps.
fn tick_step(span_hours: u64) -> u64 {
    const STEPS: [u64; 12] = [1, 2, 3, 4, 6, 12, 24, 48, 72, 168, 336, 720];
    STEPS
        .iter()
        .copied()
        .find(|s| span_hours.div_ceil(*s) <= 8)
        .unwrap_or_else(|| span_hours.div_ceil(8).max(1))
}

/// Smallest of 1, 2, 2.5, 5 × 10^k at or above `v` (at least a cent).
fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.01 {
        return 0.01;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v - 1e-12 {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Dollar tick label with as many decimals as the axis scale needs.
fn money_tick(y: f64, y_max: f64) -> String {
    let decimals = if y_max >= 10.0 {
        0
    } else if y_max >= 0.1 {
        2
    } else {
        3
    };
    format!("${y:.decimals$}")
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers
// ---------------------------------------------------------------------------------------------

/// `usd`, or `–` for `None`.
fn opt_usd(m: Option<i64>) -> String {
    m.map(usd).unwrap_or_else(|| MISSING.to_owned())
}

/// `v` with `decimals` decimals, or `–` for `None`.
fn opt_fixed(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| MISSING.to_owned())
}

/// A ratio as a whole percentage; a non-zero ratio under half a percent shows as `<1%`.
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p > 0.0 && p < 0.5 {
        "<1%".to_owned()
    } else {
        format!("{p:.0}%")
    }
}

/// `""` for one, `"s"` for any other count.
fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `s`, or `–` when it is empty.
fn display_or_missing(s: &str) -> &str {
    if s.is_empty() { MISSING } else { s }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM` (UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::fixtures::{T0, sample};
    use super::*;
    use crate::report::TierShare;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(T0), "2025-03-04 00:00");
        assert_eq!(utc(951_782_400_000 + 90 * 60_000), "2000-02-29 01:30");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13");
    }

    #[test]
    fn number_helpers() {
        assert_eq!(usd(1_234_567_890), "$1,234.57");
        assert_eq!(usd(37_411), "$0.0374");
        assert_eq!(usd(950_550), "$0.9506", "rounded, not truncated");
        assert_eq!(usd(9), "$0.000009", "never $0.0000 for a non-zero amount");
        assert_eq!(usd(-2_500_000), "-$2.50");
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(i64::MIN), "-$9,223,372,036,854.78");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(percent(0.004), "<1%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(nice_ceiling(4.1), 5.0);
        assert_eq!(nice_ceiling(0.0), 0.01);
        assert_eq!(tick_step(6), 1);
        assert_eq!(tick_step(24), 3);
        assert_eq!(tick_step(24 * 30), 168);
    }

    #[test]
    fn human_time_is_shown_apart_from_revenue_value_in_every_format() {
        let r = sample();
        let t = table(&r);
        assert!(t.contains("human time"), "{t}");
        assert!(t.contains("5.5 h ($385"), "{t}");
        assert!(
            t.contains("≈ 6 hours of human work displaced, worth $385"),
            "{t}"
        );
        assert!(t.contains("(≈ $70"), "{t}");
        let c = csv(&r).unwrap();
        let header = c.lines().next().unwrap();
        assert!(header.ends_with(",human_hours,human_value_micros,human_value_usd,reuse_events"));
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .ends_with(",5.5000,385000000,385.000000,200")
        );
        let h = html(&r);
        assert!(h.contains("human<br>time"));
        assert!(h.contains("Value created (revenue, risk)"));
        assert!(h.contains("hours of human work displaced"));
    }

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
        assert!(h.contains("40%"), "headline reuse");
        assert!(h.contains("meets the bar"));
        assert!(h.contains("quality bar 0.75"));
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
    fn html_single_point_and_unknown_period() {
        let mut r = sample();
        r.series.truncate(1);
        r.since_ms = 0;
        r.until_ms = 0;
        r.total.quality_bar = None;
        let h = html(&r);
        assert!(h.contains("<svg"));
        assert!(
            h.contains("<circle"),
            "single quality point drawn as a marker"
        );

        // Zero spend and no quality at all still draws axes.
        r.series[0].spend_micros = 0;
        r.series[0].realized_quality = None;
        assert!(html(&r).contains("<svg"));
    }

    /// `n` groups `g00`, `g01`… with distinct spends, in scrambled order, and a total over all.
    fn many_groups(n: u64) -> Report {
        let mut r = sample();
        r.group_by = GroupBy::Workflow;
        r.groups = (0..n)
            .map(|i| GroupReport {
                key: format!("g{i:02}"),
                spend_micros: 1_000_000 + i as i64 * 10_000,
                tasks: 10 + i,
                ..r.groups[0].clone()
            })
            .collect();
        // Not in spend order: the page still lists the highest spends.
        r.groups.reverse();
        r.groups.swap(0, (n / 2) as usize);
        r.total.spend_micros = r.groups.iter().map(|g| g.spend_micros).sum();
        r.total.tasks = r.groups.iter().map(|g| g.tasks).sum();
        r
    }

    /// The groups table's body rows.
    fn body_rows(h: &str) -> Vec<&str> {
        let start = h.find("<table class=\"groups\">").unwrap();
        let body = &h[start..];
        let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
        body.split("<tr").skip(1).collect()
    }

    #[test]
    fn html_lists_top_groups_and_sums_up_the_rest() {
        let r = many_groups(40);
        let h = html(&r);
        let rows = body_rows(&h);
        assert_eq!(rows.len(), MAX_GROUP_ROWS + 1, "15 groups + the rest");
        // The 15 highest spends, highest first: g39 … g25.
        for (row, i) in rows.iter().zip((25..40).rev()) {
            assert!(row.contains(&format!(">g{i}</td>")), "expected g{i}: {row}");
        }
        assert!(!h.contains(">g24</td>"));
        // The rest: g00 … g24.
        let rest_spend: i64 = (0..25).map(|i| 1_000_000 + i * 10_000).sum();
        let rest_tasks: u64 = (0..25).map(|i| 10 + i).sum();
        let more = rows[MAX_GROUP_ROWS];
        assert!(more.contains("class=\"more\""), "{more}");
        assert!(
            more.contains(&format!(
                "… 25 more workflows: <b>{}</b> spend, <b>{rest_tasks}</b> tasks",
                usd(rest_spend)
            )),
            "{more}"
        );
        assert!(more.contains("tokenwise report --by workflow --format csv"));
        // The total still covers every group.
        let foot = &h[h.find("<tfoot>").unwrap()..h.find("</tfoot>").unwrap()];
        assert!(foot.contains(&usd(r.total.spend_micros)), "{foot}");
        assert!(foot.contains(&format!("<td>{}</td>", thousands(r.total.tasks))));
        assert_eq!(r.total.tasks, (0..40).map(|i| 10 + i).sum::<u64>());
    }

    #[test]
    fn html_lists_every_group_when_few() {
        for n in [2, MAX_GROUP_ROWS as u64] {
            let h = html(&many_groups(n));
            assert_eq!(body_rows(&h).len(), n as usize);
            assert!(!h.contains("class=\"more\""));
        }
        let h = html(&many_groups(MAX_GROUP_ROWS as u64 + 1));
        assert_eq!(body_rows(&h).len(), MAX_GROUP_ROWS + 1);
        assert!(h.contains("… 1 more workflow: "));
    }

    #[test]
    fn html_puts_the_chart_between_headline_and_tables() {
        let h = html(&sample());
        let at = |needle: &str| h.find(needle).unwrap_or_else(|| panic!("{needle} missing"));
        let headline = at("class=\"kpis\"");
        let chart = at("Spend and quality per hour");
        let svg = at("<svg");
        let groups = at("Spend by team");
        let budgets = at("<h2>Budgets</h2>");
        assert!(headline < chart && chart < svg && svg < groups && groups < budgets);

        // Also when the chart is only the no-traffic note.
        let mut r = sample();
        r.series.clear();
        let h = html(&r);
        assert!(h.find("no traffic in this period").unwrap() < h.find("Spend by team").unwrap());
    }

    #[test]
    fn quality_is_flagged_only_when_visibly_below() {
        assert_eq!(quality_precision(Some(0.82), Some(0.75)), (2, false));
        assert_eq!(quality_precision(Some(0.70), Some(0.77)), (2, true));
        assert_eq!(quality_precision(Some(0.7672), Some(0.7700)), (3, true));
        assert_eq!(quality_precision(Some(0.77012), Some(0.77041)), (4, true));
        assert_eq!(
            quality_precision(Some(0.770001), Some(0.770004)),
            (2, false)
        );
        assert_eq!(quality_precision(None, Some(0.7)), (2, false));

        let mut r = sample();
        r.groups[0].realized_quality = Some(0.7672);
        r.groups[0].quality_bar = Some(0.7700);
        r.total.realized_quality = Some(0.7712);
        r.total.quality_bar = Some(0.7738);
        let h = html(&r);
        assert!(h.contains("<td class=\"bad\">0.767<span class=\"pct\">/ 0.770</span></td>"));
        assert!(
            h.contains("0.771</span> <small>/ 0.774</small>"),
            "headline"
        );
        assert!(h.contains("below the bar</b> (−0.003)"));
        assert!(table(&r).contains("0.767 / 0.770"));

        // Equal at four decimals: shown equal, not red.
        r.groups[0].realized_quality = Some(0.770001);
        r.groups[0].quality_bar = Some(0.770004);
        let h = html(&r);
        assert!(h.contains("<td>0.77<span class=\"pct\">/ 0.77</span></td>"));
    }

    #[test]
    fn tier_colours_follow_the_tier_not_the_position() {
        let mut r = sample();
        // A group that only used the frontier tier draws it in the frontier colour.
        r.groups[1].tier_mix = vec![TierShare {
            tier: "frontier".into(),
            tasks: 5,
            spend_micros: 125_000,
        }];
        let h = html(&r);
        let frontier = tier_colour(2);
        let row = body_rows(&h)[1];
        assert!(row.contains(&format!("background:{frontier}")), "{row}");
        assert!(row.contains("title=\"frontier 100%\""), "{row}");
        assert!(h.contains("tier mix:"), "legend");
    }

    /// Renders a real report saved as JSON (`tokenwise report --format json > /tmp/real.json`)
    /// to `/tmp/real.html` for eyeballing: `cargo test --lib report::render -- --ignored`.
    #[test]
    #[ignore]
    fn write_real_html() {
        let Ok(text) = std::fs::read_to_string("/tmp/real.json") else {
            return;
        };
        let r: Report = serde_json::from_str(&text).unwrap();
        std::fs::write("/tmp/real.html", html(&r)).unwrap();
    }

    /// Writes a sample page for eyeballing: `cargo test --lib report::render -- --ignored`.
    #[test]
    #[ignore]
    fn write_sample_html() {
        std::fs::write("/tmp/report-sample.html", html(&sample())).unwrap();
        std::fs::write("/tmp/report-sample.txt", table(&sample())).unwrap();
        let mut single = sample();
        single.series.truncate(1);
        std::fs::write("/tmp/report-single.html", html(&single)).unwrap();
        single.series.clear();
        std::fs::write("/tmp/report-empty.html", html(&single)).unwrap();
    }

    /// Extreme but representable counters (a wrapped or hostile store, years of traffic) must
    /// render in every format without a panic.
    fn extreme_i64() -> impl proptest::strategy::Strategy<Value = i64> {
        proptest::prop_oneof![
            proptest::strategy::Just(i64::MAX),
            proptest::strategy::Just(i64::MIN),
            proptest::strategy::Just(0i64),
            proptest::strategy::Just(-1i64),
            proptest::num::i64::ANY,
        ]
    }

    fn extreme_u64() -> impl proptest::strategy::Strategy<Value = u64> {
        proptest::prop_oneof![
            proptest::strategy::Just(u64::MAX),
            proptest::strategy::Just(0u64),
            proptest::num::u64::ANY,
        ]
    }

    fn extreme_f64() -> impl proptest::strategy::Strategy<Value = Option<f64>> {
        proptest::prop_oneof![
            proptest::strategy::Just(None),
            proptest::strategy::Just(Some(f64::NAN)),
            proptest::strategy::Just(Some(f64::INFINITY)),
            proptest::strategy::Just(Some(-1e308)),
            (0.0f64..=1.0).prop_map(Some),
        ]
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]
        #[test]
        fn every_format_renders_extreme_counters_without_a_panic(
            i in proptest::collection::vec(extreme_i64(), 12),
            u in proptest::collection::vec(extreme_u64(), 12),
            f in proptest::collection::vec(extreme_f64(), 4),
        ) {
            let mut r = sample();
            let mut groups = r.groups.clone();
            groups.push(r.total.clone());
            for (n, g) in groups.iter_mut().enumerate() {
                let k = n % 3;
                g.spend_micros = i[k];
                g.premium_micros = i[k + 1];
                g.savings_micros = i[k + 2];
                g.value_micros = i[k + 3];
                g.net_value_micros = i[k + 4];
                g.cost_per_completed_micros = Some(i[k + 5]);
                g.tasks = u[k];
                g.outcomes = u[k + 1];
                g.completed = u[k + 2];
                g.reused = u[k + 3];
                g.budget_downgrades = u[k + 4];
                g.budget_rejections = u[k + 5];
                g.realized_quality = f[0];
                g.quality_bar = f[1];
                g.reuse_rate = f[2];
                for (t, share) in g.tier_mix.iter_mut().enumerate() {
                    share.tasks = u[6 + t];
                    share.spend_micros = i[6 + t];
                }
            }
            r.total = groups.pop().unwrap();
            // More groups than the table and the page show, so the "… more" rows sum too.
            let extra: Vec<GroupReport> = (0..20)
                .map(|n| GroupReport { key: format!("g{n}"), ..groups[0].clone() })
                .collect();
            groups.extend(extra);
            r.groups = groups;
            for b in &mut r.budgets {
                b.used_micros = i[9];
                b.left_micros = Some(i[10]);
                b.hard_limit_micros = Some(i[11]);
                b.soft_limit_micros = Some(i[0]);
            }
            for p in &mut r.series {
                p.spend_micros = i[1];
                p.tasks = u[9];
                p.outcomes = u[10];
                p.realized_quality = f[3];
            }
            let _ = table(&r);
            let _ = html(&r);
            let _ = csv(&r);
            let _ = json(&r);
        }
    }
}
