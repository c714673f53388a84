//! CSV of the groups: one record per group and a `total` record, money as exact micro-dollars
//! and as dollars, label cells kept from running as spreadsheet formulas.

use crate::report::field::{Field, Visit};
use crate::report::{GroupReport, Report, TierShare};

/// Renders the groups as CSV: one header row, one row per group, then a `total` row.
///
/// Money columns come twice, as exact integer micro-dollars (`*_micros`) and as dollars with
/// six decimals (`*_usd`). Missing values are empty fields. `tier_mix` is `tier:tasks` joined
/// by `;` (cheapest tier first), `tier_spend_micros` the same with spend.
pub fn csv(r: &Report) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(csv_header())?;
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

/// Column names: `group_by`, then each field's columns in the CSV order the fields declare
/// (`report/group.rs`).
fn csv_header() -> Vec<&'static str> {
    let mut fields: Vec<&Field> = GroupReport::FIELDS.iter().collect();
    fields.sort_by_key(|f| f.csv);
    std::iter::once("group_by")
        .chain(fields.iter().flat_map(|f| f.csv_columns.iter().copied()))
        .collect()
}

/// One CSV record; fields follow [`csv_header`]. Numbers are written as numbers; text cells go
/// through [`csv_text`].
fn csv_row(r: &Report, g: &GroupReport, label: &str) -> Vec<String> {
    let mut row = Row {
        label,
        cells: Vec::new(),
    };
    g.visit(&mut row);
    // Stable: a field's two columns keep their order.
    row.cells.sort_by_key(|(place, _)| *place);
    std::iter::once(r.group_by.as_str().to_owned())
        .chain(row.cells.into_iter().map(|(_, cell)| cell))
        .collect()
}

/// The cells of one record, each with its field's CSV place; the key cell is `label`.
struct Row<'a> {
    label: &'a str,
    cells: Vec<(u32, String)>,
}

impl Row<'_> {
    fn push(&mut self, f: &Field, cell: String) {
        self.cells.push((f.csv, cell));
    }
}

impl Visit for Row<'_> {
    fn key(&mut self, f: &Field, _: &str) {
        self.push(f, csv_text(self.label));
    }

    fn money(&mut self, f: &Field, v: &i64) {
        self.push(f, v.to_string());
        self.push(f, dollars6(*v));
    }

    fn opt_money(&mut self, f: &Field, v: &Option<i64>) {
        self.push(f, v.map(|m| m.to_string()).unwrap_or_default());
        self.push(f, v.map(dollars6).unwrap_or_default());
    }

    fn count(&mut self, f: &Field, v: &u64) {
        self.push(f, v.to_string());
    }

    fn ratio(&mut self, f: &Field, v: &Option<f64>) {
        self.push(f, v.map(|x| format!("{x:.6}")).unwrap_or_default());
    }

    fn hours(&mut self, f: &Field, v: &f64) {
        self.push(f, format!("{v:.4}"));
    }

    fn tiers(&mut self, f: &Field, v: &[TierShare]) {
        let list = |cell: fn(&TierShare) -> String| {
            csv_text(
                &v.iter()
                    .map(|t| format!("{}:{}", t.tier, cell(t)))
                    .collect::<Vec<_>>()
                    .join(";"),
            )
        };
        self.push(f, list(|t| t.tasks.to_string()));
        self.push(f, list(|t| t.spend_micros.to_string()));
    }
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
        assert_eq!(headers.len(), csv_header().len());
        let rows: Vec<csv::StringRecord> = rd.records().map(|x| x.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|row| row.len() == csv_header().len()));
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
        assert_eq!(&rows[2][col("reuse_rate")], "0.142857");
    }
}
