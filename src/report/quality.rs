//! Quality kept, measured: what routing cost in quality, from the ledger's sums.
//!
//! Three estimates per group, each with a 95% interval and the evidence behind it:
//! - **quality kept** on shadow pairs: R = Σr / Σs, the mean routed score over the mean shadow
//!   (premium) score of the same tasks. A paired ratio, so "kept 96% of premium quality" reads
//!   directly; its interval is the delta method's for a ratio of means,
//!   Var(R) ≈ Σ(r − R·s)² / ((n − 1)·n·s̄²), which needs only the sums of r, s, r², s², r·s.
//!   It describes the tasks that could be shadowed: those routed below the shadow tier.
//! - **always-premium quality** by inverse propensity (Hajek): Σw·y / Σw over the outcomes whose
//!   decision could have gone to premium, w = 1 / its premium propensity where premium served
//!   it, 0 elsewhere; Var ≈ Σw²(y − Q)² / (Σw)². Printed only where every outcome of the group
//!   could have gone to premium: an estimate whose support is missing is never printed.
//! - **the saving** on the same pairs: 1 − Σ routed cost / Σ shadow cost, the same ratio
//!   interval on the costs.
//!
//! Delta-method intervals, not a bootstrap: the ledger keeps sums, not pairs, and the sums are
//! all a delta-method interval needs (`benches/quality/coverage.sh` measures its coverage in
//! replay). An estimate is shown only once its interval is narrower than the scope's
//! `report_interval_width`; until then the report says "not enough evidence".

use serde::{Deserialize, Serialize};

use crate::domain::books::metric;

/// The normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_985;

/// A point estimate and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

impl Estimate {
    fn around(value: f64, se: f64) -> Option<Self> {
        (value.is_finite() && se.is_finite()).then_some(Self {
            value,
            low: value - Z95 * se,
            high: value + Z95 * se,
        })
    }

    /// Width of the interval.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// Sums over a sample of pairs (x, y): n, Σx, Σy, Σx², Σy², Σx·y.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairSums {
    /// Pairs.
    pub n: f64,
    /// Σx.
    pub x: f64,
    /// Σy.
    pub y: f64,
    /// Σx².
    pub xx: f64,
    /// Σy².
    pub yy: f64,
    /// Σx·y.
    pub xy: f64,
}

/// The ratio of means Σx / Σy with its delta-method interval; `None` under two pairs or a zero
/// denominator.
pub fn ratio(s: &PairSums) -> Option<Estimate> {
    if s.n < 2.0 || s.y <= 0.0 {
        return None;
    }
    let r = s.x / s.y;
    let residual = (s.xx - 2.0 * r * s.xy + r * r * s.yy).max(0.0);
    let mean_y = s.y / s.n;
    let se = (residual / (s.n - 1.0)).sqrt() / (s.n.sqrt() * mean_y);
    Estimate::around(r, se)
}

/// Sums of inverse-propensity weights w and outcomes y: Σw, Σw·y, Σw², Σw²·y, Σw²·y².
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WeightSums {
    /// Σw.
    pub w: f64,
    /// Σw·y.
    pub wy: f64,
    /// Σw².
    pub ww: f64,
    /// Σw²·y.
    pub wwy: f64,
    /// Σw²·y².
    pub wwyy: f64,
}

/// The Hajek estimate Σw·y / Σw with its delta-method interval; `None` without weight.
pub fn hajek(s: &WeightSums) -> Option<Estimate> {
    if s.w <= 0.0 {
        return None;
    }
    let q = s.wy / s.w;
    let spread = (s.wwyy - 2.0 * q * s.wwy + q * q * s.ww).max(0.0);
    Estimate::around(q, spread.sqrt() / s.w)
}

