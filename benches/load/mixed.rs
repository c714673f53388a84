//! Mixed Route + Feedback load against a running server (issue 16). h2load cannot do this:
//! every Feedback needs the fresh decision id its Route just returned.
//!
//! ```sh
//! cargo bench --bench mixed -- --addr 127.0.0.1:50051 --rate 5000 --seconds 10
//! cargo bench --bench mixed -- --addr 127.0.0.1:50051 --workers 64 --seconds 10   # saturation
//! cargo bench --bench mixed -- --route-only --rate 5000                           # Route alone
//! ```
//!
//! Open loop (`--rate`): calls start on a fixed schedule whether or not earlier ones finished
//! (a stalled server shows up as latency, not as a lower rate: no coordinated omission); each
//! latency counts from when its call was sent. Closed loop
//! (`--workers N`): N callers each route then post feedback back to back: the saturation rate.
//! Prints throughput, p50/p99/p99.9 per RPC and errors by gRPC code; `--json` for one object.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokenwise::grpc::pb::router_client::RouterClient;
use tokenwise::grpc::pb::{FeedbackRequest, RouteRequest};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Open loop: Route calls started per second (each followed by its Feedback). 0: closed loop.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Closed loop: concurrent callers (used when --rate is 0).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// How long to run, seconds (after a one-second warm-up that is not counted).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Route only (no Feedback): the baseline the mixed run is compared with.
    #[arg(long)]
    route_only: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Write `unix_ms decision_id` of every acknowledged Feedback (warm-up included) to this
    /// file at the end: what a fault test checks the store against.
    #[arg(long)]
    acked: Option<std::path::PathBuf>,
    /// cargo bench passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Real prompts of varied length (MMLU and GSM8K style).
const TASKS: [&str; 6] = [
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Which of the following is the body cavity that contains the pituitary gland? A. Abdominal B. Cranial C. Pleural D. Spinal Answer:",
    "Write a Python function that merges two sorted lists into one sorted list in linear time, with tests.",
    "Explain the difference between a mutex and a semaphore, with an example of when each is the right choice and a short discussion of priority inversion.",
    "Translate 'good morning, how did you sleep?' to Spanish.",
];

/// Latencies (µs) and errors of one RPC.
#[derive(Default)]
struct Stats {
    micros: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn ok(&mut self, since: Instant) {
        self.micros.push(since.elapsed().as_micros() as u64);
    }
    fn err(&mut self, code: tonic::Code) {
        *self.errors.entry(format!("{code:?}")).or_default() += 1;
    }
}

#[derive(Default)]
struct Recorder {
    route: Stats,
    feedback: Stats,
}

/// Acknowledged feedbacks: (unix ms when the answer came, decision id).
type Acked = Arc<Mutex<Vec<(u128, String)>>>;

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

type Shared = Arc<Mutex<Recorder>>;

fn record(rec: &Shared, f: impl FnOnce(&mut Recorder)) {
    f(&mut rec.lock().unwrap_or_else(PoisonError::into_inner));
}

