//! The page's headline: the report's five numbers as six cards, one fact each: spend by team,
//! spend by workflow, cost per completed output, value created (human time displaced and
//! revenue or risk impact, each labelled), reuse rate, and realized quality against the bar.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::report::render::{MISSING, escape, opt_fixed, percent, plural, quality_precision};
use crate::report::{GroupBy, GroupReport, Report, thousands, usd};

/// Most groups a spend card lists one by one; the rest are summed up in one line.
pub(super) const TOP_GROUPS: usize = 3;

/// A side of the report's groups that a spend card shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Spend per team.
    Team,
    /// Spend per workflow.
    Workflow,
}

impl Side {
    /// `team` or `workflow`, as in `--by team`.
    fn as_str(self) -> &'static str {
        match self {
            Side::Team => "team",
            Side::Workflow => "workflow",
        }
    }

    /// What `n` of them are called.
    fn noun(self, n: usize) -> &'static str {
        match (self, n == 1) {
            (Side::Team, true) => "team",
            (Side::Team, false) => "teams",
            (Side::Workflow, true) => "workflow",
            (Side::Workflow, false) => "workflows",
        }
    }
}

/// One team's or workflow's share of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spend {
    /// Team or workflow label.
    pub(super) label: String,
    /// Its spend, micro-USD.
    pub(super) spend_micros: i64,
}

/// Spend per team or per workflow, highest first (equal spends by label), when the report's
/// grouping shows that side: grouped by it, the groups themselves; grouped by team and workflow,
/// the groups summed by their team (the key before its first `/`) or their workflow (after it).
/// A team label holding a `/` is split at that slash, so its pairs count under a shorter team.
/// `None` when the groups do not show the side (grouped by tier, or by the other side).
pub(super) fn spend_by(r: &Report, side: Side) -> Option<Vec<Spend>> {
    let pick: fn(&str) -> &str = match (r.group_by, side) {
        (GroupBy::Team, Side::Team) | (GroupBy::Workflow, Side::Workflow) => |k| k,
        (GroupBy::TeamWorkflow, Side::Team) => |k| k.split_once('/').map_or(k, |(t, _)| t),
        (GroupBy::TeamWorkflow, Side::Workflow) => |k| k.split_once('/').map_or(k, |(_, w)| w),
        _ => return None,
    };
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    for g in &r.groups {
        let sum = sums.entry(pick(&g.key)).or_default();
        *sum = sum.saturating_add(g.spend_micros);
    }
    let mut out: Vec<Spend> = sums
        .into_iter()
        .map(|(label, spend_micros)| Spend {
            label: label.to_owned(),
            spend_micros,
        })
        .collect();
    out.sort_by(|a, b| {
        b.spend_micros
            .cmp(&a.spend_micros)
            .then_with(|| a.label.cmp(&b.label))
    });
    Some(out)
}

