//! What the engine's test modules share: the two tiers they route between and an engine on the
//! bundled model built from them.

#![allow(clippy::unwrap_used)]
use std::sync::Arc;

use super::{Engine, EngineBuilder};
use crate::domain::classifier::ComplexityModel;
use crate::domain::decision::Signer;
use crate::domain::policy::Policy;

/// `small` ($1 / $2 per million input / output tokens) and `premium` ($10 / $30).
pub(super) const TWO_TIERS: &str = r#"
[[tiers]]
name = "small"
model = "s"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[tiers]]
name = "premium"
model = "p"
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0
"#;

/// An engine on the bundled model with [`TWO_TIERS`] and the rest of the policy (`rest`:
/// `[default]`, scopes, budgets), decisions living an hour; in memory unless given a store.
pub(super) fn two_tier_engine(rest: &str) -> EngineBuilder {
    Engine::builder(
        Arc::new(ComplexityModel::bundled().unwrap()),
        Arc::new(Policy::parse(&format!("{TWO_TIERS}{rest}")).unwrap()),
        Signer::new(b"k").unwrap(),
    )
    .decision_ttl_ms(crate::domain::calendar::HOUR_MS)
}
