//! The complexity model: an item-response model over [`crate::domain::features`]. A task's difficulty
//! is linear in its features, and a model of ability `a` succeeds on it with chance
//! `σ(a − difficulty)`; the difficulty is mapped through its training distribution to a
//! complexity in [0, 1] ("harder than this share of the training tasks"). Pure: no I/O on the
//! scoring path.
//!
//! The artifact (`models/complexity-v1.json`) also carries the calibration the router's cold
//! start uses: per complexity band, the observed quality of the cheap and the premium model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::features::{self, TaskInput};

/// Largest premium gap (log-odds) a task can get: a text far outside the training data must not
/// move a tier's predicted quality to certainty.
pub const MAX_GAP: f32 = 2.0;

/// Format tag of the artifact; loading refuses anything else.
pub const ARTIFACT_FORMAT: &str = "tokenwise-complexity/1";

/// The bundled model, embedded so `serve` needs no file.
const BUNDLED: &str = include_str!("../../models/complexity-v1.json");

/// Errors loading or checking a model artifact.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The JSON did not parse.
    #[error("model artifact is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The artifact parsed but is inconsistent.
    #[error("model artifact is invalid: {0}")]
    Invalid(String),
}

/// Observed outcomes of the two training models within one complexity band.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationBand {
    /// Training tasks whose complexity fell in this band.
    pub tasks: u32,
    /// Average score of the cheap model on them.
    pub cheap_quality: f64,
    /// Average score of the premium model on them.
    pub premium_quality: f64,
}

/// Cold-start calibration: band `i` covers complexity `[i/B, (i+1)/B)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Model id the "cheap" curve was measured on.
    pub cheap_model: String,
    /// Model id the "premium" curve was measured on.
    pub premium_model: String,
    /// Bands in complexity order.
    pub bands: Vec<CalibrationBand>,
    /// Per workflow and family label seen in training: how much better or worse each model did
    /// there than its band curve says, as a shift of the log-odds of success. A family's shift
    /// is relative to the band curve, a workflow's to its family's (or to the band curve without
    /// a family). A label not listed shifts nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflows: BTreeMap<String, LabelShift>,
}

/// The log-odds shift of each calibration model's success on one training label, shrunk
/// towards 0 by the label's size.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct LabelShift {
    /// Training tasks with this label.
    pub tasks: u32,
    /// Shift of the cheap model.
    pub cheap: f32,
    /// Shift of the premium model.
    pub premium: f32,
}

impl Calibration {
    /// The summed log-odds shift (cheap, premium) of a workflow: its family's plus its own.
    pub fn shift_of(&self, workflow: &str) -> (f64, f64) {
        if self.workflows.is_empty() {
            return (0.0, 0.0);
        }
        let own = self.workflows.get(workflow);
        let family = crate::domain::labels::family_of(workflow).and_then(|f| self.workflows.get(f));
        [own, family]
            .into_iter()
            .flatten()
            .fold((0.0, 0.0), |(c, p), s| {
                (c + f64::from(s.cheap), p + f64::from(s.premium))
            })
    }

    /// The log-odds shift a label adds on top of its parent's (its own entry only).
    pub fn own_shift(&self, label: &str) -> (f64, f64) {
        self.workflows
            .get(label)
            .map_or((0.0, 0.0), |s| (f64::from(s.cheap), f64::from(s.premium)))
    }
}

/// A trained complexity model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComplexityModel {
    /// Always [`ARTIFACT_FORMAT`].
    pub format: String,
    /// Version of this artifact, e.g. `cx1-20261129-a1b2c3`.
    pub version: String,
    /// Feature recipe the weights were trained for ([`features::FEATURE_VERSION`]).
    pub feature_version: String,
    /// One weight per feature ([`features::DIMS`]).
    pub weights: Vec<f32>,
    /// Added to every difficulty (0 for trained artifacts).
    pub bias: f32,
    /// Item-response ability of each training model: it succeeds on a task with chance
    /// `σ(ability − logit)`.
    #[serde(default)]
    pub abilities: BTreeMap<String, f32>,
    /// Difficulty offset of each workflow and workflow family (`mmlu/anatomy`, `mmlu`) seen in
    /// training. A label not listed adds nothing: an unseen workflow is scored on its text
    /// alone, and what it means for quality is learned online.
    #[serde(default)]
    pub workflow_offsets: BTreeMap<String, f32>,
    /// Weights of the task's premium gap, linear in the same features: where the premium model
    /// gains more (or less) over the cheap one than their abilities at this difficulty say. It
    /// moves the success log-odds of the premium model up by the gap and the cheap one's down
    /// by it, a tier between them by its price rank. Empty: no gap term (every task's gap is 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gap_weights: Vec<f32>,
    /// Quantiles of the training logits (ascending, evenly spaced in probability); the
    /// complexity of a task is the interpolated position of its logit among them.
    pub logit_quantiles: Vec<f32>,
    /// Cold-start calibration by complexity band.
    pub calibration: Calibration,
    /// Free-form training facts (data, split, metrics) for the model card.
    #[serde(default)]
    pub training: serde_json::Value,
}

