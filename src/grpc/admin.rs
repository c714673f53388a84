//! `tokenwise.v1.Admin`: thresholds, reports and policy administration, each one call into the
//! engine plus the proto conversion; admin-only checks and the audit author.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{
    change_to_proto, invalid, report_query, threshold_to_proto, what_if_to_proto,
};
use super::now_ms;
use super::pb;
use super::pb::admin_server::Admin;
use crate::engine::Engine;
use crate::grpc::auth;
use crate::report;

/// `tokenwise.v1.Admin`: thresholds and books to read, and the policy to read, check, change and
/// roll back (with auth on, every call needs the admin role).
pub struct AdminService {
    pub(super) engine: Arc<Engine>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_thresholds(
        &self,
        request: Request<pb::GetThresholdsRequest>,
    ) -> Result<Response<pb::GetThresholdsResponse>, Status> {
        auth::require_admin(auth::caller(&request), "GetThresholds")?;
        // The team's concurrency slot (in the extensions) is held until the call ends.
        let (_, _slot, r) = request.into_parts();
        let want = r.scope;
        let t = self.engine.thresholds(&want)?;
        Ok(Response::new(pb::GetThresholdsResponse {
            thresholds: t.rows.into_iter().map(threshold_to_proto).collect(),
            policy_version: t.policy_version,
        }))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        let (_, extensions, q) = request.into_parts();
        let r = report_for(&self.engine, extensions.get::<auth::Caller>(), q).await?;
        Ok(Response::new(r.into()))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        auth::require_admin(auth::caller(&request), "GetPolicy")?;
        let p = self.engine.policy();
        Ok(Response::new(pb::GetPolicyResponse {
            version: p.version.clone(),
            text: p.source.to_string(),
        }))
    }

    async fn validate_policy(
        &self,
        request: Request<pb::ValidatePolicyRequest>,
    ) -> Result<Response<pb::ValidatePolicyResponse>, Status> {
        auth::require_admin(auth::caller(&request), "ValidatePolicy")?;
        // The team's concurrency slot (in the extensions) is held until the call ends.
        let (_, _slot, r) = request.into_parts();
        let check = self.engine.check_policy(&r.text, r.what_if).await?;
        let what_if = check
            .what_if
            .map(|w| {
                w.scopes
                    .into_iter()
                    .chain(std::iter::once(w.total))
                    .map(what_if_to_proto)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ValidatePolicyResponse {
            version: check.version,
            changes: check.changes,
            what_if,
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        auth::require_admin(auth::caller(&request), "ApplyPolicy")?;
        let author = author_of(&request);
        // The team's concurrency slot (in the extensions) is held until the call ends.
        let (_, _slot, r) = request.into_parts();
        require_reason(&r.reason)?;
        audit_text("author", &r.author, MAX_AUTHOR_BYTES)?;
        let author = author.unwrap_or_else(|| anonymous_or(r.author.clone()));
        let change = self
            .engine
            .apply_policy(
                &r.text,
                crate::store::ChangeSource::Api,
                &author,
                &r.reason,
                now_ms(),
            )
            .await?;
        Ok(Response::new(change_to_proto(change)))
    }

    async fn list_policy_versions(
        &self,
        request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        auth::require_admin(auth::caller(&request), "ListPolicyVersions")?;
        let changes = self.engine.policy_versions().await?;
        Ok(Response::new(pb::ListPolicyVersionsResponse {
            changes: changes.into_iter().map(change_to_proto).collect(),
            live_version: self.engine.policy().version.clone(),
        }))
    }

    async fn rollback_policy(
        &self,
        request: Request<pb::RollbackPolicyRequest>,
    ) -> Result<Response<pb::PolicyChange>, Status> {
        auth::require_admin(auth::caller(&request), "RollbackPolicy")?;
        let author = author_of(&request);
        // The team's concurrency slot (in the extensions) is held until the call ends.
        let (_, _slot, r) = request.into_parts();
        require_reason(&r.reason)?;
        audit_text("author", &r.author, MAX_AUTHOR_BYTES)?;
        let author = author.unwrap_or_else(|| anonymous_or(r.author.clone()));
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        let change = self
            .engine
            .rollback_policy(version, &author, &r.reason, now_ms())
            .await?;
        Ok(Response::new(change_to_proto(change)))
    }
}

/// With authentication on, the audit trail names the key, not what the request claims.
fn author_of<T>(request: &Request<T>) -> Option<String> {
    auth::caller(request).map(|c| format!("{} (team {})", c.name, c.team))
}

/// Without authentication the request names the author; an empty one is recorded as such.
fn anonymous_or(author: String) -> String {
    if author.trim().is_empty() {
        "anonymous (auth off)".into()
    } else {
        author
    }
}

/// Longest `author` of a policy change, bytes.
const MAX_AUTHOR_BYTES: usize = 256;
/// Longest `reason` of a policy change, bytes.
const MAX_REASON_BYTES: usize = 2048;

fn require_reason(reason: &str) -> Result<(), Status> {
    if reason.trim().is_empty() {
        return Err(invalid(
            "reason",
            "must say why the policy changes (it goes in the audit trail)".into(),
        ));
    }
    audit_text("reason", reason, MAX_REASON_BYTES)
}

/// Text for the audit trail and the log: bounded, and one line without control characters (a
/// newline in it could forge a log line).
fn audit_text(field: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max || crate::domain::labels::has_control(text) {
        return Err(invalid(
            field,
            format!(
                "must be at most {max} bytes without control characters (newlines, escapes), got {} bytes",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// The books `caller` may read (`None`: auth off), as `GetReport` and the metrics port's
/// `/report` page serve them: a service key reads its own team's books, an admin any team's;
/// a shared budget's usage is every team's spend, so a service key sees only its own team's
/// budgets (a shared one that refuses it is named in the Route refusal).
pub(super) async fn report_for(
    engine: &Engine,
    caller: Option<&auth::Caller>,
    mut r: pb::GetReportRequest,
) -> Result<report::Report, Status> {
    r.team = auth::effective_team(caller, &r.team, "team")?.to_string();
    let now = now_ms();
    let q = report_query(&r, now)?;
    let mut report = engine.report(&q, now).await.map_err(Status::from)?;
    if let Some(c) = caller
        && c.role != auth::Role::Admin
    {
        report.budgets.retain(|b| b.team == c.team);
    }
    Ok(report)
}
