//! The Redis store: every replica of a deployment shares the outcome log and the nonce ledger.
//!
//! Keys, under a per-deployment prefix: `{p}:spent:{nonce}` (expires with the decision id),
//! `{p}:events` (a list: the log) and `{p}:events:base` (how many old events were trimmed, so
//! positions stay absolute), `{p}:c:{hash}` for shared counters (the books and budgets, Redis
//! hashes of integers), `{p}:batch:{id}` (counter batches already applied, kept a day, so a
//! resent batch counts once), `{p}:policy` (a list: policy versions, the audit trail) and
//! `{p}:data-since` (when the deployment's data began: decisions older than it are refused).
//! Recording is one Lua script, so "spend the nonce and append" is
//! atomic across replicas. The connection is made lazily and re-made after failures, so a
//! replica can start, and keep routing, while Redis is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use std::collections::HashMap;

use super::{
    COUNTER_RETENTION_MS, CounterAdd, MAX_LOG_EVENTS, OutcomeEvent, PolicyChange, Recorded,
    StateStore, StoreError,
};

/// Adds to one counter, saturating at the limits of a 64-bit integer instead of failing: an
/// error halfway through a script would leave its first writes applied and the rest not (Redis
/// does not roll a script back). A field that holds no integer (written by hand) restarts from
/// the delta, with a warning in the Redis log.
const SATURATING_ADD: &str = r"
local function add(key, field, delta)
  local r = redis.pcall('HINCRBY', key, field, delta)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'overflow') then
      if string.sub(delta, 1, 1) == '-' then
        redis.call('HSET', key, field, '-9223372036854775808')
      else
        redis.call('HSET', key, field, '9223372036854775807')
      end
    else
      redis.log(redis.LOG_WARNING, 'tokenwise: counter ' .. key .. ' ' .. field .. ' held no integer; reset')
      redis.call('HSET', key, field, delta)
    end
  end
end
";

const RECORD: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  if ARGV[2] ~= '' then
    local len = redis.call('RPUSH', KEYS[2], ARGV[2])
    local max = tonumber(ARGV[3])
    if len > max then
      local drop = len - max
      redis.call('LTRIM', KEYS[2], drop, -1)
      redis.call('INCRBY', KEYS[3], drop)
    end
  end
  for i = 4, #KEYS do
    add(KEYS[i], ARGV[2 * i - 3], ARGV[2 * i - 2])
    redis.call('PEXPIRE', KEYS[i], ARGV[4])
  end
  return 1
end
return 0
";

