//! The recipe guard: the features of the bundled training data are pinned, so a change to the
//! extractor cannot ship without a new feature version and a retrained model.

use crate::domain::features::{FEATURE_VERSION, FNV_OFFSET, FNV_PRIME, TaskInput, visit_features};
use crate::offline::dataset::{self, Split};

/// The bundled model was trained on exactly these features: any change to the extractor's
/// output (even a faster rewrite that differs in one bucket or one float bit) must come with
/// a new FEATURE_VERSION and a retrained model. Checksum over the held-out tasks.
#[test]
fn features_of_the_bundled_data_are_unchanged() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/data/routellm-train.jsonl.gz"
    );
    let records = dataset::load(path, Split::Holdout).expect("bundled data");
    let mut sum = FNV_OFFSET;
    let mut seen = 0usize;
    for r in &records {
        let input = TaskInput {
            text: &r.prompt,
            workflow: &r.workflow,
            task_type: "",
            expected_output_tokens: 64,
        };
        visit_features(&input, |i, v| {
            sum = (sum ^ u64::from(i)).wrapping_mul(FNV_PRIME);
            sum = (sum ^ u64::from(v.to_bits())).wrapping_mul(FNV_PRIME);
            seen += 1;
        });
    }
    assert_eq!(
        (records.len(), seen, sum),
        (1832, 299_835, 6_835_123_971_145_336_337),
        "FEATURE_VERSION {FEATURE_VERSION}"
    );
}
