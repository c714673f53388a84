//! The terminal table: a header line, one row per group and a `total` row, the budgets table,
//! and the lines on human time, reuse and budget enforcement under them.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use super::{
    MISSING, budget_fraction, declared_cells, declared_columns, display_or_missing,
    enforcement_line, human_time_sentence, human_time_text, opt_fixed, opt_usd, percent, plural,
    quality_precision, tier_mix_text, utc,
};
use crate::report::{BudgetStatus, GroupReport, Report, thousands, usd};

/// `+$0.0123` / `-$0.0040`: a difference in money, its sign always shown.
fn signed_usd(micros: i64) -> String {
    if micros < 0 {
        usd(micros)
    } else {
        format!("+{}", usd(micros))
    }
}

/// Renders the report as plain text for a terminal: a header line (period in UTC, grouping,
/// policy version), one table with a row per group and a final `total` row, a budgets table
/// when budgets apply, and a line on budget downgrades and rejections when there were any.
///
/// No colours or other escape sequences; missing values show as `–`.
pub fn table(r: &Report) -> String {
    table_fitting(r, None)
}

/// `header` and `rows` as a terminal table in the report's style, columns in `right`
/// right-aligned (the CLI's other tables: thresholds, what-if).
pub fn plain_table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    fitted(header, rows, right, &[], None).0
}

/// Renders `header` and `rows` as one table. With a `width`, whole columns are left out, those
/// of `drop_order` first (least important first), until every line fits: a number or a word is
/// never split across lines. Columns in `right` are right-aligned. Returns the table and the
/// names of the columns left out. If even the columns that are never dropped do not fit, their
/// cells wrap (the only case a cell can split).
fn fitted(
    header: &[&str],
    rows: &[Vec<String>],
    right: &[usize],
    drop_order: &[usize],
    width: Option<u16>,
) -> (String, Vec<String>) {
    let render = |keep: &[usize], wrap: Option<u16>| {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED);
        if let Some(w) = wrap {
            t.set_content_arrangement(ContentArrangement::Dynamic);
            t.set_width(w);
        }
        t.set_header(keep.iter().map(|&i| header[i]).collect::<Vec<_>>());
        for row in rows {
            t.add_row(keep.iter().map(|&i| row[i].clone()).collect::<Vec<_>>());
        }
        for (at, i) in keep.iter().enumerate() {
            if right.contains(i)
                && let Some(c) = t.column_mut(at)
            {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        t.to_string()
    };
    let mut keep: Vec<usize> = (0..header.len()).collect();
    let Some(w) = width else {
        return (render(&keep, None), Vec::new());
    };
    let fits = |text: &str| text.lines().all(|l| l.chars().count() <= usize::from(w));
    let mut dropped = Vec::new();
    let mut text = render(&keep, None);
    for &i in drop_order {
        if fits(&text) {
            break;
        }
        keep.retain(|&k| k != i);
        dropped.push(header[i].to_string());
        text = render(&keep, None);
    }
    if !fits(&text) {
        text = render(&keep, Some(w));
    }
    (text, dropped)
}

/// [`table`]; with a `width` (a terminal's columns), the tables leave out their least important
/// columns until they fit it, and say which, so a report reads in an 80- or 120-column window
/// without a number or a word split across lines.
pub fn table_fitting(r: &Report, width: Option<u16>) -> String {
    let mut out = format!(
        "tokenwise report  {} → {} UTC  ·  by {}  ·  policy {}\n",
        utc(r.since_ms),
        utc(r.until_ms),
        r.group_by.as_str(),
        display_or_missing(&r.policy_version),
    );
    out.push_str(&groups_table(r, width));
    out.push_str(&notes(r));
    out.push_str(&budgets_table(r, width));
    if let Some(line) = enforcement_line(&r.total) {
        out.push('\n');
        out.push_str(&line);
        out.push('\n');
    }
    match width {
        Some(w) => wrap_prose(&out, usize::from(w)),
        None => out,
    }
}

/// The per-group table (and the total), leaving out its least important columns until it fits
/// `width`, with a line that names what it left out.
fn groups_table(r: &Report, width: Option<u16>) -> String {
    let mut out = String::new();
    let header: Vec<&str> = [
        r.group_by.as_str(),
        "spend",
        "tasks",
        "outcomes",
        "completed",
        "cost/completed",
        "quality (real / bar)",
        "savings vs premium",
        "value (revenue/risk)",
        "human time",
        "net value",
        "reuse",
    ]
    .into_iter()
    .chain(declared_columns())
    .chain(["tier mix"])
    .collect();
    // Every column but the first (the group) and the last (the tier mix) holds a number.
    let numbers: Vec<usize> = (1..header.len() - 1).collect();
    let mut rows: Vec<Vec<String>> = r
        .groups
        .iter()
        // A group's name is a caller's label: escaped, so it cannot drive the terminal.
        .map(|g| group_cells(g, &crate::domain::labels::printable(&g.key)))
        .collect();
    rows.push(group_cells(&r.total, "total"));
    // Least important first; the group, spend, tasks, cost per completed output and quality
    // always stay.
    let by_name = |n: &str| header.iter().position(|h| *h == n);
    let declared: Vec<usize> = declared_columns().filter_map(&by_name).collect();
    let drop_order: Vec<usize> = [
        "value (revenue/risk)",
        "net value",
        "outcomes",
        "human time",
    ]
    .into_iter()
    .filter_map(by_name)
    .chain(declared)
    .chain(
        ["tier mix", "completed", "reuse", "savings vs premium"]
            .into_iter()
            .filter_map(by_name),
    )
    .collect();
    let (text, dropped) = fitted(&header, &rows, &numbers, &drop_order, width);
    out.push_str(&text);
    out.push('\n');
    if !dropped.is_empty() {
        out.push_str(&format!(
            "(left out to fit {} columns: {}; --wide shows every column)\n",
            width.unwrap_or_default(),
            dropped.join(", ")
        ));
    }
    out
}

/// The sentences under the groups table: human time, reuse, clipped outcomes, exploration and
/// quality kept, each only when there is something to say.
fn notes(r: &Report) -> String {
    let mut out = String::new();
    if let Some(line) = human_time_sentence(&r.total) {
        out.push_str(&line);
        out.push('\n');
    }
    let t = &r.total;
    if t.reused > 0 {
        out.push_str(&format!(
            "{} output{} reused so far, {} time{} in all.\n",
            thousands(t.reused),
            plural(t.reused),
            thousands(t.reuse_events),
            plural(t.reuse_events)
        ));
    }
    if t.clipped_outcomes > 0 {
        out.push_str(&format!(
            "{} outcome{} reported more tokens than their bounds and {} booked clipped.\n",
            thousands(t.clipped_outcomes),
            plural(t.clipped_outcomes),
            if t.clipped_outcomes == 1 {
                "was"
            } else {
                "were"
            },
        ));
    }
    if let Some(line) = exploration_line(t) {
        out.push_str(&line);
        out.push_str(".\n");
    }
    let quality = super::quality_lines(&r.quality);
    if !quality.is_empty() {
        out.push_str("Quality kept vs premium (95% intervals; docs/books.md#quality-kept):\n");
        for line in quality {
            out.push_str("  ");
            out.push_str(&line);
            out.push('\n');
        }
    }

    out
}

/// The budgets table, when the policy has budgets.
fn budgets_table(r: &Report, width: Option<u16>) -> String {
    let mut out = String::new();
    if !r.budgets.is_empty() {
        let header = [
            "budget",
            "period",
            "period start (UTC)",
            "soft",
            "hard",
            "used",
            "left",
            "state",
        ];
        let rows: Vec<Vec<String>> = r
            .budgets
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    s.period.clone(),
                    utc(s.period_start_ms),
                    opt_usd(s.soft_limit_micros),
                    opt_usd(s.hard_limit_micros),
                    budget_used(s),
                    opt_usd(s.left_micros),
                    s.state.clone(),
                ]
            })
            .collect();
        // The period's start, its name and the soft limit go first; used, left and the
        // state stay.
        let (text, _) = fitted(&header, &rows, &[3, 4, 5, 6], &[2, 1, 3, 4], width);
        out.push('\n');
        out.push_str(&text);
        out.push('\n');
    }

    out
}

