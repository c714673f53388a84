//! Outcomes accepted while the store is unreachable: bounded in memory, spilled to a local
//! JSON Lines file beyond that, replayed in order when the store returns. Recording is
//! idempotent by nonce, so a replay that is interrupted and retried never counts twice.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use super::{OutcomeEvent, StateStore, StoreError};

/// Buffered outcomes awaiting the store.
pub struct OutageBuffer {
    memory: Mutex<VecDeque<OutcomeEvent>>,
    capacity: usize,
    spill: Option<PathBuf>,
    /// Held while appending to the spill file and while a drain claims it, so no append can
    /// land in a file the drain has already read.
    spill_lock: Mutex<()>,
}

/// Errors of the buffer's own file.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The spill file could not be written or read.
    #[error("spill file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Memory is full and there is no spill file.
    #[error("outage buffer full ({0} outcomes) and no spill file configured")]
    Full(usize),
}

impl OutageBuffer {
    /// A buffer holding up to `capacity` outcomes in memory, then appending to `spill`.
    pub fn new(capacity: usize, spill: Option<PathBuf>) -> Self {
        Self {
            memory: Mutex::new(VecDeque::new()),
            capacity,
            spill,
            spill_lock: Mutex::new(()),
        }
    }

    fn io(&self, source: std::io::Error) -> BufferError {
        BufferError::Io {
            path: self
                .spill
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source,
        }
    }

    /// Keeps one outcome for later.
    pub fn push(&self, event: OutcomeEvent) -> Result<(), BufferError> {
        let mut mem = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        if mem.len() < self.capacity {
            mem.push_back(event);
            return Ok(());
        }
        drop(mem);
        self.append_to_spill(std::slice::from_ref(&event))
    }

