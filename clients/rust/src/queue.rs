//! The offline queue: this client's writes that no relay has acknowledged yet,
//! bounded by op count, and its persistence (with the actor id and the HLC's
//! last stamp) in a queue file written atomically (tmp + fsync + rename).
//!
//! One process at a time uses a queue file: [`lock`] takes an exclusive lock
//! on `FILE.lock` next to it (the file itself is replaced on every write, so
//! it cannot carry the lock).
//!
//! Sans-IO apart from [`write_atomic`], [`load`] and [`lock`], which are
//! plain blocking file functions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use aether_core::Stamp;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Client-chosen id of a write, unique for the life of the client (so unique
/// per connection, as the protocol requires).
pub type WriteId = u64;

/// Value of the queue file's `format` field.
pub const FORMAT: &str = "aether-client-queue";
/// Version of the queue file format.
pub const VERSION: u32 = 1;
/// Largest queue file read (bounds memory on a corrupt or hostile file).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// One op of a queued write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedOp {
    /// The key.
    pub key: String,
    /// JSON text, or `None` for a delete.
    pub value: Option<Bytes>,
    /// The stamp (this client's actor).
    pub stamp: Stamp,
}

/// A write waiting for its ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWrite {
    /// The space.
    pub space: String,
    /// Its ops, applied atomically by the relay.
    pub ops: Vec<QueuedOp>,
}

/// The queue is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("offline queue is full ({max} ops)")]
pub struct QueueFull {
    /// The bound.
    pub max: usize,
}

/// Unacknowledged writes in the order they were made.
#[derive(Debug, Clone)]
pub struct Queue {
    writes: BTreeMap<WriteId, QueuedWrite>,
    ops: usize,
    max_ops: usize,
    next_id: WriteId,
}

impl Queue {
    /// An empty queue holding at most `max_ops` ops.
    pub fn new(max_ops: usize) -> Self {
        Queue { writes: BTreeMap::new(), ops: 0, max_ops, next_id: 1 }
    }

    /// Appends a write; refused when its ops would exceed the bound.
    pub fn push(&mut self, write: QueuedWrite) -> Result<WriteId, QueueFull> {
        if self.ops + write.ops.len() > self.max_ops {
            return Err(QueueFull { max: self.max_ops });
        }
        Ok(self.push_unbounded(write))
    }

    /// Appends writes loaded from a queue file, even past the bound (new
    /// writes are refused until acks bring the queue under it again).
    pub fn restore(&mut self, writes: impl IntoIterator<Item = QueuedWrite>) -> Vec<WriteId> {
        writes.into_iter().map(|w| self.push_unbounded(w)).collect()
    }

    fn push_unbounded(&mut self, write: QueuedWrite) -> WriteId {
        let id = self.next_id;
        self.next_id += 1;
        self.ops += write.ops.len();
        self.writes.insert(id, write);
        id
    }

    /// Removes an acknowledged (or refused) write.
    pub fn remove(&mut self, id: WriteId) -> Option<QueuedWrite> {
        let w = self.writes.remove(&id)?;
        self.ops -= w.ops.len();
        Some(w)
    }

    /// The write `id`, while queued.
    pub fn get(&self, id: WriteId) -> Option<&QueuedWrite> {
        self.writes.get(&id)
    }

    /// Queued writes, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (WriteId, &QueuedWrite)> {
        self.writes.iter().map(|(id, w)| (*id, w))
    }

    /// Ops queued.
    pub fn ops(&self) -> usize {
        self.ops
    }

    /// Writes queued.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// What a queue file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFile {
    /// The client's actor id (top bit set).
    pub actor: u64,
    /// The last stamp the client's clock issued.
    pub last_stamp: Stamp,
    /// Unacknowledged writes, oldest first.
    pub writes: Vec<QueuedWrite>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    format: String,
    version: u32,
    actor: u64,
    last_stamp: DocStamp,
    writes: Vec<DocWrite>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocStamp {
    wall_ns: u64,
    counter: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocWrite {
    space: String,
    ops: Vec<DocOp>,
}

/// The value is kept as a string of JSON text, so that a stored `null` stays
/// distinct from a delete and the exact text survives.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocOp {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    delete: bool,
    stamp: DocStamp,
}

