//! Outcomes accepted while the store is unreachable, replayed in order when it returns.
//! Recording is idempotent by nonce, so a replay that is interrupted and retried never counts
//! twice.
//!
//! **With a spill file (every Redis deployment)** the buffer is a write-ahead log: an outcome
//! is appended and `fsync`ed before Feedback acknowledges it, so an acknowledged outcome
//! survives a crash (SIGKILL, power loss) of the replica during an outage. Appends go through
//! one writer thread that commits every outcome waiting at that moment with a single write and
//! a single `fsync` (group commit), so concurrent feedback shares the cost and no async worker
//! ever blocks on the disk. Each line carries an HMAC of its record under a key derived from
//! the deployment's decision secret ([`FileKeys`]): a torn line (a crash mid-write), an edited
//! one or one planted by someone without the secret is skipped and counted, never replayed.
//! The file belongs to one replica: it is locked for the life of the buffer, and a second
//! process asking for the same file is refused at start. Its directory is created owner-only
//! (0700) and refused when group or others may write to it; the files are 0600 and never
//! opened through a symbolic link.
//!
//! **Without a spill file** (tests, embedded use) outcomes wait in memory, up to `capacity`.

use std::collections::VecDeque;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hmac::{Hmac, Mac};

use super::{OutcomeEvent, StateStore, StoreError};

/// Most outcomes one group commit writes.
const MAX_BATCH: usize = 4096;

/// Buffered outcomes awaiting the store.
pub struct OutageBuffer {
    memory: Mutex<VecDeque<OutcomeEvent>>,
    capacity: usize,
    spill: Option<Arc<Spill>>,
}

/// The write-ahead log of one replica.
struct Spill {
    path: PathBuf,
    /// Held while the writer appends a batch and while a drain claims the file, so no append
    /// can land in a file the drain has already read.
    lock: Arc<Mutex<()>>,
    /// To the group-commit writer thread.
    writer: std::sync::mpsc::Sender<Job>,
    /// Outcomes in the log files (counted at open, then kept up to date).
    waiting: AtomicUsize,
    /// Lines skipped because their checksum did not match.
    rejected: Arc<AtomicU64>,
    /// The advisory lock that makes the file this process's own; released on drop.
    _owner: std::fs::File,
    /// Nonces found in the log files at open.
    recovered: Vec<u64>,
    /// What signs and verifies the lines.
    keys: FileKeys,
}

/// File work a drain hands to the blocking pool.
type FileWork = Box<dyn FnOnce(&Spill) -> Result<Vec<OutcomeEvent>, BufferError> + Send>;

/// One record for the writer, and where to say whether it is on disk.
type Job = (Vec<u8>, tokio::sync::oneshot::Sender<Result<(), String>>);

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
    /// Another process holds the spill file.
    #[error(
        "spill file {0} is in use by another process: each replica needs its own (store.spill_file)"
    )]
    InUse(String),
    /// There is no spill file to keep anything in.
    #[error("no spill file configured: nothing can be kept for the next start")]
    NoFile,
    /// Memory is full and there is no spill file.
    #[error("outage buffer full ({0} outcomes) and no spill file configured")]
    Full(usize),
}

/// The keys that authenticate a replica's file lines: the first signs, any of them verifies
/// (the previous secret's during a rotation). See [`crate::domain::decision::Signer::file_keys`].
#[derive(Clone)]
pub struct FileKeys(Arc<[[u8; 32]]>);

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKeys(<secret>)")
    }
}

impl FileKeys {
    /// Keys as the signer derives them; `keys` must not be empty.
    pub fn new(keys: Vec<[u8; 32]>) -> Self {
        let keys = if keys.is_empty() {
            vec![rand::random()]
        } else {
            keys
        };
        Self(keys.into())
    }

    /// One random key: lines written with it verify in this process only.
    pub fn random() -> Self {
        Self::new(vec![rand::random()])
    }

