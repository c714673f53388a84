//! Views of a [`Report`](super::Report): the terminal table (`table`), CSV (`csv`), JSON (`json`)
//! and the HTML page (`html`) with its SVG chart (`chart`); here, the formatting they share.
//!
//! Every view takes the same [`Report`](super::Report); none of them computes anything new
//! beyond shares and percentages for display. Money stays integer micro-dollars until the last
//! moment: the table and HTML use [`usd`], the CSV carries both the exact micros and dollars
//! with six decimals. Times are shown in UTC.

mod chart;
mod csv;
/// Sample reports for the views' tests and `examples/report_pages.rs` (test support).
#[cfg(any(test, feature = "testsuite"))]
pub mod fixtures;
mod html;
mod json;
#[cfg(test)]
mod pinned;
mod table;

pub use self::csv::csv;
pub use self::html::html;
pub use self::json::json;
pub use self::table::{exploration_line, plain_table, table, table_fitting};

use super::field::{Field, Visit};
use super::{BudgetStatus, GroupReport, TierShare, thousands, usd};

/// Shown for a value that does not exist (e.g. cost per completed output without completions).
const MISSING: &str = "–";

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
        .map(|(tier, share)| {
            let tier = crate::domain::labels::printable(tier);
            format!("{tier} {}", percent(*share))
        })
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

/// Labels of the fields declared with a `column` (`report/group.rs`): the table and the page
/// show each in a column of its own, before the tier mix, in declaration order. The fields
/// without one are laid out by hand (or, like the budget counts, in a sentence).
fn declared_columns() -> impl Iterator<Item = &'static str> {
    GroupReport::FIELDS.iter().filter_map(|f| f.column)
}

/// The values of `g` under [`declared_columns`], as text.
fn declared_cells(g: &GroupReport) -> Vec<String> {
    let mut cells = Cells(Vec::new());
    g.visit(&mut cells);
    cells.0
}

/// Collects the text of the fields with a column of their own.
struct Cells(Vec<String>);

impl Cells {
    fn show(&mut self, f: &Field, text: impl FnOnce() -> String) {
        if f.column.is_some() {
            self.0.push(text());
        }
    }
}

impl Visit for Cells {
    fn key(&mut self, f: &Field, v: &str) {
        self.show(f, || display_or_missing(v).to_owned());
    }

    fn money(&mut self, f: &Field, v: &i64) {
        self.show(f, || usd(*v));
    }

    fn opt_money(&mut self, f: &Field, v: &Option<i64>) {
        self.show(f, || opt_usd(*v));
    }

    fn count(&mut self, f: &Field, v: &u64) {
        self.show(f, || thousands(*v));
    }

    fn ratio(&mut self, f: &Field, v: &Option<f64>) {
        self.show(f, || v.map_or(MISSING.to_owned(), percent));
    }

    fn hours(&mut self, f: &Field, v: &f64) {
        self.show(f, || format!("{v:.1} h"));
    }

    fn tiers(&mut self, f: &Field, v: &[TierShare]) {
        self.show(f, || {
            v.iter()
                .map(|t| format!("{} {}", t.tier, thousands(t.tasks)))
                .collect::<Vec<_>>()
                .join(" · ")
        });
    }
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

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM` (UTC).
fn utc(ms: u64) -> String {
    crate::domain::calendar::timestamp(ms)
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}

/// Quality kept, in sentences (the table and the page print the same): per group, quality kept
/// on shadow pairs and the saving, always-premium quality by inverse propensity, each with its
/// 95% interval once that is narrower than the group's `report_interval_width`, "not enough
/// evidence" before, and no estimate at all where support is missing.
pub(crate) fn quality_lines(quality: &[super::QualityKept]) -> Vec<String> {
    use super::Estimate;
    let interval = |e: &Estimate, show: fn(f64) -> String| {
        format!("{} [{}, {}]", show(e.value), show(e.low), show(e.high))
    };
    let two = |x: f64| format!("{x:.2}");
    let not_enough = |e: Option<Estimate>, q: &super::QualityKept, on: String| match e {
        Some(e) => format!(
            "not enough evidence (interval {:.2} wide on {on}; printed under {})",
            e.width(),
            q.interval_width
        ),
        None => format!("not enough evidence ({on})"),
    };
    let mut out = Vec::new();
    for q in quality {
        let pairs = format!("{} pair{}", thousands(q.pairs), plural(q.pairs));
        if q.shadowed > 0 || q.pairs > 0 {
            let kept = match q.shown(q.kept) {
                Some(e) => format!(
                    "kept {} of premium quality on {pairs} ({} vs {})",
                    interval(&e, two),
                    opt_fixed(q.routed_quality, 2),
                    opt_fixed(q.shadow_quality, 2)
                ),
                None => format!("quality kept: {}", not_enough(q.kept, q, pairs.clone())),
            };
            let saving = match q.shown(q.saving) {
                Some(e) => format!("saving {}", interval(&e, percent)),
                None => format!("saving: {}", not_enough(q.saving, q, pairs)),
            };
            out.push(format!(
                "{}: {kept}; {saving}; {} shadowed, shadow spend {}.",
                q.key,
                thousands(q.shadowed),
                usd(q.shadow_spend_micros)
            ));
        }
        let outcomes = q.supported + q.unsupported;
        let premium = if q.unsupported > 0 {
            format!(
                "no estimate: {} of {} outcomes could not have gone to premium",
                thousands(q.unsupported),
                thousands(outcomes)
            )
        } else {
            let on = format!(
                "{} explored of {}",
                thousands(q.explored),
                thousands(outcomes)
            );
            match q.shown(q.premium_quality) {
                Some(e) => format!("{} by inverse propensity ({on})", interval(&e, two)),
                None => not_enough(q.premium_quality, q, on),
            }
        };
        out.push(format!("{}: always-premium quality {premium}.", q.key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fixtures::{T0, sample};
    use super::*;

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
        assert!(header.contains(",human_hours,human_value_micros,human_value_usd,reuse_events"));
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .contains(",5.5000,385000000,385.000000,200")
        );
        let h = html(&r);
        assert!(h.contains("human<br>time"));
        assert!(h.contains("Revenue, risk impact"));
        assert!(h.contains("hours of human work displaced"));
    }

    #[test]
    fn a_field_with_a_column_is_shown_by_its_kind_and_one_without_is_not() {
        use crate::report::field::Kind;
        let field = |column| Field {
            name: "x",
            kind: Kind::Count,
            csv: 99,
            csv_columns: &["x"],
            ledger: None,
            export: None,
            column,
        };
        let (shown, hidden) = (field(Some("x")), field(None));
        let mut c = Cells(Vec::new());
        c.count(&shown, &1_234_567);
        c.count(&hidden, &1);
        c.money(&shown, &2_500_000);
        c.opt_money(&shown, &None);
        c.ratio(&shown, &Some(0.25));
        c.hours(&shown, &1.5);
        c.key(&shown, "");
        assert_eq!(
            c.0,
            ["1,234,567", "$2.50", MISSING, "25%", "1.5 h", MISSING]
        );
        // A group has a cell under each declared column.
        assert_eq!(
            declared_cells(&sample().total).len(),
            declared_columns().count()
        );
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
