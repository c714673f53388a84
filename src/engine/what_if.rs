//! What-if: re-decide the recent window of outcomes under the live and a proposed policy, and
//! compare spend and projected quality per scope (the pure half of `ValidatePolicy`).

use std::collections::BTreeMap;

use crate::domain::learning::RoutingTable;
use crate::store::OutcomeEvent;

/// Projected outcome of the recent window in one scope.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WhatIfScope {
    /// Scope key under the proposed policy.
    pub scope: String,
    /// Outcomes in the window that fall in this scope.
    pub tasks: u64,
    /// What those tasks actually cost (their tokens on the tier that ran), micro-USD.
    pub actual_spend_micros: i64,
    /// Their observed average score.
    pub actual_quality: f64,
    /// The live policy re-deciding the same tasks now, micro-USD.
    pub live_spend_micros: i64,
    /// Its projected quality.
    pub live_quality: f64,
    /// The proposed policy deciding the same tasks, micro-USD.
    pub proposed_spend_micros: i64,
    /// Its projected quality.
    pub proposed_quality: f64,
    /// The scope's bar under the live policy.
    pub live_bar: f64,
    /// The scope's bar under the proposal.
    pub proposed_bar: f64,
    /// Tier → tasks, as they ran.
    pub actual_mix: BTreeMap<String, u64>,
    /// Tier → tasks, under the proposal.
    pub proposed_mix: BTreeMap<String, u64>,
}

/// What-if result: per scope, and everything.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WhatIf {
    /// Per scope, by key.
    pub scopes: Vec<WhatIfScope>,
    /// All scopes together (key `total`; bars averaged over tasks).
    pub total: WhatIfScope,
}

/// Re-decides one recorded outcome under a table: (tier, projected quality, cost micros). The
/// observed score stands where the tier is the one that ran; elsewhere the plan's prediction.
fn project(table: &RoutingTable, e: &OutcomeEvent) -> (String, f64, i64, f64) {
    let policy = &table.policy;
    let scope = policy.resolve(&e.team, &e.workflow);
    let plan = table.plan(&scope.key).for_team(&e.team);
    let band = usize::from(e.band).min(crate::domain::learning::BANDS - 1);
    let choice = plan.choice(
        policy,
        &e.workflow,
        f64::from(e.complexity),
        band,
        f64::from(e.gap),
        e.input_tokens,
        e.output_tokens,
    );
    let (curves, slot, costs) = (choice.curves, choice.slot, &choice.costs_micros);
    let tier = &policy.tiers[curves[slot].tier];
    let quality = if tier.name == e.tier {
        e.score
    } else {
        curves[slot].predicted_for(band, f64::from(e.gap))
    };
    let bar = plan.bar_for(&e.workflow, band, f64::from(e.gap));
    (tier.name.clone(), quality, costs[slot], bar)
}

/// Replays `window` under the live and the proposed tables.
pub fn what_if(live: &RoutingTable, proposed: &RoutingTable, window: &[OutcomeEvent]) -> WhatIf {
    #[derive(Default)]
    struct Acc {
        s: WhatIfScope,
        actual_q: f64,
        live_q: f64,
        proposed_q: f64,
        live_bar: f64,
        proposed_bar: f64,
    }
    let mut by: BTreeMap<String, Acc> = BTreeMap::new();
    let mut total = Acc::default();
    // Outcomes logged before events carried team and complexity cannot be re-decided.
    for e in window.iter().filter(|e| e.complexity > 0.0) {
        let actual_cost = live.policy.tier_index(&e.tier).map_or(0, |i| {
            live.policy.tiers[i].bill_micros(&crate::domain::policy::TokenKinds {
                input: e.input_tokens,
                cached_input: e.cached_input_tokens,
                output: e.output_tokens,
                reasoning: e.reasoning_tokens,
            })
        });
        let (_, lq, lc, lbar) = project(live, e);
        let (pt, pq, pc, pbar) = project(proposed, e);
        let key = proposed.policy.resolve(&e.team, &e.workflow).key.clone();
        for acc in [by.entry(key).or_default(), &mut total] {
            acc.s.tasks += 1;
            acc.s.actual_spend_micros += actual_cost;
            acc.s.live_spend_micros += lc;
            acc.s.proposed_spend_micros += pc;
            acc.actual_q += e.score;
            acc.live_q += lq;
            acc.proposed_q += pq;
            acc.live_bar += lbar;
            acc.proposed_bar += pbar;
            *acc.s.actual_mix.entry(e.tier.clone()).or_default() += 1;
            *acc.s.proposed_mix.entry(pt.clone()).or_default() += 1;
        }
    }
    let finish = |key: String, a: Acc| {
        let n = a.s.tasks.max(1) as f64;
        WhatIfScope {
            scope: key,
            actual_quality: a.actual_q / n,
            live_quality: a.live_q / n,
            proposed_quality: a.proposed_q / n,
            live_bar: a.live_bar / n,
            proposed_bar: a.proposed_bar / n,
            ..a.s
        }
    };
    WhatIf {
        scopes: by.into_iter().map(|(k, a)| finish(k, a)).collect(),
        total: finish("total".into(), total),
    }
}
