//! The key file and the [`KeyRing`] it becomes. [`load_keys`] / [`parse_keys`] validate the file
//! (errors quote the key path, e.g. `keys[2].sha256: ...`); [`new_key`] mints a key and its
//! hash, [`hash_key`] hashes an existing one.
//!
//! The server knows keys only by their SHA-256, listed in the file, so the file can be reviewed
//! and shipped without leaking a key. Key material never appears in errors, logs or `Debug`
//! output.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Caller, Role};

/// Prefix of every key minted by [`new_key`]: makes keys recognisable to humans and secret
/// scanners.
pub const KEY_PREFIX: &str = "tw_";

// ---- configuration errors ----

/// A key file that could not be read or failed validation.
#[derive(Debug)]
pub enum AuthConfigError {
    /// The file could not be read.
    Read {
        /// The key file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid key file.
    Invalid {
        /// The key file, when loaded from one ([`load_keys`]); `None` from [`parse_keys`].
        file: Option<PathBuf>,
        /// Key path, e.g. `keys[2].sha256`; `<file>` for TOML syntax errors.
        path: String,
        /// What is wrong (never quotes key or hash values).
        reason: String,
    },
}

impl AuthConfigError {
    fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        AuthConfigError::Invalid {
            file: None,
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Key path of a validation error (e.g. `keys[2].sha256`); `None` for read errors.
    pub fn path(&self) -> Option<&str> {
        match self {
            AuthConfigError::Read { .. } => None,
            AuthConfigError::Invalid { path, .. } => Some(path),
        }
    }

    fn in_file(self, file: &Path) -> Self {
        match self {
            AuthConfigError::Invalid { path, reason, .. } => AuthConfigError::Invalid {
                file: Some(file.to_path_buf()),
                path,
                reason,
            },
            other => other,
        }
    }
}

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfigError::Read { file, source } => {
                write!(f, "cannot read key file {}: {source}", file.display())
            }
            AuthConfigError::Invalid {
                file: Some(file),
                path,
                reason,
            } => write!(f, "{}: {path}: {reason}", file.display()),
            AuthConfigError::Invalid {
                file: None,
                path,
                reason,
            } => write!(f, "{path}: {reason}"),
        }
    }
}

impl std::error::Error for AuthConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthConfigError::Read { source, .. } => Some(source),
            AuthConfigError::Invalid { .. } => None,
        }
    }
}

// ---- key file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    team: String,
    role: String,
    sha256: String,
}

/// The configured API keys: SHA-256 of each key → the caller it identifies.
///
/// Holds hashes only. `Debug` lists callers (name, team, role), never hashes.
#[derive(Clone)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut callers: Vec<&Caller> = self.by_hash.values().collect();
        callers.sort_by(|a, b| a.name.cmp(&b.name));
        f.debug_struct("KeyRing")
            .field("callers", &callers)
            .finish()
    }
}

/// Reads and validates a key file (the format is on [`parse_keys`]).
///
/// Errors name the file and the key path, e.g. `keys.toml: keys[2].sha256: must be 64 hex
/// characters ...`.
pub fn load_keys(path: &Path) -> Result<KeyRing, AuthConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_keys(&text).map_err(|e| e.in_file(path))
}

/// Parses and validates key-file text: one `[[keys]]` table per key:
///
/// ```toml
/// [[keys]]
/// name = "search-prod"          # for logs and the audit trail
/// team = "search"
/// role = "service"              # or "admin"
/// sha256 = "<64 hex chars: SHA-256 of the key>"
/// ```
///
/// Rejects unknown fields, an empty key list, empty or padded names and teams, roles other than
/// `service`/`admin`, hashes that are not 64 hex characters, and duplicate hashes or names.
pub fn parse_keys(text: &str) -> Result<KeyRing, AuthConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| AuthConfigError::invalid("<file>", toml_reason(text, &e)))?;
    let raw: RawKeyFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let mut path = e.path().to_string();
        let reason = toml_reason(text, &e.into_inner());
        // An unknown field's name may be a pasted key: neither the path nor the reason shows it.
        if reason.contains(UNKNOWN_FIELD) {
            path = path
                .rsplit_once('.')
                .map_or("<file>".to_string(), |(parent, _)| parent.to_string());
        }
        AuthConfigError::invalid(path, reason)
    })?;
    validate(raw)
}

