//! Validation: a report's fields in range, then checked against its verified decision and the
//! live policy and priced into the events the recorder commits. Pure: nothing here writes, so on
//! any error nothing changes.

use super::{
    FeedbackAck, FeedbackError, FeedbackInput, MAX_REUSE_COUNT, MAX_REUSE_TEXT_BYTES, MAX_TOKENS,
    ReuseInput,
};
use std::sync::Arc;

use crate::domain::books::{BookedTokens, Books, Grade, ReportedTokens, ShadowRun, booked_tokens};
use crate::domain::calendar::DAY_MS;
use crate::domain::decision::{DecisionClaims, NO_CLUSTER};
use crate::domain::labels::shown;
use crate::domain::learning::{BANDS, RoutingTable, cluster_label};
use crate::domain::policy::{Policy, ScopePolicy};
use crate::store::{CounterAdd, OutcomeEvent, ReuseQuota, ShadowOutcome};

/// An id that must not be empty.
fn check_decision_id(decision_id: &str) -> Result<(), FeedbackError> {
    if decision_id.is_empty() {
        return Err(FeedbackError::InvalidArgument {
            field: "decision_id",
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

impl FeedbackInput<'_> {
    /// The fields in range: scores in [0, 1], token counts in [0, [`MAX_TOKENS`]], shadow
    /// tokens only with a shadow score, a decision id. Checked before the id is verified.
    pub fn check(&self) -> Result<(), FeedbackError> {
        for (field, score) in [
            ("score", Some(self.score)),
            ("shadow_score", self.shadow_score),
        ] {
            if let Some(s) = score
                && !(0.0..=1.0).contains(&s)
            {
                return Err(FeedbackError::InvalidArgument {
                    field,
                    reason: format!("must be a number in [0, 1], got {s}"),
                });
            }
        }
        for (field, v) in [
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cached_input_tokens", self.cached_input_tokens),
            ("reasoning_tokens", self.reasoning_tokens),
            ("shadow_input_tokens", self.shadow_input_tokens),
            ("shadow_output_tokens", self.shadow_output_tokens),
        ] {
            if let Some(v) = v
                && !(0..=MAX_TOKENS).contains(&v)
            {
                return Err(FeedbackError::InvalidArgument {
                    field,
                    reason: format!("must be in [0, {MAX_TOKENS}], got {v}"),
                });
            }
        }
        if self.shadow_score.is_none() {
            for (field, v) in [
                ("shadow_input_tokens", self.shadow_input_tokens),
                ("shadow_output_tokens", self.shadow_output_tokens),
            ] {
                if v.is_some() {
                    return Err(FeedbackError::InvalidArgument {
                        field,
                        reason: "given without a shadow_score".into(),
                    });
                }
            }
        }
        check_decision_id(self.decision_id)
    }
}

impl ReuseInput<'_> {
    /// The fields in range: a decision id, a count up to [`MAX_REUSE_COUNT`], an event id and
    /// a note of at most [`MAX_REUSE_TEXT_BYTES`] without control characters. Checked before
    /// the id is verified.
    pub fn check(&self) -> Result<(), FeedbackError> {
        check_decision_id(self.decision_id)?;
        if self.count > MAX_REUSE_COUNT {
            return Err(FeedbackError::InvalidArgument {
                field: "count",
                reason: format!(
                    "must be in [1, {MAX_REUSE_COUNT}] (0 means 1), got {}",
                    self.count
                ),
            });
        }
        for (field, text) in [("event_id", self.event_id), ("note", self.note)] {
            if text.len() > MAX_REUSE_TEXT_BYTES || text.chars().any(char::is_control) {
                return Err(FeedbackError::InvalidArgument {
                    field,
                    reason: format!(
                        "must be at most {MAX_REUSE_TEXT_BYTES} bytes without control characters, got {} bytes",
                        text.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An accepted outcome, ready to record: the event, the decision's reuse mark where the output
/// was reported reused, and the answer to give once it is recorded.
pub struct Outcome {
    /// The outcome, with the accounting it settles.
    pub event: OutcomeEvent,
    /// The decision's once-only reused mark (`reused` reported), spent after the event.
    pub reuse_mark: Option<OutcomeEvent>,
    /// What the caller is told.
    pub ack: FeedbackAck,
}

/// What a verified report is checked and priced against: the live policy, the books that
/// price it, the decision TTL and the time.
pub struct Pricing<'a> {
    /// The live routing table: its policy, and the plans whose bar an outcome is held to.
    pub table: Arc<RoutingTable>,
    /// The books, for the counters a report settles.
    pub books: &'a Books,
    /// How long a decision id takes feedback, ms.
    pub ttl_ms: u64,
    /// Now, ms.
    pub now_ms: u64,
}

impl Pricing<'_> {
    /// Checks a feedback against its verified decision and the live policy (the served tier,
    /// the shadow run) and prices it: tokens booked within bounds, the books' counters, the
    /// event expiring with the decision (the TTL after it was issued).
    pub fn outcome(
        &self,
        claims: DecisionClaims,
        input: &FeedbackInput<'_>,
    ) -> Result<Outcome, FeedbackError> {
        let policy = &*self.table.policy;
        let served = served_tier(policy, &claims, input.served_tier)?;
        // Booked and learned as Route's figures where none were reported, and within bounds.
        let tokens = booked_tokens(
            policy,
            &claims,
            ReportedTokens {
                input: input.input_tokens,
                cached_input: input.cached_input_tokens,
                output: input.output_tokens,
                reasoning: input.reasoning_tokens,
            },
        );
        let shadow = shadow_run(policy, &claims, input)?;
        let (counters, actual_micros, shadow_micros) =
            self.outcome_counters(&claims, &served, input, tokens, shadow.as_ref());
        let ack = FeedbackAck {
            scope: claims.scope.clone(),
            tier: served.clone(),
            actual_cost_usd: actual_micros as f64 / 1e6,
            actual_cost_micros: actual_micros,
            shadow_cost_micros: shadow_micros,
            lag_ms: self.now_ms.saturating_sub(claims.issued_ms),
        };
        let shadow = shadow.map(|run| ShadowOutcome {
            tier: run.tier.to_string(),
            score: run.score,
            input_tokens: run.tokens.input,
            output_tokens: run.tokens.output,
        });
        let marks = input
            .reused
            .then(|| self.books.reuse_counters(&claims, 1).1);
        let issued_ms = claims.issued_ms;
        let scope = policy.scope(&claims.scope);
        let window = reuse_window_ms(scope, self.ttl_ms);
        let expires_ms = issued_ms.saturating_add(self.ttl_ms);
        let event = outcome_event(
            claims,
            served,
            (input.score, tokens),
            shadow,
            counters,
            expires_ms,
        );
        let reuse_mark = marks
            .map(|counters| reuse_mark_event(&event, event.nonce, issued_ms, window, counters));
        Ok(Outcome {
            event,
            reuse_mark,
            ack,
        })
    }

    /// The books' counters an outcome settles (its spend, its propensity pair, its shadow
    /// pair), with its cost and its shadow run's, micro-USD. It counts as completed against
    /// its plan's bar ([`bar_of`]).
    fn outcome_counters(
        &self,
        claims: &DecisionClaims,
        served: &str,
        input: &FeedbackInput<'_>,
        tokens: BookedTokens,
        shadow: Option<&ShadowRun<'_>>,
    ) -> (Vec<CounterAdd>, i64, i64) {
        let (policy, books) = (&*self.table.policy, self.books);
        let grade = Grade {
            score: input.score,
            bar: bar_of(&self.table, claims),
        };
        let (mut counters, actual_micros) =
            books.outcome_counters(policy, claims, served, grade, tokens, input.reused);
        counters.extend(books.propensity_counters(policy, claims, served, input.score));
        let shadow_micros = match shadow {
            Some(run) => {
                let (pair, micros) = books.shadow_counters(
                    policy,
                    claims,
                    served,
                    (input.score, actual_micros),
                    run,
                );
                counters.extend(pair);
                micros
            }
            None => 0,
        };
        (counters, actual_micros, shadow_micros)
    }

    /// Checks a reuse report against its verified decision's reuse window under the live policy
    /// (accepted after the decision TTL too, for the scope's `reuse_retention_days`) and prices
    /// it into the books' counters.
    pub fn reuse(
        &self,
        claims: DecisionClaims,
        input: &ReuseInput<'_>,
    ) -> Result<Reuse, FeedbackError> {
        let policy = &self.table.policy;
        let scope = policy.scope(&claims.scope);
        let window = reuse_window_ms(scope, self.ttl_ms);
        let age = self.now_ms.saturating_sub(claims.issued_ms);
        if age > window {
            return Err(FeedbackError::OutsideReuseWindow {
                age_days: age / DAY_MS,
                window_days: window / DAY_MS,
            });
        }
        let count = input.count.max(1);
        let (event_counters, mark_counters) = self.books.reuse_counters(&claims, count);
        // Without an event id every call is its own event.
        let event_nonce = if input.event_id.is_empty() {
            rand::random()
        } else {
            reuse_nonce(claims.nonce, "event", input.event_id)
        };
        let event = OutcomeEvent {
            nonce: event_nonce,
            expires_ms: claims.issued_ms.saturating_add(window),
            scope: claims.scope.clone(),
            tier: claims.tier.clone(),
            band: claims.band,
            score: 0.0,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            reasoning_tokens: 0,
            routed_tier: String::new(),
            workflow: claims.workflow.clone(),
            team: claims.team.clone(),
            complexity: claims.complexity,
            gap: claims.gap,
            cluster: None,
            sketch: Vec::new(),
            propensity: None,
            premium_propensity: None,
            shadow: None,
            shadow_asked: false,
            counters: event_counters,
            counters_only: true,
            // Within the scope's limits: the team's remembered reuse ids, the decision's events.
            quota: Some(ReuseQuota {
                team: claims.team.clone(),
                team_ids: scope.reuse_ids_per_team,
                decision: claims.nonce,
                decision_events: scope.reuse_events_per_decision,
                events: u64::from(count),
            }),
        };
        let mark = reuse_mark_event(
            &event,
            claims.nonce,
            claims.issued_ms,
            window,
            mark_counters,
        );
        Ok(Reuse {
            event,
            mark,
            count,
            claims,
        })
    }
}

/// The bar a decision's outcome is held to in the books: its scope's plan's (the team's own
/// where it has one) for the task's workflow or cluster, band and gap
/// ([`ScopePlan::bar_for`](crate::domain::learning::ScopePlan::bar_for)), so the books count
/// an output complete against the bar routing and `/metrics` use.
fn bar_of(table: &RoutingTable, claims: &DecisionClaims) -> f64 {
    let cluster = (claims.cluster != NO_CLUSTER).then(|| cluster_label(claims.cluster));
    let workflow = cluster.as_deref().unwrap_or(&claims.workflow);
    let band = usize::from(claims.band).min(BANDS - 1);
    table
        .plan(&claims.scope)
        .for_team(&claims.team)
        .bar_for(workflow, band, f64::from(claims.gap))
}

/// The outcome event of a decision served by `served`: its score and booked tokens, its shadow
/// run, the counters it settles; it expires with the decision.
fn outcome_event(
    claims: DecisionClaims,
    served: String,
    (score, tokens): (f64, BookedTokens),
    shadow: Option<ShadowOutcome>,
    counters: Vec<CounterAdd>,
    expires_ms: u64,
) -> OutcomeEvent {
    OutcomeEvent {
        nonce: claims.nonce,
        expires_ms,
        scope: claims.scope,
        // Learning credits the outcome to the tier that served it.
        routed_tier: if served == claims.tier {
            String::new()
        } else {
            claims.tier
        },
        tier: served,
        band: claims.band,
        score,
        input_tokens: tokens.input,
        output_tokens: tokens.output,
        cached_input_tokens: tokens.cached_input,
        reasoning_tokens: tokens.reasoning,
        workflow: claims.workflow,
        team: claims.team,
        complexity: claims.complexity,
        gap: claims.gap,
        cluster: (claims.cluster != NO_CLUSTER).then_some(claims.cluster),
        sketch: claims.sketch,
        propensity: claims.propensity,
        premium_propensity: claims.premium_propensity,
        shadow,
        shadow_asked: !claims.shadow_tier.is_empty(),
        counters,
        counters_only: false,
        quota: None,
    }
}

/// An accepted reuse report, ready to record: its events and the decision's reused mark.
pub struct Reuse {
    /// The reuse events, counted once per event id within the scope's quotas.
    pub event: OutcomeEvent,
    /// The decision's once-only reused mark, spent after the event.
    pub mark: OutcomeEvent,
    /// Reuse events counted (0 reported means 1).
    pub count: u32,
    /// The decision.
    pub claims: DecisionClaims,
}

/// A scope's reuse window: its `reuse_retention_days`, never shorter than the decision TTL.
fn reuse_window_ms(scope: &ScopePolicy, ttl_ms: u64) -> u64 {
    (u64::from(scope.reuse_retention_days) * DAY_MS).max(ttl_ms)
}

/// A reuse nonce of a decision: `kind` "event" with the caller's event id, or "mark" for the
/// decision's once-only reused mark. SHA-256, so no caller can aim an event id at another
/// decision's nonce.
fn reuse_nonce(decision_nonce: u64, kind: &str, id: &str) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"tokenwise-reuse\0");
    h.update(decision_nonce.to_le_bytes());
    h.update(kind.as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The decision's reused mark, as a counters-only event like `like` (same decision).
fn reuse_mark_event(
    like: &OutcomeEvent,
    decision_nonce: u64,
    issued_ms: u64,
    window_ms: u64,
    counters: Vec<CounterAdd>,
) -> OutcomeEvent {
    OutcomeEvent {
        nonce: reuse_nonce(decision_nonce, "mark", ""),
        expires_ms: issued_ms.saturating_add(window_ms),
        score: 0.0,
        input_tokens: 0,
        output_tokens: 0,
        cached_input_tokens: 0,
        reasoning_tokens: 0,
        counters,
        counters_only: true,
        quota: None,
        sketch: Vec::new(),
        shadow: None,
        shadow_asked: false,
        ..like.clone()
    }
}

/// The tier that served a decision: the reported `served_tier`, or the decision's own tier where
/// that is empty (or names it). Any other must be a tier the decision's scope allows under the
/// live policy; a tier the policy lacks, or one the scope does not allow, is refused before
/// anything is recorded.
fn served_tier(
    policy: &Policy,
    claims: &DecisionClaims,
    reported: &str,
) -> Result<String, FeedbackError> {
    if reported.is_empty() || reported == claims.tier {
        return Ok(claims.tier.clone());
    }
    let scope = policy.scope(&claims.scope);
    let allowed = || {
        scope
            .allowed
            .iter()
            .map(|&i| policy.tiers[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match policy.tier_index(reported) {
        Some(i) if scope.allowed.contains(&i) => Ok(reported.to_string()),
        Some(_) => Err(FeedbackError::InvalidArgument {
            field: "served_tier",
            reason: format!(
                "tier {} is not allowed in scope {}; it allows {}",
                shown(reported),
                shown(&claims.scope),
                allowed()
            ),
        }),
        None => Err(FeedbackError::InvalidArgument {
            field: "served_tier",
            reason: format!(
                "no tier {} in the policy; scope {} allows {}",
                shown(reported),
                shown(&claims.scope),
                allowed()
            ),
        }),
    }
}

/// The shadow run a feedback reports, checked against its decision: `None` without a shadow
/// score; FAILED_PRECONDITION for a decision that named no shadow tier, or whose shadow tier
/// the live policy no longer has. Its tokens are booked within the same bounds as the
/// outcome's.
fn shadow_run<'c>(
    policy: &Policy,
    claims: &'c DecisionClaims,
    input: &FeedbackInput<'_>,
) -> Result<Option<ShadowRun<'c>>, FeedbackError> {
    let Some(score) = input.shadow_score else {
        return Ok(None);
    };
    if claims.shadow_tier.is_empty() {
        return Err(FeedbackError::Shadow(
            "this decision named no shadow tier (its Route answer had no shadow_tier)".into(),
        ));
    }
    if policy.tier_index(&claims.shadow_tier).is_none() {
        return Err(FeedbackError::Shadow(format!(
            "the decision's shadow tier {} is no longer in the policy",
            shown(&claims.shadow_tier)
        )));
    }
    let tokens = booked_tokens(
        policy,
        claims,
        ReportedTokens {
            input: input.shadow_input_tokens,
            output: input.shadow_output_tokens,
            ..ReportedTokens::default()
        },
    );
    Ok(Some(ShadowRun {
        tier: &claims.shadow_tier,
        score,
        tokens,
    }))
}
