//! Log-odds helpers every stage of the learner shares: moving a quality by a shift in
//! log-odds (label shifts, premium gaps, a level's learned shift), and the noise of one score.
//! Kept apart so the estimate and what Route reads of a plan both depend on it and not on each
//! other.

/// `q` moved by `delta` in log-odds (unchanged for a zero shift, so a model without a gap term
/// routes exactly as before).
pub(super) fn shift_quality(q: f64, delta: f64) -> f64 {
    if delta == 0.0 {
        return q;
    }
    shift_log_odds(q, delta)
}

/// `q` with its log-odds moved by `delta` (kept off 0 and 1 so a shift can always act).
pub(super) fn shift_log_odds(q: f64, delta: f64) -> f64 {
    logistic(logit(q) + delta)
}

/// Log-odds of `q`, kept off 0 and 1.
pub(super) fn logit(q: f64) -> f64 {
    let q = q.clamp(1e-4, 1.0 - 1e-4);
    (q / (1.0 - q)).ln()
}

/// The quality whose log-odds are `z` (the inverse of [`logit`] inside its clamp).
pub(super) fn logistic(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Variance of one score in [0, 1] whose mean is `p` (at most that of a pass/fail outcome),
/// kept off 0 so a curve at 0 or 1 still counts its outcomes as noisy.
pub(super) fn score_variance(p: f64) -> f64 {
    (p * (1.0 - p)).max(0.01)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_shift_moves_nothing_even_at_the_ends() {
        for q in [0.0, 1e-6, 0.3, 0.77, 1.0] {
            assert_eq!(shift_quality(q, 0.0), q);
        }
        // A shift of 0 through the log-odds path is not the identity at the ends: the clamp.
        assert_eq!(shift_log_odds(0.0, 0.0), 1e-4);
    }

    #[test]
    fn a_shift_moves_quality_in_log_odds() {
        // logit(0.5) = 0, so +1 lands on σ(1) and −1 on σ(−1) = 1 − σ(1).
        let up = shift_quality(0.5, 1.0);
        assert!((up - 0.731_058_578_630_004_9).abs() < 1e-15, "{up}");
        assert!((shift_quality(0.5, -1.0) - (1.0 - up)).abs() < 1e-15);
        // Equal shifts move a quality near the ends less than one in the middle.
        assert!(shift_quality(0.95, 0.5) - 0.95 < shift_quality(0.5, 0.5) - 0.5);
        // Shifts add in log-odds.
        let twice = shift_quality(shift_quality(0.3, 0.4), 0.4);
        assert!((twice - shift_quality(0.3, 0.8)).abs() < 1e-12);
    }

    #[test]
    fn logit_and_logistic_invert_each_other_inside_the_clamp() {
        for q in [1e-3, 0.2, 0.5, 0.9, 0.999] {
            assert!((logistic(logit(q)) - q).abs() < 1e-12);
        }
        assert_eq!(logit(0.5), 0.0);
        assert_eq!(logit(0.0), logit(1e-4));
        assert!((logit(1.0) + logit(0.0)).abs() < 1e-9);
    }

    #[test]
    fn score_variance_is_a_pass_fail_variance_kept_off_zero() {
        assert_eq!(score_variance(0.5), 0.25);
        assert!((score_variance(0.8) - 0.16).abs() < 1e-15);
        assert_eq!(score_variance(1.0), 0.01);
        assert_eq!(score_variance(0.0), 0.01);
    }
}