fn validate(raw: RawKeyFile) -> Result<KeyRing, AuthConfigError> {
    if raw.keys.is_empty() {
        return Err(AuthConfigError::invalid(
            "keys",
            "at least one [[keys]] entry is required (to run without authentication, \
             configure no key file)",
        ));
    }
    let mut by_hash: HashMap<[u8; 32], Caller> = HashMap::with_capacity(raw.keys.len());
    let mut hash_index: HashMap<[u8; 32], usize> = HashMap::with_capacity(raw.keys.len());
    let mut name_index: HashMap<String, usize> = HashMap::with_capacity(raw.keys.len());
    for (i, key) in raw.keys.into_iter().enumerate() {
        let at = |field: &str| format!("keys[{i}].{field}");
        check_label(&at("name"), &key.name)?;
        check_label(&at("team"), &key.team)?;
        if key.team.contains(crate::domain::policy::TEAM_WORKFLOW_SEP) {
            return Err(AuthConfigError::invalid(
                at("team"),
                "must not contain \"/workflow:\" (it separates a team from a workflow in scope keys)",
            ));
        }
        if key.team == crate::domain::books::OTHER {
            // The books count teams over their cardinality cap as `other`: a key for that
            // team would read all of them.
            return Err(AuthConfigError::invalid(
                at("team"),
                format!(
                    "{:?} is reserved (the books' label for teams over the cap)",
                    crate::domain::books::OTHER
                ),
            ));
        }
        let role = Role::parse(&key.role).ok_or_else(|| {
            AuthConfigError::invalid(
                at("role"),
                if key.role.len() <= 16 && !key.role.starts_with(KEY_PREFIX) {
                    format!("must be \"service\" or \"admin\", got {:?}", key.role)
                } else {
                    "must be \"service\" or \"admin\"".to_string()
                },
            )
        })?;
        let hash = parse_sha256(&key.sha256)
            .map_err(|reason| AuthConfigError::invalid(at("sha256"), reason))?;
        if let Some(first) = name_index.get(&key.name) {
            return Err(AuthConfigError::invalid(
                at("name"),
                format!(
                    "{:?} is already used by keys[{first}]: names identify keys in logs and \
                     the audit trail",
                    key.name
                ),
            ));
        }
        if let Some(first) = hash_index.get(&hash) {
            return Err(AuthConfigError::invalid(
                at("sha256"),
                format!("same key as keys[{first}]: every entry needs its own key"),
            ));
        }
        name_index.insert(key.name.clone(), i);
        hash_index.insert(hash, i);
        by_hash.insert(
            hash,
            Caller {
                name: key.name,
                team: key.team,
                role,
            },
        );
    }
    Ok(KeyRing { by_hash })
}

fn check_label(path: &str, value: &str) -> Result<(), AuthConfigError> {
    if value.trim().is_empty() {
        return Err(AuthConfigError::invalid(path, "must not be empty"));
    }
    if value.trim() != value {
        return Err(AuthConfigError::invalid(
            path,
            format!(
                "must not have leading or trailing whitespace, got {}",
                crate::domain::labels::shown(value)
            ),
        ));
    }
    if crate::domain::labels::has_control(value) {
        return Err(AuthConfigError::invalid(
            path,
            "must not contain control characters: names reach logs and the audit trail",
        ));
    }
    Ok(())
}

/// Decodes a hex SHA-256. The error never quotes the value: a key pasted here by mistake must
/// not end up in a log.
fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    if s.starts_with(KEY_PREFIX) {
        return Err(format!(
            "looks like a key, not its hash: put the SHA-256 of the key here (`hash_key`, or \
             `printf %s \"$KEY\" | sha256sum`) and keep the key itself out of the file \
             (the {}-character value is not echoed)",
            s.len()
        ));
    }
    // Succeeds on exactly 64 hex digits of either case. Its error is not passed on: it would
    // quote the first non-hex character.
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        format!(
            "must be 64 hex characters (the SHA-256 of the key), got {} characters{}",
            s.chars().count(),
            if s.bytes().all(|b| b.is_ascii_hexdigit()) {
                ""
            } else {
                " including non-hex ones"
            }
        )
    })?;
    Ok(out)
}

/// A toml error as `line L, column C: message`. toml's own `Display` quotes the offending
/// source line, which may hold a key pasted into the file by mistake, so it is not used; serde's
/// `invalid type: string "..."` is cut down for the same reason.
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let message = redact_unknown_field(&redact_string_values(e.message()));
    crate::domain::policy::toml_at(text, e, message)
}

/// How serde starts the message of a field it does not know.
const UNKNOWN_FIELD: &str = "unknown field";

/// ``unknown field `tw_...`, expected one of …`` → `unknown field (name not shown), expected
/// one of …`.
fn redact_unknown_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix(UNKNOWN_FIELD) else {
        return message.to_string();
    };
    let after = rest
        .strip_prefix(" `")
        .and_then(|r| r.find('`').map(|end| &r[end + 1..]))
        .unwrap_or("");
    format!("{UNKNOWN_FIELD} (its name is not shown: it may be key material){after}")
}

/// `invalid type: string "tw_...", expected a sequence` → `invalid type: string, expected a
/// sequence`.
fn redact_string_values(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at + MARK.len() - 2]);
        let after = &rest[at + MARK.len()..];
        rest = match after.rfind("\", ") {
            Some(end) => &after[end + 1..],
            None => match after.rfind('"') {
                Some(end) => &after[end + 1..],
                None => "",
            },
        };
    }
    out.push_str(rest);
    out
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyRing {
    /// Number of configured keys (never 0 for a validated ring).
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no keys are configured (never true for a ring from [`parse_keys`]).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The configured callers, by name.
    pub fn callers(&self) -> Vec<&Caller> {
        let mut v: Vec<&Caller> = self.by_hash.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The caller `key` identifies, looked up by the key's SHA-256 (so lookup time does not
    /// leak key prefixes).
    pub(super) fn lookup(&self, key: &str) -> Option<&Caller> {
        self.by_hash.get(&digest(key))
    }
}

// ---- keys ----

/// Mints a new API key: `tw_` + 32 random bytes in URL-safe base64 without padding (46
/// characters). Returns `(key, sha256 hex)`: hand the key to the caller, put the hash in the
/// key file.
pub fn new_key() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_key(&key);
    (key, hash)
}

/// SHA-256 of a key (all of it, prefix included) as 64 lowercase hex characters: the value of
/// `sha256` in the key file. Same as `printf %s "$KEY" | sha256sum` (mind that `echo` would add
/// a newline).
pub fn hash_key(key: &str) -> String {
    hex::encode(digest(key))
}

#[cfg(test)]
mod tests;
