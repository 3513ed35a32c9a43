//! The write-ahead log: group-committed segment files of CRC32C-framed ops,
//! recovery on open, and online snapshots.
//!
//! Appending is a short critical section (frame the op into the pending
//! buffer, take a log sequence number); one writer thread writes the whole
//! pending buffer and calls `fdatasync` once for everything that arrived
//! meanwhile, then publishes the durable sequence number. Acknowledgements wait
//! on that number, never on the disk directly.
//!
//! Data directory layout:
//! ```text
//! LOCK                 held (flock) while a relay uses the directory
//! node-id              this node's HLC actor id
//! wal/<seq>.seg        segments: 24-byte header, then frames
//! snapshots/<seq>/     snapshot covering segments <= seq: MANIFEST + one file per space
//! quarantine/          damaged segments and torn tails, kept as evidence
//! ledger/shipped       written by the ledger sidecar: segments confirmed in object storage
//! ```

pub mod handoff;
pub mod segment;
pub mod snapshot;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aether_core::OpRef;
use aether_core::record::{FILE_HEADER, WAL_MAGIC, file_header, put_frame_with};
use tokio::sync::watch;

use crate::metrics::Metrics;
pub use segment::{OnCorrupt, Replayer, State};
use segment::{list_segments, segment_name};
use snapshot::sync_dir;

/// WAL settings.
#[derive(Clone)]
pub struct WalConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// Seal a segment past this size.
    pub segment_bytes: u64,
    /// Snapshot once this many sealed bytes are uncovered.
    pub snapshot_after_bytes: u64,
    /// Most bytes waiting for the writer; appends beyond are refused (overload).
    pub max_pending_bytes: usize,
    /// What to do with corrupt records found while recovering.
    pub on_corrupt: OnCorrupt,
    /// The mesh's shard count: snapshots are then grouped by shard.
    pub shards: Option<u32>,
    /// Seal a segment that holds data once its first record is this old, so
    /// that a ledger sidecar never lags the relay by more (`None`: by size only).
    pub seal_after: Option<Duration>,
    /// A ledger sidecar ships this directory: see [`handoff`].
    pub ledger: Option<LedgerHandoff>,
    /// Fault injection for tests: called by the writer before each fdatasync;
    /// an error is treated as the sync failing.
    pub before_sync: Option<SyncHook>,
}

impl WalConfig {
    /// A WAL for tools, benches and tests: 64 MiB segments, no snapshots, no
    /// overload limit, corruption refused. The relay builds its own from flags.
    pub fn unbounded(dir: &Path) -> Self {
        WalConfig {
            dir: dir.to_owned(),
            segment_bytes: 64 << 20,
            snapshot_after_bytes: u64::MAX,
            max_pending_bytes: usize::MAX,
            on_corrupt: OnCorrupt::Fail,
            shards: None,
            seal_after: None,
            ledger: None,
            before_sync: None,
        }
    }
}

/// Settings of the hand-off to a ledger sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerHandoff {
    /// Most bytes of segments not yet in object storage; above, appends are refused.
    pub backlog_max_bytes: u64,
}

/// See [`WalConfig::before_sync`].
pub type SyncHook = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// The durable watermark published by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    /// Every record with a sequence number up to this one is on disk.
    pub lsn: u64,
    /// The writer hit an I/O error; nothing will become durable any more.
    pub failed: bool,
}

/// An append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The writer is too far behind.
    #[error("the write-ahead log is overloaded, try again")]
    Overloaded,
    /// The writer failed or the WAL is closed.
    #[error("the write-ahead log is unavailable")]
    Unavailable,
    /// Object storage is too far behind: the unshipped backlog is over its bound.
    #[error("the ledger backlog is full (object storage is behind); try another relay")]
    Backlog,
}

/// Opening the data directory failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the lock.
    #[error("data dir {0} is in use by another process")]
    Locked(PathBuf),
    /// I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// A WAL segment could not be replayed.
    #[error(transparent)]
    Replay(#[from] segment::ReplayError),
    /// A snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let context = context.into();
    move |source| OpenError::Io { context, source }
}

/// What recovery found, for logs.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The snapshot loaded, if any (covered segment).
    pub snapshot: Option<u64>,
    /// Segments replayed.
    pub segments: usize,
    /// Ops replayed from snapshot and segments.
    pub ops: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Torn tail truncated: (segment, offset).
    pub truncated: Option<(u64, u64)>,
    /// Corrupt records skipped.
    pub skipped: usize,
    /// Time taken.
    pub elapsed: std::time::Duration,
}

