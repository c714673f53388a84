//! Workflow and team labels as every domain module reads them: the default workflow, families
//! (`a/b` → `a`) and the longest label accepted.

/// The workflow an empty label means.
pub const DEFAULT_WORKFLOW: &str = "default";

/// Longest workflow, team or task-type label accepted, bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// The workflow a label stands for: an empty label is [`DEFAULT_WORKFLOW`].
pub fn workflow_key(workflow: &str) -> &str {
    if workflow.is_empty() {
        DEFAULT_WORKFLOW
    } else {
        workflow
    }
}

/// The family of a workflow: its part before the first `/` or `.`; `None` without one.
pub fn family_of(workflow: &str) -> Option<&str> {
    let family = workflow.split(['/', '.']).next()?;
    (!family.is_empty() && family.len() < workflow.len()).then_some(family)
}

/// Whether `s` holds a control character (a newline, an escape, DEL…): such text could forge a
/// log line or drive a terminal, so labels refuse it.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// `s` fit for a terminal or a log: each control character written as its escape (`\n`,
/// `\u{1b}`), the rest as it is.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !has_control(s) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Longest stretch of caller text an error message repeats, characters.
pub const MAX_ECHO_CHARS: usize = 64;

/// Caller text as an error message repeats it: quoted, control characters escaped, and cut at
/// [`MAX_ECHO_CHARS`] with its full length said (a 200 KB label comes back as 64 characters).
pub fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

/// See [`shown`].
pub struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(MAX_ECHO_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

#[cfg(test)]
mod echo_tests {
    use super::*;

    #[test]
    fn echoed_text_is_short_quoted_and_escaped() {
        assert_eq!(shown("search").to_string(), "\"search\"");
        assert_eq!(
            shown("a\nERROR forged\u{1b}[31m").to_string(),
            "\"a\\nERROR forged\\u{1b}[31m\""
        );
        let long = "x".repeat(200_000);
        let s = shown(&long).to_string();
        assert!(s.len() < 100 && s.ends_with("… (200000 bytes)"), "{s}");
        assert_eq!(printable("ok/label"), "ok/label");
        assert_eq!(printable("a\u{1b}]0;owned\u{7}"), "a\\u{1b}]0;owned\\u{7}");
    }
}