/// The six headline cards, for the report's total and groups.
pub(super) fn write_headline(o: &mut String, r: &Report) -> fmt::Result {
    let t = &r.total;
    writeln!(o, "<section class=\"kpis\">")?;

    open(o, "Spend by team")?;
    fact(
        o,
        "",
        &escape(&usd(t.spend_micros)),
        &format!(
            "total, <b>{}</b> task{} routed",
            thousands(t.tasks),
            plural(t.tasks)
        ),
    )?;
    spend_list(o, r, Side::Team)?;
    close(o)?;

    open(o, "Spend by workflow")?;
    spend_list(o, r, Side::Workflow)?;
    close(o)?;

    open(o, "Cost per completed output")?;
    fact(
        o,
        "",
        &escape(
            &t.cost_per_completed_micros
                .map(usd)
                .unwrap_or_else(|| MISSING.to_owned()),
        ),
        &format!(
            "<b>{}</b> completed of {} outcome{}",
            thousands(t.completed),
            thousands(t.outcomes),
            plural(t.outcomes)
        ),
    )?;
    close(o)?;

    open(o, "Value created")?;
    write_value(o, t)?;
    close(o)?;

    open(o, "Reuse rate")?;
    fact(
        o,
        "",
        &escape(
            &t.reuse_rate
                .map(percent)
                .unwrap_or_else(|| MISSING.to_owned()),
        ),
        &format!(
            "<b>{}</b> of {} output{} produced reused, <b>{}</b> use{} in all{}",
            thousands(t.reused),
            thousands(t.tasks),
            plural(t.tasks),
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
    close(o)?;

    open(o, "Quality vs bar")?;
    write_quality(o, t)?;
    close(o)?;

    writeln!(o, "</section>")
}

/// The value card's facts: human time displaced (hours and their worth) and revenue or risk
/// impact, each under its own label, then net value and savings against the premium tier.
fn write_value(o: &mut String, t: &GroupReport) -> fmt::Result {
    if t.human_hours.is_finite() && t.human_hours > 0.0 {
        let rate = if t.human_value_micros > 0 {
            format!(
                " (≈ {}/h)",
                escape(&usd(
                    (t.human_value_micros as f64 / t.human_hours).round() as i64
                ))
            )
        } else {
            String::new()
        };
        fact(
            o,
            "Human time displaced",
            &format!(
                "{:.1} h <small>·</small> {}",
                t.human_hours,
                escape(&usd(t.human_value_micros))
            ),
            &format!("hours of human work displaced and their worth{rate}"),
        )?;
    } else {
        fact(
            o,
            "Human time displaced",
            MISSING,
            "no scope sets <code>human_minutes_per_success</code>",
        )?;
    }
    fact(
        o,
        "Revenue, risk impact",
        &escape(&usd(t.value_micros)),
        &format!(
            "{} completed output{} at the value per success",
            thousands(t.completed),
            plural(t.completed)
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
    writeln!(
        o,
        "<div class=\"sub more\">net <b class=\"{}\">{}</b> after spend · saved <b>{}</b>{} vs \
         premium</div>",
        if t.net_value_micros < 0 {
            "bad"
        } else {
            "good"
        },
        escape(&usd(t.net_value_micros)),
        escape(&usd(t.savings_micros)),
        savings_share,
    )
}

/// The quality card's fact: realized quality over the bar and the verdict.
fn write_quality(o: &mut String, t: &GroupReport) -> fmt::Result {
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
    fact(o, "", &value, &sub)
}

/// A spend card's list: the [`TOP_GROUPS`] highest spends with their share of the total and
/// the rest in one line; or, when the report's grouping does not show the side, the flag that
/// does.
fn spend_list(o: &mut String, r: &Report, side: Side) -> fmt::Result {
    let Some(spends) = spend_by(r, side) else {
        return writeln!(
            o,
            "<p class=\"sub na\">Grouped by {}: for {}, see <code>--by {}</code>.</p>",
            escape(&r.group_by.as_str().replace('_', " / ")),
            side.noun(2),
            side.as_str()
        );
    };
    if spends.is_empty() {
        return writeln!(o, "<p class=\"sub na\">no traffic in this period</p>");
    }
    let total = r.total.spend_micros;
    writeln!(o, "<ol class=\"top\">")?;
    for s in spends.iter().take(TOP_GROUPS) {
        let share = (total > 0).then(|| s.spend_micros as f64 / total as f64);
        writeln!(
            o,
            "<li><span class=\"name\" title=\"{label}\">{label}</span><b>{}</b>\
             <span class=\"pct\">{}</span><span class=\"share\"><i style=\"width:{:.1}%\"></i>\
             </span></li>",
            escape(&usd(s.spend_micros)),
            share.map_or(MISSING.to_owned(), percent),
            share.map_or(0.0, |f| (f * 100.0).clamp(0.0, 100.0)),
            label = escape(&s.label),
        )?;
    }
    writeln!(o, "</ol>")?;
    let rest = spends.get(TOP_GROUPS..).unwrap_or_default();
    if !rest.is_empty() {
        let spend = rest
            .iter()
            .fold(0i64, |a, s| a.saturating_add(s.spend_micros));
        writeln!(
            o,
            "<p class=\"sub\">+ {} more {}: <b>{}</b></p>",
            thousands(rest.len() as u64),
            side.noun(rest.len()),
            escape(&usd(spend))
        )?;
    }
    Ok(())
}

/// Opens a card under `label`.
fn open(o: &mut String, label: &str) -> fmt::Result {
    writeln!(
        o,
        "<div class=\"kpi\"><div class=\"label\">{}</div>",
        escape(label)
    )
}

/// Closes a card.
fn close(o: &mut String) -> fmt::Result {
    writeln!(o, "</div>")
}

/// One fact of a card: its own label (none when the card's label says it), the value and a
/// sub line, both trusted markup built here.
fn fact(o: &mut String, label: &str, value: &str, sub: &str) -> fmt::Result {
    if !label.is_empty() {
        write!(o, "<div class=\"fact\">{}</div>", escape(label))?;
    }
    writeln!(
        o,
        "<div class=\"value\">{value}</div><div class=\"sub\">{sub}</div>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::fixtures::{by_team_workflow, by_workflow, sample};
    use crate::report::render::html;

    /// The headline's cards, each as its label and its markup.
    fn cards(h: &str) -> Vec<(String, String)> {
        let start = h.find("<section class=\"kpis\">").unwrap();
        let end = start + h[start..].find("</section>").unwrap();
        h[start..end]
            .split("<div class=\"kpi\">")
            .skip(1)
            .map(|c| {
                let label = c["<div class=\"label\">".len()..].split("</div>").next();
                (label.unwrap().to_owned(), c.to_owned())
            })
            .collect()
    }

    #[test]
    fn six_cards_one_fact_each_with_the_fixture_values() {
        let h = html(&sample());
        let cards = cards(&h);
        let labels: Vec<&str> = cards.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "Spend by team",
                "Spend by workflow",
                "Cost per completed output",
                "Value created",
                "Reuse rate",
                "Quality vs bar"
            ]
        );
        let card = |i: usize| cards[i].1.as_str();

        // Spend by team: the total, then each team with its spend and share.
        assert!(card(0).contains("<div class=\"value\">$14.85</div>"));
        assert!(card(0).contains("total, <b>1,120</b> tasks routed"));
        assert!(card(0).contains(
            "<li><span class=\"name\" title=\"search\">search</span><b>$12.35</b>\
             <span class=\"pct\">83%</span>"
        ));
        assert!(
            card(0).contains(">team&lt;x&gt;</span><b>$2.50</b><span class=\"pct\">17%</span>")
        );
        assert!(!card(0).contains("more"), "two teams, all listed");

        // Grouped by team: the workflow card names the flag that shows workflows.
        assert!(card(1).contains(
            "<p class=\"sub na\">Grouped by team: for workflows, see <code>--by workflow</code>.</p>"
        ));
        assert!(!card(1).contains("<ol"));

        assert!(card(2).contains("<div class=\"value\">$0.0450</div>"));
        assert!(card(2).contains("<b>330</b> completed of 400 outcomes"));

        // Value created: human time (hours and worth) and revenue / risk, each under its own
        // label and at the size of a value, not in the small print.
        assert!(card(3).contains(
            "<div class=\"fact\">Human time displaced</div>\
             <div class=\"value\">5.5 h <small>·</small> $385.00</div>\
             <div class=\"sub\">hours of human work displaced and their worth (≈ $70.00/h)</div>"
        ));
        assert!(card(3).contains(
            "<div class=\"fact\">Revenue, risk impact</div><div class=\"value\">$33.00</div>"
        ));
        assert!(card(3).contains("net <b class=\"good\">$403.15</b> after spend"));
        assert!(card(3).contains("saved <b>$20.25</b> (58%) vs premium"));

        assert!(card(4).contains("<div class=\"value\">14%</div>"));
        assert!(card(5).contains("0.82</span> <small>/ 0.75</small>"));
        assert!(card(5).contains("meets the bar"));
    }

    #[test]
    fn by_workflow_the_top_three_and_the_rest_in_one_line() {
        let r = by_workflow();
        let h = html(&r);
        let cards = cards(&h);
        let (team, workflow) = (&cards[0].1, &cards[1].1);
        assert!(team.contains("Grouped by workflow: for teams, see <code>--by team</code>."));
        assert_eq!(workflow.matches("<li>").count(), TOP_GROUPS);
        for g in &r.groups[..TOP_GROUPS] {
            assert!(
                workflow.contains(&format!("title=\"{}\"", g.key)),
                "{}",
                g.key
            );
            assert!(workflow.contains(&format!("<b>{}</b>", usd(g.spend_micros))));
        }
        let rest: i64 = r.groups[TOP_GROUPS..].iter().map(|g| g.spend_micros).sum();
        assert!(workflow.contains(&format!("+ 3 more workflows: <b>{}</b>", usd(rest))));
        assert!(workflow.contains("<span class=\"pct\">34%</span>"));
    }

    #[test]
    fn by_team_and_workflow_each_side_is_summed() {
        let r = by_team_workflow();
        let sum = |prefix: &str| -> i64 {
            r.groups
                .iter()
                .filter(|g| g.key.starts_with(prefix))
                .map(|g| g.spend_micros)
                .sum()
        };
        let teams = spend_by(&r, Side::Team).unwrap();
        assert_eq!(
            teams,
            [
                Spend {
                    label: "search".into(),
                    spend_micros: sum("search/")
                },
                Spend {
                    label: "support".into(),
                    spend_micros: sum("support/")
                },
            ]
        );
        // A workflow keeps its own slashes: only the first one ends the team.
        let workflows = spend_by(&r, Side::Workflow).unwrap();
        let labels: Vec<&str> = workflows.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels[1], "mmlu/high_school_european_history");
        assert_eq!(workflows.len(), 6);
        assert_eq!(
            workflows.iter().map(|s| s.spend_micros).sum::<i64>(),
            r.total.spend_micros
        );

        let h = html(&r);
        let cards = cards(&h);
        assert!(
            cards[0]
                .1
                .contains(">search</span><b>$890.74</b><span class=\"pct\">60%</span>")
        );
        assert!(
            cards[0]
                .1
                .contains(">support</span><b>$593.83</b><span class=\"pct\">40%</span>")
        );
        assert!(cards[1].1.contains("+ 3 more workflows"));
    }

    #[test]
    fn by_tier_both_spend_cards_name_their_flag() {
        let mut r = sample();
        r.group_by = GroupBy::Tier;
        assert_eq!(spend_by(&r, Side::Team), None);
        assert_eq!(spend_by(&r, Side::Workflow), None);
        let h = html(&r);
        assert!(h.contains("Grouped by tier: for teams, see <code>--by team</code>."));
        assert!(h.contains("Grouped by tier: for workflows, see <code>--by workflow</code>."));
        // The total spend still heads the first card.
        assert!(cards(&h)[0].1.contains("<div class=\"value\">$14.85</div>"));
    }

    #[test]
    fn value_without_human_time_says_what_sets_it() {
        let mut r = sample();
        r.total.human_hours = 0.0;
        r.total.human_value_micros = 0;
        let h = html(&r);
        let value = &cards(&h)[3].1;
        assert!(value.contains(
            "<div class=\"fact\">Human time displaced</div><div class=\"value\">–</div>"
        ));
        assert!(value.contains("no scope sets <code>human_minutes_per_success</code>"));
        assert!(value.contains("<div class=\"value\">$33.00</div>"));
    }
}
