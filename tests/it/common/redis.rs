//! A private `redis-server` per test, on a free loopback port, that a test can stop and restart
//! (with its append-only file, like a StatefulSet with persistence) to prove outage behaviour.
//! Without `redis-server` on the machine, `start` returns `None` and the test skips.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether `redis-server` is on this machine. Tests never install packages: without it the
/// Redis tests say so once each and skip (`.ci/run` installs Debian's `redis-server` first).
fn installed() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok()
    })
}

fn skip_notice() {
    eprintln!(
        "SKIPPED: redis-server is not installed; install Debian's redis-server package (.ci/run does) to run the Redis tests"
    );
}

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// A server on a free port (`None`, with a notice, when redis-server is not installed).
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// A server started with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !installed() {
            skip_notice();
            return None;
        }
        let port = super::spare_port();
        let dir = std::env::temp_dir().join(format!("tw-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub fn ping(&self) -> bool {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
        if c.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        // A server that requires a password answers -NOAUTH: it is up all the same.
        c.read(&mut buf)
            .map(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
            .unwrap_or(false)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (an outage); its append-only file stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts it again on the same port with no data (a restart that lost everything).
    #[allow(dead_code)]
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local Redis Cluster of three masters (no replicas), each a private `redis-server` on a
/// spare port (its cluster bus on port + 10000), slots assigned by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three cluster nodes (`None`, with a notice, when redis-server is not installed).
    pub fn start() -> Option<Self> {
        if !installed() {
            skip_notice();
            return None;
        }
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = super::spare_port();
            // The cluster bus listens on port + 10000.
            if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let dir =
                std::env::temp_dir().join(format!("tw-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut s = RedisServer {
                port,
                dir,
                child: None,
                extra: ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            };
            s.spawn();
            nodes.push(s);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Wait until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Self { nodes })
    }

    /// The index of the node that serves the slot of hash tag `{tag}` (ask while all are up).
    pub fn owner_of(&self, tag: &str) -> usize {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.nodes[0].port.to_string(),
                "cluster",
                "keyslot",
                &format!("{{{tag}}}"),
            ])
            .output()
            .expect("cluster keyslot");
        let slot: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("cluster keyslot: {e}: {out:?}"));
        // `cluster nodes`: id addr@bus flags master - ping pong epoch state slot-ranges...
        let nodes = String::from_utf8_lossy(
            &Command::new("redis-cli")
                .args(["-p", &self.nodes[0].port.to_string(), "cluster", "nodes"])
                .output()
                .expect("cluster nodes")
                .stdout,
        )
        .to_string();
        let port = nodes
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .skip(8)
                    .any(|r| match r.split_once('-') {
                        Some((a, b)) => {
                            a.parse::<u16>().is_ok_and(|a| a <= slot)
                                && b.parse::<u16>().is_ok_and(|b| slot <= b)
                        }
                        None => r.parse::<u16>() == Ok(slot),
                    })
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|a| a.split('@').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .expect("an owner of the slot");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// The seed nodes as a TOML array of URLs.
    pub fn nodes_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }
}
