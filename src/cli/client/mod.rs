//! Commands that talk to a running server over gRPC (route, reuse, thresholds, `replay --addr`;
//! `report` and `policy` in their own files) and the connection they share: address, API key, TLS.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

use super::{ReplayArgs, load_records, runtime};
use crate::domain::labels::printable;
use crate::grpc::pb;
use crate::offline::dataset::Record;

mod policy;
mod report;

pub(super) use policy::{PolicyAction, policy};
pub(super) use report::{ReportArgs, report};

/// Arguments of `route`.
/// The server a client command talks to.
#[derive(Debug, clap::Args)]
pub(in crate::cli) struct ConnectArgs {
    /// Server address, host:port or http://host:port.
    #[arg(long, env = crate::cli::env::ADDR, default_value = "127.0.0.1:50051")]
    pub(in crate::cli) addr: String,
}

#[derive(Debug, clap::Args)]
pub(super) struct RouteArgs {
    #[command(flatten)]
    server: ConnectArgs,
    /// Workflow label.
    #[arg(long, default_value = "")]
    workflow: String,
    /// Team.
    #[arg(long, default_value = "")]
    team: String,
    /// Expected output tokens (hint).
    #[arg(long, default_value_t = 0)]
    expected_output_tokens: u32,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
    /// The task text.
    task: String,
}

