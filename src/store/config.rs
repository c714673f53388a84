//! The store's deployment settings: which backend holds the learned state, and how it behaves
//! in an outage. They are read once at start (the deployment config: `serve` flags, environment,
//! a `--deployment` file's `[store]` table, or a policy file's deprecated `[store]` table); the
//! policy never carries them. This module validates the table.

use serde::Deserialize;

/// The `[store]` table as written (unknown keys rejected), or the store flags: every key
/// optional, so layers (flags over environment over file) merge key by key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `memory`, `redis` or `redis-cluster`; unset: `redis` with a `url`, `redis-cluster` with
    /// `nodes`, else `memory`.
    pub kind: Option<String>,
    /// Redis URL (`redis://` or `rediss://`).
    pub url: Option<String>,
    /// Key prefix of the deployment.
    pub prefix: Option<String>,
    /// How often replicas re-read shared state, ms.
    pub refresh_ms: Option<u64>,
    /// Deadline of one store call, ms.
    pub timeout_ms: Option<u64>,
    /// Outcomes an outage buffer without a spill file holds in memory.
    pub buffer_capacity: Option<usize>,
    /// This replica's outage log.
    pub spill_file: Option<String>,
    /// Redis ACL user.
    pub username: Option<String>,
    /// File holding the Redis password.
    pub password_file: Option<String>,
    /// PEM file of the CA of a `rediss://` server.
    pub ca_file: Option<String>,
    /// Seed nodes of a Redis Cluster.
    pub nodes: Option<Vec<String>>,
}

impl RawStore {
    /// Whether these settings name a backend (`kind`, `url` or `nodes`): a layer that does
    /// decides which store runs; one that only sets, say, a spill file does not.
    pub fn names_store(&self) -> bool {
        self.kind.is_some() || self.url.is_some() || self.nodes.is_some()
    }

    /// `self` with every key `over` sets replaced by `over`'s.
    pub fn overlaid(self, over: RawStore) -> RawStore {
        RawStore {
            kind: over.kind.or(self.kind),
            url: over.url.or(self.url),
            prefix: over.prefix.or(self.prefix),
            refresh_ms: over.refresh_ms.or(self.refresh_ms),
            timeout_ms: over.timeout_ms.or(self.timeout_ms),
            buffer_capacity: over.buffer_capacity.or(self.buffer_capacity),
            spill_file: over.spill_file.or(self.spill_file),
            username: over.username.or(self.username),
            password_file: over.password_file.or(self.password_file),
            ca_file: over.ca_file.or(self.ca_file),
            nodes: over.nodes.or(self.nodes),
        }
    }
}

/// A `[store]` table (of a deployment file, or a policy file's deprecated one) read as store
/// settings; an unknown or mistyped key is named by its path (`store.urll`).
pub fn raw_store(table: toml::Table) -> Result<RawStore, StoreConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let inner = e.inner().message().trim().to_string();
        StoreConfigError::new(format!("store.{}", e.path()), inner)
    })
}

/// A Redis password held in memory: never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
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
    /// File holding the Redis password (a mounted secret): never on a command line.
    pub password_file: Option<String>,
    /// The Redis password from the environment (`TOKENWISE_REDIS_PASSWORD`), when no
    /// `password_file` is set.
    pub password: Option<Password>,
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
            password: None,
            ca_file: None,
        }
    }
}

/// The validated store settings (the environment's password is the caller's to add).
pub fn validate_store(raw: RawStore) -> Result<StoreConfig, StoreConfigError> {
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
    let kind = match raw.kind.as_deref().unwrap_or(match (&raw.url, &raw.nodes) {
        (_, Some(_)) => "redis-cluster",
        (Some(_), None) => "redis",
        (None, None) => "memory",
    }) {
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
        password: None,
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

    fn with(s: &str) -> Result<StoreConfig, StoreConfigError> {
        let t: toml::Table = toml::from_str(s).unwrap();
        validate_store(raw_store(t)?)
    }

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
        assert_eq!(format!("{:?}", Password("hunter2".into())), "***");
    }

    #[test]
    fn store_settings_are_validated_with_key_paths() {
        assert_eq!(with("").unwrap(), StoreConfig::default());
        let p = with("kind = \"redis\"\nurl = \"redis://r:6379\"\nprefix = \"team-a\"").unwrap();
        assert_eq!(
            p.kind,
            StoreKind::Redis {
                url: "redis://r:6379".into(),
                prefix: "team-a".into()
            }
        );
        assert!(p.refresh_ms <= 1000);
        // A URL alone is a Redis store; seed nodes alone a cluster.
        assert_eq!(
            with("url = \"redis://r:6379\"").unwrap().kind,
            StoreKind::Redis {
                url: "redis://r:6379".into(),
                prefix: "tokenwise".into()
            }
        );
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
        let e = with("kind = \"memory\"\nurll = \"x\"").unwrap_err();
        assert_eq!(e.path, "store.urll", "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");
        assert_eq!(
            with("refresh_ms = \"x\"").unwrap_err().path,
            "store.refresh_ms"
        );
        // A cluster: seed nodes, each a redis URL; the prefix becomes a hash tag.
        let p =
            with("kind = \"redis-cluster\"\nnodes = [\"redis://a:1\", \"redis://b:2\"]").unwrap();
        assert_eq!(
            p.kind,
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

    #[test]
    fn layers_merge_key_by_key_and_only_a_backend_names_a_store() {
        let file = RawStore {
            url: Some("redis://file:1".into()),
            spill_file: Some("/file.jsonl".into()),
            ..RawStore::default()
        };
        let flags = RawStore {
            spill_file: Some("/flag.jsonl".into()),
            ..RawStore::default()
        };
        assert!(file.names_store() && !flags.names_store());
        let merged = file.overlaid(flags);
        assert_eq!(merged.url.as_deref(), Some("redis://file:1"));
        assert_eq!(merged.spill_file.as_deref(), Some("/flag.jsonl"));
    }
}
