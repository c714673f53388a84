//! The `[store]` table of the policy file: which backend holds the learned state, and how it
//! behaves in an outage. The policy parses the table; this module validates it.

use serde::Deserialize;

/// The `[store]` table as written (unknown keys rejected).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    kind: String,
    url: Option<String>,
    prefix: Option<String>,
    refresh_ms: Option<u64>,
    timeout_ms: Option<u64>,
    buffer_capacity: Option<usize>,
    spill_file: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    nodes: Option<Vec<String>>,
}

/// A `[store]` table that failed validation: the key path and why (the policy reports it as
/// one of its own errors).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{path}`: {reason}")]
pub struct StoreConfigError {
    /// Key path, e.g. `store.url`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl StoreConfigError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Where learned state lives.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    /// In this process only (the default).
    Memory,
    /// Shared through Redis.
    Redis {
        /// Connection URL, e.g. `redis://127.0.0.1:6379`.
        url: String,
        /// Key prefix of this deployment.
        prefix: String,
    },
    /// Shared through a Redis Cluster (cluster mode on): every key of the deployment carries the
    /// hash tag `{prefix}`, so they share one slot and each script's keys stay together.
    RedisCluster {
        /// Seed nodes (`redis://` or `rediss://`); the client discovers the rest.
        nodes: Vec<String>,
        /// Key prefix (and hash tag) of this deployment.
        prefix: String,
    },
}

/// The `[store]` section: state backend and its outage behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Backend.
    pub kind: StoreKind,
    /// How often each replica re-reads shared state, ms (≤ 1000).
    pub refresh_ms: u64,
    /// Deadline of one store call, ms.
    pub timeout_ms: u64,
    /// Outcomes an outage buffer without a spill file holds in memory. A Redis store always
    /// has a spill file (every buffered outcome is written there before it is acknowledged),
    /// so this bounds nothing there; kept so existing files still load.
    pub buffer_capacity: usize,
    /// This replica's write-ahead log for outcomes accepted during an outage; by default a
    /// file in the service user's state directory named after the prefix and listen address.
    pub spill_file: Option<String>,
    /// Redis ACL user (with a password from `password_file` or `TOKENWISE_REDIS_PASSWORD`).
    pub username: Option<String>,
    /// File holding the Redis password (a mounted secret): never on a command line, and not in
    /// the policy text that the store's history and audit trail keep.
    pub password_file: Option<String>,
    /// PEM file of the CA that signed the server's certificate, for a `rediss://` URL whose
    /// server the system's trust store does not know (a private CA, a self-signed server).
    pub ca_file: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            refresh_ms: 250,
            timeout_ms: 200,
            buffer_capacity: 10_000,
            spill_file: None,
            username: None,
            password_file: None,
            ca_file: None,
        }
    }
}

/// The validated `[store]` table; the defaults when the policy has none.
pub(crate) fn validate_store(raw: Option<RawStore>) -> Result<StoreConfig, StoreConfigError> {
    let Some(raw) = raw else {
        return Ok(StoreConfig::default());
    };
    let d = StoreConfig::default();
    let is_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
    let prefix = || -> Result<String, StoreConfigError> {
        let prefix = raw.prefix.clone().unwrap_or_else(|| "tokenwise".into());
        // Braces would break the cluster hash tag `{prefix}`.
        if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(StoreConfigError::new(
                "store.prefix",
                "must be non-empty without white space or braces",
            ));
        }
        Ok(prefix)
    };
    let kind = match raw.kind.as_str() {
        "memory" => StoreKind::Memory,
        "redis-cluster" => {
            let nodes = raw.nodes.clone().unwrap_or_default();
            if nodes.is_empty() {
                return Err(StoreConfigError::new(
                    "store.nodes",
                    "a redis-cluster store needs seed nodes, e.g. [\"redis://10.0.0.1:6379\"]",
                ));
            }
            if let Some((i, bad)) = nodes.iter().enumerate().find(|(_, n)| !is_url(n)) {
                return Err(StoreConfigError::new(
                    format!("store.nodes[{i}]"),
                    format!("must be a redis:// or rediss:// URL, got {bad:?}"),
                ));
            }
            if raw.ca_file.is_some() && !nodes.iter().all(|n| n.starts_with("rediss://")) {
                return Err(StoreConfigError::new(
                    "store.ca_file",
                    "needs rediss:// (TLS) nodes; a redis:// connection is not encrypted",
                ));
            }
            StoreKind::RedisCluster {
                nodes,
                prefix: prefix()?,
            }
        }
        "redis" => {
            let url = raw.url.clone().unwrap_or_default();
            if !is_url(&url) {
                return Err(StoreConfigError::new(
                    "store.url",
                    format!("must be a redis:// or rediss:// URL, got {url:?}"),
                ));
            }
            let prefix = prefix()?;
            if raw.ca_file.is_some() && !url.starts_with("rediss://") {
                return Err(StoreConfigError::new(
                    "store.ca_file",
                    "needs a rediss:// (TLS) url; a redis:// connection is not encrypted",
                ));
            }
            StoreKind::Redis { url, prefix }
        }
        other => {
            return Err(StoreConfigError::new(
                "store.kind",
                format!("must be \"memory\", \"redis\" or \"redis-cluster\", got {other:?}"),
            ));
        }
    };
    let refresh_ms = raw.refresh_ms.unwrap_or(d.refresh_ms);
    if !(10..=1000).contains(&refresh_ms) {
        return Err(StoreConfigError::new(
            "store.refresh_ms",
            format!("must be in [10, 1000], got {refresh_ms}"),
        ));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(d.timeout_ms);
    if !(1..=10_000).contains(&timeout_ms) {
        return Err(StoreConfigError::new(
            "store.timeout_ms",
            format!("must be in [1, 10000], got {timeout_ms}"),
        ));
    }
    Ok(StoreConfig {
        kind,
        refresh_ms,
        timeout_ms,
        buffer_capacity: raw.buffer_capacity.unwrap_or(d.buffer_capacity),
        spill_file: raw.spill_file,
        username: raw.username,
        password_file: raw.password_file,
        ca_file: raw.ca_file,
    })
}