/// Asks the server at `--addr` to route one task and prints its decision.
pub(super) fn route(args: RouteArgs) -> anyhow::Result<()> {
    let RouteArgs {
        server,
        workflow,
        team,
        expected_output_tokens,
        json,
        task,
    } = args;
    runtime()?.block_on(async move {
        let mut client = pb::router_client::RouterClient::new(connect(&server.addr).await?);
        let d = client
            .route(pb::RouteRequest {
                task,
                workflow,
                team,
                hints: Some(pb::RouteHints {
                    expected_output_tokens,
                    task_type: String::new(),
                }),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if json {
            outln!("{}", json_line(&d)?);
        } else {
            outln!("tier        {}  ({})", d.tier, d.model);
            outln!("complexity  {:.3}", d.complexity);
            outln!("est. cost   ${:.6}", d.estimated_cost_usd);
            outln!(
                "fallback    {}",
                if d.fallback_tier.is_empty() {
                    "-"
                } else {
                    &d.fallback_tier
                }
            );
            outln!(
                "scope       {}  (policy {})",
                printable(&d.scope),
                d.policy_version
            );
            outln!("reason      {}", printable(&d.reason));
            outln!();
            outln!(
                "{:<12} {:<28} {:>9} {:>12} {:>9}",
                "candidate",
                "model",
                "quality",
                "est. cost",
                "threshold"
            );
            for c in &d.candidates {
                let mark = if c.tier == d.tier { "*" } else { " " };
                outln!(
                    "{mark}{:<11} {:<28} {:>9.3} {:>12.6} {:>9.2}",
                    c.tier,
                    c.model,
                    c.predicted_quality,
                    c.estimated_cost_usd,
                    c.threshold
                );
            }
            outln!();
            outln!("decision_id {}", d.decision_id);
        }
        Ok(())
    })
}

/// Arguments of `reuse`.
#[derive(Debug, clap::Args)]
pub(super) struct ReuseArgs {
    #[command(flatten)]
    server: ConnectArgs,
    /// Reuse events this stands for (e.g. a macro sent 400 times).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// Your id of this reuse event: the same id for the same decision counts once.
    #[arg(long, default_value = "")]
    event_id: String,
    /// Free text, e.g. the consumer's name (logged by the server, not counted).
    #[arg(long, default_value = "")]
    note: String,
    /// The decision_id Route returned.
    decision_id: String,
}

/// Tells the server that a decision's output was used again.
pub(super) fn reuse(args: ReuseArgs) -> anyhow::Result<()> {
    let ReuseArgs {
        server,
        count,
        event_id,
        note,
        decision_id,
    } = args;
    runtime()?.block_on(async move {
        let mut client = pb::router_client::RouterClient::new(connect(&server.addr).await?);
        let r = client
            .record_reuse(pb::RecordReuseRequest {
                decision_id,
                count,
                event_id,
                note,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        outln!(
            "recorded {} reuse event{} for scope {} workflow {}{}",
            r.count,
            if r.count == 1 { "" } else { "s" },
            printable(&r.scope),
            printable(crate::domain::labels::workflow_key(&r.workflow)),
            if r.first_reuse {
                " (first reuse of this output)"
            } else {
                ""
            }
        );
        Ok(())
    })
}

/// Arguments of `thresholds`.
#[derive(Debug, clap::Args)]
pub(super) struct ThresholdsArgs {
    #[command(flatten)]
    server: ConnectArgs,
    /// Only this scope.
    #[arg(long, default_value = "")]
    scope: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the server's learned thresholds, per scope and tier.
pub(super) fn thresholds(args: ThresholdsArgs) -> anyhow::Result<()> {
    let ThresholdsArgs {
        server,
        scope,
        json,
    } = args;
    runtime()?.block_on(async move {
        let mut client = admin_client(&server.addr).await?;
        let r = client
            .get_thresholds(pb::GetThresholdsRequest { scope })
            .await
            .map_err(status_error)?
            .into_inner();
        if json {
            outln!("{}", json_line(&r)?);
        } else {
            // Labels come from callers: a newline or an escape sequence in one must not reach
            // the terminal as it is.
            let mut r = r;
            for t in &mut r.thresholds {
                for s in [&mut t.scope, &mut t.team, &mut t.workflow, &mut t.tier]
                    .into_iter()
                    .chain(t.terms.iter_mut())
                {
                    if let std::borrow::Cow::Owned(p) = printable(s) {
                        *s = p;
                    }
                }
            }
            outln!("policy {}", r.policy_version);
            // The shared plan's rows, then each team's own plan.
            let team_of = |t: &pb::TierThreshold| match (t.team_plan, t.team.as_str()) {
                (false, _) => "(shared)".to_string(),
                (true, "") => "(no team)".to_string(),
                (true, team) => team.to_string(),
            };
            let mut level = None;
            let mut rows: Vec<Vec<String>> = r
                .thresholds
                .iter()
                .map(|t| {
                    // A discovered cluster's terms, once, on the first row of its level.
                    let key = Some((&t.scope, t.team_plan, &t.team, &t.workflow));
                    let terms = if level == key {
                        String::new()
                    } else {
                        t.terms.join(", ")
                    };
                    level = key;
                    let observed = if t.evidence > 0.0 {
                        format!("{:.3}", t.observed_quality)
                    } else {
                        "-".into()
                    };
                    let workflow = if t.workflow.is_empty() {
                        "(all)"
                    } else {
                        t.workflow.as_str()
                    };
                    // A pinned threshold is the policy's, not learned: marked with `*`.
                    let pinned = if t.pinned { "*" } else { "" };
                    vec![
                        t.scope.clone(),
                        team_of(t),
                        workflow.to_string(),
                        t.tier.clone(),
                        format!("{:.2}{pinned}", t.threshold),
                        format!("{:.1}", t.evidence),
                        observed,
                        format!("{:+.2}", t.last_move),
                        bar_and_aim(t.bar, t.target),
                        terms,
                    ]
                })
                .collect();
            let mut header = vec![
                "scope",
                "team",
                "workflow",
                "tier",
                "threshold",
                "evidence",
                "observed",
                "last move",
                "bar",
                "terms",
            ];
            // The terms column only where a scope has discovered clusters.
            if r.thresholds.iter().all(|t| t.terms.is_empty()) {
                header.pop();
                for row in &mut rows {
                    row.pop();
                }
            }
            out!(
                "{}",
                crate::report::render::plain_table(&header, &rows, &[4, 5, 6, 7, 8])
            );
            outln!();
            // How each plan explores, once per plan.
            let mut plans: Vec<(String, String, &str)> = Vec::new();
            for t in &r.thresholds {
                let plan = (t.scope.clone(), team_of(t), t.explore_by.as_str());
                if plans.last() != Some(&plan) {
                    plans.push(plan);
                }
            }
            let exploring: Vec<String> = plans
                .iter()
                .map(|(scope, team, by)| format!("{scope} {team}: {by}"))
                .collect();
            if !exploring.is_empty() {
                outln!("exploring by     {}", exploring.join("; "));
            }
            // What exploring cost lately, from the books (every scope; the report has more).
            let report = client.get_report(pb::GetReportRequest::default()).await;
            if let Some(line) = report
                .ok()
                .and_then(|r| r.into_inner().total)
                .map(crate::report::GroupReport::from)
                .and_then(|t| crate::report::render::exploration_line(&t))
            {
                outln!("last 24 hours    {line} (every scope; `tokenwise report` for more)");
            }
            if r.thresholds.iter().any(|t| t.pinned) {
                outln!(
                    "* pinned by the policy (`thresholds = {{...}}`): learning does not move it"
                );
            }
        }
        Ok(())
    })
}

/// `replay --addr`: sends a data file's records to the server at `addr` (Route, then the chosen
/// model's recorded outcome as Feedback) and prints what it answered.
pub(super) fn replay(addr: &str, args: ReplayArgs) -> anyhow::Result<()> {
    let ReplayArgs {
        data,
        split,
        workflows,
        limit,
        concurrency,
        json,
        team,
        strip_labels,
        shuffle,
        seed,
        no_shadow_runs,
        ..
    } = args;
    let mut records = load_records(&data, split, &workflows)?;
    if shuffle {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        records.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    records.truncate(limit.unwrap_or(usize::MAX));
    let how = RemoteReplay {
        concurrency: concurrency.max(1),
        team,
        strip_labels,
        no_shadow_runs,
    };
    runtime()?.block_on(async move {
        let started = std::time::Instant::now();
        let s = replay_remote(connect(addr).await?, &records, &how).await;
        if json {
            outln!("{}", serde_json::to_string(&s)?);
        } else {
            let tiers: Vec<String> = s.tiers.iter().map(|(t, n)| format!("{t} {n}")).collect();
            outln!(
                "routed {} ({}) · feedback {} · no recorded outcome {} · refused {} · {:.1} s",
                s.routed,
                tiers.join(", "),
                s.fed_back,
                s.no_outcome,
                refused_text(&s.refused),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })
}

/// What a replay against a running server did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
struct RemoteSummary {
    /// Route calls answered.
    routed: usize,
    /// Feedback calls accepted.
    fed_back: usize,
    /// Records whose chosen model has no recorded outcome (routed, no feedback).
    no_outcome: usize,
    /// Calls refused, by gRPC code.
    refused: BTreeMap<String, usize>,
    /// Route answers by tier.
    tiers: BTreeMap<String, usize>,
    /// Route answers that explored.
    explored: usize,
}

/// How `replay --addr` sends its records.
struct RemoteReplay {
    /// Calls in flight at once (1: in file order, each Route after the previous Feedback).
    concurrency: usize,
    /// The team of every call; `None`: each workflow's family.
    team: Option<String>,
    /// Send no workflow labels.
    strip_labels: bool,
    /// Post no shadow score, whatever the decision names.
    no_shadow_runs: bool,
}

/// Replays records against a running server over gRPC: Route each task (team = the workflow's
/// family, e.g. `mmlu` for `mmlu/anatomy`), then post the chosen model's recorded outcome as
/// Feedback. `concurrency` calls run at once. This is traffic for the server's books and
/// thresholds; the in-process [`crate::offline::replay::replay`] is the measurement.
async fn replay_remote(
    channel: crate::grpc::auth::AuthedChannel,
    records: &[Record],
    how: &RemoteReplay,
) -> RemoteSummary {
    use futures::StreamExt;
    let client = pb::router_client::RouterClient::new(channel);
    let one = |r: &Record| {
        let mut c = client.clone();
        let team = how.team.clone().unwrap_or_else(|| {
            crate::domain::labels::family_of(&r.workflow)
                .unwrap_or(&r.workflow)
                .to_string()
        });
        let req = pb::RouteRequest {
            task: r.prompt.clone(),
            workflow: if how.strip_labels {
                String::new()
            } else {
                r.workflow.clone()
            },
            team,
            hints: None,
        };
        let outcomes = r.outcomes.clone();
        let runs_none = how.no_shadow_runs;
        async move {
            let d = c.route(req).await?.into_inner();
            // A pair the caller does not run explores nothing (as the books count it).
            let ignored_pair = runs_none && d.explored && d.shadow_tier.is_some();
            let routed = (d.tier.clone(), d.explored && !ignored_pair);
            let Some(o) = outcomes.get(&d.model) else {
                return Ok::<_, tonic::Status>((routed, false));
            };
            // A shadowed decision posts the shadow tier's recorded outcome as its pair.
            let shadow = d
                .shadow_tier
                .as_ref()
                .filter(|_| !runs_none)
                .and_then(|t| d.candidates.iter().find(|c| &c.tier == t))
                .and_then(|c| outcomes.get(&c.model));
            c.feedback(pb::FeedbackRequest {
                shadow_score: shadow.map(|s| s.score),
                shadow_input_tokens: shadow.and_then(|s| s.input_tokens.map(|t| t as i64)),
                shadow_output_tokens: shadow.and_then(|s| s.output_tokens.map(|t| t as i64)),
                decision_id: d.decision_id,
                score: o.score,
                input_tokens: o.input_tokens.map(|t| t as i64),
                output_tokens: o.output_tokens.map(|t| t as i64),
                // The records carry no cached or reasoning counts: none are reported.
                cached_input_tokens: None,
                reasoning_tokens: None,
                served_tier: String::new(),
                reused: false,
            })
            .await?;
            Ok((routed, true))
        }
    };
    let mut summary = RemoteSummary::default();
    let mut results =
        futures::stream::iter(records.iter().map(one)).buffer_unordered(how.concurrency);
    while let Some(r) = results.next().await {
        match r {
            Ok(((tier, explored), fed_back)) => {
                summary.routed += 1;
                *summary.tiers.entry(tier).or_default() += 1;
                summary.explored += usize::from(explored);
                if fed_back {
                    summary.fed_back += 1;
                } else {
                    summary.no_outcome += 1;
                }
            }
            Err(s) => {
                *summary
                    .refused
                    .entry(format!("{:?}", s.code()))
                    .or_default() += 1
            }
        }
    }
    summary
}

/// The bar column of `thresholds`: the bar, and where the plan is catching up (aiming above
/// it), the aim too: `0.77 → 0.79`.
fn bar_and_aim(bar: f64, target: f64) -> String {
    if target > bar + 0.005 {
        format!("{bar:.2} → {target:.2}")
    } else {
        format!("{bar:.2}")
    }
}

/// A response as one line of JSON, its keys in sorted order (through a `serde_json::Value`,
/// whose maps are sorted): the order `route --json` and `thresholds --json` have always printed.
fn json_line(response: &impl Serialize) -> serde_json::Result<String> {
    Ok(serde_json::to_value(response)?.to_string())
}

/// `addr` as a URL: `http://` unless it names a scheme.
fn endpoint(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A channel to `addr` that sends the API key in `TOKENWISE_API_KEY`, if set. An `https://`
/// address speaks TLS, trusting the CA certificate (PEM) in `TOKENWISE_CA_CERT`.
pub(super) async fn connect(addr: &str) -> anyhow::Result<crate::grpc::auth::AuthedChannel> {
    let ep = endpoint(addr);
    let mut endpoint = tonic::transport::Endpoint::from_shared(ep.clone())?;
    if ep.starts_with("https://") {
        let ca = std::env::var(crate::cli::env::CA_CERT)
            .context("https:// needs TOKENWISE_CA_CERT: the CA certificate (PEM file) to trust")?;
        let pem = std::fs::read(&ca).with_context(|| format!("cannot read {ca}"))?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {ep}"))?;
    let key = std::env::var(crate::cli::env::API_KEY).ok();
    let bearer = crate::grpc::auth::BearerKey::new(key.as_deref()).map_err(status_error)?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel, bearer,
    ))
}

/// An Admin client for the server at `addr`, accepting answers as large as the server may send
/// ([`crate::grpc::MAX_ADMIN_RESPONSE_BYTES`]).
pub(super) async fn admin_client(
    addr: &str,
) -> anyhow::Result<pb::admin_client::AdminClient<crate::grpc::auth::AuthedChannel>> {
    Ok(pb::admin_client::AdminClient::new(connect(addr).await?)
        .max_decoding_message_size(crate::grpc::MAX_ADMIN_RESPONSE_BYTES))
}

/// Refused calls by code for a person: `0`, or `3 (ResourceExhausted 2, Unavailable 1)`.
fn refused_text(refused: &BTreeMap<String, usize>) -> String {
    let total: usize = refused.values().sum();
    if total == 0 {
        return "0".into();
    }
    let parts: Vec<String> = refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// A refused call as an error: its gRPC code and message.
pub(super) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), printable(s.message()))
}

#[cfg(test)]
mod tests {
    use crate::grpc::pb;

    #[test]
    fn refused_calls_read_as_a_count_and_their_codes() {
        let mut r = std::collections::BTreeMap::new();
        assert_eq!(super::refused_text(&r), "0");
        r.insert("Unavailable".to_string(), 1);
        r.insert("ResourceExhausted".to_string(), 2);
        assert_eq!(
            super::refused_text(&r),
            "3 (ResourceExhausted 2, Unavailable 1)"
        );
    }

    #[test]
    fn an_address_without_a_scheme_is_plain_http() {
        assert_eq!(super::endpoint("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(super::endpoint("https://router:443"), "https://router:443");
    }

    #[test]
    fn json_responses_keep_their_sorted_keys() {
        let route = pb::RouteResponse {
            candidates: vec![pb::Candidate::default()],
            ..Default::default()
        };
        assert_eq!(
            super::json_line(&route).unwrap(),
            r#"{"candidates":[{"estimated_cost_usd":0.0,"model":"","predicted_quality":0.0,"threshold":0.0,"tier":""}],"complexity":0.0,"decision_id":"","estimated_cost_usd":0.0,"explored":false,"fallback_tier":"","model":"","policy_version":"","reason":"","scope":"","tier":""}"#
        );
        let thresholds = pb::GetThresholdsResponse {
            thresholds: vec![pb::TierThreshold::default()],
            ..Default::default()
        };
        assert_eq!(
            super::json_line(&thresholds).unwrap(),
            r#"{"policy_version":"","thresholds":[{"bar":0.0,"evidence":0.0,"explore_by":"","last_move":0.0,"observed_quality":0.0,"pinned":false,"scope":"","scope_quality":0.0,"target":0.0,"team":"","team_plan":false,"terms":[],"threshold":0.0,"tier":"","workflow":""}]}"#
        );
    }
}
