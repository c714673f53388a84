//! The views' exact output for the sample report, pinned byte for byte: a change to what a view
//! prints shows up here as a diff of `testdata/`. After an intended change, rewrite the files
//! with `TOKENWISE_BLESS=1 cargo test --lib report::render::pinned` and review the diff.

use super::fixtures::sample;
use super::{csv, html, json, table, table_fitting};

/// Compares `got` with `testdata/{name}`, or rewrites the file under `TOKENWISE_BLESS=1`.
fn pinned(name: &str, expected: &str, got: &str) {
    if std::env::var_os("TOKENWISE_BLESS").is_some() {
        let path = format!(
            "{}/src/report/render/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(path, got).unwrap();
        return;
    }
    if got != expected {
        let line = got
            .lines()
            .zip(expected.lines())
            .position(|(g, e)| g != e)
            .map_or(got.lines().count().min(expected.lines().count()), |i| i);
        panic!(
            "testdata/{name} differs from line {}:\n  got:      {:?}\n  expected: {:?}",
            line + 1,
            got.lines().nth(line),
            expected.lines().nth(line)
        );
    }
}

/// The CSV's columns as they were before the report's fields were declared once, in order.
const EXISTING_COLUMNS: &str = "group_by,group,spend_micros,spend_usd,tasks,outcomes,completed,\
     cost_per_completed_micros,cost_per_completed_usd,realized_quality,quality_bar,\
     premium_micros,premium_usd,savings_micros,savings_usd,value_micros,value_usd,\
     net_value_micros,net_value_usd,reused,reuse_rate,budget_downgrades,budget_rejections,\
     tier_mix,tier_spend_micros,human_hours,human_value_micros,human_value_usd,reuse_events";

#[test]
fn the_csv_header_and_rows_are_pinned() {
    let c = csv(&sample()).unwrap();
    let header = c.lines().next().unwrap();
    // These never move, whatever the sample: a new field's columns go after them.
    assert!(
        header == EXISTING_COLUMNS || header.starts_with(&format!("{EXISTING_COLUMNS},")),
        "{header}"
    );
    pinned("sample.csv", include_str!("testdata/sample.csv"), &c);
}

#[test]
fn the_json_is_pinned() {
    pinned(
        "sample.json",
        include_str!("testdata/sample.json"),
        &json(&sample()).unwrap(),
    );
}

#[test]
fn the_table_is_pinned() {
    let r = sample();
    pinned(
        "sample.txt",
        include_str!("testdata/sample.txt"),
        &table(&r),
    );
    pinned(
        "sample-100.txt",
        include_str!("testdata/sample-100.txt"),
        &table_fitting(&r, Some(100)),
    );
}

#[test]
fn the_html_page_is_pinned() {
    pinned(
        "sample.html",
        include_str!("testdata/sample.html"),
        &html(&sample()),
    );
}
