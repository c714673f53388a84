//! The monitoring kit of `deploy/`: the Grafana dashboard, the Prometheus alert rules and their
//! PrometheusRule twin. Every PromQL expression may only read what the server exports (the
//! pinned exposition `src/testdata/metrics.txt` plus the scrape-time gauges of a live server),
//! and `promtool` checks the rules, runs their unit tests and parses every dashboard query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::TestServer;
use tokenwise::domain::policy::Policy;
use tokenwise::domain::routing::Limits;
use tokenwise::grpc::pb::RouteRequest;

const DASHBOARD: &str = "deploy/grafana/tokenwise.json";
const RULES: &str = "deploy/prometheus/tokenwise-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/tokenwise-rules.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/k8s/monitoring/prometheus-rule.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// A metric type as the exposition's `# TYPE` lines give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// What the server exports: each family's type, and each sample name (as Prometheus stores
/// it: `_total` on counters, `_bucket`/`_sum`/`_count` on histograms) with its family's type.
#[derive(Default)]
struct Exported {
    families: BTreeMap<String, Type>,
    samples: BTreeMap<String, Type>,
}

impl Exported {
    fn add(&mut self, exposition: &str) {
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                panic!("malformed TYPE line: {line}");
            };
            let kind = match kind {
                "counter" => Type::Counter,
                "gauge" => Type::Gauge,
                "histogram" => Type::Histogram,
                other => panic!("unexpected metric type {other} of {name}"),
            };
            self.families.insert(name.to_string(), kind);
        }
        for line in exposition
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let name = line
                .split(['{', ' '])
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| panic!("malformed sample line: {line:?}"));
            let family = [
                name,
                name.strip_suffix("_total").unwrap_or(""),
                name.strip_suffix("_bucket").unwrap_or(""),
                name.strip_suffix("_count").unwrap_or(""),
                name.strip_suffix("_sum").unwrap_or(""),
                name.strip_suffix("_created").unwrap_or(""),
            ]
            .into_iter()
            .find_map(|f| self.families.get(f).copied())
            .unwrap_or_else(|| panic!("sample {name} of no declared family"));
            self.samples.insert(name.to_string(), family);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The pinned exposition of the books' families, plus what a live server exports at scrape
/// time (quality per scope, budgets, store health, calls): those families have no series, and
/// so no lines, until a server has scopes, budgets and feedback.
async fn exported() -> Exported {
    let mut out = Exported::default();
    out.add(include_str!("../../src/testdata/metrics.txt"));
    let policy = format!(
        "{}\n[[budgets]]\nteam = \"cheap\"\nperiod = \"month\"\nhard_limit_usd = 1.0\n",
        crate::common::two_tier_policy("cheap", "rich")
    );
    let server = TestServer::with_policy(Policy::parse(&policy).unwrap(), Limits::default()).await;
    let mut c = server.router().await;
    let d = c
        .route(RouteRequest {
            task: "word ".repeat(80),
            workflow: "faq".into(),
            team: "cheap".into(),
            hints: None,
        })
        .await
        .unwrap()
        .into_inner();
    c.feedback(crate::common::feedback_req(&d.decision_id, 1.0))
        .await
        .unwrap();
    crate::common::eventually("the feedback reaches the realized quality", || async {
        server
            .metrics
            .render_with(&server.engine, now_ms())
            .contains("tokenwise_realized_quality{")
    })
    .await;
    out.add(&server.metrics.render_with(&server.engine, now_ms()));
    server.stop().await;
    for family in [
        "tokenwise_realized_quality",
        "tokenwise_quality_bar",
        "tokenwise_budget_used_usd",
        "tokenwise_budget_remaining_usd",
        "tokenwise_store_up",
    ] {
        assert!(out.families.contains_key(family), "no {family} exported");
    }
    out
}

/// Every PromQL expression of the dashboard: its panels' queries and its template variables'.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default().to_string();
            out.push((
                format!(
                    "panel {:?} {}",
                    p["title"].as_str().unwrap_or_default(),
                    t["refId"]
                ),
                expr,
            ));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or_default();
            // `label_values(selector, label)`: the selector is PromQL.
            let selector = q
                .strip_prefix("label_values(")
                .and_then(|s| s.rsplit_once(','))
                .map_or(q, |(s, _)| s);
            out.push((format!("variable {}", v["name"]), selector.to_string()));
        }
    }
    out
}

/// Every `expr` of a rules file (one line, or a `|` block of more-indented lines), by alert.
fn rule_exprs(rules: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = rules.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        }
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        let expr = if rest.starts_with('|') || rest.starts_with('>') {
            let indent = line.len() - trimmed.len();
            lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            rest.trim_matches(['"', '\'']).to_string()
        };
        out.push((format!("alert {alert}"), expr));
    }
    out
}

