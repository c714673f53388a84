//! Feature extraction and scoring: finite values in range for any text and workflow.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::features::{TaskInput, visit_features};

static MODEL: OnceLock<ComplexityModel> = OnceLock::new();

fuzz_target!(|data: (&str, &str, u32)| {
    let (text, workflow, out) = data;
    let input = TaskInput {
        text,
        workflow,
        expected_output_tokens: out,
        ..TaskInput::default()
    };
    visit_features(&input, |i, v| {
        assert!((i as usize) < tokenwise::domain::features::DIMS && v.is_finite());
    });
    let model = MODEL.get_or_init(|| ComplexityModel::bundled().unwrap());
    let c = model.complexity(&input);
    assert!((0.0..=1.0).contains(&c));
});
