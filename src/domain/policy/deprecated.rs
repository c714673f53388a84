//! The deprecated `[store]` table of a policy file. Deployment settings are not policy: the
//! store lives in the deployment config (`serve` flags, environment, `--deployment` file). A
//! policy file that still has a `[store]` table keeps working: at startup `serve` reads it as
//! deployment config (with a warning) when the deployment config names no store; everywhere
//! else it is ignored. The policy itself — its version, its text in the shared history — is
//! the file without that table, so replicas whose files differ only there end on one version.

use std::borrow::Cow;

use super::PolicyError;

/// A policy text split into the policy and the deprecated `[store]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<'a> {
    /// The text without the `[store]` table: what is versioned, kept and served. Borrowed
    /// (byte-identical) when there was no such table.
    pub policy: Cow<'a, str>,
    /// The `[store]` table, parsed (not validated: that is the deployment config's work).
    pub store: Option<toml::Table>,
    /// Where the table was in the text: its first byte and its length.
    cut: Option<(usize, usize)>,
}

impl Split<'_> {
    /// The offset in the original text of byte `at` of [`Split::policy`].
    pub(super) fn to_original(&self, at: usize) -> usize {
        match self.cut {
            Some((start, len)) if at >= start => at + len,
            _ => at,
        }
    }
}

/// Whether `line` is the header of the `[store]` table (white space and a comment allowed).
fn is_store_header(line: &str) -> bool {
    line.trim()
        .strip_prefix("[store]")
        .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
}

/// Whether `line` opens a table or an array of tables (`[x]`, `[[x]]`). A line inside a
/// multi-line array of the `[store]` table never starts with `[` in a valid store table (its
/// values are strings and numbers).
fn is_header(line: &str) -> bool {
    line.trim_start().starts_with('[')
}

/// Splits off the `[store]` table: from the comment and blank lines just above its header to
/// the next table's header, leaving the blank and comment lines just above that one to it (they
/// introduce it). Text without a `[store]` table comes back as it is.
pub fn split_store(text: &str) -> Result<Split<'_>, PolicyError> {
    let lines: Vec<(usize, &str)> = text
        .split_inclusive('\n')
        .scan(0, |at, l| {
            let start = *at;
            *at += l.len();
            Some((start, l))
        })
        .collect();
    let Some(first) = lines.iter().position(|(_, l)| is_store_header(l)) else {
        return Ok(Split {
            policy: Cow::Borrowed(text),
            store: None,
            cut: None,
        });
    };
    let mut end = lines[first + 1..]
        .iter()
        .position(|(_, l)| is_header(l))
        .map_or(lines.len(), |i| first + 1 + i);
    if end < lines.len() {
        while end > first + 1 {
            let l = lines[end - 1].1.trim();
            if l.is_empty() || l.starts_with('#') {
                end -= 1;
            } else {
                break;
            }
        }
    }
    // The comment lines right above the header introduce the table, and the blank lines above
    // them set it apart: they go with it, so a file that had a table appended is, without it,
    // the file it was before. A comment block a blank line away is the text before's.
    let mut top = first;
    while top > 0 && lines[top - 1].1.trim().starts_with('#') {
        top -= 1;
    }
    while top > 0 && lines[top - 1].1.trim().is_empty() {
        top -= 1;
    }
    let start = lines[top].0;
    let stop = lines.get(end).map_or(text.len(), |(at, _)| *at);
    let section = &text[start..stop];
    let table: toml::Table = toml::from_str(section).map_err(|e| {
        PolicyError::new(
            "store",
            super::validate::toml_error_in(text, &e, |at| start + at),
        )
    })?;
    let store = match table.get("store") {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => toml::Table::new(),
    };
    let mut policy = String::with_capacity(text.len() - section.len());
    policy.push_str(&text[..start]);
    policy.push_str(&text[stop..]);
    Ok(Split {
        policy: Cow::Owned(policy),
        store: Some(store),
        cut: Some((start, section.len())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::Policy;
    use crate::domain::policy::tests::THREE;

    #[test]
    fn text_without_a_store_table_is_kept_byte_for_byte() {
        let s = split_store(THREE).unwrap();
        assert!(matches!(s.policy, Cow::Borrowed(_)));
        assert_eq!(s.policy, THREE);
        assert_eq!(s.store, None);
    }

    #[test]
    fn the_store_table_is_cut_out_up_to_the_next_tables_introduction() {
        let text = "[[tiers]]\nname = \"a\"\n\n[store]  # old\nkind = \"redis\"\nnodes = [\n  \"redis://a:1\",\n]\n\n# Budgets\n[[budgets]]\nteam = \"x\"\n";
        let s = split_store(text).unwrap();
        assert_eq!(
            s.policy,
            "[[tiers]]\nname = \"a\"\n\n# Budgets\n[[budgets]]\nteam = \"x\"\n"
        );
        let store = s.store.unwrap();
        assert_eq!(store["kind"].as_str(), Some("redis"));
        // At the end of the file, everything after the header goes.
        let s = split_store("a = 1\n\n# Shared state\n[store]\nkind = \"memory\"\n# tail").unwrap();
        assert_eq!(s.policy, "a = 1\n");
        // A comment a blank line above is not the table's.
        let s = split_store("a = 1\n# b = 2\n\n[store]\nkind = \"memory\"\n").unwrap();
        assert_eq!(s.policy, "a = 1\n# b = 2\n");
    }

    #[test]
    fn files_differing_only_in_their_store_table_are_one_version() {
        let with = |spill: &str| {
            format!(
                "{THREE}\n[store]\nkind = \"redis\"\nurl = \"redis://r:6379\"\nspill_file = \"{spill}\"\n"
            )
        };
        let a = Policy::parse(&with("/a.jsonl")).unwrap();
        let b = Policy::parse(&with("/b.jsonl")).unwrap();
        assert_eq!(a.version, b.version);
        assert_eq!(a.source, b.source);
        assert!(!a.source.contains("[store]"), "{}", a.source);
        // And the version is the one of the file that never had the table.
        assert_eq!(a.version, Policy::parse(THREE).unwrap().version);
        // The table is not validated here (the deployment config does that at startup)...
        assert!(Policy::parse(&format!("{THREE}\n[store]\nkind = \"etcd\"\n")).is_ok());
        // ...but it must be TOML.
        let e = Policy::parse(&format!("{THREE}\n[store]\nkind = \n")).unwrap_err();
        assert_eq!(e.path, "store", "{e}");
    }

    #[test]
    fn errors_after_a_store_table_name_the_files_own_line() {
        let text = "[store]\nkind = \"memory\"\n\n[[tiers]]\nname = 1\n";
        let e = Policy::parse(text).unwrap_err();
        assert!(e.reason.starts_with("line 5, column 8:"), "{e}");
        let e = Policy::parse("a = 1\n[store]\nkind = \n").unwrap_err();
        assert!(e.reason.starts_with("line 3, column 8:"), "{e}");
    }

    #[test]
    fn store_settings_in_another_form_are_refused_naming_the_key() {
        for text in [
            format!("store = {{ kind = \"memory\" }}\n{THREE}"),
            format!("store.kind = \"memory\"\n{THREE}"),
        ] {
            let e = Policy::parse(&text).unwrap_err();
            assert_eq!(e.path, "store", "{e}");
            assert!(e.reason.contains("deployment config"), "{e}");
        }
    }
}
