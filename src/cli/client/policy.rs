//! `tokenwise policy`: policy administration on a running server (show, versions, diff,
//! what-if, apply, rollback).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{ConnectArgs, admin_client, status_error};
use crate::cli::runtime;
use crate::grpc::pb;

/// Runs one `tokenwise policy` subcommand.
pub(in crate::cli) fn policy(action: PolicyAction) -> anyhow::Result<()> {
    runtime()?.block_on(policy_command(action))
}

/// What `tokenwise policy` does.
#[derive(Debug, Subcommand)]
pub(in crate::cli) enum PolicyAction {
    /// Print the live policy text.
    Show {
        #[command(flatten)]
        server: ConnectArgs,
    },
    /// The version history and audit trail.
    Versions {
        #[command(flatten)]
        server: ConnectArgs,
    },
    /// Validate FILE against the live policy and print what would change.
    Diff {
        #[command(flatten)]
        server: ConnectArgs,
        /// Proposed policy file.
        file: PathBuf,
    },
    /// Replay the server's recent decisions and outcomes under FILE: projected spend, quality
    /// and tier mix per scope, next to what happened and what the live policy would do now.
    WhatIf {
        #[command(flatten)]
        server: ConnectArgs,
        /// Proposed policy file.
        file: PathBuf,
    },
    /// Make FILE the live policy on every replica.
    Apply {
        #[command(flatten)]
        server: ConnectArgs,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
        /// Who (ignored when the server authenticates callers: the key's name is used).
        #[arg(long, env = "USER", default_value = "")]
        author: String,
        /// Policy file.
        file: PathBuf,
    },
    /// Make an earlier version live again.
    Rollback {
        #[command(flatten)]
        server: ConnectArgs,
        /// Version to restore (default: the one before the live one).
        #[arg(long, default_value = "")]
        version: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who.
        #[arg(long, env = "USER", default_value = "")]
        author: String,
    },
}

/// One entry of the audit trail: sequence, version, source, time, author, reason, summary.
fn print_change(c: &pb::PolicyChange) {
    outln!(
        "#{:<3} {}  {:<8} {:<10} by {:<20} {}",
        c.seq,
        c.version,
        c.source,
        crate::domain::calendar::timestamp(c.at_ms).strftime("%Y-%m-%dT%H:%M:%SZ"),
        c.author,
        c.reason
    );
    for line in &c.summary {
        outln!("       · {line}");
    }
}

async fn policy_command(action: PolicyAction) -> anyhow::Result<()> {
    let addr = match &action {
        PolicyAction::Show { server }
        | PolicyAction::Versions { server }
        | PolicyAction::Diff { server, .. }
        | PolicyAction::WhatIf { server, .. }
        | PolicyAction::Apply { server, .. }
        | PolicyAction::Rollback { server, .. } => server.addr.clone(),
    };
    let what_if = matches!(action, PolicyAction::WhatIf { .. });
    let mut admin = admin_client(&addr).await?;
    let read = |f: &PathBuf| {
        std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))
    };
    match action {
        PolicyAction::Show { .. } => {
            let p = admin
                .get_policy(pb::GetPolicyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("# live policy version {}", p.version);
            out!("{}", p.text);
        }
        PolicyAction::Versions { .. } => {
            let v = admin
                .list_policy_versions(pb::ListPolicyVersionsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for c in &v.changes {
                print_change(c);
            }
            outln!("live: {}", v.live_version);
        }
        PolicyAction::Diff { file, .. } | PolicyAction::WhatIf { file, .. } => {
            let r = admin
                .validate_policy(pb::ValidatePolicyRequest {
                    text: read(&file)?,
                    what_if,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            outln!("{}: valid (version {})", file.display(), r.version);
            if r.changes.is_empty() {
                outln!("no change against the live policy");
            }
            for c in &r.changes {
                outln!("  · {c}");
            }
            if what_if {
                outln!();
                let cell = |m: i64, q: f64| format!("{} / {:.3}", crate::report::usd(m), q);
                let rows: Vec<Vec<String>> = r
                    .what_if
                    .iter()
                    .map(|w| {
                        vec![
                            w.scope.clone(),
                            w.tasks.to_string(),
                            cell(w.actual_spend_micros, w.actual_quality),
                            cell(w.live_spend_micros, w.live_quality),
                            cell(w.proposed_spend_micros, w.proposed_quality),
                            format!("{:.2} → {:.2}", w.live_bar, w.proposed_bar),
                        ]
                    })
                    .collect();
                let header = [
                    "scope (recent window)",
                    "tasks",
                    "actual spend / q",
                    "live now spend / q",
                    "proposed spend / q",
                    "bar live → proposed",
                ];
                out!(
                    "{}",
                    crate::report::render::plain_table(&header, &rows, &[1, 2, 3, 4, 5])
                );
                outln!();
            }
        }
        PolicyAction::Apply {
            file,
            reason,
            author,
            ..
        } => {
            let c = admin
                .apply_policy(pb::ApplyPolicyRequest {
                    text: read(&file)?,
                    author,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_change(&c);
        }
        PolicyAction::Rollback {
            version,
            reason,
            author,
            ..
        } => {
            let c = admin
                .rollback_policy(pb::RollbackPolicyRequest {
                    version,
                    author,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_change(&c);
        }
    }
    Ok(())
}
