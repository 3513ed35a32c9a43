//! WAL segment files: naming, listing, and replaying their records.

use std::collections::HashMap;
use std::fs;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};

use aether_core::record::{
    FILE_HEADER, FrameError, Frames, WAL_MAGIC, file_header, next_valid_frame, parse_file_header, put_frame_with,
};
use aether_core::space::MapHasher;
use aether_core::{OpRef, Space, Stamp};

/// File name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// The segments in `dir`, sorted by sequence number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()) {
            out.push((seq, path));
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// In-memory state rebuilt from a ledger: spaces by name and the greatest stamp seen.
#[derive(Debug, Default)]
pub struct State {
    /// Spaces by name.
    pub spaces: HashMap<String, Space, MapHasher>,
    /// Greatest stamp of any replayed op.
    pub max_stamp: Stamp,
    /// Ops replayed (duplicates and superseded ones included).
    pub ops: u64,
    /// Bytes of ledger files read.
    pub bytes: u64,
}

impl State {
    /// Merges one op into space `space` (the op's own space field is ignored,
    /// so snapshot ops, which carry it empty, use their file's space).
    pub fn apply(&mut self, space: &str, op: &OpRef<'_>) {
        self.ops += 1;
        self.max_stamp = self.max_stamp.max(op.stamp);
        // Look up by &str first: the name is allocated once per space, not per op.
        let target = match self.spaces.get_mut(space) {
            Some(s) => s,
            None => self.spaces.entry(space.to_owned()).or_default(),
        };
        target.merge(op.key, op.value, op.stamp);
    }
}

/// What to do with a bad record that is not a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorrupt {
    /// Refuse: return an error naming the file and offset.
    Fail,
    /// Log it and continue at the next intact record.
    Skip,
}

/// A segment could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// I/O failure reading the file.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A damaged record with intact records after it (or in a sealed segment).
    #[error(
        "corrupt WAL record in {path} at offset {offset}: {reason}; refusing to start so that no data is silently \
         dropped (start with --wal-skip-corrupt to skip it; the segment is then copied to quarantine/)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the bad record.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// How replaying one segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReplay {
    /// Length of the valid prefix: where a torn tail starts, or the file length.
    pub valid_len: u64,
    /// True when the file ended in a torn (partially written) record.
    pub torn_tail: bool,
    /// Offsets of corrupt records that were skipped.
    pub skipped: Vec<usize>,
}

/// Rebuilds state from ledger files using every core.
///
/// Checksums and decoding are cheap; what costs is the hash-map update of each
/// op, which misses the cache once the state outgrows it. So every worker scans
/// the whole file but applies only the ops whose key hashes to its partition;
/// partitions hold disjoint keys and are merged once at the end. Small files
/// are scanned once on the calling thread, routing each op to its partition.
pub struct Replayer {
    parts: Vec<State>,
    hasher: MapHasher,
    buf: Vec<u8>,
}

/// Files smaller than this are replayed on the calling thread.
pub(crate) const PARALLEL_MIN_BYTES: usize = 4 << 20;
/// Most replay threads.
const MAX_WORKERS: usize = 8;

/// Where a scan sends each decoded op: `(space, op)`.
pub type Apply<'a> = dyn FnMut(&str, &OpRef<'_>) + 'a;