/// A store URL fit to print: its password replaced by `***` (`redis://:hunter2@h:6379` →
/// `redis://:***@h:6379`); one that does not parse is not printed at all.
pub fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                // Fails only for URLs that cannot carry a password, which then has none.
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<a URL that does not parse>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::policy::Policy;
    use crate::domain::policy::tests::THREE;

    #[test]
    fn a_printed_store_url_hides_its_password() {
        assert_eq!(
            redacted_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redacted_url("rediss://app:hunter2@cache:6380"),
            "rediss://app:***@cache:6380"
        );
        assert_eq!(redacted_url("redis://cache:6379"), "redis://cache:6379");
        assert!(!redacted_url("redis://:hunter2@[bad").contains("hunter2"));
    }

    #[test]
    fn store_section_is_validated_with_key_paths() {
        let p = Policy::parse(THREE).unwrap();
        assert_eq!(p.store.kind, StoreKind::Memory);
        let with = |s: &str| Policy::parse(&format!("{THREE}\n[store]\n{s}\n"));
        let p = with("kind = \"redis\"\nurl = \"redis://r:6379\"\nprefix = \"team-a\"").unwrap();
        assert_eq!(
            p.store.kind,
            StoreKind::Redis {
                url: "redis://r:6379".into(),
                prefix: "team-a".into()
            }
        );
        assert!(p.store.refresh_ms <= 1000);
        assert_eq!(with("kind = \"etcd\"").unwrap_err().path, "store.kind");
        assert_eq!(
            with("kind = \"redis\"\nurl = \"http://x\"")
                .unwrap_err()
                .path,
            "store.url"
        );
        assert_eq!(
            with("kind = \"redis\"\nurl = \"redis://x\"\nrefresh_ms = 5000")
                .unwrap_err()
                .path,
            "store.refresh_ms"
        );
        assert_eq!(
            with("kind = \"memory\"\nurll = \"x\"").unwrap_err().path,
            "store.urll"
        );
        // A cluster: seed nodes, each a redis URL; the prefix becomes a hash tag.
        let p =
            with("kind = \"redis-cluster\"\nnodes = [\"redis://a:1\", \"redis://b:2\"]").unwrap();
        assert_eq!(
            p.store.kind,
            StoreKind::RedisCluster {
                nodes: vec!["redis://a:1".into(), "redis://b:2".into()],
                prefix: "tokenwise".into()
            }
        );
        assert_eq!(
            with("kind = \"redis-cluster\"").unwrap_err().path,
            "store.nodes"
        );
        assert_eq!(
            with("kind = \"redis-cluster\"\nnodes = [\"redis://a:1\", \"a:2\"]")
                .unwrap_err()
                .path,
            "store.nodes[1]"
        );
        assert_eq!(
            with("kind = \"redis-cluster\"\nnodes = [\"redis://a:1\"]\nprefix = \"{x}\"")
                .unwrap_err()
                .path,
            "store.prefix"
        );
    }
}
