//! The page's spend by group: the highest-spend groups row by row, the rest summed up in one
//! row and the total as the footer, each with its share of spend and its tier mix in colour.

use std::fmt::{self, Write as _};

use crate::report::render::{
    MISSING, declared_cells, declared_columns, escape, opt_fixed, percent, plural,
    quality_precision, tier_mix_text, tier_shares,
};
use crate::report::{GroupBy, GroupReport, Report, thousands, usd};

/// Tier colours, cheapest first.
const TIER_COLOURS: [&str; 6] = [
    "#93c5fd", "#3b82f6", "#1e3a8a", "#a78bfa", "#f59e0b", "#10b981",
];

/// Columns of the groups table: the eleven laid out here, those the fields declare, the tier
/// mix.
fn group_columns() -> usize {
    12 + declared_columns().count()
}

/// Spend by group: the [`MAX_GROUP_ROWS`] highest-spend groups, one row summing up the rest
/// when there are more, and the total of everything as the footer row.
pub(super) fn write_groups(o: &mut String, r: &Report, group: &str) -> fmt::Result {
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
        "completed<br>/&nbsp;outcomes",
        "cost /<br>completed",
        "quality<br>/&nbsp;bar",
        "savings vs<br>premium",
        "value<br>(revenue, risk)",
        "human<br>time",
        "net<br>value",
        "reuse",
    ] {
        write!(o, "<th>{h}</th>")?;
    }
    for h in declared_columns() {
        write!(o, "<th>{}</th>", escape(h))?;
    }
    writeln!(o, "<th class=\"l\">tier<br>mix</th></tr></thead><tbody>")?;
    let columns = group_columns();
    if r.groups.is_empty() {
        writeln!(
            o,
            "<tr><td colspan=\"{columns}\" class=\"empty\">no traffic in this period</td></tr>"
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
            "<tr class=\"more\"><td colspan=\"{columns}\">… {} more {}: <b>{}</b> spend, \
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
pub(super) const MAX_GROUP_ROWS: usize = 15;

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
    // Long labels (`support.ticket_summarization_with_long_context`) may wrap after a slash, a
    // dot or an underscore.
    write!(
        o,
        "<td class=\"key\" title=\"{}\">{}</td>",
        escape(label),
        breakable(&escape(label))
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
        "<td>{}</td><td>{}<span class=\"pct d\">/ {}</span></td>",
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
            "<td>{}<span class=\"pct d\">{}</span></td>",
            escape(&usd(g.savings_micros)),
            escape(&percent(g.savings_micros as f64 / g.premium_micros as f64)),
        )?;
    } else {
        write!(o, "<td>{}</td>", escape(&usd(g.savings_micros)))?;
    }
    write!(o, "<td>{}</td>", escape(&usd(g.value_micros)))?;
    // Hours over their worth, in two short lines rather than one wide one.
    if g.human_hours <= 0.0 && g.human_value_micros == 0 {
        write!(o, "<td>{MISSING}</td>")?;
    } else {
        write!(
            o,
            "<td>{:.1} h<span class=\"pct d\">{}</span></td>",
            g.human_hours,
            escape(&usd(g.human_value_micros))
        )?;
    }
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
            "<td>{}<span class=\"pct d\">{} reused</span><span class=\"pct d\">{} use{}</span></td>",
            escape(&g.reuse_rate.map_or(MISSING.to_owned(), percent)),
            thousands(g.reused),
            thousands(g.reuse_events),
            plural(g.reuse_events)
        )?;
    }
    for cell in declared_cells(g) {
        write!(o, "<td>{}</td>", escape(&cell))?;
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

/// Escaped `label` with a line break opportunity (`<wbr>`) after each `/`, `.` and `_`, so a
/// long workflow name wraps in its cell rather than widening the table.
fn breakable(label: &str) -> String {
    let mut out = String::with_capacity(label.len() + 16);
    for c in label.chars() {
        out.push(c);
        if matches!(c, '/' | '.' | '_') {
            out.push_str("<wbr>");
        }
    }
    out
}

/// The colour of the `i`-th tier of [`tier_order`] (the colours repeat after the sixth).
fn tier_colour(i: usize) -> &'static str {
    TIER_COLOURS[i % TIER_COLOURS.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::TierShare;
    use crate::report::render::fixtures::sample;
    use crate::report::render::html;

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
    fn long_names_wrap_and_details_stack_so_the_table_fits() {
        use crate::report::render::fixtures::by_workflow;
        let h = html(&by_workflow());
        // A long name breaks after its dots, underscores and slashes; its title keeps it whole.
        assert!(h.contains(
            "<td class=\"key\" title=\"support.ticket_summarization_with_long_context\">\
             support.<wbr>ticket_<wbr>summarization_<wbr>with_<wbr>long_<wbr>context</td>"
        ));
        assert!(h.contains(">mmlu/<wbr>high_<wbr>school_<wbr>european_<wbr>history</td>"));
        // Secondary numbers go on a line of their own under the main one.
        let row = body_rows(&h)[0];
        assert!(
            row.contains("<td>11,220<span class=\"pct d\">/ 13,600</span></td>"),
            "{row}"
        );
        assert!(
            row.contains("<td>$688.65<span class=\"pct d\">58%</span></td>"),
            "{row}"
        );
        assert!(
            row.contains("<td>187.0 h<span class=\"pct d\">$13,090.00</span></td>"),
            "{row}"
        );
        assert!(
            row.contains(
                "<td>16%<span class=\"pct d\">5,440 reused</span>\
                 <span class=\"pct d\">6,800 uses</span></td>"
            ),
            "{row}"
        );
        // Headers wrap; the key column has a set share of the width; a detail is a block.
        assert!(h.contains("<th>completed<br>/&nbsp;outcomes</th>"));
        assert!(h.contains("th{color:#57606a;font-weight:600;font-size:12px;border-bottom:1px solid #d8dee4;white-space:normal;"));
        assert!(h.contains("td.key{white-space:normal;min-width:110px;overflow-wrap:break-word}"));
        assert!(h.contains("table.groups th:first-child{width:16%}"));
        assert!(h.contains(".pct.d{display:block;"));
        assert!(h.contains("table.groups .share{display:block;"));
        // A narrower screen scrolls the table in its card, headers and all.
        assert!(h.contains("<div class=\"scroll\"><table class=\"groups\">"));
        assert!(h.contains(".scroll{overflow-x:auto}"));
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
}
