//! The binary as a command-line tool: how it ends when things go wrong around it.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

fn tokenwise() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokenwise"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // `tokenwise eval … | head` where head has already gone: the write fails with EPIPE.
    let mut child = tokenwise()
        .args([
            "eval",
            "--data",
            "models/data/routellm-train.jsonl.gz",
            "--split",
            "holdout",
            "--cheap",
            "mixtral-8x7b-instruct",
            "--premium",
            "gpt-4-1106-preview",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_user_error_is_one_line_without_a_backtrace() {
    let out = tokenwise()
        .args([
            "eval",
            "--data",
            "/nonexistent.jsonl",
            "--cheap",
            "a",
            "--premium",
            "b",
        ])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot read /nonexistent.jsonl"),
        "{stderr}"
    );
}

/// `serve --print-deployment` with `args` and only the environment `envs`: (stdout, stderr,
/// success).
fn print_deployment(args: &[&str], envs: &[(&str, &str)]) -> (String, String, bool) {
    let out = tokenwise()
        .args(["serve", "--print-deployment"])
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn scratch(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("tw-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn deployment_settings_take_the_flag_then_the_environment_then_the_file() {
    let file = scratch(
        "deployment.toml",
        "[server]\nlisten = \"127.0.0.1:7001\"\nmetrics_listen = \"off\"\nrequest_timeout_ms = 900\n\
         [store]\nurl = \"redis://file:6379\"\nprefix = \"file\"\nspill_file = \"/file.jsonl\"\n",
    );
    let (out, err, ok) = print_deployment(
        &[
            "--deployment",
            file.to_str().unwrap(),
            "--spill-file",
            "/flag.jsonl",
        ],
        &[
            ("TOKENWISE_LISTEN", "127.0.0.1:7002"),
            ("TOKENWISE_SPILL_FILE", "/env.jsonl"),
            ("TOKENWISE_STORE_PREFIX", "env"),
            ("TOKENWISE_REDIS_PASSWORD", "hunter2"),
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        "listen = 127.0.0.1:7002",  // the environment over the file
        "metrics_listen = off",     // the file over the default
        "request_timeout_ms = 900", // the file over the default
        "store = redis redis://file:6379 prefix env", // the environment over the file
        "store.spill_file = /flag.jsonl", // the flag over the environment
        "store.password_from_env = true",
        "store_source = Deployment",
    ] {
        assert!(lines.contains(&want), "{want:?} not in:\n{out}");
    }
    assert!(!out.contains("hunter2"), "{out}");
    // An unknown key is refused, named with its path.
    let bad = scratch("bad.toml", "[server]\nlistn = \"x\"\n");
    let (_, err, ok) = print_deployment(&["--deployment", bad.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(
        err.contains("server.listn") && err.contains("unknown field"),
        "{err}"
    );
    std::fs::remove_file(file).ok();
    std::fs::remove_file(bad).ok();
}

#[test]
fn a_policy_files_store_table_is_read_at_startup_with_a_deprecation_warning() {
    let policy = scratch(
        "policy.toml",
        &format!(
            "{}\n[store]\nkind = \"redis\"\nurl = \"redis://legacy:6379\"\n",
            tokenwise::domain::policy::EMBEDDED_POLICY
        ),
    );
    let secret = (
        "TOKENWISE_DECISION_SECRET",
        "q7Vv1mZ3xKp0sT9wNcR2yLbH5uJdE8aG",
    );
    let args = ["--no-auth", "--config", policy.to_str().unwrap()];
    let (out, err, ok) = print_deployment(&args, &[secret]);
    assert!(ok, "{err}");
    assert!(
        out.contains("store = redis redis://legacy:6379 prefix tokenwise"),
        "{out}"
    );
    assert!(
        out.contains("store_source = DeprecatedPolicyTable"),
        "{out}"
    );
    assert!(err.contains("WARN") && err.contains("deprecated"), "{err}");
    // The deployment config names a store: the table is ignored, still with a warning.
    let (out, err, ok) = print_deployment(
        &args,
        &[secret, ("TOKENWISE_STORE_URL", "redis://new:6379")],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("store = redis redis://new:6379 prefix tokenwise"),
        "{out}"
    );
    assert!(err.contains("ignored"), "{err}");
    std::fs::remove_file(policy).ok();
}