    /// The HMAC of a record under `key`.
    fn mac(key: &[u8; 32], record: &[u8]) -> Hmac<sha2::Sha256> {
        // An HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(record);
        mac
    }

    /// One log line: `<tag> <record JSON>\n`.
    fn encode<T: serde::Serialize>(&self, record: &T) -> Result<Vec<u8>, std::io::Error> {
        let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        // The tag: the first 16 bytes of the HMAC, in hex.
        let tag = Self::mac(&self.0[0], &json).finalize().into_bytes();
        let mut line = hex::encode(&tag[..16]).into_bytes();
        line.push(b' ');
        line.extend_from_slice(&json);
        line.push(b'\n');
        Ok(line)
    }

    /// The record of one line, if its tag verifies under one of the keys and it parses.
    fn decode<T: serde::de::DeserializeOwned>(&self, line: &[u8]) -> Option<T> {
        let space = line.iter().position(|&b| b == b' ')?;
        let (tag, json) = (&line[..space], &line[space + 1..]);
        // Compared in constant time: a planted line learns nothing from how fast it fails.
        let tag = hex::decode(tag).ok().filter(|t| t.len() == 16)?;
        if !self
            .0
            .iter()
            .any(|k| Self::mac(k, json).verify_truncated_left(&tag).is_ok())
        {
            return None;
        }
        serde_json::from_slice(json).ok()
    }
}

/// Options for a file of this replica's own: owner-only, and never through a symbolic link
/// (a planted link to another file is refused, not followed).
fn private_file() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Creates the directory of a replica's files owner-only, or checks an existing one: refused
/// when group or others may write to it (they could plant or swap files there) or when it is a
/// symbolic link.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link: give the spill file a directory of its own",
            dir.display()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} may be written by group or others (mode {:o}): make it the service user's own \
             (chmod 700)",
            dir.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// Appends `lines` to `path` in one write and makes them durable. A crash mid-write can leave a
/// last line without its newline: a batch then starts on a fresh line (only the last byte is
/// read, never the file).
fn append(path: &Path, lines: &[&[u8]]) -> std::io::Result<()> {
    let mut f = private_file()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len()).sum::<usize>() + 1);
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(std::io::SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            buf.push(b'\n');
        }
    }
    for l in lines {
        buf.extend_from_slice(l);
    }
    f.write_all(&buf)?;
    f.sync_data()
}

/// The writer thread: takes every job waiting, commits them with one write and one `fsync`,
/// answers each. Ends when the buffer (the sender) is gone.
fn run_writer(path: PathBuf, lock: Arc<Mutex<()>>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let result = {
            let _claim = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let lines: Vec<&[u8]> = batch.iter().map(|(l, _)| l.as_slice()).collect();
            append(&path, &lines).map_err(|e| e.to_string())
        };
        for (_, done) in batch {
            // The caller may have gone (its call was cancelled): nothing to tell.
            let _ = done.send(result.clone());
        }
    }
}

