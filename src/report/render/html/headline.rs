//! The page's headline: five cards for the total (spend, cost per completed output, value
//! created, reuse rate, realized quality against the bar).

use std::fmt::{self, Write as _};

use crate::report::render::{
    MISSING, escape, human_time_sentence, opt_fixed, percent, plural, quality_precision,
};
use crate::report::{GroupReport, thousands, usd};

/// The five headline numbers.
pub(super) fn write_headline(o: &mut String, t: &GroupReport) -> fmt::Result {
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