/// What routing cost in quality in one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct QualityKept {
    /// The group's key, as in [`GroupReport::key`](super::GroupReport).
    pub key: String,
    /// Decisions that named a shadow tier.
    pub shadowed: u64,
    /// What the shadow runs cost, micro-USD (apart from spend).
    pub shadow_spend_micros: i64,
    /// Shadow pairs posted.
    pub pairs: u64,
    /// Mean routed score on the pairs.
    pub routed_quality: Option<f64>,
    /// Mean shadow score on the pairs.
    pub shadow_quality: Option<f64>,
    /// Mean routed score over mean shadow score on the pairs, with its interval.
    pub kept: Option<Estimate>,
    /// 1 − routed cost / shadow cost on the pairs, with its interval.
    pub saving: Option<Estimate>,
    /// Outcomes whose decision could have gone to premium.
    pub supported: u64,
    /// Outcomes whose decision could not have (no estimate of always-premium quality then).
    pub unsupported: u64,
    /// Outcomes premium served where the decision could have gone elsewhere.
    pub explored: u64,
    /// Always-premium quality by inverse propensity, with its interval; `None` where support
    /// is missing or no outcome was premium's.
    pub premium_quality: Option<Estimate>,
    /// The interval width an estimate must be under to be printed (`report_interval_width`).
    pub interval_width: f64,
}

impl QualityKept {
    /// The group's figures from its ledger sums (`sum` of a metric), or `None` where nothing
    /// was shadowed or recorded with a propensity.
    pub fn from_sums(key: &str, sum: impl Fn(&str) -> i64, interval_width: f64) -> Option<Self> {
        let f = |m: &str| sum(m) as f64;
        let ppm = |m: &str| f(m) / 1e6;
        let count = |m: &str| sum(m).max(0) as u64;
        let (shadowed, pairs) = (count(metric::SHADOWED), count(metric::PAIRS));
        let (supported, unsupported) =
            (count(metric::IPS_SUPPORTED), count(metric::IPS_UNSUPPORTED));
        if shadowed == 0 && pairs == 0 && supported == 0 && unsupported == 0 {
            return None;
        }
        let n = pairs as f64;
        let scores = PairSums {
            n,
            x: ppm(metric::PAIR_R),
            y: ppm(metric::PAIR_S),
            xx: ppm(metric::PAIR_RR),
            yy: ppm(metric::PAIR_SS),
            xy: ppm(metric::PAIR_RS),
        };
        let costs = PairSums {
            n,
            x: f(metric::PAIR_CR),
            y: f(metric::PAIR_CS),
            xx: f(metric::PAIR_CRR),
            yy: f(metric::PAIR_CSS),
            xy: f(metric::PAIR_CRS),
        };
        let weights = WeightSums {
            w: ppm(metric::IPS_W),
            wy: ppm(metric::IPS_WY),
            ww: ppm(metric::IPS_WW),
            wwy: ppm(metric::IPS_WWY),
            wwyy: ppm(metric::IPS_WWYY),
        };
        let explored = count(metric::IPS_EXPLORED);
        Some(Self {
            key: key.to_string(),
            shadowed,
            shadow_spend_micros: sum(metric::SHADOW_SPEND),
            pairs,
            routed_quality: (pairs > 0).then(|| scores.x / n),
            shadow_quality: (pairs > 0).then(|| scores.y / n),
            kept: ratio(&scores),
            saving: ratio(&costs).map(|r| Estimate {
                value: 1.0 - r.value,
                low: 1.0 - r.high,
                high: 1.0 - r.low,
            }),
            supported,
            unsupported,
            explored,
            // Never an estimate whose support is missing: every outcome must have been able
            // to go to premium, and some explored there.
            premium_quality: if unsupported == 0 && explored > 0 {
                hajek(&weights)
            } else {
                None
            },
            interval_width,
        })
    }