impl Spill {
    fn open(path: PathBuf, keys: FileKeys) -> Result<Self, BufferError> {
        let io = |source| BufferError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir).map_err(io)?;
        }
        let owner = private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_extension("lock"))
            .map_err(io)?;
        match owner.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BufferError::InUse(path.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let lock = Arc::new(Mutex::new(()));
        let (writer, jobs) = std::sync::mpsc::channel();
        {
            let (path, lock) = (path.clone(), lock.clone());
            std::thread::Builder::new()
                .name("tokenwise-spill".into())
                .spawn(move || run_writer(path, lock, jobs))
                .map_err(io)?;
        }
        let spill = Self {
            path,
            lock,
            writer,
            waiting: AtomicUsize::new(0),
            rejected: Arc::new(AtomicU64::new(0)),
            _owner: owner,
            recovered: Vec::new(),
            keys,
        };
        let mut recovered = Vec::new();
        for p in [spill.path.clone(), spill.draining_path()] {
            recovered.extend(
                spill
                    .read::<OutcomeEvent>(&p, false)?
                    .iter()
                    .map(|e| e.nonce),
            );
        }
        spill.waiting.store(recovered.len(), Ordering::Relaxed);
        Ok(Self { recovered, ..spill })
    }

    fn io(&self, source: std::io::Error) -> BufferError {
        BufferError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The file a drain works from: the spill file is renamed to it when a drain starts, so
    /// outcomes appended while the drain runs go to a fresh spill file and are never deleted
    /// with the drained ones.
    fn draining_path(&self) -> PathBuf {
        self.path.with_extension("draining")
    }

    /// The records of a log file, in order; lines whose checksum fails are skipped (and counted
    /// when `count`: once, when a drain consumes the file).
    fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        count: bool,
    ) -> Result<Vec<T>, BufferError> {
        let mut bytes = Vec::new();
        match private_file().read(true).open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        }
        let mut out = Vec::new();
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match self.keys.decode(line) {
                Some(e) => out.push(e),
                None => {
                    if count {
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(
                        file = %path.display(),
                        line = i + 1,
                        bytes = line.len(),
                        "skipping a spill line whose tag does not verify (torn, edited, planted, or signed with another secret)"
                    );
                }
            }
        }
        Ok(out)
    }

    /// Replaces a log file with `rest` (removes it when empty), atomically.
    fn rewrite<T: serde::Serialize>(&self, path: &Path, rest: &[T]) -> Result<(), BufferError> {
        if rest.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("tmp");
        let mut buf = Vec::new();
        for e in rest {
            buf.extend(self.keys.encode(e).map_err(|e| self.io(e))?);
        }
        {
            let mut f = private_file()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| self.io(e))?;
            f.write_all(&buf).map_err(|e| self.io(e))?;
            f.sync_data().map_err(|e| self.io(e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| self.io(e))
    }
}

impl OutageBuffer {
    /// A buffer for outcomes the store cannot take now: a write-ahead log at `spill`, or, with
    /// none, up to `capacity` outcomes in memory. Refused when another process holds `spill`.
    pub fn new(
        capacity: usize,
        spill: Option<PathBuf>,
        keys: FileKeys,
    ) -> Result<Self, BufferError> {
        Ok(Self {
            memory: Mutex::new(VecDeque::new()),
            capacity,
            spill: spill
                .map(|p| Spill::open(p, keys))
                .transpose()?
                .map(Arc::new),
        })
    }

    /// A memory-only buffer (no file, nothing to refuse).
    pub fn in_memory(capacity: usize) -> Self {
        Self {
            memory: Mutex::new(VecDeque::new()),
            capacity,
            spill: None,
        }
    }

