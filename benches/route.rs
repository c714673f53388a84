//! Hot-path benchmarks: feature extraction, scoring and the full in-process Route decision.
//!
//! Run: `cargo bench --bench route` (add `-- --quick` for a short run). Target (design notes):
//! classify + decide ≤ 20 µs median for a 2 KB task on one core.

#![allow(clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokenwise::domain::classifier::ComplexityModel;
use tokenwise::domain::features::{TaskInput, visit_features};
use tokenwise::domain::learning::RoutingTable;
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::{Limits, RouteRequest, decide};

const BASE: &str = "A bakery sells muffins for $3 each and cookies for $1.50 each. On Monday it \
sold 48 muffins and twice as many cookies. On Tuesday it sold 25% fewer muffins than Monday and \
30 more cookies. Each muffin costs $1.20 to make. How much profit did it make in total? ";

fn task_of(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + BASE.len());
    while s.len() < bytes {
        s.push_str(BASE);
    }
    s.truncate(bytes);
    s
}

fn bench(c: &mut Criterion) {
    let model = Arc::new(ComplexityModel::bundled().expect("bundled model"));
    let policy = Arc::new(Policy::embedded().expect("embedded policy"));
    let table = RoutingTable::build(policy, &model.calibration, &HashMap::new(), None);
    let limits = Limits::default();

    let mut g = c.benchmark_group("hot_path");
    for size in [256usize, 2048, 16 * 1024] {
        let task = task_of(size);
        g.throughput(Throughput::Bytes(size as u64));
        let input = TaskInput {
            text: &task,
            workflow: "gsm8k",
            ..Default::default()
        };
        g.bench_with_input(BenchmarkId::new("features", size), &input, |b, input| {
            b.iter(|| {
                let mut acc = 0.0f32;
                visit_features(black_box(input), |i, v| acc += i as f32 * v);
                acc
            })
        });
        g.bench_with_input(BenchmarkId::new("complexity", size), &input, |b, input| {
            b.iter(|| model.complexity(black_box(input)))
        });
        let req = RouteRequest {
            task: &task,
            workflow: "gsm8k",
            ..Default::default()
        };
        g.bench_with_input(BenchmarkId::new("route_decision", size), &req, |b, req| {
            b.iter(|| decide(&model, &table, &limits, black_box(req), 0.5))
        });
    }
    g.finish();
}

/// Route through engines on each store (Route reads only the snapshot, so the store must not
/// matter), and one Feedback applied end to end (verify, record, fold, re-plan, publish).
fn by_store(c: &mut Criterion) {
    use tokenwise::domain::decision::Signer;
    use tokenwise::engine::Engine;
    use tokenwise::engine::feedback::FeedbackInput;
    use tokenwise::store::{MemoryStore, OutageBuffer, RedisStore, StateStore};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let model = Arc::new(ComplexityModel::bundled().expect("bundled model"));
    let policy = Arc::new(Policy::embedded().expect("embedded policy"));
    let url =
        std::env::var("TOKENWISE_BENCH_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut stores: Vec<(&str, Arc<dyn StateStore>)> =
        vec![("memory", Arc::new(MemoryStore::new()))];
    let prefix = format!("tw-bench-{}", std::process::id());
    match RedisStore::new(&url, &prefix, std::time::Duration::from_millis(500)) {
        Ok(r) if rt.block_on(r.ping()).is_ok() => stores.push(("redis", Arc::new(r))),
        _ => eprintln!("no Redis at {url}: benchmarking the memory store only"),
    }
    let task = task_of(2048);
    let req = RouteRequest {
        task: &task,
        workflow: "gsm8k",
        ..Default::default()
    };
    let mut g = c.benchmark_group("by_store");
    for (name, store) in stores {
        let engine = Engine::builder(
            model.clone(),
            policy.clone(),
            Signer::new(b"bench").expect("signer"),
        )
        .decision_ttl_ms(60_000)
        .store(store, OutageBuffer::in_memory(0))
        .build();
        // Some learned state first, so plans are not the cold ones.
        let mut nonce = 0u64;
        let mut feed = |engine: &Engine| {
            nonce += 1;
            let (_, id) = engine.route(&req, 0.5, 1_000, nonce).expect("route");
            let input = FeedbackInput {
                decision_id: &id,
                score: 1.0,
                input_tokens: Some(500),
                output_tokens: Some(100),
                ..Default::default()
            };
            rt.block_on(engine.feedback(&input, 2_000))
                .expect("feedback");
        };
        for _ in 0..200 {
            feed(&engine);
        }
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("route_2KB", name), |b| {
            let mut route_nonce = 1u64 << 40;
            b.iter(|| {
                route_nonce += 1;
                engine.route(black_box(&req), 0.5, 1_000, route_nonce)
            })
        });
        g.bench_function(BenchmarkId::new("feedback", name), |b| {
            b.iter(|| feed(&engine))
        });
    }
    g.finish();
    // Leave nothing behind in a shared Redis.
    if let Ok(client) = redis::Client::open(url.as_str())
        && let Ok(mut con) = client.get_connection()
    {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:c:*"))
            .query(&mut con)
            .unwrap_or_default();
        keys.push(format!("{prefix}:events"));
        keys.push(format!("{prefix}:events:base"));
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut con);
    }
}