/// Records a reuse event once, within its quota, atomically: `KEYS[1]` its nonce, `KEYS[2]` its
/// team's reuse ids (a sorted set scored by expiry), `KEYS[3]` its decision's reuse event
/// count, `KEYS[4..]` its counters. `ARGV`: nonce TTL, now, expiry (ms), the team's id limit,
/// the decision's event limit, this event's events, the nonce, the counter retention, then a
/// field and a delta per counter. Returns 1 (new), 0 (duplicate), -1 (the team's ids at their
/// limit) or -2 (the decision's events at theirs); nothing is written unless it returns 1.
const RECORD_REUSE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
local events = tonumber(redis.call('GET', KEYS[3]) or '0')
if events + tonumber(ARGV[6]) > tonumber(ARGV[5]) then return -2 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[7])
-- The set lives as long as its longest-lived id (relative TTLs: the caller's clock decides;
-- PTTL, not PEXPIRE NX/GT, which Redis before 7.0 refuses).
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
redis.call('INCRBY', KEYS[3], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
for i = 4, #KEYS do
  add(KEYS[i], ARGV[2 * i + 1], ARGV[2 * i + 2])
  redis.call('PEXPIRE', KEYS[i], ARGV[8])
end
return 1
";

/// Appends `ARGV[2]` to the list `KEYS[1]` only if it holds exactly `ARGV[1]` entries; returns
/// the new length, or −(its length + 1) without writing.
const APPEND_AT: &str = r"
local len = redis.call('LLEN', KEYS[1])
if len ~= tonumber(ARGV[1]) then return -(len + 1) end
return redis.call('RPUSH', KEYS[1], ARGV[2])
";

/// Applies a counter batch once: the batch id is spent like a nonce.
const ADD: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  for i = 2, #KEYS do
    add(KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
  return 1
end
return 0
";

/// How long counter batch ids are remembered (a resend comes within seconds).
const BATCH_ID_TTL_MS: u64 = crate::domain::calendar::DAY_MS;

const READ: &str = r"
local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local from = tonumber(ARGV[1]) - base
if from < 0 then from = 0 end
local items = redis.call('LRANGE', KEYS[1], from, from + tonumber(ARGV[2]) - 1)
return {base, from, items, redis.call('LLEN', KEYS[1])}
";

/// The instant the deployment's data began: set once, to now on an empty Redis (a new
/// deployment, or one that lost its data), to 0 when the log exists without it (an upgrade
/// from a version that kept no such key: its outstanding ids stay valid).
const DATA_SINCE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
local since = ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  since = '0'
end
redis.call('SET', KEYS[1], since, 'NX')
return redis.call('GET', KEYS[1])
";

/// A Redis-backed [`StateStore`].
pub struct RedisStore {
    client: Backend,
    /// Key prefix: `prefix` on one primary, `{prefix}` (a hash tag) on a cluster.
    prefix: String,
    conn: Mutex<Option<Conn>>,
    record: redis::Script,
    record_reuse: redis::Script,
    append_at: redis::Script,
    add: redis::Script,
    read: redis::Script,
    data_since: redis::Script,
    timeout: Duration,
    /// Unreadable log events skipped so far.
    skipped: std::sync::atomic::AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Where a Redis store lives.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One primary (or a managed endpoint that hides failover).
    Url(&'a str),
    /// A Redis Cluster, by its seed nodes: keys carry the hash tag `{prefix}`.
    Cluster(&'a [String]),
}

/// The client of either kind (one per store: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection of either kind (both multiplex and reconnect on their own).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis error as a store error: refused credentials or a missing ACL permission are a
/// configuration error (waiting will not fix them, and the server refuses to start on one);
/// anything else is an outage.
fn store_error(e: redis::RedisError) -> StoreError {
    match e.code() {
        Some("WRONGPASS" | "NOAUTH") => StoreError::Config(format!(
            "redis refused the credentials (store.username, store.password_file or TOKENWISE_REDIS_PASSWORD): {e}"
        )),
        Some("NOPERM") => StoreError::Config(format!(
            "the redis user lacks a permission tokenwise needs (scripts, lists, hashes and strings under the prefix): {e}"
        )),
        _ if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            StoreError::Config(format!("redis authentication failed: {e}"))
        }
        _ => unavailable(e),
    }
}

impl RedisStore {
    /// A store for `url` (e.g. `redis://127.0.0.1:6379`) with keys under `prefix`. Does not
    /// connect yet.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::connect_to(Target::Url(url), prefix, timeout, None, None, None)
    }

    /// A store on `target` (one primary or a cluster) with keys under `prefix`, an optional ACL
    /// user and password and an optional CA for `rediss://`. Does not connect yet.
    pub fn connect_to(
        target: Target<'_>,
        prefix: &str,
        timeout: Duration,
        username: Option<&str>,
        password: Option<&str>,
        ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo;
        let bad = |e: redis::RedisError| StoreError::Config(format!("bad redis url: {e}"));
        let url = match target {
            Target::Url(url) => url,
            Target::Cluster(nodes) => {
                let mut b =
                    redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(1);
                if let Some(u) = username {
                    b = b.username(u);
                }
                if let Some(p) = password {
                    b = b.password(p);
                }
                if let Some(pem) = ca_pem {
                    b = b.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    });
                }
                return Ok(Self::with_backend(
                    Backend::Cluster(b.build().map_err(bad)?),
                    format!("{{{prefix}}}"),
                    timeout,
                ));
            }
        };
        let mut info = url.into_connection_info().map_err(bad)?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = username {
            settings = settings.set_username(u);
        }
        if let Some(p) = password {
            settings = settings.set_password(p);
        }
        info = info.set_redis_settings(settings);
        // rediss:// verifies the server against the system's trust store, or against the given
        // CA (a private CA or a self-signed server).
        let client = match ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| StoreError::Config(format!("store.ca_file: {e}")))?,
            None => redis::Client::open(info).map_err(bad)?,
        };
        Ok(Self::with_backend(
            Backend::Single(client),
            prefix.to_string(),
            timeout,
        ))
    }

    fn with_backend(client: Backend, prefix: String, timeout: Duration) -> Self {
        Self {
            client,
            prefix,
            conn: Mutex::new(None),
            record: redis::Script::new(&format!("{SATURATING_ADD}{RECORD}")),
            record_reuse: redis::Script::new(&format!("{SATURATING_ADD}{RECORD_REUSE}")),
            append_at: redis::Script::new(APPEND_AT),
            add: redis::Script::new(&format!("{SATURATING_ADD}{ADD}")),
            read: redis::Script::new(READ),
            data_since: redis::Script::new(DATA_SINCE),
            timeout,
            skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connect = async {
            match &self.client {
                Backend::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_millis(500));
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .map(Conn::Single)
                }
                Backend::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let c = tokio::time::timeout(self.timeout * 2, connect)
            .await
            .map_err(|_| unavailable("connect timed out"))?
            .map_err(store_error)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` on the connection with a deadline; drops the connection on failure so the next
    /// call reconnects.
    async fn with_conn<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                {
                    *self.conn.lock().await = None;
                }
                Err(store_error(e))
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err(unavailable("redis call timed out"))
            }
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}:{k}", self.prefix)
    }

    /// Records a reuse event within its quota ([`RECORD_REUSE`]).
    async fn record_reuse(
        &self,
        event: &OutcomeEvent,
        q: &super::ReuseQuota,
        now_ms: u64,
    ) -> Result<Recorded, StoreError> {
        let (spent, ttl, counter_keys) = self.event_keys(event, now_ms);
        let team_ids = self.key(&format!("reuse-ids:{}", q.team));
        let decision = self.key(&format!("reuse-events:{}", q.decision));
        let script = &self.record_reuse;
        let got: i64 = self
            .with_conn(|mut c| async move {
                let mut call = script.key(spent);
                call.key(team_ids)
                    .key(decision)
                    .arg(ttl)
                    .arg(now_ms)
                    .arg(event.expires_ms)
                    .arg(q.team_ids)
                    .arg(q.decision_events)
                    .arg(q.events)
                    .arg(event.nonce)
                    .arg(COUNTER_RETENTION_MS);
                // KEYS[4 + i] gets ARGV[9 + 2i] (field) and ARGV[10 + 2i] (delta).
                counter_args(&mut call, &counter_keys, &event.counters);
                call.invoke_async(&mut c).await
            })
            .await?;
        match got {
            1 => Ok(Recorded::New),
            0 => Ok(Recorded::Duplicate),
            n => Err(super::quota_refusal(q, n == -1)),
        }
    }

    fn counter_key(&self, hash: &str) -> String {
        format!("{}:c:{hash}", self.prefix)
    }

    /// What both record scripts take of an event: its spent-nonce key, the nonce's TTL from
    /// `now_ms`, and its counters' keys.
    fn event_keys(&self, event: &OutcomeEvent, now_ms: u64) -> (String, u64, Vec<String>) {
        let counter_keys = event
            .counters
            .iter()
            .map(|c| self.counter_key(&c.hash))
            .collect();
        let ttl = event.expires_ms.saturating_sub(now_ms).max(1);
        (
            self.key(&format!("spent:{}", event.nonce)),
            ttl,
            counter_keys,
        )
    }
}

/// Passes counters to a script (both record scripts and the batch script): a key each, with its
/// field and delta as the next two arguments.
fn counter_args(call: &mut redis::ScriptInvocation<'_>, keys: &[String], adds: &[CounterAdd]) {
    for (key, add) in keys.iter().zip(adds) {
        call.key(key).arg(&add.field).arg(add.delta);
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn record(&self, event: &OutcomeEvent, now_ms: u64) -> Result<Recorded, StoreError> {
        if let Some(q) = &event.quota {
            return self.record_reuse(event, q, now_ms).await;
        }
        // A counters-only mark sends no log entry (the script appends none for an empty one).
        let json = if event.counters_only {
            String::new()
        } else {
            serde_json::to_string(&event.for_log())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?
        };
        let (spent, ttl, counter_keys) = self.event_keys(event, now_ms);
        let (events, base) = (self.key("events"), self.key("events:base"));
        let script = &self.record;
        let won: i64 = self
            .with_conn(|mut c| async move {
                let mut call = script.key(spent);
                call.key(events)
                    .key(base)
                    .arg(ttl)
                    .arg(json)
                    .arg(MAX_LOG_EVENTS)
                    .arg(COUNTER_RETENTION_MS);
                // KEYS[4 + i] gets ARGV[5 + 2i] (field) and ARGV[6 + 2i] (delta).
                counter_args(&mut call, &counter_keys, &event.counters);
                call.invoke_async(&mut c).await
            })
            .await?;
        Ok(if won == 1 {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    fn skipped_events(&self) -> u64 {
        self.skipped.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn events_since(
        &self,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<OutcomeEvent>, u64), StoreError> {
        let (events, base) = (self.key("events"), self.key("events:base"));
        let script = &self.read;
        let (base, from, items, len): (u64, u64, Vec<String>, u64) = self
            .with_conn(|mut c| async move {
                script
                    .key(events)
                    .key(base)
                    .arg(cursor)
                    .arg(max)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if cursor > base + len {
            // The log is shorter than what this reader has seen: Redis lost its data. Report
            // the real end so the caller notices and starts over.
            return Ok((Vec::new(), base + len));
        }
        // An event that does not parse is skipped, counted and logged with its position, and
        // the cursor moves past it: every replica skips the same one, so they still agree, and
        // learning goes on (it used to stop for good on every replica).
        let mut parsed = Vec::with_capacity(items.len());
        for (i, s) in items.iter().enumerate() {
            match serde_json::from_str::<OutcomeEvent>(s) {
                Ok(event) => parsed.push(event),
                Err(e) => {
                    self.skipped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(
                        position = base + from + i as u64,
                        bytes = s.len(),
                        error = %e,
                        "skipping an unreadable event in the shared log"
                    );
                }
            }
        }
        let next = base + from + items.len() as u64;
        Ok((parsed, next))
    }

    async fn add_counters(&self, batch: u64, adds: &[CounterAdd]) -> Result<(), StoreError> {
        if adds.is_empty() {
            return Ok(());
        }
        let script = &self.add;
        let batch_key = self.key(&format!("batch:{batch}"));
        let keys: Vec<String> = adds.iter().map(|a| self.counter_key(&a.hash)).collect();
        let _: i64 = self
            .with_conn(|mut c| async move {
                let mut call = script.key(batch_key);
                call.arg(BATCH_ID_TTL_MS).arg(COUNTER_RETENTION_MS);
                // KEYS[1 + i] gets ARGV[2 + 2i - 1] (field) and ARGV[2 + 2i] (delta).
                counter_args(&mut call, &keys, adds);
                call.invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    async fn read_counters(
        &self,
        hashes: &[String],
    ) -> Result<Vec<HashMap<String, i64>>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for h in hashes {
            pipe.hgetall(self.counter_key(h));
        }
        self.with_conn(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    async fn append_policy_change(&self, change: &PolicyChange) -> Result<u64, StoreError> {
        let json = serde_json::to_string(change).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let key = self.key("policy");
        let script = &self.append_at;
        let at = change.seq;
        let len: i64 = self
            .with_conn(|mut c| async move {
                script.key(key).arg(at).arg(json).invoke_async(&mut c).await
            })
            .await?;
        if len < 0 {
            return Err(StoreError::Conflict(format!(
                "the policy log holds {} entries, not {at}",
                -len - 1
            )));
        }
        Ok(at)
    }

    async fn policy_log_len(&self) -> Result<u64, StoreError> {
        let key = self.key("policy");
        self.with_conn(|mut c| async move { redis::cmd("LLEN").arg(key).query_async(&mut c).await })
            .await
    }

    async fn policy_changes(&self, from: u64) -> Result<Vec<PolicyChange>, StoreError> {
        let key = self.key("policy");
        let items: Vec<String> = self
            .with_conn(|mut c| async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(from)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let change: PolicyChange = serde_json::from_str(s)
                    .map_err(|e| StoreError::Corrupt(format!("policy change {i}: {e}")))?;
                Ok(PolicyChange {
                    seq: from + i as u64,
                    ..change
                })
            })
            .collect()
    }

    async fn deployment_id(&self, proposed: &str) -> Result<String, StoreError> {
        let key = self.key("deployment-id");
        // SET NX, then GET, in one round trip (it runs at every refresh): the id the first
        // writer set (SET's own GET option needs Redis 7).
        let (held,): (Option<String>,) = self
            .with_conn(|mut c| {
                let key = &key;
                async move {
                    redis::pipe()
                        .cmd("SET")
                        .arg(key)
                        .arg(proposed)
                        .arg("NX")
                        .ignore()
                        .cmd("GET")
                        .arg(key)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        held.ok_or_else(|| StoreError::Corrupt("deployment id vanished after it was set".into()))
    }

    async fn data_since_ms(&self, now_ms: u64) -> Result<u64, StoreError> {
        let script = &self.data_since;
        let keys = [
            self.key("data-since"),
            self.key("events"),
            self.key("events:base"),
        ];
        let value: String = self
            .with_conn(|mut c| {
                let keys = &keys;
                async move {
                    script
                        .key(&keys[0])
                        .key(&keys[1])
                        .key(&keys[2])
                        .arg(now_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        value
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("data-since {value:?}: {e}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .with_conn(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        match self.client {
            Backend::Single(_) => "redis",
            Backend::Cluster(_) => "redis-cluster",
        }
    }
}
