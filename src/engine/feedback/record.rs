//! The write path: verify a decision id, validate the outcome or reuse, and record it exactly
//! once in the store (or the outage buffer while the store is down), with its accounting.

use super::*;
use crate::domain::books::{ReportedTokens, booked_tokens};
use crate::domain::calendar::DAY_MS;
use crate::domain::decision::NO_CLUSTER;
use crate::domain::labels::shown;

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
    counters: Vec<crate::store::CounterAdd>,
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
        ..like.clone()
    }
}

/// The tier that served a decision: the reported `served_tier`, or the decision's own tier where
/// that is empty (or names it). Any other must be a tier the decision's scope allows under the
/// live policy; a tier the policy lacks, or one the scope does not allow, is refused before
/// anything is recorded.
fn served_tier(
    policy: &crate::domain::policy::Policy,
    claims: &crate::domain::decision::DecisionClaims,
    reported: &str,
) -> Result<String, FeedbackError> {
    if reported.is_empty() || reported == claims.tier {
        return Ok(claims.tier.clone());
    }
    let scope = policy.scopes.get(&claims.scope).unwrap_or(&policy.default);
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
    policy: &crate::domain::policy::Policy,
    claims: &'c crate::domain::decision::DecisionClaims,
    input: &FeedbackInput<'_>,
) -> Result<Option<crate::domain::books::ShadowRun<'c>>, FeedbackError> {
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
    Ok(Some(crate::domain::books::ShadowRun {
        tier: &claims.shadow_tier,
        score,
        tokens,
    }))
}