/// What the books add to Route: decide + sign (the path before budgets and the ledger) against
/// the full in-process Route (decide, budget check, reservation, ledger count, sign), with no
/// budgets and with two covering budgets.
fn books(c: &mut Criterion) {
    use tokenwise::domain::decision::Signer;
    use tokenwise::engine::Engine;

    let model = Arc::new(ComplexityModel::bundled().expect("bundled model"));
    let budgets = format!(
        "{}\n[[budgets]]\nperiod = \"month\"\nhard_limit_usd = 1000000\n\
         [[budgets]]\nteam = \"search\"\nperiod = \"day\"\nsoft_limit_usd = 100000\n",
        tokenwise::domain::policy::EMBEDDED_POLICY
    );
    let task = task_of(2048);
    let req = RouteRequest {
        task: &task,
        workflow: "gsm8k",
        team: "search",
        ..Default::default()
    };
    let mut g = c.benchmark_group("books");
    g.throughput(Throughput::Elements(1));
    for (name, text) in [
        (
            "no_budgets",
            tokenwise::domain::policy::EMBEDDED_POLICY.to_string(),
        ),
        ("two_budgets", budgets),
    ] {
        let policy = Arc::new(Policy::parse(&text).expect("policy"));
        let engine = Engine::builder(
            model.clone(),
            policy,
            Signer::new(b"bench").expect("signer"),
        )
        .decision_ttl_ms(60_000)
        .build();
        let mut nonce = 0u64;
        let (table, limits) = (engine.table(), Limits::default());
        g.bench_function(BenchmarkId::new("decide", name), |b| {
            b.iter(|| decide(engine.model(), &table, &limits, black_box(&req), 0.5))
        });
        g.bench_function(BenchmarkId::new("route_with_books", name), |b| {
            b.iter(|| {
                nonce += 1;
                engine
                    .route(black_box(&req), 0.5, 1_000, nonce)
                    .expect("route")
            })
        });
    }
    g.finish();
}