/// Where each `tokenwise_…` identifier starts in `text`, and the identifier.
fn metric_names(text: &str) -> Vec<(usize, &str)> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices("tokenwise_")
        .filter(|(at, _)| !text[..*at].ends_with(word))
        .map(|(at, _)| {
            let len = text[at..].find(|c| !word(c)).unwrap_or(text.len() - at);
            (at, &text[at..at + len])
        })
        .collect()
}

/// The metric the first argument of each call of `function` in `expr` reads.
fn read_by<'a>(expr: &'a str, function: &str) -> Vec<&'a str> {
    let call = format!("{function}(");
    expr.match_indices(&call)
        .filter(|(at, _)| !expr[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .filter_map(|(at, _)| metric_names(&expr[at..]).first().map(|(_, n)| *n))
        .collect()
}

/// Problems of one expression: metrics not exported, or read with a function of another type.
fn check_expr(exported: &Exported, what: &str, expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (_, name) in metric_names(expr) {
        if !exported.samples.contains_key(name) {
            problems.push(format!(
                "{what}: {name} is not exported (known: {:?})",
                exported.samples.keys().collect::<Vec<_>>()
            ));
        }
    }
    let type_of = |name: &str| exported.samples.get(name).copied();
    for f in ["rate", "irate", "increase"] {
        for name in read_by(expr, f) {
            if type_of(name) == Some(Type::Gauge) {
                problems.push(format!("{what}: {f}() of the gauge {name}"));
            }
        }
    }
    for f in ["delta", "idelta", "deriv"] {
        for name in read_by(expr, f) {
            if type_of(name).is_some_and(|t| t != Type::Gauge) {
                problems.push(format!("{what}: {f}() of {name}, not a gauge"));
            }
        }
    }
    for name in read_by(expr, "histogram_quantile") {
        if !(name.ends_with("_bucket") && type_of(name) == Some(Type::Histogram)) {
            problems.push(format!("{what}: histogram_quantile() of {name}"));
        }
    }
    problems
}

#[test]
fn the_dashboard_parses_and_every_panel_has_a_title_and_a_query() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        d["schemaVersion"]
    );
    let vars = d["templating"]["list"]
        .as_array()
        .expect("template variables");
    let datasource = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    for name in ["team", "workflow"] {
        assert!(vars.iter().any(|v| v["name"] == name), "no {name} variable");
    }
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("a panel id")),
            "{title}: id taken"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets.iter().chain([p]) {
            // Every query goes through the templated datasource.
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {t}");
        }
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without an expression: {t}"
            );
        }
    }
    // The panels the issue asks for.
    for title in [
        "Spend by team",
        "Spend by workflow",
        "Cost per completed output",
        "Quality vs bar",
        "Tier mix",
        "Budget use",
        "Route latency",
    ] {
        assert!(
            panels.iter().any(|p| p["title"] == title),
            "no panel {title:?}"
        );
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_read_is_exported() {
    let exported = exported().await;
    let d = dashboard();
    let rules = read(RULES);
    let exprs: Vec<(String, String)> = dashboard_exprs(&d)
        .into_iter()
        .chain(rule_exprs(&rules))
        .collect();
    assert!(rule_exprs(&rules).len() >= 6, "{:?}", rule_exprs(&rules));
    let mut problems = Vec::new();
    for (what, expr) in &exprs {
        problems.extend(check_expr(&exported, what, expr));
    }
    // Metric names in descriptions and annotations name real families or samples too.
    for path in [DASHBOARD, RULES, RULE_TESTS, PROMETHEUS_RULE] {
        let text = read(path);
        for (_, name) in metric_names(&text) {
            if !exported.samples.contains_key(name) && !exported.families.contains_key(name) {
                problems.push(format!("{path} names {name}, which is not exported"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check itself catches the mistakes it is for.
    let gauge_rate = "rate(tokenwise_spend_usd[5m])";
    assert!(!check_expr(&exported, "", gauge_rate).is_empty());
    assert!(!check_expr(&exported, "", "tokenwise_decisions").is_empty());
    assert!(
        !check_expr(
            &exported,
            "",
            "histogram_quantile(0.5, rate(tokenwise_route_duration_seconds_sum[5m]))"
        )
        .is_empty()
    );
}

/// The PrometheusRule's `spec`, de-indented: the rules file it carries.
fn prometheus_rule_spec() -> String {
    let manifest = read(PROMETHEUS_RULE);
    assert!(manifest.contains("\napiVersion: monitoring.coreos.com/v1\n"));
    assert!(manifest.contains("\nkind: PrometheusRule\n"));
    let (_, spec) = manifest.split_once("\nspec:\n").expect("a top-level spec");
    spec.lines()
        .map(|l| {
            if l.trim().is_empty() {
                ""
            } else {
                l.strip_prefix("  ")
                    .unwrap_or_else(|| panic!("{PROMETHEUS_RULE}: {l:?} is outside spec"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines that carry YAML content: no blank lines, no whole-line comments, no trailing blanks.
fn content(yaml: &str) -> Vec<&str> {
    yaml.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn the_prometheus_rule_carries_exactly_the_rules_file() {
    let spec = prometheus_rule_spec();
    let rules = read(RULES);
    let (spec, rules) = (content(&spec), content(&rules));
    assert!(rules.first() == Some(&"groups:"), "{rules:?}");
    if spec != rules {
        let at = spec
            .iter()
            .zip(&rules)
            .position(|(a, b)| a != b)
            .unwrap_or(spec.len().min(rules.len()));
        panic!(
            "{PROMETHEUS_RULE} differs from {RULES} at content line {}: {:?} vs {:?}; regenerate it (its header says how)",
            at + 1,
            spec.get(at),
            rules.get(at)
        );
    }
    // The overlay applies the base and the rule; the base stays free of the operator's CRDs.
    let listed = |file: &str, entry: &str| {
        read(file)
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("- {entry}")))
    };
    let overlay = "deploy/k8s/monitoring/kustomization.yaml";
    assert!(
        listed(overlay, "prometheus-rule.yaml") && listed(overlay, "../"),
        "{overlay}"
    );
    assert!(!listed(
        "deploy/k8s/kustomization.yaml",
        "prometheus-rule.yaml"
    ));
}

fn promtool_ok() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn tail(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `promtool`, installed with Debian's `prometheus` package where the machine lacks it (as root,
/// as `.ci/run` installs redis-server). Never a silent skip: without it the test fails saying
/// what to install.
fn promtool() -> &'static Result<(), String> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    FOUND.get_or_init(|| {
        if promtool_ok() {
            return Ok(());
        }
        eprintln!("promtool is not installed: installing Debian's prometheus package");
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
        };
        let install = apt(&["update"]).and_then(|o| {
            if o.status.success() {
                apt(&["install", "-y", "--no-install-recommends", "prometheus"])
            } else {
                Ok(o)
            }
        });
        match install {
            Ok(_) if promtool_ok() => Ok(()),
            Ok(o) => Err(format!("apt-get failed ({}):\n{}", o.status, tail(&o))),
            Err(e) => Err(format!("apt-get could not run: {e}")),
        }
        .map_err(|e| {
            format!(
                "promtool is needed to check the alert rules and could not be installed: {e}\n\
                 Install it (`apt-get install -y --no-install-recommends prometheus` on Debian, \
                 or a Prometheus release's promtool on PATH) and run the test again."
            )
        })
    })
}

fn run_promtool(args: &[&str], path: &Path) -> String {
    if let Err(e) = promtool() {
        panic!("{e}");
    }
    let out = Command::new("promtool")
        .args(args)
        .arg(path)
        .current_dir(repo())
        .output()
        .expect("run promtool");
    let text = tail(&out);
    assert!(
        out.status.success(),
        "promtool {} {} failed:\n{text}",
        args.join(" "),
        path.display()
    );
    text
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let dir = std::env::temp_dir().join(format!("tw-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = run_promtool(&["check", "rules"], &repo().join(RULES));
    assert!(check.contains("SUCCESS"), "{check}");
    // The PrometheusRule's spec is a valid rules file by itself.
    let spec = dir.join("prometheus-rule-spec.yaml");
    std::fs::write(&spec, prometheus_rule_spec()).unwrap();
    run_promtool(&["check", "rules"], &spec);
    run_promtool(&["test", "rules"], &repo().join(RULE_TESTS));

    // Every alert has a unit test.
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    for (what, _) in rule_exprs(&rules) {
        let alert = what.trim_start_matches("alert ");
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{RULE_TESTS} has no case for {alert}"
        );
    }

    // Every dashboard query parses as PromQL, with Grafana's variables filled in.
    let mut records = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs(&dashboard()).iter().enumerate() {
        let mut expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1d")
            .replace("$__interval", "1m");
        for v in ["datasource", "team", "workflow", "scope", "budget"] {
            expr = expr.replace(&format!("${v}"), ".*");
        }
        assert!(!expr.contains('$'), "an unknown variable in {expr}");
        records.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: |\n          {}\n",
            expr.replace('\n', "\n          ")
        ));
    }
    let queries = dir.join("dashboard-queries.yaml");
    std::fs::write(&queries, records).unwrap();
    run_promtool(&["check", "rules"], &queries);
    let _ = std::fs::remove_dir_all(&dir);
}