impl Learner {
    /// Validates and records one outcome; on any error nothing changes.
    pub async fn feedback(
        &self,
        router: &Router,
        books: &Books,
        input: &FeedbackInput<'_>,
        now_ms: u64,
    ) -> Result<FeedbackAck, FeedbackError> {
        if !(0.0..=1.0).contains(&input.score) {
            return Err(FeedbackError::InvalidArgument {
                field: "score",
                reason: format!("must be a number in [0, 1], got {}", input.score),
            });
        }
        if let Some(s) = input.shadow_score
            && !(0.0..=1.0).contains(&s)
        {
            return Err(FeedbackError::InvalidArgument {
                field: "shadow_score",
                reason: format!("must be a number in [0, 1], got {s}"),
            });
        }
        for (field, v) in [
            ("input_tokens", input.input_tokens),
            ("output_tokens", input.output_tokens),
            ("cached_input_tokens", input.cached_input_tokens),
            ("reasoning_tokens", input.reasoning_tokens),
            ("shadow_input_tokens", input.shadow_input_tokens),
            ("shadow_output_tokens", input.shadow_output_tokens),
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
        if input.shadow_score.is_none() {
            for (field, v) in [
                ("shadow_input_tokens", input.shadow_input_tokens),
                ("shadow_output_tokens", input.shadow_output_tokens),
            ] {
                if v.is_some() {
                    return Err(FeedbackError::InvalidArgument {
                        field,
                        reason: "given without a shadow_score".into(),
                    });
                }
            }
        }
        if input.decision_id.is_empty() {
            return Err(FeedbackError::InvalidArgument {
                field: "decision_id",
                reason: "must not be empty".into(),
            });
        }
        let claims = self.claims_of(input.decision_id, input.caller_team)?;
        let expiry = claims.issued_ms.saturating_add(self.ttl_ms);
        if now_ms > expiry {
            return Err(FeedbackError::Expired {
                age_s: (now_ms - claims.issued_ms) / 1000,
                ttl_s: self.ttl_ms / 1000,
            });
        }
        let table = router.table();
        let served = served_tier(&table.policy, &claims, input.served_tier)?;
        // Booked and learned as Route's figures where none were reported, and within bounds.
        let tokens = booked_tokens(
            &table.policy,
            &claims,
            ReportedTokens {
                input: input.input_tokens,
                cached_input: input.cached_input_tokens,
                output: input.output_tokens,
                reasoning: input.reasoning_tokens,
            },
        );
        let shadow = shadow_run(&table.policy, &claims, input)?;
        let (mut counters, actual_micros) = books.outcome_counters(
            &table.policy,
            &claims,
            &served,
            input.score,
            tokens,
            input.reused,
        );
        counters.extend(books.propensity_counters(&table.policy, &claims, &served, input.score));
        let shadow_micros = match &shadow {
            Some(run) => {
                let (pair, micros) = books.shadow_counters(
                    &table.policy,
                    &claims,
                    &served,
                    (input.score, actual_micros),
                    run,
                );
                counters.extend(pair);
                micros
            }
            None => 0,
        };
        let ack = FeedbackAck {
            scope: claims.scope.clone(),
            tier: served.clone(),
            actual_cost_usd: actual_micros as f64 / 1e6,
            actual_cost_micros: actual_micros,
            shadow_cost_micros: shadow_micros,
            lag_ms: now_ms.saturating_sub(claims.issued_ms),
        };
        let shadow = shadow.map(|run| crate::store::ShadowOutcome {
            tier: run.tier.to_string(),
            score: run.score,
            input_tokens: run.tokens.input,
            output_tokens: run.tokens.output,
        });
        let marks = input.reused.then(|| books.reuse_counters(&claims, 1).1);
        let event = OutcomeEvent {
            nonce: claims.nonce,
            expires_ms: expiry,
            scope: claims.scope,
            // Learning credits the outcome to the tier that served it.
            routed_tier: if served == claims.tier {
                String::new()
            } else {
                claims.tier
            },
            tier: served,
            band: claims.band,
            score: input.score,
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
            counters,
            counters_only: false,
            quota: None,
        };
        let reuse_mark = marks.map(|counters| {
            let retention = table
                .policy
                .scopes
                .get(&event.scope)
                .unwrap_or(&table.policy.default);
            reuse_mark_event(
                &event,
                event.nonce,
                claims.issued_ms,
                self.reuse_window_ms(retention),
                counters,
            )
        });
        self.commit(router, books, event, now_ms)
            .await
            .map_err(|e| e.unwrap_or(FeedbackError::AlreadyRecorded))?;
        // The early reuse mark: the decision counts as reused once, whichever report came first.
        if let Some(mark) = reuse_mark {
            self.mark_reused(router, books, mark, now_ms).await;
        }
        Ok(ack)
    }

    /// Verifies a decision id and that the caller (a service key's team, if any) owns it, and
    /// that the store can still tell whether it was reported before.
    fn claims_of(
        &self,
        decision_id: &str,
        caller_team: Option<&str>,
    ) -> Result<crate::domain::decision::DecisionClaims, FeedbackError> {
        let claims = self.signer.verify(decision_id)?;
        if let Some(team) = caller_team
            && team != claims.team
        {
            return Err(FeedbackError::PermissionDenied {
                owner: claims.team,
                caller: team.to_string(),
            });
        }
        // A verified id still names a scope and a team; one team's id never reaches another
        // team's private scope, whoever signed it.
        if !crate::domain::policy::scope_admits(&claims.scope, &claims.team) {
            return Err(FeedbackError::ScopeMismatch {
                scope: claims.scope,
                team: claims.team,
            });
        }
        if claims.issued_ms.saturating_add(CLOCK_SKEW_MS)
            < self.data_since_ms.load(Ordering::Relaxed)
        {
            return Err(FeedbackError::BeforeStoreReset);
        }
        Ok(claims)
    }

    /// A scope's reuse window: its `reuse_retention_days`, never shorter than the decision TTL.
    fn reuse_window_ms(&self, scope: &crate::domain::policy::ScopePolicy) -> u64 {
        (u64::from(scope.reuse_retention_days) * DAY_MS).max(self.ttl_ms)
    }

    /// Records the reuse of a decision's output: `count` reuse events (once per `event_id`),
    /// and the decision as reused if it was not yet. Accepted for the scope's reuse window,
    /// after the decision TTL too; buffered through store outages like feedback.
    pub async fn reuse(
        &self,
        router: &Router,
        books: &Books,
        input: &ReuseInput<'_>,
        now_ms: u64,
    ) -> Result<ReuseAck, FeedbackError> {
        if input.decision_id.is_empty() {
            return Err(FeedbackError::InvalidArgument {
                field: "decision_id",
                reason: "must not be empty".into(),
            });
        }
        if input.count > MAX_REUSE_COUNT {
            return Err(FeedbackError::InvalidArgument {
                field: "count",
                reason: format!(
                    "must be in [1, {MAX_REUSE_COUNT}] (0 means 1), got {}",
                    input.count
                ),
            });
        }
        for (field, text) in [("event_id", input.event_id), ("note", input.note)] {
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
        let claims = self.claims_of(input.decision_id, input.caller_team)?;
        let table = router.table();
        let scope = table
            .policy
            .scopes
            .get(&claims.scope)
            .unwrap_or(&table.policy.default);
        let window = self.reuse_window_ms(scope);
        let age = now_ms.saturating_sub(claims.issued_ms);
        if age > window {
            return Err(FeedbackError::OutsideReuseWindow {
                age_days: age / DAY_MS,
                window_days: window / DAY_MS,
            });
        }
        let count = input.count.max(1);
        let (event_counters, mark_counters) = books.reuse_counters(&claims, count);
        let expires_ms = claims.issued_ms.saturating_add(window);
        // Without an event id every call is its own event.
        let event_nonce = if input.event_id.is_empty() {
            rand::random()
        } else {
            reuse_nonce(claims.nonce, "event", input.event_id)
        };
        let base = OutcomeEvent {
            nonce: event_nonce,
            expires_ms,
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
            counters: event_counters,
            counters_only: true,
            // Within the scope's limits: the team's remembered reuse ids, the decision's events.
            quota: Some(crate::store::ReuseQuota {
                team: claims.team.clone(),
                team_ids: scope.reuse_ids_per_team,
                decision: claims.nonce,
                decision_events: scope.reuse_events_per_decision,
                events: u64::from(count),
            }),
        };
        let mark = reuse_mark_event(&base, claims.nonce, claims.issued_ms, window, mark_counters);
        self.commit(router, books, base, now_ms)
            .await
            .map_err(|e| {
                e.unwrap_or_else(|| FeedbackError::ReuseRecorded(input.event_id.into()))
            })?;
        let first = self.mark_reused(router, books, mark, now_ms).await;
        tracing::info!(
            scope = %claims.scope, team = %claims.team, workflow = %claims.workflow,
            count, first, event_id = input.event_id, note = input.note, "reuse recorded"
        );
        Ok(ReuseAck {
            scope: claims.scope,
            workflow: claims.workflow,
            count,
            first,
        })
    }

    /// Spends a decision's reuse mark: true if this was its first. A failure here is logged,
    /// not returned: the reuse event itself is already taken, and the mark only decides
    /// whether the decision counts as reused (a retry of the same event would be refused).
    async fn mark_reused(
        &self,
        router: &Router,
        books: &Books,
        mark: OutcomeEvent,
        now_ms: u64,
    ) -> bool {
        match self.commit(router, books, mark, now_ms).await {
            Ok(_) => true,
            Err(None) => false,
            Err(Some(e)) => {
                tracing::warn!(error = %e, "reuse mark not recorded: the decision may not count as reused");
                false
            }
        }
    }

    /// Records an event exactly once: in the store, or, while it is unreachable, in the outage
    /// buffer. `Err(None)`: its nonce is already spent (a duplicate); `Err(Some(_))`: not
    /// accepted.
    async fn commit(
        &self,
        router: &Router,
        books: &Books,
        event: OutcomeEvent,
        now_ms: u64,
    ) -> Result<Committed, Option<FeedbackError>> {
        if self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .nonces
            .contains(&event.nonce)
        {
            return Err(None);
        }
        // While the store is known to be down, buffer at once; the refresher probes recovery.
        let recorded = if self.is_degraded() {
            Err(crate::store::StoreError::Unavailable(
                "store marked unreachable".into(),
            ))
        } else {
            self.store.record(&event, now_ms).await
        };
        match recorded {
            Ok(Recorded::New) => {
                let ticket = self.records_done.fetch_add(1, Ordering::AcqRel) + 1;
                books.observe_outcome(&event.counters);
                self.set_degraded(false);
                if !event.counters_only
                    && let Err(e) = self.sync_after(router, Some(ticket)).await
                {
                    // Recorded; this replica just learns it on the next refresh.
                    tracing::warn!(error = %e, "store read failed after recording feedback");
                }
                Ok(Committed::Stored)
            }
            Ok(Recorded::Duplicate) => Err(None),
            // A store at its documented limit is up: refuse, do not buffer.
            Err(crate::store::StoreError::Full(why)) => Err(Some(FeedbackError::Full(why))),
            Err(e) => {
                self.set_degraded(true);
                let nonce = event.nonce;
                let counters = event.counters.clone();
                // Claim the nonce and check it in one step: of two concurrent copies of one
                // event, exactly one is buffered (the check at the top is only a shortcut).
                let claimed = self
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .nonces
                    .insert(nonce);
                if !claimed {
                    return Err(None);
                }
                if let Err(b) = self.buffer.push(event).await {
                    self.pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .nonces
                        .remove(&nonce);
                    return Err(Some(FeedbackError::Unavailable(format!("{e}; {b}"))));
                }
                books.observe_outcome(&counters);
                tracing::debug!(error = %e, "store unreachable: event buffered");
                Ok(Committed::Buffered)
            }
        }
    }
}
