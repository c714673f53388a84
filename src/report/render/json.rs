//! JSON of the whole report: the serde shape of [`Report`], pretty-printed.

use crate::report::Report;

/// Renders the whole report as pretty-printed JSON (the serde shape of [`Report`]).
pub fn json(r: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::fixtures::sample;

    #[test]
    fn json_round_trips() {
        let r = sample();
        let text = json(&r).unwrap();
        assert!(text.contains('\n'));
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
