//! The counters behind "quality kept": each shadow pair's scores and costs, and each outcome's
//! inverse-propensity weight toward the premium tier. Sums of these (and of their products) are
//! all the report's estimators and intervals need (`report/quality.rs`).

use super::*;
use crate::domain::policy::ExploreBy;

/// Millionths: the ledger's unit for sums of fractions.
fn ppm(x: f64) -> i64 {
    (x * 1e6).round() as i64
}

/// The other half of a shadow pair, as booked.
#[derive(Debug, Clone, Copy)]
pub struct ShadowRun<'a> {
    /// The shadow tier.
    pub tier: &'a str,
    /// Its score in [0, 1].
    pub score: f64,
    /// The tokens booked for it.
    pub tokens: BookedTokens,
}

impl Books {
    /// The counters of a shadow pair (the routed outcome scored `score` at `routed_micros` on
    /// `served`, the shadow run as given) and the shadow run's cost, micro-USD. The pair's
    /// sums go in the served tier's cell; the shadow run's cost is shadow spend in the shadow
    /// tier's cell, apart from spend and from every budget.
    pub fn shadow_counters(
        &self,
        policy: &Policy,
        claims: &DecisionClaims,
        served: &str,
        (score, routed_micros): (f64, i64),
        run: &ShadowRun<'_>,
    ) -> (Vec<CounterAdd>, i64) {
        let shadow_micros = policy
            .tier_index(run.tier)
            .map_or(0, |i| policy.tiers[i].bill_micros(&run.tokens.kinds()));
        let (r, s) = (score, run.score);
        let (cr, cs) = (routed_micros, shadow_micros);
        // Only a pair on the scope's shadow tier, drawn for that, measures quality kept; an
        // exploration pair (`explore_by` "pairs" or "auto": the tier a posterior draw picked,
        // where it looked likely to do better) is shadow spend alone.
        let scope = policy.scope(&claims.scope);
        // As the decision was made; for an id that does not say, as the live policy explores.
        let exploring = claims
            .pair
            .unwrap_or(claims.explored && scope.explore_by != ExploreBy::Substitution);
        let measures = !exploring && policy.tier_index(run.tier) == Some(scope.shadow_tier);
        if !measures {
            let mut out = self.tier_cell_counters(claims, run.tier, &[(metric::SHADOW_SPEND, cs)]);
            // A pair explores once it is run: counted then, in the decision's cell, at what
            // the run cost (Route cannot tell a pair the caller runs from one it ignores).
            if exploring {
                out.extend(
                    self.cell_counters(
                        claims,
                        &[(metric::EXPLORED, 1), (metric::EXPLORE_COST, cs)],
                    ),
                );
            }
            return (out, shadow_micros);
        }
        let mut out = self.tier_cell_counters(
            claims,
            served,
            &[
                (metric::PAIRS, 1),
                (metric::PAIR_R, ppm(r)),
                (metric::PAIR_S, ppm(s)),
                (metric::PAIR_RR, ppm(r * r)),
                (metric::PAIR_SS, ppm(s * s)),
                (metric::PAIR_RS, ppm(r * s)),
                (metric::PAIR_CR, cr),
                (metric::PAIR_CS, cs),
                (metric::PAIR_CRR, cr.saturating_mul(cr)),
                (metric::PAIR_CSS, cs.saturating_mul(cs)),
                (metric::PAIR_CRS, cr.saturating_mul(cs)),
            ],
        );
        out.extend(self.tier_cell_counters(claims, run.tier, &[(metric::SHADOW_SPEND, cs)]));
        (out, shadow_micros)
    }

    /// The inverse-propensity counters of one outcome (none for an id issued before
    /// propensities were recorded): whether its decision could have gone to the scope's
    /// premium tier, and, where premium served it as Route chose, its weight 1 / propensity.
    pub fn propensity_counters(
        &self,
        policy: &Policy,
        claims: &DecisionClaims,
        served: &str,
        score: f64,
    ) -> Vec<CounterAdd> {
        let Some(p) = claims.premium_propensity.map(f64::from) else {
            return Vec::new();
        };
        if p <= 0.0 {
            return self.tier_cell_counters(claims, served, &[(metric::IPS_UNSUPPORTED, 1)]);
        }
        let scope = policy.scope(&claims.scope);
        let premium = scope.allowed.last().map(|&i| policy.tiers[i].name.as_str());
        let seen = premium == Some(served) && served == claims.tier;
        let (w, y) = if seen { (1.0 / p, score) } else { (0.0, 0.0) };
        self.tier_cell_counters(
            claims,
            served,
            &[
                (metric::IPS_SUPPORTED, 1),
                (metric::IPS_EXPLORED, i64::from(seen && p < 1.0)),
                (metric::IPS_W, ppm(w)),
                (metric::IPS_WY, ppm(w * y)),
                (metric::IPS_WW, ppm(w * w)),
                (metric::IPS_WWY, ppm(w * w * y)),
                (metric::IPS_WWYY, ppm(w * w * y * y)),
            ],
        )
    }
}
