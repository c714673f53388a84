//! Hot-path benchmarks: feature extraction, scoring and the full in-process Route decision.
//!
//! Run: `cargo bench --bench route` (add `-- --quick` for a short run). Target (design notes):
//! classify + decide ≤ 20 µs median for a 2 KB task on one core.

#![allow(clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokenwise::classifier::ComplexityModel;
use tokenwise::features::{TaskInput, visit_features};
use tokenwise::learning::RoutingTable;
use tokenwise::policy::Policy;
use tokenwise::routing::{Limits, RouteRequest, Router};

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
    let router = Router::new(model.clone(), table, Limits::default());

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
            b.iter(|| router.route(black_box(req), 0.5))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