/// One Route, then (unless `route_only`) the Feedback for its decision. Route's latency counts
/// from `start`.
async fn call(
    mut client: RouterClient<Channel>,
    i: usize,
    start: Instant,
    route_only: bool,
    rec: Option<Shared>,
    acked: Option<Acked>,
) {
    let req = RouteRequest {
        task: TASKS[i % TASKS.len()].into(),
        workflow: ["qa", "math", "code"][i % 3].into(),
        team: ["search", "ads"][i % 2].into(),
        hints: None,
    };
    let d = match client.route(req).await {
        Ok(r) => {
            if let Some(rec) = &rec {
                record(rec, |r| r.route.ok(start));
            }
            r.into_inner()
        }
        Err(e) => {
            if let Some(rec) = &rec {
                record(rec, |r| r.route.err(e.code()));
            }
            return;
        }
    };
    if route_only {
        return;
    }
    let sent = Instant::now();
    let id = acked.as_ref().map(|_| d.decision_id.clone());
    let fb = FeedbackRequest {
        decision_id: d.decision_id,
        score: if i.is_multiple_of(4) { 0.0 } else { 1.0 },
        input_tokens: Some(120),
        output_tokens: Some(40),
        cached_input_tokens: None,
        reasoning_tokens: None,
        served_tier: String::new(),
        reused: false,
        ..Default::default()
    };
    let result = client.feedback(fb).await;
    if let (Ok(_), Some(acked), Some(id)) = (&result, &acked, id) {
        acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((unix_ms(), id));
    }
    if let Some(rec) = &rec {
        match result {
            Ok(_) => record(rec, |r| r.feedback.ok(sent)),
            Err(e) => record(rec, |r| r.feedback.err(e.code())),
        }
    }
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn summary(name: &str, s: &mut Stats, seconds: f64) -> serde_json::Value {
    s.micros.sort_unstable();
    let errors: u64 = s.errors.values().sum();
    serde_json::json!({
        "rpc": name,
        "ok": s.micros.len(),
        "errors": errors,
        "errors_by_code": s.errors,
        "per_s": s.micros.len() as f64 / seconds,
        "p50_ms": quantile(&s.micros, 0.5),
        "p99_ms": quantile(&s.micros, 0.99),
        "p999_ms": quantile(&s.micros, 0.999),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch = Channel::from_shared(uri.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {uri}"))?;
        clients.push(RouterClient::new(ch));
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let rec: Shared = Arc::default();
    let acked: Option<Acked> = args.acked.as_ref().map(|_| Arc::default());
    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs(args.seconds);
    let began = Instant::now();
    let counting = move |t: Instant| t.duration_since(began) >= warmup;
    if args.rate > 0 {
        let period = Duration::from_secs_f64(1.0 / args.rate as f64);
        let mut tasks = tokio::task::JoinSet::new();
        let mut i = 0usize;
        loop {
            let due = began + period * i as u32;
            if due.duration_since(began) >= total {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let client = clients[i % clients.len()].clone();
            let r = counting(due).then(|| rec.clone());
            // From when it is sent: the timer wakes in 1 ms steps, so calls due within one step
            // go out together; a slow server still cannot hold later calls back.
            let a = acked.clone();
            tasks.spawn(call(client, i, Instant::now(), args.route_only, r, a));
            i += 1;
            // Reap finished calls now and then so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    } else {
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..args.workers.max(1) {
            let client = clients[w % clients.len()].clone();
            let rec = rec.clone();
            let route_only = args.route_only;
            let acked = acked.clone();
            workers.spawn(async move {
                let mut i = w;
                loop {
                    let now = Instant::now();
                    if now.duration_since(began) >= total {
                        break;
                    }
                    let r = counting(now).then(|| rec.clone());
                    call(client.clone(), i, now, route_only, r, acked.clone()).await;
                    i += args.workers.max(1);
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }
    if let (Some(path), Some(acked)) = (&args.acked, &acked) {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (ms, id) in acked.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            writeln!(out, "{ms} {id}")?;
        }
        out.flush()?;
    }
    let seconds = args.seconds as f64;
    let mut rec = rec.lock().unwrap_or_else(PoisonError::into_inner);
    let mode = if args.rate > 0 {
        format!("open loop at {} Route/s", args.rate)
    } else {
        format!("closed loop, {} workers", args.workers)
    };
    let route = summary("Route", &mut rec.route, seconds);
    let feedback = summary("Feedback", &mut rec.feedback, seconds);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"mode": mode, "seconds": seconds, "route": route, "feedback": feedback})
        );
    } else {
        println!(
            "{mode}, {} s (after 1 s warm-up), {}",
            args.seconds, args.addr
        );
        println!(
            "{:<9} {:>9} {:>10} {:>9} {:>9} {:>9}  errors",
            "rpc", "ok", "per s", "p50 ms", "p99 ms", "p99.9 ms"
        );
        for s in [&route, &feedback] {
            if s["ok"] == 0 && s["errors"] == 0 {
                continue;
            }
            println!(
                "{:<9} {:>9} {:>10.0} {:>9.3} {:>9.3} {:>9.3}  {}",
                s["rpc"].as_str().unwrap_or_default(),
                s["ok"],
                s["per_s"].as_f64().unwrap_or(0.0),
                s["p50_ms"].as_f64().unwrap_or(f64::NAN),
                s["p99_ms"].as_f64().unwrap_or(f64::NAN),
                s["p999_ms"].as_f64().unwrap_or(f64::NAN),
                s["errors_by_code"]
            );
        }
    }
    Ok(())
}