    /// Keeps one outcome for later. With a spill file, returns once it is on disk.
    pub async fn push(&self, mut event: OutcomeEvent) -> Result<(), BufferError> {
        // Accepted during an outage is accepted: its replay is not refused by a reuse quota.
        event.quota = None;
        let Some(spill) = &self.spill else {
            let mut mem = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
            if mem.len() < self.capacity {
                mem.push_back(event);
                return Ok(());
            }
            return Err(BufferError::Full(self.capacity));
        };
        let line = spill.keys.encode(&event).map_err(|e| spill.io(e))?;
        let (done, written) = tokio::sync::oneshot::channel();
        let gone = || spill.io(std::io::Error::other("spill writer stopped"));
        // Counted before the write: a drain may read the line and subtract it before this
        // call resumes, and the count must never dip below zero.
        spill.waiting.fetch_add(1, Ordering::Relaxed);
        let result = match spill.writer.send((line, done)) {
            Err(_) => Err(gone()),
            Ok(()) => match written.await {
                Err(_) => Err(gone()),
                Ok(r) => r.map_err(|e| spill.io(std::io::Error::other(e))),
            },
        };
        if result.is_err() {
            spill.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    /// Outcomes waiting, in memory and on disk (no file is read).
    pub fn len(&self) -> usize {
        let mem = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        mem + self
            .spill
            .as_ref()
            .map_or(0, |s| s.waiting.load(Ordering::Relaxed))
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The carry-over file beside the spill file: what a shutdown could not send to the store
    /// other than outcomes (the books' counter batches), for the next start.
    fn carry_over_path(&self) -> Option<PathBuf> {
        self.spill.as_ref().map(|s| s.path.with_extension("carry"))
    }

    /// Writes `items` to the carry-over file (replacing it; removing it when empty), durably.
    /// Without a spill file there is nowhere to keep them: an error saying so.
    pub fn save_carry_over<T: serde::Serialize>(&self, items: &[T]) -> Result<(), BufferError> {
        match (&self.spill, self.carry_over_path()) {
            (Some(s), Some(p)) => s.rewrite(&p, items),
            _ if items.is_empty() => Ok(()),
            _ => Err(BufferError::NoFile),
        }
    }

    /// Keeps the deployment's id beside the spill file, for a start while the store is down.
    pub fn remember_deployment(&self, id: &str) -> Result<(), BufferError> {
        match &self.spill {
            Some(s) => s.rewrite(&s.path.with_extension("deployment"), &[id]),
            None => Err(BufferError::NoFile),
        }
    }

    /// The deployment id a previous start kept ([`OutageBuffer::remember_deployment`]).
    pub fn recall_deployment(&self) -> Option<String> {
        let s = self.spill.as_ref()?;
        s.read::<String>(&s.path.with_extension("deployment"), false)
            .ok()?
            .pop()
    }

    /// Whether the buffer keeps a file (a spill file, with its carry-over file beside it).
    pub fn has_file(&self) -> bool {
        self.spill.is_some()
    }

    /// Appends `items` to the carry-over file, durably (one write and one `fsync`).
    pub fn append_carry_over<T: serde::Serialize>(&self, items: &[T]) -> Result<(), BufferError> {
        match (&self.spill, self.carry_over_path()) {
            _ if items.is_empty() => Ok(()),
            (Some(s), Some(p)) => {
                let lines = items
                    .iter()
                    .map(|i| s.keys.encode(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| s.io(e))?;
                let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
                let _claim = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
                append(&p, &lines).map_err(|e| s.io(e))
            }
            _ => Err(BufferError::NoFile),
        }
    }

    /// What a previous run left in the carry-over file (lines failing their checksum skipped
    /// and counted).
    pub fn load_carry_over<T: serde::de::DeserializeOwned>(&self) -> Vec<T> {
        match (&self.spill, self.carry_over_path()) {
            (Some(s), Some(p)) => s.read(&p, true).unwrap_or_else(|e| {
                tracing::error!(error = %e, "carry-over file unreadable");
                Vec::new()
            }),
            _ => Vec::new(),
        }
    }

    /// Nonces of the outcomes a previous run left in the spill file.
    pub fn recovered_nonces(&self) -> Vec<u64> {
        self.spill
            .as_ref()
            .map_or_else(Vec::new, |s| s.recovered.clone())
    }

    /// Spill lines skipped because their checksum did not match.
    pub fn rejected_lines(&self) -> u64 {
        self.spill
            .as_ref()
            .map_or(0, |s| s.rejected.load(Ordering::Relaxed))
    }

    /// Records everything waiting, the log files first (they hold the oldest), in order. Stops
    /// at the first store failure and keeps the rest. Returns the nonces recorded (or found to
    /// be duplicates) by this call. File work runs off the async workers.
    pub async fn drain(&self, store: &dyn StateStore, now_ms: u64) -> Result<Vec<u64>, StoreError> {
        let mut done = Vec::new();
        let unavailable = |e: BufferError| StoreError::Unavailable(e.to_string());
        if let Some(spill) = &self.spill {
            // File work runs on the blocking pool: a large backlog must not stall a worker
            // that Route calls are waiting on.
            let blocking = |f: FileWork| {
                let spill = spill.clone();
                async move {
                    tokio::task::spawn_blocking(move || f(&spill))
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("spill task: {e}")))?
                        .map_err(unavailable)
                }
            };
            // Claim the spill file unless an earlier, interrupted drain still holds one.
            let claimed = blocking(Box::new(|s: &Spill| {
                let draining = s.draining_path();
                let _claim = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
                if !draining.exists() && s.path.exists() {
                    std::fs::rename(&s.path, &draining).map_err(|e| s.io(e))?;
                }
                s.read(&draining, true)
            }))
            .await?;
            for (i, e) in claimed.iter().enumerate() {
                if let Err(err) = store.record(e, now_ms).await {
                    // Keep what is left for the next drain, then give up for now.
                    let rest = claimed[i..].to_vec();
                    blocking(Box::new(move |s: &Spill| {
                        s.rewrite(&s.draining_path(), &rest).map(|()| Vec::new())
                    }))
                    .await?;
                    spill.waiting.fetch_sub(i, Ordering::Relaxed);
                    return Err(err);
                }
                done.push(e.nonce);
            }
            blocking(Box::new(|s: &Spill| {
                s.rewrite::<OutcomeEvent>(&s.draining_path(), &[])
                    .map(|()| Vec::new())
            }))
            .await?;
            spill.waiting.fetch_sub(claimed.len(), Ordering::Relaxed);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One deployment's key, the same across the restarts a test plays.
    fn key() -> FileKeys {
        FileKeys::new(vec![[7u8; 32]])
    }
    use crate::store::contract::event;
    use crate::store::failing::{FailingStore, Fault, Op};
    use crate::store::{MemoryStore, Recorded, StateStore};

    /// A file in a directory of this test process's own (the buffer refuses a shared one).
    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tw-buffer-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .unwrap();
        dir.join(format!("{name}.jsonl"))
    }

    fn fresh(name: &str) -> PathBuf {
        let path = temp(name);
        for ext in ["jsonl", "draining", "tmp"] {
            let _ = std::fs::remove_file(path.with_extension(ext));
        }
        path
    }

    #[tokio::test]
    async fn every_outcome_is_on_disk_before_push_returns_and_drains_in_order_exactly_once() {
        let path = fresh("order");
        let buf = OutageBuffer::new(2, Some(path.clone()), key()).unwrap();
        for n in 0..5 {
            buf.push(event(n)).await.unwrap();
            // On disk already, whatever the memory capacity says.
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            assert_eq!(lines as u64, n + 1);
        }
        assert_eq!(buf.len(), 5);
        let store = MemoryStore::new();
        // One of them already made it before the outage: drained as a duplicate, not twice.
        assert_eq!(store.record(&event(3), 0).await.unwrap(), Recorded::New);
        assert_eq!(buf.drain(&store, 0).await.unwrap().len(), 5);
        assert!(buf.is_empty());
        assert!(!path.with_extension("draining").exists());
        let (log, _) = store.events_since(0, 100).await.unwrap();
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        assert_eq!(nonces, vec![3, 0, 1, 2, 4]);
        assert!(!path.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pushes_all_land_once() {
        let path = fresh("concurrent");
        let buf = Arc::new(OutageBuffer::new(0, Some(path.clone()), key()).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let buf = buf.clone();
                tokio::spawn(async move { buf.push(event(n)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(buf.len(), 200);
        let store = MemoryStore::new();
        buf.drain(&store, 0).await.unwrap();
        let (log, _) = store.events_since(0, 1000).await.unwrap();
        let mut nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        nonces.sort_unstable();
        assert_eq!(nonces, (0..200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_interrupted_drain_resumes_and_new_spills_are_kept() {
        let path = fresh("resume");
        let buf = OutageBuffer::new(0, Some(path.clone()), key()).unwrap();
        for n in 0..3 {
            buf.push(event(n)).await.unwrap();
        }
        // A store that fails after one record: the drain stops with two left.
        let flaky = FailingStore::new(MemoryStore::new()).fail(Fault::on(Op::Record).after(1));
        assert!(buf.drain(&flaky, 0).await.is_err());
        // Spilled while the drain held its file: goes to a fresh spill file.
        buf.push(event(9)).await.unwrap();
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
    async fn what_a_crash_leaves_is_replayed_by_the_next_start() {
        let path = fresh("crash");
        let buf = OutageBuffer::new(100, Some(path.clone()), key()).unwrap();
        buf.push(event(1)).await.unwrap();
        buf.push(event(2)).await.unwrap();
        // The process dies here: no shutdown, no flush.
        drop(buf);
        let next_start = OutageBuffer::new(100, Some(path.clone()), key()).unwrap();
        assert_eq!(next_start.len(), 2);
        assert_eq!(next_start.recovered_nonces(), vec![1, 2]);
        let store = MemoryStore::new();
        next_start.drain(&store, 0).await.unwrap();
        assert_eq!(store.events_since(0, 10).await.unwrap().0.len(), 2);
    }

    #[tokio::test]
    async fn a_torn_or_edited_line_is_skipped_and_counted() {
        let path = fresh("torn");
        let mut bytes = key().encode(&event(1)).unwrap();
        // Planted: a valid record with a made-up checksum, and one with none at all.
        let mut planted = event(7);
        planted.counters = vec![crate::store::CounterAdd {
            hash: "budget".into(),
            field: "used".into(),
            delta: -1_000_000_000_000,
        }];
        let json = serde_json::to_string(&planted).unwrap();
        bytes.extend(format!("0123456789abcdef {json}\n{json}\n").into_bytes());
        // Planted with a correct unkeyed checksum (the old line format) and with another
        // deployment's key: neither verifies.
        let sha: String = <sha2::Sha256 as sha2::Digest>::digest(json.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        bytes.extend(format!("{sha} {json}\n").into_bytes());
        bytes.extend(FileKeys::new(vec![[9u8; 32]]).encode(&planted).unwrap());
        // A crash cut the last record mid-character: no newline, invalid UTF-8.
        let torn = key().encode(&event(2)).unwrap();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&path, &bytes).unwrap();
        let buf = OutageBuffer::new(0, Some(path.clone()), key()).unwrap();
        buf.push(event(3)).await.unwrap();
        let store = MemoryStore::new();
        buf.drain(&store, 0).await.unwrap();
        let (log, _) = store.events_since(0, 10).await.unwrap();
        let nonces: Vec<u64> = log.iter().map(|e| e.nonce).collect();
        assert_eq!(nonces, vec![1, 3]);
        assert!(buf.is_empty());
        // Counted once, when the drain consumed the file.
        assert_eq!(buf.rejected_lines(), 5);
    }

    #[test]
    fn a_directory_others_may_write_to_or_a_planted_link_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let path = fresh("perms");
        let dir = path
            .parent()
            .unwrap()
            .join(format!("open-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let Err(e) = OutageBuffer::new(0, Some(dir.join("spill.jsonl")), key()) else {
            panic!("a world-writable directory was accepted");
        };
        assert!(e.to_string().contains("chmod 700"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A spill file that is a link to another file: refused, the target untouched.
        let target = dir.join("victim");
        std::fs::write(&target, "keep me\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("spill.jsonl")).unwrap();
        assert!(OutageBuffer::new(0, Some(dir.join("spill.jsonl")), key()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spill_file_belongs_to_one_process() {
        let path = fresh("owned");
        let first = OutageBuffer::new(0, Some(path.clone()), key()).unwrap();
        assert!(matches!(
            OutageBuffer::new(0, Some(path.clone()), key()),
            Err(BufferError::InUse(_))
        ));
        drop(first);
        assert!(OutageBuffer::new(0, Some(path), key()).is_ok());
    }

    #[tokio::test]
    async fn without_a_spill_file_a_full_buffer_says_so() {
        let buf = OutageBuffer::in_memory(1);
        buf.push(event(1)).await.unwrap();
        assert!(matches!(
            buf.push(event(2)).await,
            Err(BufferError::Full(1))
        ));
    }
}