/// Route through the engine (decide, books, sign) from N threads at once: the time per call
/// criterion reports is wall time / calls, so CPU per call is that × min(N, cores). Contention
/// on shared state shows as CPU per call growing with N.
fn contention(c: &mut Criterion) {
    use tokenwise::domain::decision::Signer;
    use tokenwise::engine::Engine;

    let model = Arc::new(ComplexityModel::bundled().expect("bundled model"));
    let policy = Arc::new(Policy::embedded().expect("embedded policy"));
    let engine = Arc::new(
        Engine::builder(model, policy, Signer::new(b"bench").expect("signer"))
            .decision_ttl_ms(60_000)
            .build(),
    );
    let task = Arc::new(task_of(256));
    let mut g = c.benchmark_group("contention");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2, 4, 8] {
        g.bench_function(BenchmarkId::new("route_256B_threads", threads), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(threads as u64);
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (engine, task) = (engine.clone(), task.clone());
                        s.spawn(move || {
                            let teams = ["search", "ads", "support", "legal"];
                            for i in 0..per {
                                let req = RouteRequest {
                                    task: &task,
                                    workflow: "gsm8k",
                                    team: teams[(t + i as usize) % teams.len()],
                                    ..Default::default()
                                };
                                black_box(
                                    engine
                                        .route(&req, 0.5, 1_000, (t as u64) << 40 | i)
                                        .expect("route"),
                                );
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// Workflow discovery on real prompts (the bundled data): the unlabelled 2 KB decision, which
/// sketches the task and places it in the nearest of the scope's clusters, beside the labelled
/// one; one cluster refit of a full window (k = 8, as the fold runs it) and its memory.
fn discovery(c: &mut Criterion) {
    use tokenwise::domain::clusters::{ClusterModel, FitOptions, Sketch, sketch};
    use tokenwise::domain::learning::{
        CLUSTER_MAX_K, CLUSTER_REFIT_EVERY, CLUSTER_WINDOW, ScopeEvidence,
    };
    let records = tokenwise::offline::dataset::load(
        "models/data/routellm-train.jsonl.gz",
        tokenwise::offline::dataset::Split::Train,
    )
    .expect("bundled data");
    let sketches: Vec<Sketch> = records
        .iter()
        .take(CLUSTER_WINDOW)
        .map(|r| sketch(&r.prompt))
        .collect();
    let model = Arc::new(ComplexityModel::bundled().expect("bundled model"));
    let policy = Arc::new(Policy::embedded().expect("embedded policy"));
    let mut evidence = ScopeEvidence::default();
    for s in &sketches {
        evidence.clusters.observe(&s.0, Default::default());
    }
    let fitted = evidence.clusters.model.clone().expect("clusters fitted");
    eprintln!(
        "clusters: {} fitted, {} bytes",
        fitted.ids().count(),
        fitted.memory_bytes()
    );
    let scopes: HashMap<String, ScopeEvidence> = [("default".to_string(), evidence)].into();
    let table = RoutingTable::build(policy, &model.calibration, &scopes, None);
    let limits = Limits::default();
    let task = task_of(2048);
    let mut g = c.benchmark_group("discovery");
    for (name, workflow) in [("labelled", "gsm8k"), ("unlabelled", "")] {
        let req = RouteRequest {
            task: &task,
            workflow,
            ..Default::default()
        };
        g.bench_with_input(
            BenchmarkId::new("route_decision_2KB", name),
            &req,
            |b, req| b.iter(|| decide(&model, &table, &limits, black_box(req), 0.5)),
        );
    }
    g.bench_function("sketch_2KB", |b| b.iter(|| sketch(black_box(&task))));
    g.sample_size(10);
    let opts = FitOptions {
        k: CLUSTER_MAX_K,
        n_runs: 1,
        ..FitOptions::default()
    };
    g.bench_function("refit_window", |b| {
        b.iter(|| ClusterModel::fit(&sketches, &opts, Some(&fitted)))
    });
    // The Feedback fold's side of a refit: one unlabelled outcome that completes a refit
    // interval, so a fit starts (its rows prepared) and takes its first Lloyd step; the fit's
    // other steps ride on the following unlabelled outcomes, and the one that ends it teaches
    // every remembered outcome again to its cluster.
    let mut taught = ScopeEvidence::default();
    let more: Vec<Sketch> = records
        .iter()
        .skip(CLUSTER_WINDOW)
        .take(CLUSTER_REFIT_EVERY)
        .map(|r| sketch(&r.prompt))
        .collect();
    let shape = |i: usize| tokenwise::domain::learning::TaskShape {
        workflow: Arc::from(""),
        band: (i % 20) as u8,
        gap: 0.0,
        input_tokens: 500,
        output_tokens: 200,
    };
    let all: Vec<&Sketch> = sketches.iter().chain(&more).collect();
    let (last, before) = all.split_last().expect("sketches");
    for (i, s) in before.iter().enumerate() {
        let tier = if i % 3 == 0 { "premium" } else { "small" };
        taught.observe_task("ads", tier, shape(i), (i % 2) as f64, &s.0, None);
    }
    g.bench_function("refit_and_relearn_feedback", |b| {
        b.iter_batched(
            || taught.clone(),
            |mut ev| {
                ev.observe_task("ads", "small", shape(0), 1.0, &last.0, None);
                ev
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// One Feedback's re-plan of its scope (what the fold runs under its lock after folding the
/// outcome) as the scope grows: `w` workflows in families of 8, spread over `t` teams, each
/// with recent outcomes on every tier.
fn replan(c: &mut Criterion) {
    use tokenwise::domain::learning::{ScopeEvidence, TaskShape};
    let model = Arc::new(ComplexityModel::bundled().expect("bundled model"));
    let policy = Arc::new(Policy::embedded().expect("embedded policy"));
    let tiers: Vec<String> = policy.tiers.iter().map(|t| t.name.clone()).collect();
    let mut g = c.benchmark_group("replan");
    g.sample_size(10);
    for (w, t) in [(16usize, 1usize), (64, 1), (256, 1), (1024, 1), (1024, 8)] {
        let mut evidence = ScopeEvidence::default();
        for i in 0..(w * 4).max(2048) {
            let shape = TaskShape {
                workflow: Arc::from(format!("fam{}/w{}", (i % w) / 8, i % w).as_str()),
                band: (i * 7 % 20) as u8,
                gap: 0.0,
                input_tokens: 500,
                output_tokens: 200,
            };
            let tier = &tiers[i % tiers.len()];
            let team = format!("team{}", i % t);
            evidence.observe_task(&team, tier, shape, (i % 3 % 2) as f64, &[], None);
        }
        let scopes: HashMap<String, ScopeEvidence> =
            [("default".to_string(), evidence.clone())].into();
        let table = RoutingTable::build(policy.clone(), &model.calibration, &scopes, None);
        g.bench_function(BenchmarkId::new("feedback", format!("{w}w_{t}t")), |b| {
            b.iter(|| table.with_scope("default", &model.calibration, black_box(&evidence)))
        });
    }
    g.finish();
}

criterion_group!(
    benches, bench, by_store, books, contention, discovery, replan
);
criterion_main!(benches);
