//! Report rendering: any report that deserializes renders as a table, CSV, JSON and HTML
//! without a panic (money, labels and rates at their extremes included).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokenwise::report::{Report, render};

fuzz_target!(|json: &str| {
    let Ok(r) = serde_json::from_str::<Report>(json) else {
        return;
    };
    let _ = render::table(&r);
    let _ = render::table_fitting(&r, Some(80));
    let _ = render::csv(&r);
    let _ = render::json(&r);
    let _ = render::html(&r);
});
