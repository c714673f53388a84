//! The layer rules of `docs/layout.md` hold in the source: the domain imports no other layer
//! (it is the ground floor; the store adapters implement its port, `domain::state`), and the
//! store imports only the domain.
//!
//! The scan is textual and strict: a path to a forbidden module anywhere in a file counts, in
//! code, test code, doc comments (an intra-doc link is a dependency too) and doctests, whether
//! spelled `crate::store::…`, `crate::{store, …}`, `tokenwise::store` or `super::…::store`
//! climbing to the crate root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// Every top-level module of the crate except the domain.
const ABOVE_DOMAIN: [&str; 7] = [
    "store", "engine", "grpc", "metrics", "report", "cli", "offline",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// How many modules deep a file under `src/` is: `domain/mod.rs` 1, `domain/books/cells.rs` 3.
/// `super::` repeated this many times from the file's top level reaches the crate root.
fn depth(rel: &Path) -> usize {
    let parts = rel.components().count();
    match rel.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs") => parts - 1,
        _ => parts,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier at the start of `s` (after spaces).
fn ident(s: &str) -> &str {
    let s = s.trim_start();
    &s[..s.find(|c| !is_ident(c)).unwrap_or(s.len())]
}

/// The first segment of each item of the use-group that `s` starts with (`{a::b, c, d::{e}}`
/// gives `a`, `c`, `d`).
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut start = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    start = i + 1;
                }
            }
            ',' if depth == 1 => {
                heads.push(ident(&s[start..i]));
                start = i + 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    heads.push(ident(&s[start..i]));
                    break;
                }
            }
            _ => {}
        }
    }
    heads
}

/// The forbidden modules that `text` (the file `depth` modules deep) names, with their line.
fn forbidden_paths(text: &str, depth: usize, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut check = |at: usize, rest: &str| {
        let rest = rest.trim_start();
        let heads = if rest.starts_with('{') {
            group_heads(rest)
        } else {
            vec![ident(rest)]
        };
        for h in heads {
            if forbidden.contains(&h) {
                found.push((line_of(at), h.to_string()));
            }
        }
    };
    for root in ["crate::", "tokenwise::"] {
        for (at, _) in text.match_indices(root) {
            if text[..at].ends_with(is_ident) {
                continue;
            }
            check(at, &text[at + root.len()..]);
        }
    }
    // `super::super::…`: a chain as long as the file is deep reaches the crate root (inside an
    // inline module it stops one short, which this flags too: stricter, never looser).
    let mut at = 0;
    while let Some(i) = text[at..].find("super::") {
        let begin = at + i;
        if text[..begin].ends_with(|c: char| is_ident(c) || c == ':') {
            at = begin + "super::".len();
            continue;
        }
        let mut end = begin;
        let mut climbs = 0;
        while text[end..].starts_with("super::") {
            end += "super::".len();
            climbs += 1;
        }
        if climbs >= depth {
            check(begin, &text[end..]);
        }
        at = end;
    }
    found
}

/// Every forbidden path in the files under `src/<layer>/`, as `file:line: module`.
fn violations(layer: &str, forbidden: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&src().join(layer), &mut files);
    assert!(!files.is_empty(), "no files under src/{layer}");
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, module) in forbidden_paths(&text, depth(rel), forbidden) {
            out.push(format!("src/{}:{line}: {module}", rel.display()));
        }
    }
    out
}

#[test]
fn the_domain_imports_no_other_layer() {
    let found = violations("domain", &ABOVE_DOMAIN);
    assert!(
        found.is_empty(),
        "the domain is the ground floor: its port (domain::state) is what the store implements; \
         move what it needs into the domain, or the code out of it:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_store_imports_only_the_domain() {
    let found = violations("store", &ABOVE_DOMAIN[1..]);
    assert!(
        found.is_empty(),
        "the store adapters implement the domain's port and import no layer but the domain:\n{}",
        found.join("\n")
    );
}

/// The scan finds each spelling of a forbidden path, and only those.
#[test]
fn the_scan_finds_every_spelling() {
    let bad = [
        ("use crate::store::StateStore;", 2),
        ("fn f(s: &dyn crate::store::StateStore) {}", 2),
        ("use crate::{domain::calendar, engine::Engine};", 2),
        (
            "use crate::{\n    domain::x,\n    offline::dataset::{self, Split},\n};",
            2,
        ),
        ("/// See [`crate::engine::Engine::route`].", 2),
        ("//! ```\n//! use tokenwise::grpc::serve;\n//! ```", 2),
        ("use super::super::metrics::Telemetry;", 2),
        ("use super::super::super::report;", 2),
    ];
    for (text, depth) in bad {
        let found = forbidden_paths(text, depth, &ABOVE_DOMAIN);
        assert_eq!(found.len(), 1, "{text:?}: {found:?}");
    }
    let found = forbidden_paths("\n\nuse crate::cli;", 2, &ABOVE_DOMAIN);
    assert_eq!(found, vec![(3, "cli".to_string())]);
    let good = [
        ("use crate::domain::state::{StateStore, StoreError};", 2),
        ("use crate::{domain::calendar, domain::labels};", 2),
        ("use super::super::store::X;", 3),
        ("use super::*;", 1),
        ("use base64::engine::general_purpose;", 2),
        ("let report = my_crate::store::x();", 2),
        ("use crate::domain::policy::split_store;", 2),
    ];
    for (text, depth) in good {
        assert_eq!(forbidden_paths(text, depth, &ABOVE_DOMAIN), [], "{text:?}");
    }
}
