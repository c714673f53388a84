//! The page's budgets: one row per budget (scope, period, limits, use with its meter, state
//! badge), then the note on what budget enforcement lowered or refused.

use std::fmt::{self, Write as _};

use crate::report::render::{
    budget_fraction, display_or_missing, enforcement_line, escape, opt_usd, percent, utc,
};
use crate::report::{BudgetState, BudgetStatus, GroupReport, usd};

/// Budgets table plus the enforcement note.
pub(super) fn write_budgets(
    o: &mut String,
    budgets: &[BudgetStatus],
    total: &GroupReport,
) -> fmt::Result {
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
        let state = BudgetState::parse(&s.state);
        let state_class = state.map_or("", BudgetState::as_str);
        let meter_colour = match state {
            Some(BudgetState::Exhausted) => "#cf222e",
            Some(BudgetState::Soft) => "#d4a72c",
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
