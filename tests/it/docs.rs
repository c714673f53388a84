//! The docs stay true: the API page is generated from the proto's comments, every relative link
//! of the README and `docs/` resolves (file and heading), the README stays short, and the model
//! card names the model that ships.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::readme::READING_ORDER;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(repo().join(p.as_ref())).unwrap()
}

/// One commented element of the proto: a service, an rpc, a message, an enum or a field.
#[derive(Debug, Default)]
struct Item {
    comment: Vec<String>,
    /// For a field: `[label] type name = n`; for an rpc: `Name(Req) returns (Resp)`.
    line: String,
    children: Vec<Item>,
}

/// The proto's file comment and its top-level elements, each with the comment above it.
fn parse_proto(text: &str) -> (Vec<String>, Vec<Item>) {
    let mut header = Vec::new();
    let mut in_header = true;
    let mut comment: Vec<String> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut open: Option<Item> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(c) = line.strip_prefix("//") {
            let c = c.strip_prefix(' ').unwrap_or(c).to_string();
            if in_header {
                header.push(c);
            } else {
                comment.push(c);
            }
            continue;
        }
        in_header = false;
        if line.is_empty() || line.starts_with("syntax") || line.starts_with("package") {
            comment.clear();
            continue;
        }
        let comment = std::mem::take(&mut comment);
        if line == "}" {
            items.extend(open.take());
        } else if let Some(rest) = line.strip_suffix('{') {
            let mut item = Item {
                comment,
                line: rest.trim().to_string(),
                ..Item::default()
            };
            if let Some(empty) = line.strip_suffix("{}") {
                item.line = empty.trim().to_string();
                items.push(item);
            } else {
                open = Some(item);
            }
        } else if let Some(empty) = line.strip_suffix("{}") {
            items.push(Item {
                comment,
                line: empty.trim().to_string(),
                ..Item::default()
            });
        } else {
            let item = Item {
                comment,
                line: line.trim_end_matches(';').to_string(),
                ..Item::default()
            };
            match open.as_mut() {
                Some(o) => o.children.push(item),
                None => panic!("a proto line outside any block: {line}"),
            }
        }
    }
    (header, items)
}

fn prose(lines: &[String]) -> String {
    lines.join(" ").replace('|', "\\|")
}

/// The API reference page, rendered from the proto.
fn api_page(proto: &str) -> String {
    let (header, items) = parse_proto(proto);
    let messages: BTreeSet<String> = items
        .iter()
        .filter_map(|i| i.line.strip_prefix("message ").map(str::to_string))
        .chain(
            items
                .iter()
                .filter_map(|i| i.line.strip_prefix("enum ").map(str::to_string)),
        )
        .collect();
    let link = |t: &str| {
        if messages.contains(t) {
            format!("[`{t}`](#{})", t.to_lowercase())
        } else {
            format!("`{t}`")
        }
    };
    let mut out = String::from(
        "# API reference\n\nGenerated from [`proto/tokenwise/v1/router.proto`](../proto/tokenwise/v1/router.proto) \
         by `tests/it/docs.rs`; edit the proto's comments, then `TOKENWISE_BLESS=1 cargo test \
         api_page` rewrites this page (the test fails while the two differ).\n\n",
    );
    writeln!(out, "{}\n", header.join("\n")).unwrap();
    for s in items.iter().filter(|i| i.line.starts_with("service ")) {
        let name = s.line.trim_start_matches("service ");
        writeln!(out, "## Service `{name}`\n\n{}\n", s.comment.join("\n")).unwrap();
        for rpc in &s.children {
            let sig = rpc.line.trim_start_matches("rpc ");
            let (method, rest) = sig.split_once('(').unwrap();
            let (req, rest) = rest.split_once(')').unwrap();
            let resp = rest.split_once('(').unwrap().1.trim_end_matches(')');
            writeln!(
                out,
                "### `{name}.{method}`\n\n{} → {}\n\n{}\n",
                link(req),
                link(resp),
                rpc.comment.join("\n")
            )
            .unwrap();
        }
    }
    out.push_str("## Messages\n\n");
    for m in items.iter().filter(|i| !i.line.starts_with("service ")) {
        let (kind, name) = m.line.split_once(' ').unwrap();
        writeln!(out, "### {name}\n").unwrap();
        if !m.comment.is_empty() {
            writeln!(out, "{}\n", m.comment.join("\n")).unwrap();
        }
        if m.children.is_empty() {
            writeln!(out, "No fields.\n").unwrap();
            continue;
        }
        if kind == "enum" {
            out.push_str("| value | number | meaning |\n|---|---|---|\n");
        } else {
            out.push_str("| field | type | number | meaning |\n|---|---|---|---|\n");
        }
        for f in &m.children {
            let (decl, number) = f.line.split_once(" = ").unwrap();
            let words: Vec<&str> = decl.split_whitespace().collect();
            if kind == "enum" {
                writeln!(out, "| `{}` | {number} | {} |", words[0], prose(&f.comment)).unwrap();
                continue;
            }
            let (field, ty) = words.split_last().unwrap();
            let ty = match ty {
                [label, t] => format!("{label} {}", link(t)),
                [t] => link(t),
                _ => panic!("unexpected field declaration: {decl}"),
            };
            writeln!(
                out,
                "| `{field}` | {ty} | {number} | {} |",
                prose(&f.comment)
            )
            .unwrap();
        }
        out.push('\n');
    }
    out.trim_end().to_string() + "\n"
}

#[test]
fn the_api_page_is_generated_from_the_proto() {
    let page = api_page(&read("proto/tokenwise/v1/router.proto"));
    let path = repo().join("docs/api.md");
    if std::env::var_os("TOKENWISE_BLESS").is_some() {
        std::fs::write(&path, &page).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == page,
        "docs/api.md differs from the proto's comments: run `TOKENWISE_BLESS=1 cargo test api_page`"
    );
    for rpc in ["Router.Route", "Router.Feedback", "Admin.GetReport"] {
        assert!(page.contains(&format!("### `{rpc}`")), "{rpc}");
    }
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_relative_link_of_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    for page in READING_ORDER.iter().copied().chain(["docs/experiments.md"]) {
        let text = read(page);
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let path: PathBuf = if file.is_empty() {
                PathBuf::from(page)
            } else {
                dir.join(file)
            };
            let full = repo().join(&path);
            if !full.exists() {
                broken.push(format!("{page}: {target} (no file)"));
                continue;
            }
            if !frag.is_empty() && full.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&full).unwrap();
                if !anchors(&text).contains(frag) {
                    broken.push(format!("{page}: {target} (no heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_short_and_every_docs_page_is_linked_from_it() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines: move detail to docs/"
    );
    for page in READING_ORDER.iter().skip(1) {
        assert!(
            readme.contains(&format!("]({page}")),
            "README does not link {page}"
        );
    }
}

#[test]
fn the_model_card_names_the_bundled_model() {
    let model = tokenwise::domain::classifier::ComplexityModel::bundled().unwrap();
    let card = read("models/README.md");
    let artifact = card
        .lines()
        .find(|l| l.starts_with("| artifact |"))
        .expect("the card's artifact row");
    assert!(
        artifact.contains(&format!("version `{}`", model.version)),
        "models/README.md names another version than the bundled {}: {artifact}",
        model.version
    );
}