    /// `e` where its interval is narrow enough to print, else `None` ("not enough evidence").
    pub fn shown(&self, e: Option<Estimate>) -> Option<Estimate> {
        e.filter(|e| e.width() < self.interval_width)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_paired_ratio_and_its_interval_by_hand() {
        // Pairs (r, s): (1, 1), (0, 1), (1, 1), (1, 0): Σr = 3, Σs = 3, R = 1.
        // Residuals r − s: 0, −1, 0, 1 → Σ = 2; se = √(2/3) / (√4 · 0.75) = 0.5443.
        let s = PairSums {
            n: 4.0,
            x: 3.0,
            y: 3.0,
            xx: 3.0,
            yy: 3.0,
            xy: 2.0,
        };
        let e = ratio(&s).unwrap();
        assert!((e.value - 1.0).abs() < 1e-12);
        let se = (2.0f64 / 3.0).sqrt() / (2.0 * 0.75);
        assert!((e.high - 1.0 - Z95 * se).abs() < 1e-12, "{e:?}");
        assert!((e.width() - 2.0 * Z95 * 0.544_331).abs() < 1e-5);
        assert_eq!(ratio(&PairSums { n: 1.0, ..s }), None);
        assert_eq!(ratio(&PairSums { y: 0.0, ..s }), None);
    }

    #[test]
    fn the_hajek_estimate_and_its_interval_by_hand() {
        // Premium seen twice: w = 2 with y = 1, w = 4 with y = 0.5 (others weigh 0).
        // Q = (2 + 2) / 6 = 2/3; Σw²(y − Q)² = 4·(1/3)² + 16·(1/6)² = 8/9; se = √(8/9) / 6.
        let s = WeightSums {
            w: 6.0,
            wy: 4.0,
            ww: 20.0,
            wwy: 4.0 + 8.0,
            wwyy: 4.0 + 4.0,
        };
        let e = hajek(&s).unwrap();
        assert!((e.value - 2.0 / 3.0).abs() < 1e-12);
        let se = (8.0f64 / 9.0).sqrt() / 6.0;
        assert!((e.low - (2.0 / 3.0 - Z95 * se)).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn no_estimate_without_support_and_none_printed_until_narrow_enough() {
        use metric::*;
        let sums = |unsupported: i64| {
            move |m: &str| match m {
                x if x == SHADOWED || x == PAIRS => 4,
                x if x == PAIR_R || x == PAIR_S || x == PAIR_RR || x == PAIR_SS => 3_000_000,
                x if x == PAIR_RS => 2_000_000,
                x if x == PAIR_CR => 400,
                x if x == PAIR_CS => 4_000,
                x if x == PAIR_CRR => 40_000,
                x if x == PAIR_CSS => 4_000_000,
                x if x == PAIR_CRS => 400_000,
                x if x == IPS_SUPPORTED => 10,
                x if x == IPS_UNSUPPORTED => unsupported,
                x if x == IPS_EXPLORED => 2,
                x if x == IPS_W => 6_000_000,
                x if x == IPS_WY => 4_000_000,
                x if x == IPS_WW => 20_000_000,
                x if x == IPS_WWY => 12_000_000,
                x if x == IPS_WWYY => 8_000_000,
                _ => 0,
            }
        };
        let q = QualityKept::from_sums("g", sums(0), 0.05).unwrap();
        assert_eq!((q.pairs, q.shadowed), (4, 4));
        // Routed calls cost a tenth of the shadow ones, every pair alike: a saving of 90%,
        // with no spread.
        let saving = q.saving.unwrap();
        assert!(
            (saving.value - 0.9).abs() < 1e-12 && saving.width() < 1e-6,
            "{saving:?}"
        );
        assert!(q.premium_quality.is_some());
        // Four pairs: an interval over 2 wide is not evidence; the saving's is.
        assert_eq!(q.shown(q.kept), None);
        assert_eq!(q.shown(q.saving), q.saving);
        // One outcome that could not have gone to premium: no always-premium estimate at all.
        let q = QualityKept::from_sums("g", sums(1), 0.05).unwrap();
        assert_eq!(q.premium_quality, None);
        assert_eq!(QualityKept::from_sums("g", |_| 0, 0.05), None);
        // The report says so: no figure for quality kept, none at all for premium.
        let lines = crate::report::render::quality_lines(&[q]);
        assert!(
            lines[0]
                .starts_with("g: quality kept: not enough evidence (interval 2.13 wide on 4 pairs"),
            "{lines:?}"
        );
        assert!(lines[0].contains("saving 90% [90%, 90%]"), "{lines:?}");
        assert_eq!(
            lines[1],
            "g: always-premium quality no estimate: 1 of 11 outcomes could not have gone to premium."
        );
    }
}