/// The lines of `text` outside its tables, wrapped at spaces to `width` (a word longer than
/// the width stays whole); table lines (box drawing) are left as they are.
fn wrap_prose(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let is_table = line.starts_with(['┌', '│', '╞', '├', '└', '┆']);
        if is_table || line.chars().count() <= width {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut current = String::new();
        for word in line.split(' ') {
            let extra = usize::from(!current.is_empty()) + word.chars().count();
            if !current.is_empty() && current.chars().count() + extra > width {
                out.push_str(&current);
                out.push('\n');
                current.clear();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out
}

/// Table cells of one group, labelled `label`.
/// What exploration did in `g`: how many decisions explored and what that cost against the
/// plans' own choices; `None` where none explored.
pub fn exploration_line(g: &GroupReport) -> Option<String> {
    (g.explored > 0).then(|| {
        format!(
            "{} decision{} explored ({} of tasks), {} against the plan's own choices \
             (substitutions at Route's estimates, pairs at what their runs cost)",
            thousands(g.explored),
            plural(g.explored),
            percent(g.explored as f64 / g.tasks.max(1) as f64),
            signed_usd(g.exploration_cost_micros),
        )
    })
}

fn group_cells(g: &GroupReport, label: &str) -> Vec<String> {
    vec![
        label.to_owned(),
        usd(g.spend_micros),
        g.tasks.to_string(),
        g.outcomes.to_string(),
        g.completed.to_string(),
        opt_usd(g.cost_per_completed_micros),
        quality_text(g),
        savings_text(g),
        usd(g.value_micros),
        human_time_text(g),
        usd(g.net_value_micros),
        reuse_text(g),
    ]
    .into_iter()
    .chain(declared_cells(g))
    .chain([tier_mix_text(g)])
    .collect()
}

/// `0.82 / 0.75` (realized / bar), `–` for a missing side, `–` when both are missing. Shown
/// with more decimals when realized is below the bar but equal to it at two (see
/// [`quality_precision`]).
fn quality_text(g: &GroupReport) -> String {
    match (g.realized_quality, g.quality_bar) {
        (None, None) => MISSING.to_owned(),
        (q, b) => {
            let (d, _) = quality_precision(g.realized_quality, g.quality_bar);
            format!("{} / {}", opt_fixed(q, d), opt_fixed(b, d))
        }
    }
}

/// Savings in dollars plus their share of the premium cost, e.g. `$12.0000 (62%)`.
fn savings_text(g: &GroupReport) -> String {
    if g.premium_micros > 0 {
        format!(
            "{} ({})",
            usd(g.savings_micros),
            percent(g.savings_micros as f64 / g.premium_micros as f64)
        )
    } else {
        usd(g.savings_micros)
    }
}

/// Reuse rate, reused outputs and reuse events, e.g. `40% (12; 31 uses)`; `–` without
/// completed outputs.
fn reuse_text(g: &GroupReport) -> String {
    if g.reuse_rate.is_none() && g.reused == 0 {
        return MISSING.to_owned();
    }
    format!(
        "{} ({}; {} use{})",
        g.reuse_rate.map_or(MISSING.to_owned(), percent),
        g.reused,
        g.reuse_events,
        plural(g.reuse_events)
    )
}

/// Used amount with its share of the hard (else soft) limit, e.g. `$85.0000 (85%)`.
fn budget_used(s: &BudgetStatus) -> String {
    match budget_fraction(s) {
        Some(f) => format!("{} ({})", usd(s.used_micros), percent(f)),
        None => usd(s.used_micros),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::fixtures::sample;

    #[test]
    fn table_shows_groups_money_and_missing_values() {
        let t = table(&sample());
        assert!(t.contains("2025-03-04 00:00 → 2025-03-04 12:00 UTC"), "{t}");
        assert!(t.contains("by team") && t.contains("policy v12"), "{t}");
        for needle in [
            "search",
            "team<x>",
            "total",
            "$12.35",
            "$0.0374",
            "0.82 / 0.75",
            "16% (160; 200 uses)",
            "160 outputs reused so far, 200 times in all.",
            "small 60% · medium 30% · frontier 10%",
            "-$2.50",
            "team:search/month",
            "$85.00 (85%)",
            "2025-03-01 00:00",
            "7 decisions downgraded",
            "2 route calls rejected",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in\n{t}");
        }
        // The group without outcomes has no cost per completed, quality or reuse.
        let odd = t.lines().find(|l| l.contains("team<x>")).unwrap();
        assert!(odd.matches(MISSING).count() >= 3, "{odd}");
        assert!(!t.contains('\u{1b}'), "no ANSI escapes");
    }

    #[test]
    fn a_label_with_control_characters_is_escaped_in_the_table() {
        let mut r = sample();
        r.groups[0].key = "evil\u{1b}]0;owned\u{7}\nERROR forged".into();
        r.groups[0].tier_mix[0].tier = "small\u{1b}[2J".into();
        let t = table(&r);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t}");
        assert!(t.contains("evil\\u{1b}]0;owned"), "{t}");
        assert!(!t.lines().any(|l| l.starts_with("ERROR")), "{t}");
    }

    #[test]
    fn table_without_budgets_or_enforcement() {
        let mut r = sample();
        r.budgets.clear();
        r.total.budget_downgrades = 0;
        r.total.budget_rejections = 0;
        let t = table(&r);
        assert!(!t.contains("period start"));
        assert!(!t.contains("downgraded"));
    }

    #[test]
    fn a_table_fits_the_terminal_width_it_is_given_without_splitting_a_cell() {
        let r = sample();
        let wide = table(&r);
        assert!(wide.lines().any(|l| l.chars().count() > 150));
        // Every cell of the wide table: whatever a narrow one shows of them, it shows whole.
        let cells: Vec<String> = wide
            .lines()
            .flat_map(|l| l.split(['│', '┆']))
            .map(|c| c.trim().to_string())
            .filter(|c| c.len() > 1)
            .collect();
        for width in [80u16, 100, 200] {
            let t = table_fitting(&r, Some(width));
            for l in t.lines().skip(1).filter(|l| !l.starts_with("(left out")) {
                assert!(
                    l.chars().count() <= usize::from(width),
                    "{width}: {} columns: {l}",
                    l.chars().count()
                );
            }
            // Money and words are never split: each cell of a row is a whole wide cell.
            for l in t.lines().filter(|l| l.contains('┆')) {
                for c in l.split(['│', '┆']).map(str::trim).filter(|c| c.len() > 1) {
                    assert!(cells.iter().any(|w| w == c), "{width}: cell {c:?} split");
                }
            }
            for must in ["search", "$12.35", "0.82 / 0.75", "total"] {
                assert!(t.contains(must), "{width}: {must} missing in\n{t}");
            }
            if width < 150 {
                assert!(t.contains("(left out to fit"), "{width}:\n{t}");
            }
        }
    }
}
