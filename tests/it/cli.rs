//! The binary as a command-line tool: how it ends when things go wrong around it.

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