pub(crate) struct Pending {
    buf: Vec<u8>,
    records: u64,
    last_lsn: u64,
    closed: bool,
}

pub(crate) struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    /// Mirrors `durable.failed` for the append path (no lock to read it).
    failed: AtomicBool,
    max_pending_bytes: usize,
    /// Checksum salt of every segment this process writes (random per boot).
    salt: u32,
    /// The segment the writer has open.
    open_segment: AtomicU64,
    /// The ledger backlog is over its bound (sidecar mode): appends are refused.
    backlog_full: AtomicBool,
    /// The last measured ledger backlog (sidecar mode).
    backlog: Mutex<Option<handoff::Backlog>>,
}

/// Handle to the WAL. Cheap to share behind an `Arc`.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    snapshotter: Mutex<Option<JoinHandle<()>>>,
    _lock: File,
}

impl Wal {
    /// Locks the data directory, recovers its state (latest snapshot + later
    /// segments, truncating a torn tail) and starts the writer in a new segment.
    pub fn open(cfg: &WalConfig, metrics: &Metrics) -> Result<(Wal, State, Recovery), OpenError> {
        let started = Instant::now();
        let wal_dir = cfg.dir.join("wal");
        let snap_dir = cfg.dir.join("snapshots");
        let brand_new = !wal_dir.exists() && !snap_dir.exists();
        for d in [&cfg.dir, &wal_dir, &snap_dir] {
            fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
        }
        let lock_path = cfg.dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(io_ctx(format!("creating {}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked(cfg.dir.clone()));
        }
        if brand_new && cfg.ledger.is_some() {
            handoff::mark_complete_history(&cfg.dir).map_err(io_ctx("writing ledger/complete-history"))?;
        } else if cfg.ledger.is_none() {
            // Without a sidecar, snapshots delete segments: the history is no longer whole.
            handoff::clear_complete_history(&cfg.dir).map_err(io_ctx("removing ledger/complete-history"))?;
        }
        // Leftovers of a crash inside `rewrite_without_damage`.
        for entry in fs::read_dir(&wal_dir).map_err(io_ctx("listing wal/"))? {
            let path = entry.map_err(io_ctx("listing wal/"))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(io_ctx(format!("removing {}", path.display())))?;
            }
        }
        for entry in fs::read_dir(&snap_dir).map_err(io_ctx("listing snapshots"))? {
            let path = entry.map_err(io_ctx("listing snapshots"))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_dir_all(&path).map_err(io_ctx(format!("removing {}", path.display())))?;
            }
        }

        let mut replayer = Replayer::new();
        let mut rec = Recovery::default();
        let mut covered = 0;
        if let Some((seq, dir)) = snapshot::latest(&snap_dir).map_err(io_ctx("listing snapshots"))? {
            snapshot::load(&dir, &mut replayer)?;
            covered = seq;
            rec.snapshot = Some(seq);
        }
        let segments = list_segments(&wal_dir).map_err(io_ctx("listing WAL segments"))?;
        let mut last_seq = covered;
        let mut uncovered_bytes = 0;
        let (stale, live): (Vec<_>, Vec<_>) = segments.into_iter().partition(|(seq, _)| *seq <= covered);
        // With a ledger sidecar, covered segments stay until the store has them.
        let shipped = match cfg.ledger {
            None => u64::MAX,
            Some(_) => handoff::read_shipped(&cfg.dir).map(|s| s.segments_through).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable ledger marker; keeping every WAL segment until the sidecar rewrites it");
                0
            }),
        };
        let mut kept = 0;
        for (seq, path) in stale {
            if seq > shipped {
                kept += 1;
                continue;
            }
            // Leftovers of a clean-up interrupted after a snapshot covered them.
            fs::remove_file(&path).map_err(io_ctx(format!("removing covered {}", path.display())))?;
        }
        for (i, (seq, path)) in live.iter().enumerate() {
            let last = i + 1 == live.len();
            last_seq = last_seq.max(*seq);
            let outcome = match replayer.replay_segment(path, last, cfg.on_corrupt) {
                Ok(outcome) => outcome,
                // An unreadable header: nothing in the file can be trusted or replayed.
                Err(segment::ReplayError::Corrupt { offset: 0, reason, .. }) if cfg.on_corrupt == OnCorrupt::Skip => {
                    let dest = quarantine(&cfg.dir, path, &segment_name(*seq))?;
                    fs::remove_file(path).map_err(io_ctx(format!("removing {}", path.display())))?;
                    tracing::error!(segment = %path.display(), %reason, copy = %dest.display(),
                        "skipped a WAL segment with a damaged header; it is kept in quarantine");
                    rec.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            rec.segments += 1;
            if outcome.torn_tail {
                rec.truncated = Some((*seq, outcome.valid_len));
                // Keep the torn bytes as evidence before cutting them off.
                let tail = fs::read(path).map_err(io_ctx(format!("reading {}", path.display())))?;
                if let Some(torn) = tail.get(outcome.valid_len as usize..).filter(|t| !t.is_empty()) {
                    let name = format!("{}.tail-at-{}", segment_name(*seq), outcome.valid_len);
                    quarantine_bytes(&cfg.dir, &name, torn)?;
                }
                let f = OpenOptions::new().write(true).open(path).map_err(io_ctx("opening torn segment"))?;
                f.set_len(outcome.valid_len).map_err(io_ctx("truncating torn segment"))?;
                tracing::warn!(segment = %path.display(), offset = outcome.valid_len, "truncated torn WAL tail");
            }
            if !outcome.skipped.is_empty() {
                rec.skipped += outcome.skipped.len();
                // The copy is taken after a torn tail was cut (the tail is kept on its own).
                let dest = quarantine(&cfg.dir, path, &segment_name(*seq))?;
                // Rewrite it without the damaged records, so that nothing later (snapshots,
                // the next boot) needs --wal-skip-corrupt again.
                segment::rewrite_without_damage(path, last).map_err(io_ctx(format!("rewriting {}", path.display())))?;
                tracing::warn!(segment = %path.display(), copy = %dest.display(), offsets = ?outcome.skipped,
                    "skipped corrupt WAL records; the original segment is kept in quarantine");
            }
            if outcome.valid_len <= FILE_HEADER as u64 && outcome.skipped.is_empty() {
                // Nothing in it (e.g. a restart without writes): not worth keeping.
                fs::remove_file(path).map_err(io_ctx(format!("removing empty {}", path.display())))?;
                continue;
            }
            // What was replayed (and may already have been shown to clients) must be on disk
            // before anything is acknowledged on top of it: the last run may have died between
            // write(2) and fdatasync.
            File::open(path).and_then(|f| f.sync_all()).map_err(io_ctx(format!("syncing {}", path.display())))?;
            uncovered_bytes += outcome.valid_len;
            kept += 1;
        }
        sync_dir(&wal_dir).map_err(io_ctx("syncing wal/"))?;
        let state = replayer.finish();
        rec.ops = state.ops;
        rec.bytes = state.bytes;

        let seq = last_seq + 1;
        let salt = rand::random::<u32>();
        let file = create_segment(&wal_dir, seq, salt).map_err(io_ctx("creating a WAL segment"))?;
        metrics.wal_segments.set(kept + 1);
        let (durable, _) = watch::channel(Durable::default());
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { buf: Vec::with_capacity(1 << 20), records: 0, last_lsn: 0, closed: false }),
            wake: Condvar::new(),
            durable,
            failed: AtomicBool::new(false),
            max_pending_bytes: cfg.max_pending_bytes,
            salt,
            open_segment: AtomicU64::new(seq),
            backlog_full: AtomicBool::new(false),
            backlog: Mutex::new(None),
        });
        metrics.wal_seal_after.set(cfg.seal_after.map_or(0.0, |d| d.as_secs_f64()));
        let (sealed_tx, sealed_rx) = std::sync::mpsc::channel();
        let snapshotter = writer::spawn_snapshotter(
            shared.clone(),
            cfg.clone(),
            covered,
            uncovered_bytes,
            sealed_rx,
            metrics.clone(),
        )
        .map_err(io_ctx("starting the snapshot thread"))?;
        let writer = writer::spawn_writer(shared.clone(), cfg.clone(), file, seq, sealed_tx, metrics.clone())
            .map_err(io_ctx("starting the WAL writer thread"))?;
        rec.elapsed = started.elapsed();
        let wal =
            Wal { shared, writer: Mutex::new(Some(writer)), snapshotter: Mutex::new(Some(snapshotter)), _lock: lock };
        Ok((wal, state, rec))
    }

    /// Appends one op; returns its log sequence number. Never blocks on I/O.
    pub fn append(&self, op: OpRef<'_>) -> Result<u64, AppendError> {
        let mut p = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.closed || self.shared.failed.load(Ordering::Acquire) {
            return Err(AppendError::Unavailable);
        }
        if p.buf.len() >= self.shared.max_pending_bytes {
            return Err(AppendError::Overloaded);
        }
        if self.shared.backlog_full.load(Ordering::Relaxed) {
            return Err(AppendError::Backlog);
        }
        let was_empty = p.buf.is_empty();
        put_frame_with(&mut p.buf, self.shared.salt, |o| op.encode(o));
        p.records += 1;
        p.last_lsn += 1;
        let lsn = p.last_lsn;
        drop(p);
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(lsn)
    }

    /// The sequence number of the last record appended (durable or not).
    pub fn last_lsn(&self) -> u64 {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).last_lsn
    }

    /// True once a write or sync failed: nothing more can become durable.
    pub fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The last measured ledger backlog, with a ledger sidecar configured.
    pub fn ledger_backlog(&self) -> Option<handoff::Backlog> {
        *self.shared.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while the ledger backlog is over its bound and appends are refused.
    pub fn is_backlog_full(&self) -> bool {
        self.shared.backlog_full.load(Ordering::Relaxed)
    }

    /// The durable watermark; `wait_for(|d| d.lsn >= lsn || d.failed)` to await a record.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// Flushes everything appended, stops the writer and the snapshot thread.
    pub fn close(&self) {
        {
            let mut p = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.closed = true;
        }
        self.shared.wake.notify_all();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
        if let Some(h) = self.snapshotter.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Copies `path` to `quarantine/name`, durably (file and directories synced)
/// before the caller changes or removes the original; returns the copy's path.
fn quarantine(dir: &Path, path: &Path, name: &str) -> Result<PathBuf, OpenError> {
    let bytes = fs::read(path).map_err(io_ctx(format!("reading {}", path.display())))?;
    quarantine_bytes(dir, name, &bytes)
}

fn quarantine_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, OpenError> {
    let q = dir.join("quarantine");
    fs::create_dir_all(&q).map_err(io_ctx("creating quarantine/"))?;
    let dest = q.join(name);
    let mut f = File::create(&dest).map_err(io_ctx(format!("creating {}", dest.display())))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_ctx(format!("writing {}", dest.display())))?;
    sync_dir(&q).and_then(|_| sync_dir(dir)).map_err(io_ctx("syncing quarantine/"))?;
    Ok(dest)
}

fn create_segment(wal_dir: &Path, seq: u64, salt: u32) -> io::Result<File> {
    let path = wal_dir.join(segment_name(seq));
    let mut f = OpenOptions::new().create_new(true).append(true).open(&path)?;
    f.write_all(&file_header(WAL_MAGIC, seq, salt))?;
    f.sync_all()?;
    sync_dir(wal_dir)?;
    Ok(f)
}

/// Reads (or creates) the node's persistent actor id.
pub fn node_id(dir: &Path) -> io::Result<u64> {
    let path = dir.join("node-id");
    match fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The top bit is clear: ids with it set belong to native clients' actors.
            let id = (rand::random::<u64>() & !(1 << 63)) | 1;
            let tmp = dir.join("node-id.tmp");
            let mut f = File::create(&tmp)?;
            writeln!(f, "{id:016x}")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn publish_failed(shared: &Shared) {
    shared.failed.store(true, Ordering::Release);
    shared.durable.send_modify(|d| d.failed = true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::Stamp;

    fn cfg(dir: &Path) -> WalConfig {
        // One segment for everything these tests write.
        WalConfig { segment_bytes: 1 << 30, ..WalConfig::unbounded(dir) }
    }

    fn write_ops(dir: &Path, n: u64, keys: u64) {
        let (wal, _, _) = Wal::open(&cfg(dir), &Metrics::new()).unwrap();
        let value = [b'v'; 100];
        for i in 0..n {
            let key = format!("key-{}", i % keys);
            let space = if i % 3 == 0 { "a" } else { "b" };
            let v = (i % 10 != 0).then_some(&value[..(i % 100) as usize]);
            let stamp = Stamp { wall_ns: 1_000 + i / 2, counter: (i % 2) as u32, actor: 1 + i % 3 };
            wal.append(OpRef { space, key: key.as_bytes(), value: v, stamp, origin: 1 }).unwrap();
        }
        wal.close();
    }

    /// The parallel replay path (files above the threshold) and the sequential
    /// one rebuild byte-identical spaces.
    #[test]
    fn parallel_replay_equals_sequential() {
        let dir = tempfile::tempdir().unwrap();
        write_ops(dir.path(), 120_000, 5_000);
        let (_, seg) = list_segments(&dir.path().join("wal")).unwrap().into_iter().next().unwrap();
        assert!(fs::metadata(&seg).unwrap().len() as usize > segment::PARALLEL_MIN_BYTES, "segment too small");
        let replay = |workers| {
            let mut r = Replayer::with_workers(workers);
            let out = r.replay_segment(&seg, true, OnCorrupt::Fail).unwrap();
            assert!(!out.torn_tail);
            r.finish()
        };
        let one = replay(1);
        let three = replay(3);
        assert_eq!(one.ops, 120_000);
        assert_eq!(three.ops, 120_000);
        assert_eq!(one.max_stamp, three.max_stamp);
        assert_eq!(one.spaces.len(), 2);
        for (name, space) in &one.spaces {
            assert_eq!(space.digest(), three.spaces[name].digest(), "space {name}");
            assert_eq!(space.live_len(), three.spaces[name].live_len());
        }
    }

    #[test]
    fn reopening_recovers_and_continues_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        write_ops(dir.path(), 1_000, 100);
        let (wal, state, rec) = Wal::open(&cfg(dir.path()), &Metrics::new()).unwrap();
        assert_eq!(rec.ops, 1_000);
        assert_eq!(state.spaces["a"].len() + state.spaces["b"].len(), 200);
        assert_eq!(state.max_stamp, Stamp { wall_ns: 1_000 + 999 / 2, counter: 1, actor: 1 });
        drop(wal);
        let seqs = || list_segments(&dir.path().join("wal")).unwrap().into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(), vec![1, 2]);
        // A restart without writes leaves no empty segment behind.
        let (wal, state, _) = Wal::open(&cfg(dir.path()), &Metrics::new()).unwrap();
        assert_eq!(state.ops, 1_000);
        drop(wal);
        assert_eq!(seqs(), vec![1, 3]);
    }

    #[test]
    fn durable_watermark_follows_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = Wal::open(&cfg(dir.path()), &Metrics::new()).unwrap();
        let mut durable = wal.durable();
        let op = OpRef { space: "s", key: b"k", value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        let lsns: Vec<u64> = (0..50).map(|_| wal.append(op).unwrap()).collect();
        assert_eq!(lsns, (1..=50).collect::<Vec<_>>());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let d = tokio::time::timeout(std::time::Duration::from_secs(20), durable.wait_for(|d| d.lsn >= 50))
                .await
                .expect("durable in time")
                .unwrap();
            assert!(!d.failed);
        });
        wal.close();
        assert_eq!(wal.append(op), Err(AppendError::Unavailable));
    }

    /// The durable watermark moves only after the sync returns.
    #[test]
    fn durable_is_published_only_after_fdatasync_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let mut c = cfg(dir.path());
        c.before_sync = Some(Arc::new(move || {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
            Ok(())
        }));
        let (wal, _, _) = Wal::open(&c, &Metrics::new()).unwrap();
        let durable = wal.durable();
        let op = OpRef { space: "s", key: b"k", value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        let lsn = wal.append(op).unwrap();
        entered_rx.recv().unwrap();
        // The writer is inside the sync: the record is written but not yet durable.
        assert_eq!(durable.borrow().lsn, 0);
        release_tx.send(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut d = durable.clone();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(20), d.wait_for(|d| d.lsn >= lsn))
                .await
                .unwrap()
                .unwrap();
        });
        drop(release_tx);
        wal.close();
    }

    /// A failed fdatasync poisons the WAL: nothing more becomes durable or is accepted.
    #[test]
    fn a_failed_sync_poisons_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.before_sync = Some(Arc::new(|| Err(io::Error::other("injected EIO"))));
        let (wal, _, _) = Wal::open(&c, &Metrics::new()).unwrap();
        let mut durable = wal.durable();
        let op = OpRef { space: "s", key: b"k", value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        wal.append(op).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let d = rt.block_on(async {
            *tokio::time::timeout(std::time::Duration::from_secs(20), durable.wait_for(|d| d.failed))
                .await
                .unwrap()
                .unwrap()
        });
        assert_eq!(d, Durable { lsn: 0, failed: true });
        assert_eq!(wal.append(op), Err(AppendError::Unavailable));
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn segment_seqs(dir: &Path) -> Vec<u64> {
        list_segments(&dir.join("wal")).unwrap().into_iter().map(|(s, _)| s).collect()
    }

    /// A segment with data is sealed once its first record is `seal_after` old,
    /// without waiting for more writes; an idle segment is never sealed.
    #[test]
    fn segments_seal_by_age_only_when_they_hold_data() {
        let dir = tempfile::tempdir().unwrap();
        let c = WalConfig { seal_after: Some(std::time::Duration::from_millis(200)), ..cfg(dir.path()) };
        let (wal, _, _) = Wal::open(&c, &Metrics::new()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(segment_seqs(dir.path()), vec![1], "an empty segment is not sealed");
        let op = OpRef { space: "s", key: b"k", value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        wal.append(op).unwrap();
        wait_until("the segment to be sealed by age", || segment_seqs(dir.path()) == vec![1, 2]);
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(segment_seqs(dir.path()), vec![1, 2], "the new, empty segment stays open");
        drop(wal);
        let (_, state, _) = Wal::open(&cfg(dir.path()), &Metrics::new()).unwrap();
        assert_eq!(state.ops, 1);
    }

    /// With a ledger sidecar, a snapshot does not delete segments the store does
    /// not have; they go once the marker covers them. Over the backlog bound,
    /// appends are refused until the sidecar catches up.
    #[test]
    fn sidecar_mode_keeps_unshipped_segments_and_bounds_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let c = WalConfig {
            segment_bytes: 4096,
            snapshot_after_bytes: 8192,
            ledger: Some(LedgerHandoff { backlog_max_bytes: 64 * 1024 }),
            ..cfg(dir.path())
        };
        let (wal, _, _) = Wal::open(&c, &metrics).unwrap();
        let mut durable = wal.durable();
        let value = [b'v'; 200];
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut write = |n: usize| -> Result<(), AppendError> {
            for i in 0..n {
                let key = format!("k{i}");
                let op =
                    OpRef { space: "s", key: key.as_bytes(), value: Some(&value), stamp: Stamp::default(), origin: 0 };
                let lsn = wal.append(op)?;
                rt.block_on(durable.wait_for(|d| d.lsn >= lsn)).unwrap();
            }
            Ok(())
        };
        write(100).unwrap();
        wait_until("a snapshot", || snapshot::latest(&dir.path().join("snapshots")).unwrap().is_some());
        let (covered, _) = snapshot::latest(&dir.path().join("snapshots")).unwrap().unwrap();
        assert!(segment_seqs(dir.path())[0] == 1, "segment 1 is covered by snapshot {covered} but not shipped");
        handoff::write_shipped(dir.path(), handoff::Shipped { segments_through: 2 }).unwrap();
        wait_until("shipped and covered segments to go", || segment_seqs(dir.path())[0] == 3);
        wait_until("the backlog to be measured", || wal.ledger_backlog().is_some_and(|b| b.segments > 0));
        assert!(!wal.is_backlog_full());
        // Nothing more is shipped: past 64 KiB of backlog, writes are refused.
        let refused = write(1_000).unwrap_err();
        assert_eq!(refused, AppendError::Backlog);
        assert!(wal.is_backlog_full());
        assert_eq!(metrics.ledger_backlog_full.get(), 1);
        let last = *segment_seqs(dir.path()).last().unwrap();
        handoff::write_shipped(dir.path(), handoff::Shipped { segments_through: last - 1 }).unwrap();
        wait_until("the backlog to drain", || !wal.is_backlog_full());
        write(1).unwrap();
    }

    #[test]
    fn overload_is_refused_not_buffered_forever() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.max_pending_bytes = 0;
        let (wal, _, _) = Wal::open(&c, &Metrics::new()).unwrap();
        let op = OpRef { space: "s", key: b"k", value: Some(b"1"), stamp: Stamp::default(), origin: 0 };
        // With no room at all, the first append already finds the buffer "full".
        assert_eq!(wal.append(op), Err(AppendError::Overloaded));
    }
}