impl ComplexityModel {
    /// The model bundled with the binary.
    pub fn bundled() -> Result<Self, ModelError> {
        Self::from_json(BUNDLED)
    }

    /// Loads and checks an artifact from a file.
    pub fn load(path: &str) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and checks an artifact.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let model: Self = serde_json::from_str(text)?;
        model.check()?;
        Ok(model)
    }

    /// Serialises the artifact.
    pub fn to_json(&self) -> Result<String, ModelError> {
        Ok(serde_json::to_string(self)?)
    }

    fn check(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.format != ARTIFACT_FORMAT {
            return bad(format!(
                "format is {:?}, expected {ARTIFACT_FORMAT:?}",
                self.format
            ));
        }
        if self.feature_version != features::FEATURE_VERSION {
            return bad(format!(
                "feature_version is {:?}, this build extracts {:?}",
                self.feature_version,
                features::FEATURE_VERSION
            ));
        }
        if self.weights.len() != features::DIMS {
            return bad(format!(
                "weights has {} entries, expected {}",
                self.weights.len(),
                features::DIMS
            ));
        }
        if !self.gap_weights.is_empty() && self.gap_weights.len() != features::DIMS {
            return bad(format!(
                "gap_weights has {} entries, expected 0 or {}",
                self.gap_weights.len(),
                features::DIMS
            ));
        }
        if !self
            .weights
            .iter()
            .chain(&self.gap_weights)
            .all(|w| w.is_finite())
            || !self.bias.is_finite()
        {
            return bad("weights must be finite".into());
        }
        if self.logit_quantiles.len() < 2
            || self.logit_quantiles.windows(2).any(|w| w[0] > w[1])
            || !self.logit_quantiles.iter().all(|q| q.is_finite())
        {
            return bad("logit_quantiles must be at least 2 finite ascending values".into());
        }
        if self.calibration.bands.is_empty() {
            return bad("calibration.bands is empty".into());
        }
        for (i, b) in self.calibration.bands.iter().enumerate() {
            if !(0.0..=1.0).contains(&b.cheap_quality) || !(0.0..=1.0).contains(&b.premium_quality)
            {
                return bad(format!("calibration.bands[{i}] quality outside [0, 1]"));
            }
        }
        for (label, shift) in &self.calibration.workflows {
            if !shift.cheap.is_finite() || !shift.premium.is_finite() {
                return bad(format!(
                    "calibration.workflows[{label:?}] shift is not finite"
                ));
            }
        }
        Ok(())
    }

    /// The raw logit of a task: `bias + w · x`.
    pub fn logit(&self, input: &TaskInput<'_>) -> f32 {
        self.logit_and_gap(input).0
    }

    /// The task's difficulty logit and its premium gap (0 without gap weights, at most
    /// [`MAX_GAP`] either way), from one pass over its features.
    pub fn logit_and_gap(&self, input: &TaskInput<'_>) -> (f32, f32) {
        let mut z = self.bias + self.workflow_offset(input.workflow);
        let mut gap = 0.0;
        features::visit_features(input, |i, x| {
            // Indices come from the extractor and are < DIMS == weights.len() (checked at load).
            if let Some(w) = self.weights.get(i as usize) {
                z += w * x;
            }
            // Empty without a gap term: no entry, nothing added.
            if let Some(g) = self.gap_weights.get(i as usize) {
                gap += g * x;
            }
        });
        (z, gap.clamp(-MAX_GAP, MAX_GAP))
    }

    /// The task's complexity and its premium gap ([`ComplexityModel::gap_weights`]).
    pub fn score(&self, input: &TaskInput<'_>) -> (f64, f32) {
        let (z, gap) = self.logit_and_gap(input);
        (self.complexity_of_logit(z), gap)
    }

    /// Offline-learned difficulty offset of a workflow label: its own plus its family's.
    pub fn workflow_offset(&self, workflow: &str) -> f32 {
        if self.workflow_offsets.is_empty() || workflow.is_empty() {
            return 0.0;
        }
        let own = self.workflow_offsets.get(workflow).copied().unwrap_or(0.0);
        let family = crate::domain::labels::family_of(workflow)
            .and_then(|f| self.workflow_offsets.get(f))
            .copied()
            .unwrap_or(0.0);
        own + family
    }

    /// Chance that `model_id` succeeds on a task of difficulty logit `z`, if the model was one
    /// of the training models.
    pub fn success_chance(&self, model_id: &str, z: f32) -> Option<f64> {
        let a = self.abilities.get(model_id)?;
        Some(1.0 / (1.0 + f64::from(z - a).exp()))
    }

    /// Complexity in [0, 1]: the share of training tasks with a lower logit.
    pub fn complexity(&self, input: &TaskInput<'_>) -> f64 {
        self.complexity_of_logit(self.logit(input))
    }

    /// Maps a logit to complexity through the stored quantiles (piecewise linear).
    pub fn complexity_of_logit(&self, z: f32) -> f64 {
        let q = &self.logit_quantiles;
        let n = q.len();
        let (first, last) = (q[0], q[n - 1]);
        if z <= first {
            return 0.0;
        }
        if z >= last {
            return 1.0;
        }
        // First knot strictly above z.
        let hi = q.partition_point(|&k| k <= z);
        let lo = hi - 1;
        let span = q[hi] - q[lo];
        let frac = if span > 0.0 { (z - q[lo]) / span } else { 0.5 };
        ((lo as f64) + f64::from(frac)) / ((n - 1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model() -> ComplexityModel {
        let mut weights = vec![0.0; features::DIMS];
        weights[features::HASH_DIMS] = 2.0; // length signal
        ComplexityModel {
            format: ARTIFACT_FORMAT.into(),
            version: "test".into(),
            feature_version: features::FEATURE_VERSION.into(),
            weights,
            bias: -1.0,
            abilities: BTreeMap::new(),
            workflow_offsets: BTreeMap::new(),
            gap_weights: Vec::new(),
            logit_quantiles: vec![-1.0, -0.5, 0.0, 0.5, 1.0],
            calibration: Calibration {
                cheap_model: "c".into(),
                premium_model: "p".into(),
                bands: vec![CalibrationBand {
                    tasks: 1,
                    cheap_quality: 0.5,
                    premium_quality: 0.9,
                }],
                workflows: BTreeMap::new(),
            },
            training: serde_json::Value::Null,
        }
    }

    #[test]
    fn save_load_round_trip_scores_the_same() {
        let m = tiny_model();
        let json = m.to_json().unwrap();
        let back = ComplexityModel::from_json(&json).unwrap();
        assert_eq!(m, back);
        let input = TaskInput {
            text: "a somewhat longer task text",
            ..Default::default()
        };
        assert_eq!(m.complexity(&input), back.complexity(&input));
    }

    #[test]
    fn quantile_mapping_is_monotone_and_clamped() {
        let m = tiny_model();
        assert_eq!(m.complexity_of_logit(-5.0), 0.0);
        assert_eq!(m.complexity_of_logit(5.0), 1.0);
        assert!((m.complexity_of_logit(0.0) - 0.5).abs() < 1e-9);
        assert!((m.complexity_of_logit(0.25) - 0.625).abs() < 1e-6);
        let mut last = 0.0;
        for i in -40..40 {
            let c = m.complexity_of_logit(i as f32 / 20.0);
            assert!(c >= last);
            last = c;
        }
    }

    #[test]
    fn gap_weights_score_round_trip_and_are_checked() {
        let mut m = tiny_model();
        let input = TaskInput {
            text: "a somewhat longer task text",
            ..Default::default()
        };
        assert_eq!(m.score(&input).1, 0.0, "no gap weights: gap 0");
        m.gap_weights = vec![0.0; features::DIMS];
        m.gap_weights[features::HASH_DIMS] = 100.0;
        let (c, gap) = m.score(&input);
        assert_eq!(c, m.complexity(&input));
        assert_eq!(gap, MAX_GAP, "clamped");
        let back = ComplexityModel::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back.score(&input), (c, gap));
        m.gap_weights.pop();
        let err = ComplexityModel::from_json(&m.to_json().unwrap()).unwrap_err();
        assert!(err.to_string().contains("gap_weights has"), "{err}");
    }

    #[test]
    fn rejects_wrong_dims_and_format() {
        let mut m = tiny_model();
        m.weights.pop();
        let err = ComplexityModel::from_json(&m.to_json().unwrap()).unwrap_err();
        assert!(err.to_string().contains("weights has"), "{err}");
        let mut m = tiny_model();
        m.format = "other".into();
        assert!(ComplexityModel::from_json(&m.to_json().unwrap()).is_err());
    }

    #[test]
    fn bundled_model_loads_and_orders_tasks() {
        let m = ComplexityModel::bundled().unwrap();
        let greet = m.complexity(&TaskInput {
            text: "Hi there!",
            workflow: "default",
            ..Default::default()
        });
        let math = m.complexity(&TaskInput {
            text: "A store sells pencils at 3 for $1.20 and pens at $2.50 each. Maria buys \
                   12 pencils and 4 pens, then pays with a $20 bill. After that she spends half \
                   of her change on stickers that cost $0.35 each. How many stickers does she \
                   buy, and how much money does she have left in total?",
            workflow: "default",
            ..Default::default()
        });
        assert!(math > greet, "math {math} vs greeting {greet}");
    }
}
