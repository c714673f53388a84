//! Every `tokenwise …` command of the README's shell blocks runs, in the README's order, against
//! a real `tokenwise serve` (embedded defaults, on a spare port), and exits 0. The README cannot
//! drift from the binary without this failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The README's shell lines that call the binary, with continuation lines joined.
fn readme_commands() -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
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
    let port = common::spare_port();
    let addr = format!("127.0.0.1:{port}");
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
    let mut server = Command::new(bin)
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
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    for cmd in &commands {
        // The server the README's own walkthrough starts, and a second one, are this one.
        if cmd.starts_with("tokenwise serve") {
            continue;
        }
        let line = cmd.replace("127.0.0.1:50051", &addr);
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
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        failures.is_empty(),
        "README commands failed:\n{}",
        failures.join("\n")
    );
}
