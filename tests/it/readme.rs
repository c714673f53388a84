//! Every `tokenwise …` command of the shell blocks of the README and the pages of `docs/` runs, in
//! reading order, against a real `tokenwise serve` (embedded defaults, on a spare port), and exits
//! 0. The docs cannot drift from the binary without this failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The README, then the pages of `docs/` in the order the README links them: the order a reader
/// follows, and the order their commands run in.
pub const READING_ORDER: [&str; 9] = [
    "README.md",
    "docs/api.md",
    "docs/policy.md",
    "docs/decisions.md",
    "docs/learning.md",
    "docs/books.md",
    "docs/operating.md",
    "docs/proof.md",
    "docs/layout.md",
];

/// The shell lines of the README and the docs pages that call the binary, in reading order,
/// with continuation lines joined.
fn readme_commands() -> Vec<String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text: String = READING_ORDER
        .iter()
        .map(|p| std::fs::read_to_string(repo.join(p)).unwrap() + "\n")
        .collect();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        pending.push_str(line.trim_end_matches('\\'));
        if line.ends_with('\\') {
            continue;
        }
        let cmd = std::mem::take(&mut pending);
        // Comments after the command are for the reader.
        let cmd = match cmd.find("  #") {
            Some(i) => cmd[..i].trim().to_string(),
            None => cmd.trim().to_string(),
        };
        if cmd.starts_with("tokenwise ") {
            out.push(cmd);
        }
    }
    out
}

#[test]
fn every_readme_command_runs_against_a_real_server() {
    let commands = readme_commands();
    assert!(commands.len() >= 15, "{commands:?}");
    let server = Served::start();
    let addr = server.1.clone();
    let bin = Path::new(env!("CARGO_BIN_EXE_tokenwise"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Commands write files (books.csv, report.html): run them in a scratch directory that sees
    // the repository's deploy/ and models/.
    let work = std::env::temp_dir().join(format!("tw-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    for dir in ["deploy", "models"] {
        std::os::unix::fs::symlink(repo.join(dir), work.join(dir)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    for cmd in &commands {
        // The server the README's own walkthrough starts, and the second one of the replay
        // walkthrough (on its own ports), are this one.
        if cmd.starts_with("tokenwise serve") {
            continue;
        }
        let line = cmd
            .replace("127.0.0.1:50051", &addr)
            .replace("127.0.0.1:50061", &addr);
        let out = Command::new("bash")
            .args(["-c", &line])
            .current_dir(&work)
            .env("PATH", &path)
            .env("TOKENWISE_ADDR", &addr)
            .env_remove("TOKENWISE_API_KEY")
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{cmd}\n  -> {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        failures.is_empty(),
        "README commands failed:\n{}",
        failures.join("\n")
    );
}

/// A server of the binary on a spare port (embedded defaults), killed on drop.
struct Served(std::process::Child, String);

impl Served {
    fn start() -> Self {
        let addr = format!("127.0.0.1:{}", crate::common::spare_port());
        let child = Command::new(env!("CARGO_BIN_EXE_tokenwise"))
            .args(["serve", "--listen", &addr, "--metrics-listen", "off"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                up.elapsed() < Duration::from_secs(10),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child, addr)
    }

    /// `tokenwise route --json TASK`, retried while the decision explored (one tier cheaper
    /// than the rule's choice, on 5% of calls): the samples show the rule's choice.
    fn route(&self, task: &str) -> serde_json::Value {
        for _ in 0..20 {
            let out = Command::new(env!("CARGO_BIN_EXE_tokenwise"))
                .args(["route", "--addr", &self.1, "--json", task])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if d["explored"] != true {
                return d;
            }
        }
        panic!("every call explored");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's sample outputs ("Try it": the JSON of one Route and the first-calls table) are
/// what the binary prints on a fresh server: a change of the model or the policy that moves
/// them fails here until the README is updated.
#[test]
fn the_readme_samples_are_what_the_binary_prints() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let try_it = &text[text.find("## Try it").unwrap()..];
    let try_it = &try_it[..try_it.find("\n## ").unwrap()];
    let server = Served::start();

    // The JSON sample of `route --json "What is 2+2?"`.
    let start = try_it.find("```json\n").unwrap() + 8;
    let end = start + try_it[start..].find("```").unwrap();
    let sample: serde_json::Value = serde_json::from_str(&try_it[start..end]).unwrap();
    let got = server.route("What is 2+2?");
    let round = |v: &serde_json::Value, digits: i32| {
        let f = 10f64.powi(digits);
        (v.as_f64().unwrap() * f).round() / f
    };
    for key in [
        "tier",
        "model",
        "fallback_tier",
        "reason",
        "policy_version",
        "scope",
        "explored",
    ] {
        assert_eq!(got[key], sample[key], "{key}");
    }
    assert_eq!(
        round(&got["complexity"], 4),
        round(&sample["complexity"], 4)
    );
    assert_eq!(got["estimated_cost_usd"], sample["estimated_cost_usd"]);
    let (gc, sc) = (
        got["candidates"].as_array().unwrap(),
        sample["candidates"].as_array().unwrap(),
    );
    assert_eq!(gc.len(), sc.len());
    for (g, s) in gc.iter().zip(sc) {
        for key in ["tier", "model", "estimated_cost_usd", "threshold"] {
            assert_eq!(g[key], s[key], "candidate {key}");
        }
        assert_eq!(
            round(&g["predicted_quality"], 3),
            round(&s["predicted_quality"], 3)
        );
    }

    // The first-calls table: | `task` | complexity | tier | reason |.
    let table = &try_it[try_it.find("| task | complexity |").unwrap()..];
    let mut rows = 0;
    for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let task = cells[0].trim_start_matches("| `").trim_end_matches('`');
        let d = server.route(task);
        assert_eq!(
            format!("{:.2}", d["complexity"].as_f64().unwrap()),
            cells[1],
            "{task}"
        );
        assert_eq!(d["tier"], cells[2], "{task}");
        rows += 1;
    }
    assert!(rows >= 5, "{rows} rows");
}