impl Replayer {
    /// A replayer with one partition per available core.
    pub fn new() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WORKERS);
        Self::with_workers(n)
    }

    /// A replayer with `n` partitions (and up to `n` threads).
    pub fn with_workers(n: usize) -> Self {
        Self { parts: (0..n.max(1)).map(|_| State::default()).collect(), hasher: MapHasher::default(), buf: Vec::new() }
    }

    /// Reads `path` into the reused buffer.
    pub fn read(&mut self, path: &Path) -> io::Result<()> {
        use std::io::Read;
        self.buf.clear();
        let mut file = fs::File::open(path)?;
        self.buf.reserve(file.metadata()?.len() as usize);
        file.read_to_end(&mut self.buf)?;
        self.parts[0].bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Runs `scan` over the buffer, its `Apply` callback merging ops into their
    /// partitions. `scan` must be deterministic: in parallel mode each worker
    /// runs it, and the leader's (worker 0's, the only one told `true`) result is kept.
    pub fn scan<R: Send>(&mut self, scan: impl Fn(&[u8], bool, &mut Apply<'_>) -> R + Sync) -> R {
        let n = self.parts.len();
        let hasher = &self.hasher;
        let buf = &self.buf[..];
        if n == 1 || buf.len() < PARALLEL_MIN_BYTES {
            let parts = &mut self.parts;
            return scan(buf, true, &mut |space, op| {
                parts[hasher.hash_one(op.key) as usize % n].apply(space, op);
            });
        }
        std::thread::scope(|scope| {
            let scan = &scan;
            let mut workers: Vec<_> = self
                .parts
                .iter_mut()
                .enumerate()
                .map(|(i, part)| {
                    scope.spawn(move || {
                        scan(buf, i == 0, &mut |space, op| {
                            if hasher.hash_one(op.key) as usize % n == i {
                                part.apply(space, op);
                            }
                        })
                    })
                })
                .collect();
            let leader = workers.remove(0).join().expect("replay worker panicked");
            for w in workers {
                let _ = w.join().expect("replay worker panicked");
            }
            leader
        })
    }

    /// Replays WAL segment `path`. A bad record with nothing intact after it is
    /// a torn tail when `last` (the segment being written at a crash); anything
    /// else is corruption, handled per `on_corrupt`.
    pub fn replay_segment(
        &mut self,
        path: &Path,
        last: bool,
        on_corrupt: OnCorrupt,
    ) -> Result<SegmentReplay, ReplayError> {
        self.read(path).map_err(|source| ReplayError::Io { path: path.to_owned(), source })?;
        self.scan(|buf, leader, apply| scan_segment(buf, path, last, on_corrupt, leader, apply))
    }

    /// Merges the partitions into one state.
    pub fn finish(self) -> State {
        let mut parts = self.parts.into_iter();
        let mut state = parts.next().unwrap_or_default();
        for part in parts {
            state.ops += part.ops;
            state.bytes += part.bytes;
            state.max_stamp = state.max_stamp.max(part.max_stamp);
            for (name, space) in part.spaces {
                state.spaces.entry(name).or_default().absorb(space);
            }
        }
        state
    }
}

impl Default for Replayer {
    fn default() -> Self {
        Self::new()
    }
}

/// Rewrites segment `path` keeping only its intact records (re-framed with a
/// fresh salt), atomically: a temporary file, fsynced, renamed over it.
pub fn rewrite_without_damage(path: &Path, last: bool) -> io::Result<()> {
    let buf = fs::read(path)?;
    let seq = parse_file_header(WAL_MAGIC, &buf).map(|h| h.seq).unwrap_or_default();
    let salt = rand::random::<u32>();
    let mut out = file_header(WAL_MAGIC, seq, salt).to_vec();
    let mut keep = |_: &str, op: &OpRef<'_>| put_frame_with(&mut out, salt, |o| op.encode(o));
    scan_segment(&buf, path, last, OnCorrupt::Skip, false, &mut keep).map_err(io::Error::other)?;
    let tmp = path.with_extension("seg.tmp");
    let mut f = fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, &out)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn scan_segment(
    buf: &[u8],
    path: &Path,
    last: bool,
    on_corrupt: OnCorrupt,
    leader: bool,
    apply: &mut Apply<'_>,
) -> Result<SegmentReplay, ReplayError> {
    let corrupt = |offset: usize, reason: String| ReplayError::Corrupt { path: path.to_owned(), offset, reason };
    let salt = match parse_file_header(WAL_MAGIC, buf) {
        Ok(h) => h.salt,
        // A segment whose header never reached the disk holds nothing (a crash while it
        // was being created can leave it short or zero-filled).
        // (Only when nothing but zeros follows: the header is synced before any frame is
        // appended, so a zero header in front of data is damage, not a crash.)
        Err(_) if last && buf.iter().all(|&b| b == 0) => {
            return Ok(SegmentReplay { valid_len: 0, torn_tail: true, skipped: vec![] });
        }
        Err(FrameError::Truncated { .. }) if last => {
            return Ok(SegmentReplay { valid_len: 0, torn_tail: true, skipped: vec![] });
        }
        Err(e) => return Err(corrupt(0, e.to_string())),
    };
    let mut skipped = Vec::new();
    let mut frames = Frames::new(buf, FILE_HEADER, salt);
    while let Some(frame) = frames.next() {
        let (offset, reason, next) = match frame {
            Ok(f) => match OpRef::decode(f.payload) {
                Ok(op) => {
                    apply(op.space, &op);
                    continue;
                }
                // The checksum matched, so these bytes were written as they are: a real
                // corruption (or a bug), never a torn write. Skipping it skips just this frame.
                Err(e) => (f.offset, e.to_string(), Some(frames.position())),
            },
            Err(e) => {
                let next = next_valid_frame(buf, e.offset(), salt);
                if next.is_none() && last {
                    return Ok(SegmentReplay { valid_len: e.offset() as u64, torn_tail: true, skipped });
                }
                (e.offset(), e.to_string(), next)
            }
        };
        match on_corrupt {
            OnCorrupt::Fail => return Err(corrupt(offset, reason)),
            OnCorrupt::Skip => {
                if leader {
                    tracing::error!(path = %path.display(), offset, %reason, "skipping corrupt WAL record");
                }
                skipped.push(offset);
                match next {
                    Some(p) => frames.resume_at(p),
                    None => break,
                }
            }
        }
    }
    Ok(SegmentReplay { valid_len: buf.len() as u64, torn_tail: false, skipped })
}