/// Serializes the queue, the actor and the clock's last stamp.
pub fn encode(actor: u64, last_stamp: Stamp, queue: &Queue) -> Vec<u8> {
    let writes = queue
        .iter()
        .map(|(_, w)| DocWrite {
            space: w.space.clone(),
            ops: w
                .ops
                .iter()
                .map(|op| DocOp {
                    key: op.key.clone(),
                    value: op.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                    delete: op.value.is_none(),
                    stamp: DocStamp { wall_ns: op.stamp.wall_ns, counter: op.stamp.counter },
                })
                .collect(),
        })
        .collect();
    let doc = Doc {
        format: FORMAT.into(),
        version: VERSION,
        actor,
        last_stamp: DocStamp { wall_ns: last_stamp.wall_ns, counter: last_stamp.counter },
        writes,
    };
    let mut out = serde_json::to_vec(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Parses and checks a queue file's contents.
pub fn decode(bytes: &[u8]) -> Result<QueueFile, String> {
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| format!("not a readable queue file ({e})"))?;
    if doc.format != FORMAT {
        return Err(format!("format {:?} is not {FORMAT:?}", doc.format));
    }
    if doc.version != VERSION {
        return Err(format!("version {} is not supported ({VERSION} is)", doc.version));
    }
    if doc.actor >> 63 != 1 {
        return Err(format!("actor {} does not have its top bit set", doc.actor));
    }
    let actor = doc.actor;
    let stamp = |s: &DocStamp| Stamp { wall_ns: s.wall_ns, counter: s.counter, actor };
    let mut writes = Vec::with_capacity(doc.writes.len());
    for (i, w) in doc.writes.into_iter().enumerate() {
        if w.space.is_empty() || w.ops.is_empty() {
            return Err(format!("write #{i}: empty space name or no ops"));
        }
        let mut ops = Vec::with_capacity(w.ops.len());
        for op in w.ops {
            let value = match (op.value, op.delete) {
                (Some(v), false) => {
                    serde_json::from_str::<serde::de::IgnoredAny>(&v)
                        .map_err(|e| format!("write #{i}, key {:?}: value is not JSON ({e})", op.key))?;
                    Some(Bytes::from(v))
                }
                (None, true) => None,
                _ => return Err(format!("write #{i}, key {:?}: needs exactly one of value and delete", op.key)),
            };
            ops.push(QueuedOp { key: op.key, value, stamp: stamp(&op.stamp) });
        }
        writes.push(QueuedWrite { space: w.space, ops });
    }
    Ok(QueueFile { actor, last_stamp: stamp(&doc.last_stamp), writes })
}

/// Reads a queue file; `Ok(None)` when it does not exist yet.
pub fn load(path: &Path) -> Result<Option<QueueFile>, Error> {
    let fail = |reason: String| Error::QueueFile { path: path.to_path_buf(), reason };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("{} bytes, more than the {MAX_FILE_BYTES} allowed", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    decode(&bytes).map(Some).map_err(|reason| fail(format!("{reason}; move it away to start with an empty queue")))
}

/// Replaces `path` with `bytes` atomically: a crash leaves either the old or
/// the new file, never a mix. Writes `path.tmp`, fsyncs it, renames it over
/// `path`, then fsyncs the directory so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

fn tmp_path(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The lock file of a queue file: `FILE.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

/// An exclusive lock on a queue file, held until dropped (or the process
/// ends: the OS releases it, so a crash leaves no stale lock).
#[derive(Debug)]
pub struct QueueLock {
    _file: std::fs::File,
}

/// Locks `path` for this process: a second client (in this process or
/// another) using the same queue file gets a clear `Error::QueueFile`.
pub fn lock(path: &Path) -> Result<QueueLock, Error> {
    let lock = lock_path(path);
    let fail = |reason: String| Error::QueueFile { path: path.to_path_buf(), reason };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| fail(format!("creating its lock file {}: {e}", lock.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(QueueLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(fail(format!(
            "in use by another client (locked through {}); give each client its own queue file",
            lock.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(fail(format!("locking {}: {e}", lock.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTOR: u64 = (1 << 63) | 42;

    fn st(w: u64) -> Stamp {
        Stamp { wall_ns: w, counter: 3, actor: ACTOR }
    }

    fn write(space: &str, n: usize) -> QueuedWrite {
        let ops = (0..n)
            .map(|i| QueuedOp {
                key: format!("k{i}"),
                value: if i % 2 == 0 { Some(Bytes::from(format!("{{\"i\": {i}}}"))) } else { None },
                stamp: st(100 + i as u64),
            })
            .collect();
        QueuedWrite { space: space.into(), ops }
    }

    #[test]
    fn bounded_by_ops_and_ordered() {
        let mut q = Queue::new(5);
        let a = q.push(write("s", 2)).unwrap();
        let b = q.push(write("t", 3)).unwrap();
        assert_eq!(q.push(write("u", 1)), Err(QueueFull { max: 5 }));
        assert_eq!((q.ops(), q.len()), (5, 2));
        assert_eq!(q.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(q.remove(a).unwrap().space, "s");
        assert!(q.remove(a).is_none());
        assert_eq!(q.ops(), 3);
        let c = q.push(write("u", 2)).unwrap();
        assert!(c > b, "ids are never reused");
    }

    #[test]
    fn file_round_trip_keeps_null_values_deletes_and_order() {
        let mut q = Queue::new(100);
        q.push(write("board", 3)).unwrap();
        let nulls = QueuedWrite {
            space: "other".into(),
            ops: vec![QueuedOp { key: "n".into(), value: Some(Bytes::from_static(b" null ")), stamp: st(7) }],
        };
        q.push(nulls.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        assert_eq!(load(&path).unwrap(), None);
        write_atomic(&path, &encode(ACTOR, st(500), &q)).unwrap();
        assert!(!dir.path().join("queue.json.tmp").exists());
        let f = load(&path).unwrap().unwrap();
        assert_eq!(f.actor, ACTOR);
        assert_eq!(f.last_stamp, st(500));
        assert_eq!(f.writes, vec![write("board", 3), nulls]);

        let mut restored = Queue::new(1);
        restored.restore(f.writes);
        assert_eq!(restored.ops(), 4);
        assert!(restored.push(write("x", 1)).is_err());
    }

    #[test]
    fn one_client_at_a_time_per_queue_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        let held = lock(&path).unwrap();
        let err = lock(&path).unwrap_err().to_string();
        assert!(err.contains("in use by another client") && err.contains("queue.json.lock"), "{err}");
        // Another file is independent; the lock goes with its holder.
        let other = lock(&dir.path().join("other.json")).unwrap();
        drop(held);
        let again = lock(&path).unwrap();
        drop((again, other));
        let err = lock(&dir.path().join("missing-dir").join("q.json")).unwrap_err().to_string();
        assert!(err.contains("creating its lock file"), "{err}");
    }

    #[test]
    fn corrupt_or_truncated_files_give_clear_errors() {
        let mut q = Queue::new(100);
        q.push(write("board", 4)).unwrap();
        let good = encode(ACTOR, st(1), &q);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        for cut in [0, 1, good.len() / 2, good.len() - 3] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(err.contains("not a readable queue file") && err.contains("move it away"), "{err}");
        }
        std::fs::write(&path, b"\xff\xfe garbage").unwrap();
        assert!(load(&path).is_err());

        let text = String::from_utf8(good).unwrap();
        let cases = [
            (text.replace(FORMAT, "other"), "format"),
            (text.replace("\"version\":1", "\"version\":9"), "version"),
            (text.replace(&ACTOR.to_string(), "42"), "top bit"),
            (text.replace("{\\\"i\\\": 0}", "{nope"), "not JSON"),
            (text.replace("\"delete\":true", "\"delete\":true,\"value\":\"1\""), "exactly one"),
            (text.replace("\"writes\":", "\"extra\":1,\"writes\":"), "unknown field"),
        ];
        for (bad, why) in cases {
            assert_ne!(bad, text, "case {why} did not change the file");
            let err = decode(bad.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
