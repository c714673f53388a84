//! Every environment variable the binary reads, declared once. The command-line arguments name
//! them (clap's `env`), so a flag and its variable are one setting with one precedence: the
//! flag, then the variable, then the deployment file, then the default. Read without a flag, on
//! purpose: the Redis password and a client's API key, secrets that must never be on a command
//! line, and the CA a client trusts for `https://` addresses, which goes with the key. `serve`
//! also reads the decision secret's variable itself, only to warn when `--decision-secret` came
//! from the command line instead.

/// The policy file (`serve --config`).
pub const CONFIG: &str = "TOKENWISE_CONFIG";
/// The deployment config file (`serve --deployment`).
pub const DEPLOYMENT: &str = "TOKENWISE_DEPLOYMENT";
/// The complexity model artifact (`serve --model`).
pub const MODEL: &str = "TOKENWISE_MODEL";

/// The gRPC listen address.
pub const LISTEN: &str = "TOKENWISE_LISTEN";
/// The health-only listen address.
pub const HEALTH_LISTEN: &str = "TOKENWISE_HEALTH_LISTEN";
/// The metrics and `/report` listen address.
pub const METRICS_LISTEN: &str = "TOKENWISE_METRICS_LISTEN";
/// Largest task accepted, in bytes.
pub const MAX_TASK_BYTES: &str = "TOKENWISE_MAX_TASK_BYTES";
/// Deadline of any one call, ms.
pub const REQUEST_TIMEOUT_MS: &str = "TOKENWISE_REQUEST_TIMEOUT_MS";
/// How long feedback is accepted for a decision, s.
pub const DECISION_TTL_SECS: &str = "TOKENWISE_DECISION_TTL_SECS";
/// Concurrent calls in the whole server.
pub const MAX_CONCURRENT_REQUESTS: &str = "TOKENWISE_MAX_CONCURRENT_REQUESTS";
/// Concurrent calls of one team.
pub const MAX_CONCURRENT_REQUESTS_PER_TEAM: &str = "TOKENWISE_MAX_CONCURRENT_REQUESTS_PER_TEAM";
/// Route calls per second per team.
pub const RATE_LIMIT_PER_TEAM: &str = "TOKENWISE_RATE_LIMIT_PER_TEAM";

/// Store backend: `memory`, `redis`, `redis-cluster`.
pub const STORE_KIND: &str = "TOKENWISE_STORE_KIND";
/// Redis URL.
pub const STORE_URL: &str = "TOKENWISE_STORE_URL";
/// Redis Cluster seed nodes, comma-separated.
pub const STORE_NODES: &str = "TOKENWISE_STORE_NODES";
/// Key prefix of the deployment.
pub const STORE_PREFIX: &str = "TOKENWISE_STORE_PREFIX";
/// How often replicas re-read shared state, ms.
pub const STORE_REFRESH_MS: &str = "TOKENWISE_STORE_REFRESH_MS";
/// Deadline of one store call, ms.
pub const STORE_TIMEOUT_MS: &str = "TOKENWISE_STORE_TIMEOUT_MS";
/// Redis ACL user.
pub const STORE_USERNAME: &str = "TOKENWISE_STORE_USERNAME";
/// File holding the Redis password.
pub const STORE_PASSWORD_FILE: &str = "TOKENWISE_STORE_PASSWORD_FILE";
/// CA of a `rediss://` server.
pub const STORE_CA_FILE: &str = "TOKENWISE_STORE_CA_FILE";
/// This replica's outage log.
pub const SPILL_FILE: &str = "TOKENWISE_SPILL_FILE";
/// The Redis password (no flag: a command line is visible in `ps`).
pub const REDIS_PASSWORD: &str = "TOKENWISE_REDIS_PASSWORD";

/// The secret that signs decision ids.
pub const DECISION_SECRET: &str = "TOKENWISE_DECISION_SECRET";
/// File holding the decision secret.
pub const DECISION_SECRET_FILE: &str = "TOKENWISE_DECISION_SECRET_FILE";
/// The decision secret being rotated out.
pub const PREVIOUS_DECISION_SECRET: &str = "TOKENWISE_PREVIOUS_DECISION_SECRET";
/// The API key hashes file.
pub const AUTH_KEYS_FILE: &str = "TOKENWISE_AUTH_KEYS_FILE";
/// TLS certificate chain of the gRPC port.
pub const TLS_CERT: &str = "TOKENWISE_TLS_CERT";
/// TLS private key of the gRPC port.
pub const TLS_KEY: &str = "TOKENWISE_TLS_KEY";

/// The server a client command talks to.
pub const ADDR: &str = "TOKENWISE_ADDR";
/// The API key a client command sends.
pub const API_KEY: &str = "TOKENWISE_API_KEY";
/// The CA a client command trusts for `https://` addresses.
pub const CA_CERT: &str = "TOKENWISE_CA_CERT";
