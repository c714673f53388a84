//! CSV of the groups: one record per group and a `total` record, money as exact micro-dollars
//! and as dollars, label cells kept from running as spreadsheet formulas.

use crate::report::{GroupReport, Report, TierShare};

/// Column names of [`csv`](fn@csv), in order.
const CSV_HEADER: [&str; 29] = [
    "group_by",
    "group",
    "spend_micros",
    "spend_usd",
    "tasks",
    "outcomes",
    "completed",
    "cost_per_completed_micros",
    "cost_per_completed_usd",
    "realized_quality",
    "quality_bar",
    "premium_micros",
    "premium_usd",
    "savings_micros",
    "savings_usd",
    "value_micros",
    "value_usd",
    "net_value_micros",
    "net_value_usd",
    "reused",
    "reuse_rate",
    "budget_downgrades",
    "budget_rejections",
    "tier_mix",
    "tier_spend_micros",
    "human_hours",
    "human_value_micros",
    "human_value_usd",
    "reuse_events",
];

/// Renders the groups as CSV: one header row, one row per group, then a `total` row.
///
/// Money columns come twice, as exact integer micro-dollars (`*_micros`) and as dollars with
/// six decimals (`*_usd`). Missing values are empty fields. `tier_mix` is `tier:tasks` joined
/// by `;` (cheapest tier first), `tier_spend_micros` the same with spend.
pub fn csv(r: &Report) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    for g in &r.groups {
        w.write_record(csv_row(r, g, &g.key))?;
    }
    w.write_record(csv_row(r, &r.total, "total"))?;
    let bytes = w
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    String::from_utf8(bytes)
        .map_err(|e| csv::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// A text cell a spreadsheet will not run: one that starts with `=`, `+`, `-`, `@`, a tab or a
/// carriage return (a formula to Excel, LibreOffice and Sheets) gets a leading `'`. Labels come
/// from callers (workflow and team names), so a report must not carry their formulas.
fn csv_text(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    }
}

/// One CSV record; fields follow [`CSV_HEADER`]. Numbers are written as numbers; text cells go
/// through [`csv_text`].
fn csv_row(r: &Report, g: &GroupReport, label: &str) -> Vec<String> {
    let opt_f = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    let tiers = |f: fn(&TierShare) -> String| {
        csv_text(
            &g.tier_mix
                .iter()
                .map(|t| format!("{}:{}", t.tier, f(t)))
                .collect::<Vec<_>>()
                .join(";"),
        )
    };
    vec![
        r.group_by.as_str().to_owned(),
        csv_text(label),
        g.spend_micros.to_string(),
        dollars6(g.spend_micros),
        g.tasks.to_string(),
        g.outcomes.to_string(),
        g.completed.to_string(),
        g.cost_per_completed_micros
            .map(|m| m.to_string())
            .unwrap_or_default(),
        g.cost_per_completed_micros
            .map(dollars6)
            .unwrap_or_default(),
        opt_f(g.realized_quality),
        opt_f(g.quality_bar),
        g.premium_micros.to_string(),
        dollars6(g.premium_micros),
        g.savings_micros.to_string(),
        dollars6(g.savings_micros),
        g.value_micros.to_string(),
        dollars6(g.value_micros),
        g.net_value_micros.to_string(),
        dollars6(g.net_value_micros),
        g.reused.to_string(),
        opt_f(g.reuse_rate),
        g.budget_downgrades.to_string(),
        g.budget_rejections.to_string(),
        tiers(|t| t.tasks.to_string()),
        tiers(|t| t.spend_micros.to_string()),
        format!("{:.4}", g.human_hours),
        g.human_value_micros.to_string(),
        dollars6(g.human_value_micros),
        g.reuse_events.to_string(),
    ]
}

/// Micro-USD as dollars with six decimals, e.g. `-12.345678` (exact, no float).
fn dollars6(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::fixtures::sample;

    #[test]
    fn dollars6_is_exact() {
        assert_eq!(dollars6(12_345_678), "12.345678");
        assert_eq!(dollars6(-5), "-0.000005");
    }

    #[test]
    fn csv_cells_from_labels_cannot_be_formulas() {
        let mut r = sample();
        r.groups[0].key = "=HYPERLINK(\"http://x\",\"y\")".into();
        r.groups[1].key = "@SUM(A1)".into();
        let text = csv(&r).unwrap();
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = rd.records().map(|x| x.unwrap()).collect();
        assert_eq!(&rows[0][1], "'=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(&rows[1][1], "'@SUM(A1)");
        // Numbers stay numbers, negative ones included.
        assert!(rows[1].iter().any(|c| c == "-2.500000"));
        assert_eq!(csv_text("plain"), "plain");
        assert_eq!(csv_text("-1 day"), "'-1 day");
    }

    #[test]
    fn csv_parses_back() {
        let r = sample();
        let text = csv(&r).unwrap();
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let headers = rd.headers().unwrap().clone();
        assert_eq!(headers.len(), CSV_HEADER.len());
        let rows: Vec<csv::StringRecord> = rd.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|row| row.len() == CSV_HEADER.len()));
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        assert_eq!(&rows[0][col("group")], "search");
        assert_eq!(&rows[0][col("spend_micros")], "12345678");
        assert_eq!(&rows[0][col("spend_usd")], "12.345678");
        assert_eq!(
            &rows[0][col("tier_mix")],
            "small:600;medium:300;frontier:100"
        );
        assert_eq!(&rows[1][col("group")], "team<x>");
        assert_eq!(&rows[1][col("cost_per_completed_micros")], "");
        assert_eq!(&rows[1][col("realized_quality")], "");
        assert_eq!(&rows[1][col("net_value_usd")], "-2.500000");
        assert_eq!(&rows[2][col("group")], "total");
        assert_eq!(&rows[2][col("reuse_rate")], "0.400000");
    }
}