    fn append_to_spill(&self, events: &[OutcomeEvent]) -> Result<(), BufferError> {
        let Some(path) = &self.spill else {
            return Err(BufferError::Full(self.capacity));
        };
        let _claim = self
            .spill_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        // A crash mid-write can leave a last line without its newline: start on a fresh line.
        let torn = std::fs::read(path)
            .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
            .unwrap_or(false);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| self.io(e))?;
        if torn {
            writeln!(f).map_err(|e| self.io(e))?;
        }
        for e in events {
            let line = serde_json::to_string(e).map_err(|e| self.io(std::io::Error::other(e)))?;
            writeln!(f, "{line}").map_err(|e| self.io(e))?;
        }
        f.sync_data().map_err(|e| self.io(e))
    }

    fn read_file(&self, path: &std::path::Path) -> Result<Vec<OutcomeEvent>, BufferError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice(line) {
                Ok(e) => out.push(e),
                // A torn line from a crash mid-write (even mid-character): skip it, keep the rest.
                Err(err) => tracing::warn!(error = %err, "skipping unreadable spill line"),
            }
        }
        Ok(out)
    }

    /// The file a drain works from: the spill file is renamed to it when a drain starts, so
    /// outcomes spilled while the drain runs go to a fresh spill file and are never deleted
    /// with the drained ones.
    fn draining_path(&self) -> Option<PathBuf> {
        self.spill.as_ref().map(|p| p.with_extension("draining"))
    }

    fn spilled(&self) -> usize {
        [self.spill.clone(), self.draining_path()]
            .into_iter()
            .flatten()
            .map(|p| self.read_file(&p).map(|v| v.len()).unwrap_or(0))
            .sum()
    }

    /// Outcomes waiting, in memory and on disk.
    pub fn len(&self) -> usize {
        let mem = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        mem + self.spilled()
    }

    /// Whether nothing is waiting (cheap: no file is read).
    pub fn is_empty(&self) -> bool {
        let mem_empty = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        mem_empty
            && [self.spill.clone(), self.draining_path()]
                .into_iter()
                .flatten()
                .all(|p| !p.exists())
    }

    /// Records everything waiting, spill file first (it holds the oldest), in order. Stops at
    /// the first store failure and keeps the rest. Returns the nonces recorded (or found to be
    /// duplicates) by this call.
    pub async fn drain(&self, store: &dyn StateStore, now_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut done = Vec::new();
        let unavailable = |e: BufferError| StoreError::Unavailable(e.to_string());
        if let (Some(spill), Some(draining)) = (self.spill.as_ref(), self.draining_path()) {
            // Claim the spill file unless an earlier, interrupted drain still holds one.
            let spilled = {
                let _claim = self
                    .spill_lock
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !draining.exists() && spill.exists() {
                    std::fs::rename(spill, &draining).map_err(|e| unavailable(self.io(e)))?;
                }
                self.read_file(&draining).map_err(unavailable)?
            };
            for (i, e) in spilled.iter().enumerate() {
                if let Err(err) = store.record(e, now_ms).await {
                    // Keep what is left for the next drain, then give up for now.
                    self.rewrite(&draining, &spilled[i..])
                        .map_err(unavailable)?;
                    return Err(err);
                }
                done.push(e.nonce);
            }
            self.rewrite(&draining, &[]).map_err(unavailable)?;
        }
        // Only what was buffered when the drain started: under steady traffic it must finish.
        let queued = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        for _ in 0..queued {
            let next = self
                .memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .front()
                .cloned();
            let Some(e) = next else { break };
            store.record(&e, now_ms).await?;
            let mut mem = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            // Pop only the entry just recorded (a concurrent drain may have taken it).
            if mem.front().map(|f| f.nonce) == Some(e.nonce) {
                mem.pop_front();
            }
            done.push(e.nonce);
        }
        Ok(done)
    }

    fn rewrite(&self, path: &std::path::Path, rest: &[OutcomeEvent]) -> Result<(), BufferError> {
        if rest.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
            for e in rest {
                let line =
                    serde_json::to_string(e).map_err(|e| self.io(std::io::Error::other(e)))?;
                writeln!(f, "{line}").map_err(|e| self.io(e))?;
            }
            f.sync_data().map_err(|e| self.io(e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| self.io(e))
    }

    /// Moves what is in memory to the spill file (shutdown while the store is down), so the
    /// next start replays it.
    pub fn persist(&self) -> Result<usize, BufferError> {
        let events: Vec<OutcomeEvent> = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        if events.is_empty() {
            return Ok(0);
        }
        self.append_to_spill(&events)?;
        Ok(events.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::event;
    use crate::store::{MemoryStore, OutcomeEvent, Recorded, StateStore, StoreError};

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tw-buffer-{}-{name}.jsonl", std::process::id()))
    }

    #[tokio::test]
    async fn spills_beyond_capacity_and_drains_in_order_exactly_once() {
        let path = temp("order");
        let _ = std::fs::remove_file(&path);
        let buf = OutageBuffer::new(2, Some(path.clone()));
        for n in 0..5 {
            buf.push(event(n)).unwrap();
        }
        assert_eq!(buf.len(), 5);
        assert!(path.exists());
        let store = MemoryStore::new();
        // One of them already made it before the outage: drained as a duplicate, not twice.
        assert_eq!(store.record(&event(3), 0).await.unwrap(), Recorded::New);
        assert_eq!(buf.drain(&store, 0).await.unwrap().len(), 5);
        assert!(buf.is_empty());
        assert!(!path.with_extension("draining").exists());
        let (log, _) = store.events_since(0, 100).await.unwrap();
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        // Spilled (2, 3, 4) drain before memory (0, 1); 3 was already there.
        assert_eq!(nonces, vec![3, 2, 4, 0, 1]);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn an_interrupted_drain_resumes_and_new_spills_are_kept() {
        let path = temp("resume");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("draining"));
        let buf = OutageBuffer::new(0, Some(path.clone()));
        for n in 0..3 {
            buf.push(event(n)).unwrap();
        }
        // A store that fails after one record: the drain stops with two left.
        struct Flaky(MemoryStore, std::sync::atomic::AtomicUsize);
        #[async_trait::async_trait]
        impl StateStore for Flaky {
            async fn record(&self, e: &OutcomeEvent, now: u64) -> Result<Recorded, StoreError> {
                if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1 {
                    return Err(StoreError::Unavailable("down".into()));
                }
                self.0.record(e, now).await
            }
            async fn events_since(
                &self,
                c: u64,
                m: usize,
            ) -> Result<(Vec<OutcomeEvent>, u64), StoreError> {
                self.0.events_since(c, m).await
            }
            async fn add_counters(
                &self,
                batch: u64,
                adds: &[super::super::CounterAdd],
            ) -> Result<(), StoreError> {
                self.0.add_counters(batch, adds).await
            }
            async fn read_counters(
                &self,
                hashes: &[String],
            ) -> Result<Vec<std::collections::HashMap<String, i64>>, StoreError> {
                self.0.read_counters(hashes).await
            }
            async fn append_policy_change(
                &self,
                c: &super::super::PolicyChange,
            ) -> Result<u64, StoreError> {
                self.0.append_policy_change(c).await
            }
            async fn policy_changes(
                &self,
                from: u64,
            ) -> Result<Vec<super::super::PolicyChange>, StoreError> {
                self.0.policy_changes(from).await
            }
            async fn ping(&self) -> Result<(), StoreError> {
                Ok(())
            }
            fn kind(&self) -> &'static str {
                "flaky"
            }
        }
        let flaky = Flaky(MemoryStore::new(), std::sync::atomic::AtomicUsize::new(0));
        assert!(buf.drain(&flaky, 0).await.is_err());
        // Spilled while the drain held its file: goes to a fresh spill file.
        buf.push(event(9)).unwrap();
        assert_eq!(buf.len(), 3);
        let store = MemoryStore::new();
        // First drain finishes the interrupted file, the next one the fresh spill.
        buf.drain(&store, 0).await.unwrap();
        buf.drain(&store, 0).await.unwrap();
        assert!(buf.is_empty());
        let (log, _) = store.events_since(0, 10).await.unwrap();
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        assert_eq!(nonces, vec![1, 2, 9]);
    }

    #[tokio::test]
    async fn persist_leaves_memory_on_disk_for_the_next_start() {
        let path = temp("persist");
        let _ = std::fs::remove_file(&path);
        let buf = OutageBuffer::new(100, Some(path.clone()));
        buf.push(event(1)).unwrap();
        buf.push(event(2)).unwrap();
        assert_eq!(buf.persist().unwrap(), 2);
        let next_start = OutageBuffer::new(100, Some(path.clone()));
        assert_eq!(next_start.len(), 2);
        let store = MemoryStore::new();
        next_start.drain(&store, 0).await.unwrap();
        assert_eq!(store.events_since(0, 10).await.unwrap().0.len(), 2);
    }

    #[tokio::test]
    async fn a_torn_spill_line_loses_only_itself() {
        let path = temp("torn");
        let mut good = serde_json::to_string(&event(1)).unwrap();
        good.push('\n');
        // A crash cut the second record mid-character: no newline, invalid UTF-8.
        let mut bytes = good.into_bytes();
        bytes.extend_from_slice(&"{\"nonce\":2,\"scope\":\"é".as_bytes()[..22]);
        std::fs::write(&path, &bytes).unwrap();
        let buf = OutageBuffer::new(0, Some(path.clone()));
        buf.push(event(3)).unwrap();
        let store = MemoryStore::new();
        buf.drain(&store, 0).await.unwrap();
        let (log, _) = store.events_since(0, 10).await.unwrap();
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        assert_eq!(nonces, vec![1, 3]);
        assert!(buf.is_empty());
    }

    #[test]
    fn without_a_spill_file_a_full_buffer_says_so() {
        let buf = OutageBuffer::new(1, None);
        buf.push(event(1)).unwrap();
        assert!(matches!(buf.push(event(2)), Err(BufferError::Full(1))));
    }
}
