//! What the shared outcome log holds: one accepted outcome (with its shadow pair and the
//! accounting it settles), and the limits a reuse event is recorded under.

use serde::{Deserialize, Serialize};

use super::CounterAdd;

/// One accepted outcome, as stored and replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    /// Decision nonce (unique per decision).
    pub nonce: u64,
    /// When the decision id expires (ms since epoch): the nonce is remembered until then.
    pub expires_ms: u64,
    /// Scope key.
    pub scope: String,
    /// Tier name that ran: the one that served the task (Feedback's `served_tier`), which
    /// learning credits the outcome to and the books billed.
    pub tier: String,
    /// The tier Route chose, where the caller fell back from it to another (`tier`); empty: the
    /// tier Route chose is `tier` (no fallback, or an event recorded before fallbacks were
    /// reported).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub routed_tier: String,
    /// Complexity band.
    pub band: u8,
    /// Outcome score in [0, 1].
    pub score: f64,
    /// Actual input tokens.
    pub input_tokens: u64,
    /// Actual output tokens.
    pub output_tokens: u64,
    /// Of `input_tokens`, those billed at the cached input price; absent (events recorded
    /// before the books priced token kinds): 0.
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub cached_input_tokens: u64,
    /// Of `output_tokens`, the reasoning tokens, billed at the reasoning price; absent: 0.
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub reasoning_tokens: u64,
    /// Workflow label of the caller.
    #[serde(default)]
    pub workflow: String,
    /// Team of the caller.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// Complexity of the task (what-if replays re-decide with it).
    #[serde(default)]
    pub complexity: f32,
    /// Premium gap of the task (learning and what-if use it); absent = 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gap: f32,
    /// The discovered cluster Route placed the (unlabelled) task in; absent: none. Learning
    /// files the outcome under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<u32>,
    /// The unlabelled task's text sketch, which the scope's clusters are fitted on; absent:
    /// none (a labelled task, or an id issued before v4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sketch: Vec<u16>,
    /// The probability that the decision got the tier it got (Route's propensity); absent: an
    /// id issued before propensities were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f32>,
    /// The probability that the decision would have got the scope's premium tier; absent as
    /// `propensity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub premium_propensity: Option<f32>,
    /// The shadow pair posted with the outcome: the same task run on the decision's shadow
    /// tier; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowOutcome>,
    /// Whether the decision named a shadow tier (its Route answer had a `shadow_tier`), so that
    /// `shadow` says whether the caller ran it; absent: it named none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_asked: bool,
    /// Accounting this outcome settles (spend reconciliation, outcome counts), applied in the
    /// same atomic step as the nonce so it counts exactly once. Not kept in the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<CounterAdd>,
    /// A mark that only settles accounting (a reuse of a decision's output): it spends its
    /// nonce and applies its counters exactly once, like an outcome, but never enters the
    /// learning log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counters_only: bool,
    /// The limits a reuse event is recorded under, checked in the same atomic step as its nonce
    /// (`None` for everything else). Not kept in the log, and dropped when an outage buffer
    /// takes the event: what was accepted is recorded.
    #[serde(skip)]
    pub quota: Option<ReuseQuota>,
}

/// The other half of a shadow pair: the decision's task, run on its shadow tier too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowOutcome {
    /// The shadow tier.
    pub tier: String,
    /// Its outcome score in [0, 1].
    pub score: f64,
    /// Input tokens booked for it.
    pub input_tokens: u64,
    /// Output tokens booked for it.
    pub output_tokens: u64,
}

/// The limits of one reuse event: the reuse ids its team may have remembered at once, and the
/// reuse events its decision may accumulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReuseQuota {
    /// The team the event's id counts against.
    pub team: String,
    /// Most unexpired reuse ids the team may hold.
    pub team_ids: u64,
    /// The decision's nonce.
    pub decision: u64,
    /// Most reuse events the decision may accumulate.
    pub decision_events: u64,
    /// The reuse events this one stands for.
    pub events: u64,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

/// Whether a token count is 0 (left out of the serialized event).
fn is_zero_count(x: &u64) -> bool {
    *x == 0
}

impl OutcomeEvent {
    /// The tier Route chose for the decision (`tier` unless a fallback served it).
    pub fn routed_tier(&self) -> &str {
        if self.routed_tier.is_empty() {
            &self.tier
        } else {
            &self.routed_tier
        }
    }

    /// The event as the log keeps it (without its accounting).
    pub fn for_log(&self) -> OutcomeEvent {
        OutcomeEvent {
            counters: Vec::new(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An event as the log held it before the books priced cached input and reasoning tokens
    /// still decodes, with none of either; a new event keeps its counts, and one without them
    /// is written as before.
    #[test]
    fn an_event_recorded_before_token_kinds_decodes_with_none_of_them() {
        let old = r#"{"nonce":7,"expires_ms":10000000,"scope":"default","tier":"small","band":3,"score":1.0,"input_tokens":120,"output_tokens":40,"workflow":"w","team":"ads","complexity":0.5}"#;
        let e: OutcomeEvent = serde_json::from_str(old).unwrap();
        assert_eq!((e.input_tokens, e.output_tokens), (120, 40));
        assert_eq!((e.cached_input_tokens, e.reasoning_tokens), (0, 0));
        let plain = serde_json::to_string(&e).unwrap();
        assert!(
            !plain.contains("cached_input_tokens") && !plain.contains("reasoning_tokens"),
            "{plain}"
        );
        let new = OutcomeEvent {
            cached_input_tokens: 100,
            reasoning_tokens: 30,
            ..e
        };
        let back: OutcomeEvent =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }

    /// An event recorded before fallbacks were reported decodes with no routed tier of its
    /// own: the tier Route chose is the one that ran. A fallback keeps both, and an event
    /// without one is written as before.
    #[test]
    fn an_event_recorded_before_fallbacks_decodes_with_the_routed_tier() {
        let old = r#"{"nonce":7,"expires_ms":10000000,"scope":"default","tier":"small","band":3,"score":1.0,"input_tokens":120,"output_tokens":40,"workflow":"w","team":"ads","complexity":0.5}"#;
        let e: OutcomeEvent = serde_json::from_str(old).unwrap();
        assert_eq!((e.tier.as_str(), e.routed_tier()), ("small", "small"));
        assert!(!serde_json::to_string(&e).unwrap().contains("routed_tier"));
        let fallback = OutcomeEvent {
            tier: "medium".into(),
            routed_tier: "small".into(),
            ..e
        };
        let back: OutcomeEvent =
            serde_json::from_str(&serde_json::to_string(&fallback).unwrap()).unwrap();
        assert_eq!(
            (back.tier.as_str(), back.routed_tier()),
            ("medium", "small")
        );
        assert_eq!(back, fallback);
    }
}
