//! Output lengths of unlabelled tasks, predicted from their text.
//!
//! A labelled task is priced at its workflow's median output length, learned from the
//! workflow's own reports. An unlabelled one had only the scope's median (or, once the scope
//! has discovered clusters, its cluster's): where one kind of work answers in a letter and
//! another in a worked page, the page was priced as a letter until the first cluster fit, and
//! the plan bought the premium tier for it at half of what it costs. A [`LengthModel`] learns,
//! from every unlabelled outcome's reported output length, how the words and word pairs of the
//! task's sketch (the one clusters are fitted on) move its log length: a linear model over the
//! sketch's hashed buckets, trained by normalised least mean squares, one step per outcome in
//! log order (the same on every replica). Route reads it in 32 look-ups.

use crate::domain::clusters::{DIM, SKETCH_TERMS, distinct_buckets};

/// Share of a prediction's error one outcome corrects (normalised least mean squares, stable
/// for any step in (0, 2)): a kind of work with its own words is priced at its own length after
/// a handful of its outcomes, while the noise of one report moves a prediction by a quarter of
/// its error at most.
pub const LENGTH_STEP: f32 = 0.25;
/// Unlabelled outcomes a model needs before Route prices tasks on it (before: the scope's median).
pub const LENGTH_MIN_OUTCOMES: u64 = 16;

/// A linear model of `ln(1 + output tokens)` over a sketch's hashed buckets plus a bias.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthModel {
    /// One weight per bucket ([`DIM`]), then the bias.
    weights: Vec<f32>,
    /// Outcomes it learned from.
    trained: u64,
}

impl Default for LengthModel {
    fn default() -> Self {
        Self {
            weights: vec![0.0; DIM + 1],
            trained: 0,
        }
    }
}

/// A sketch's distinct buckets, and the value each feature (the bias included) takes so that
/// the feature vector has unit length.
fn features(sketch: &[u16]) -> ([u16; SKETCH_TERMS], usize, f32) {
    let (b, m) = distinct_buckets(sketch);
    (b, m, 1.0 / ((m + 1) as f32).sqrt())
}

impl LengthModel {
    fn score(&self, buckets: &[u16], x: f32) -> f32 {
        let bias = self.weights[DIM];
        (buckets
            .iter()
            .map(|&h| self.weights[usize::from(h)])
            .sum::<f32>()
            + bias)
            * x
    }

    /// Learns one outcome of an unlabelled task: its sketch and reported output tokens.
    pub fn observe(&mut self, sketch: &[u16], tokens: u64) {
        let (b, m, x) = features(sketch);
        let y = (tokens as f32).ln_1p();
        let step = LENGTH_STEP * (y - self.score(&b[..m], x)) * x;
        for &h in &b[..m] {
            self.weights[usize::from(h)] += step;
        }
        self.weights[DIM] += step;
        self.trained += 1;
    }

    /// The output tokens it expects of a task with this sketch, at most `cap`; `None` before
    /// [`LENGTH_MIN_OUTCOMES`] outcomes.
    pub fn predict(&self, sketch: &[u16], cap: u64) -> Option<u64> {
        if self.trained < LENGTH_MIN_OUTCOMES {
            return None;
        }
        let (b, m, x) = features(sketch);
        let tokens = f64::from(self.score(&b[..m], x)).exp_m1().round();
        Some((tokens.max(1.0) as u64).min(cap.max(1)))
    }

    /// Outcomes it learned from.
    pub fn trained(&self) -> u64 {
        self.trained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clusters::sketch;

    #[test]
    fn two_kinds_of_work_are_priced_at_their_own_lengths() {
        let mut m = LengthModel::default();
        let quiz = |i: usize| {
            format!("Which planet is largest of these? option {i} A) Mars B) Jupiter C) Venus")
        };
        let word = |i: usize| {
            format!(
                "A farmer sells {i} eggs a day at 3 dollars each; how much money does he make in a week?"
            )
        };
        assert_eq!(m.predict(&sketch(&quiz(0)).0, 4096), None);
        for i in 0..200 {
            m.observe(&sketch(&quiz(i)).0, 2);
            m.observe(&sketch(&word(i)).0, 300);
        }
        let q = m.predict(&sketch(&quiz(1000)).0, 4096).unwrap();
        let w = m.predict(&sketch(&word(1000)).0, 4096).unwrap();
        assert!(q <= 4, "{q}");
        assert!((200..=450).contains(&w), "{w}");
        // Never above the policy's cap, never 0.
        assert_eq!(m.predict(&sketch(&word(1)).0, 100), Some(100));
        assert!(m.predict(&[], 4096).unwrap() >= 1);
    }
}
