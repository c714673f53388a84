//! Proto ↔ domain conversions and the one mapping of domain errors to gRPC statuses
//! (INVALID_ARGUMENT always names the field in a `google.rpc.BadRequest` detail).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::pb;
use crate::domain::policy::Period;
use crate::domain::routing::{Decision, RouteError};
use crate::engine::{Error, ErrorKind, Violation};
use crate::report::{self, build::ReportQuery};

/// INVALID_ARGUMENT in the one form every refusal uses: `field: what is wrong` as the message,
/// and a `google.rpc.BadRequest` detail with the field and what is wrong.
pub(super) fn invalid(field: &str, message: String) -> Status {
    let what = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(&message)
        .to_string();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {what}"),
        ErrorDetails::with_bad_request_violation(field, what),
    )
}

impl From<Error> for Status {
    /// The one mapping of the service's errors to gRPC: the code from the error's kind, its
    /// text as the message, and the field (`google.rpc.BadRequest`) or the exhausted budget
    /// (`google.rpc.QuotaFailure`) as details.
    fn from(e: Error) -> Self {
        let code = match e.kind() {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
        };
        match e.violation() {
            // A request field: `field: what is wrong`, like every other refusal of a field.
            Some(Violation::Field { field, reason }) if !matches!(e, Error::Policy(_)) => {
                invalid(field, reason)
            }
            Some(Violation::Field { field, reason }) => Status::with_error_details(
                code,
                e.to_string(),
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            Some(Violation::Quota { subject }) => {
                let text = e.to_string();
                Status::with_error_details(
                    code,
                    text.clone(),
                    ErrorDetails::with_quota_failure_violation(subject, text),
                )
            }
            None => Status::new(code, e.to_string()),
        }
    }
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Self {
        Error::from(e).into()
    }
}

/// A score as it means something: four decimals (`0.4596`, not `0.45960026800632475`).
fn score(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Micro-dollars as dollars: exactly the amount the books count, with no float noise of its
/// own (`0.000013`, not `0.000013000000000000018`).
fn usd(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// Moves the decision into its proto form (no string copies on the hot path). Scores are given
/// to four decimals and money to the micro-dollar, as the books count it.
pub(super) fn to_proto(d: Decision, decision_id: String) -> pb::RouteResponse {
    let (chosen, fallback) = (d.chosen, d.fallback);
    let tier = d.candidates[chosen].name.clone();
    let model = d.candidates[chosen].model.clone();
    let estimated_cost_usd = usd(d.candidates[chosen].cost_micros);
    let fallback_tier = fallback
        .map(|i| d.candidates[i].name.clone())
        .unwrap_or_default();
    let shadow_tier = d.shadow.map(|i| d.candidates[i].name.clone());
    pb::RouteResponse {
        shadow_tier,
        decision_id,
        tier,
        model,
        complexity: score(d.complexity),
        estimated_cost_usd,
        candidates: d
            .candidates
            .into_iter()
            .map(|c| pb::Candidate {
                tier: c.name,
                model: c.model,
                predicted_quality: score(c.predicted_quality),
                estimated_cost_usd: usd(c.cost_micros),
                threshold: score(c.threshold),
            })
            .collect(),
        fallback_tier,
        policy_version: d.policy_version,
        reason: d.reason,
        scope: d.scope,
        explored: d.explored,
    }
}

// ---- report ↔ proto ----

impl From<report::TierShare> for pb::TierShare {
    fn from(t: report::TierShare) -> Self {
        Self {
            tier: t.tier,
            tasks: t.tasks,
            spend_micros: t.spend_micros,
        }
    }
}

impl From<pb::TierShare> for report::TierShare {
    fn from(t: pb::TierShare) -> Self {
        Self {
            tier: t.tier,
            tasks: t.tasks,
            spend_micros: t.spend_micros,
        }
    }
}

/// A report group and its proto form, field by field, both ways. The fields are the report's
/// one declaration (`report/group.rs`), so a new field needs no line here: the proto lacking
/// it is a compile error.
macro_rules! group_conversions {
    ($( $(#[$attr:meta])* $name:ident: $ty:ty { $($declared:tt)* } ),+ $(,)?) => {
        impl From<report::GroupReport> for pb::GroupReport {
            fn from(g: report::GroupReport) -> Self {
                Self { $( $name: Carry::carry(g.$name), )+ }
            }
        }

        impl From<pb::GroupReport> for report::GroupReport {
            fn from(g: pb::GroupReport) -> Self {
                Self { $( $name: Carry::carry(g.$name), )+ }
            }
        }
    };
}

crate::report::group_report_fields!(group_conversions);

/// A group's value carried to or from its proto form: as it is, or (the tier mix) share by
/// share.
trait Carry<T> {
    fn carry(self) -> T;
}

impl<T> Carry<T> for T {
    fn carry(self) -> T {
        self
    }
}

impl Carry<Vec<pb::TierShare>> for Vec<report::TierShare> {
    fn carry(self) -> Vec<pb::TierShare> {
        self.into_iter().map(Into::into).collect()
    }
}

impl Carry<Vec<report::TierShare>> for Vec<pb::TierShare> {
    fn carry(self) -> Vec<report::TierShare> {
        self.into_iter().map(Into::into).collect()
    }
}

/// Same for budgets.
macro_rules! budget_fields {
    ($from:expr, $to:ident) => {{
        let b = $from;
        $to {
            id: b.id,
            team: b.team,
            workflow: b.workflow,
            period: b.period,
            period_start_ms: b.period_start_ms,
            soft_limit_micros: b.soft_limit_micros,
            hard_limit_micros: b.hard_limit_micros,
            used_micros: b.used_micros,
            left_micros: b.left_micros,
            state: b.state,
        }
    }};
}

/// Same for series points.
macro_rules! point_fields {
    ($from:expr, $to:ident) => {{
        let p = $from;
        $to {
            start_ms: p.start_ms,
            spend_micros: p.spend_micros,
            tasks: p.tasks,
            outcomes: p.outcomes,
            realized_quality: p.realized_quality,
        }
    }};
}

impl From<report::Report> for pb::GetReportResponse {
    fn from(r: report::Report) -> Self {
        use pb::{BudgetStatus, SeriesPoint};
        Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            group_by: r.group_by.as_str().to_string(),
            groups: r.groups.into_iter().map(Into::into).collect(),
            total: Some(r.total.into()),
            budgets: r
                .budgets
                .into_iter()
                .map(|b| budget_fields!(b, BudgetStatus))
                .collect(),
            series: r
                .series
                .into_iter()
                .map(|p| point_fields!(p, SeriesPoint))
                .collect(),
            policy_version: r.policy_version,
            generated_ms: r.generated_ms,
            quality: r.quality.into_iter().map(Into::into).collect(),
        }
    }
}

/// The fields of a [`report::QualityKept`] and its proto message, either way.
macro_rules! quality_fields {
    ($q:expr, $to:path, $estimate:path) => {{
        let q = $q;
        $to {
            key: q.key,
            shadowed: q.shadowed,
            shadow_spend_micros: q.shadow_spend_micros,
            pairs: q.pairs,
            routed_quality: q.routed_quality,
            shadow_quality: q.shadow_quality,
            kept: q.kept.map(|e| estimate_fields!(e, $estimate)),
            saving: q.saving.map(|e| estimate_fields!(e, $estimate)),
            supported: q.supported,
            unsupported: q.unsupported,
            explored: q.explored,
            premium_quality: q.premium_quality.map(|e| estimate_fields!(e, $estimate)),
            interval_width: q.interval_width,
        }
    }};
}

macro_rules! estimate_fields {
    ($e:expr, $to:path) => {{
        let e = $e;
        $to {
            value: e.value,
            low: e.low,
            high: e.high,
        }
    }};
}

impl From<report::QualityKept> for pb::QualityKept {
    fn from(q: report::QualityKept) -> Self {
        quality_fields!(q, pb::QualityKept, pb::Estimate)
    }
}

impl From<pb::QualityKept> for report::QualityKept {
    fn from(q: pb::QualityKept) -> Self {
        quality_fields!(q, report::QualityKept, report::Estimate)
    }
}

impl From<pb::GetReportResponse> for report::Report {
    fn from(r: pb::GetReportResponse) -> Self {
        use report::{BudgetStatus, SeriesPoint};
        Self {
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            group_by: report::GroupBy::parse(&r.group_by).unwrap_or_default(),
            groups: r.groups.into_iter().map(Into::into).collect(),
            total: r.total.unwrap_or_default().into(),
            budgets: r
                .budgets
                .into_iter()
                .map(|b| budget_fields!(b, BudgetStatus))
                .collect(),
            series: r
                .series
                .into_iter()
                .map(|p| point_fields!(p, SeriesPoint))
                .collect(),
            policy_version: r.policy_version,
            generated_ms: r.generated_ms,
            quality: r.quality.into_iter().map(Into::into).collect(),
        }
    }
}

/// The report request a person's words make (the CLI's flags, `/report`'s query parameters):
/// `since` is `day`, `week` or `month` (the current calendar period), a duration ago or a UTC
/// date or time; `until` the same but a period (default now); `by` the grouping. An error names
/// the parameter that could not be read. The server still validates the request
/// (`report_query`).
pub fn report_request(
    since: &str,
    until: Option<&str>,
    by: &str,
    team: &str,
    workflow: &str,
    now_ms: u64,
) -> Result<pb::GetReportRequest, (&'static str, String)> {
    use crate::domain::calendar::parse_instant;
    let (period, since_ms) = match Period::parse(since) {
        Some(p) => (p.as_str().to_string(), 0),
        None => (
            String::new(),
            parse_instant(since, now_ms).map_err(|e| ("since", e))?,
        ),
    };
    let until_ms = until
        .map(|u| parse_instant(u, now_ms))
        .transpose()
        .map_err(|e| ("until", e))?
        .unwrap_or(0);
    Ok(pb::GetReportRequest {
        since_ms,
        until_ms,
        period,
        team: team.to_string(),
        workflow: workflow.to_string(),
        group_by: by.to_string(),
    })
}

/// Validates a report request into a query.
pub(super) fn report_query(r: &pb::GetReportRequest, now: u64) -> Result<ReportQuery, Status> {
    let group_by = report::GroupBy::parse(&r.group_by).ok_or_else(|| {
        invalid(
            "group_by",
            format!(
                "must be \"team\", \"workflow\", \"tier\" or \"team_workflow\", got {}",
                crate::domain::labels::shown(&r.group_by)
            ),
        )
    })?;
    let until_ms = if r.until_ms == 0 { now } else { r.until_ms };
    let since_ms = match (r.period.as_str(), Period::parse(&r.period)) {
        ("", _) if r.since_ms == 0 => until_ms.saturating_sub(crate::domain::calendar::DAY_MS),
        ("", _) => r.since_ms,
        (_, Some(p)) => p.start_ms(now),
        (other, None) => {
            return Err(invalid(
                "period",
                format!(
                    "must be \"day\", \"week\", \"month\" or empty, got {}",
                    crate::domain::labels::shown(other)
                ),
            ));
        }
    };
    let until_ms = if r.period.is_empty() { until_ms } else { now };
    if since_ms >= until_ms {
        return Err(invalid(
            "since_ms",
            format!("must be before until_ms ({until_ms}), got {since_ms}"),
        ));
    }
    Ok(ReportQuery {
        since_ms,
        until_ms,
        team: r.team.clone(),
        workflow: r.workflow.clone(),
        group_by,
    })
}

pub(super) fn change_to_proto(c: crate::store::PolicyChange) -> pb::PolicyChange {
    pb::PolicyChange {
        seq: c.seq,
        version: c.version,
        source: c.source,
        author: c.author,
        reason: c.reason,
        at_ms: c.at_ms,
        summary: c.summary,
    }
}

pub(super) fn what_if_to_proto(w: crate::engine::WhatIfScope) -> pb::WhatIfScope {
    pb::WhatIfScope {
        scope: w.scope,
        tasks: w.tasks,
        actual_spend_micros: w.actual_spend_micros,
        actual_quality: w.actual_quality,
        live_spend_micros: w.live_spend_micros,
        live_quality: w.live_quality,
        proposed_spend_micros: w.proposed_spend_micros,
        proposed_quality: w.proposed_quality,
        live_bar: w.live_bar,
        proposed_bar: w.proposed_bar,
        actual_mix: w.actual_mix.into_iter().collect(),
        proposed_mix: w.proposed_mix.into_iter().collect(),
    }
}

pub(super) fn threshold_to_proto(t: crate::domain::learning::ThresholdRow) -> pb::TierThreshold {
    pb::TierThreshold {
        scope: t.scope,
        tier: t.tier,
        threshold: t.threshold,
        evidence: t.evidence,
        observed_quality: t.observed_quality,
        last_move: t.last_move,
        bar: t.bar,
        target: t.target,
        scope_quality: t.scope_quality,
        workflow: t.workflow,
        pinned: t.pinned,
        team_plan: t.team.is_some(),
        team: t.team.unwrap_or_default(),
        terms: t.terms,
        explore_by: t.explore_by.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_answers_scores_to_four_decimals_and_money_to_the_micro_dollar() {
        assert_eq!(super::score(0.45960026800632475), 0.4596);
        assert_eq!(super::usd(13), 0.000013);
        assert_eq!(format!("{}", super::usd(13)), "0.000013");
    }

    use super::*;

    #[test]
    fn a_group_crosses_the_proto_and_back_unchanged() {
        // A different sum for every ledger metric, so a field carried into another shows.
        let sum = |m: &str| m.bytes().fold(7i64, |a, b| a * 31 + i64::from(b)) % 1_000_000;
        let g = report::GroupReport {
            key: "search".into(),
            cost_per_completed_micros: Some(11),
            realized_quality: Some(0.5),
            quality_bar: Some(0.25),
            tier_mix: vec![report::TierShare {
                tier: "small".into(),
                tasks: 3,
                spend_micros: 1_200,
            }],
            savings_micros: 12,
            net_value_micros: -13,
            reuse_rate: Some(0.125),
            ..report::GroupReport::from_sums(sum)
        };
        let p = pb::GroupReport::from(g.clone());
        assert_eq!(p.budget_rejections, g.budget_rejections);
        assert_eq!(p.reuse_events, g.reuse_events);
        assert_eq!(p.human_value_micros, g.human_value_micros);
        assert_eq!(p.tier_mix[0].spend_micros, 1_200);
        assert_ne!(g.budget_downgrades, g.budget_rejections);
        assert_eq!(report::GroupReport::from(p), g);
    }
}
