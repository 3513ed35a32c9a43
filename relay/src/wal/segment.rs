//! WAL segment files: naming, listing, and replaying their records.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aether_core::record::{FILE_HEADER, FrameError, Frames, WAL_MAGIC, next_valid_frame, parse_file_header};
use aether_core::{Op, Space, Stamp};
use bytes::Bytes;

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
    pub spaces: HashMap<String, Space>,
    /// Greatest stamp of any replayed op.
    pub max_stamp: Stamp,
    /// Ops replayed (duplicates and superseded ones included).
    pub ops: u64,
    /// Bytes of ledger files read.
    pub bytes: u64,
}

impl State {
    /// Merges one op.
    pub fn apply(&mut self, op: Op) {
        self.ops += 1;
        self.max_stamp = self.max_stamp.max(op.stamp);
        let space = match self.spaces.get_mut(op.space.as_str()) {
            Some(s) => s,
            None => self.spaces.entry(op.space).or_default(),
        };
        space.merge(&op.key, op.value.as_deref(), op.stamp);
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

/// Replays segment `path` into `state`. A bad record with nothing intact after
/// it is a torn tail when `last` (the segment being written at a crash);
/// anything else is corruption, handled per `on_corrupt`.
pub fn replay_segment(
    path: &Path,
    last: bool,
    on_corrupt: OnCorrupt,
    state: &mut State,
) -> Result<SegmentReplay, ReplayError> {
    let io_err = |source| ReplayError::Io { path: path.to_owned(), source };
    let buf = Bytes::from(fs::read(path).map_err(io_err)?);
    state.bytes += buf.len() as u64;
    let corrupt = |offset: usize, reason: String| ReplayError::Corrupt { path: path.to_owned(), offset, reason };
    match parse_file_header(WAL_MAGIC, &buf) {
        Ok(_) => {}
        // A segment whose header never reached the disk holds nothing.
        Err(FrameError::Truncated { .. }) if last => {
            return Ok(SegmentReplay { valid_len: 0, torn_tail: true, skipped: vec![] });
        }
        Err(e) => return Err(corrupt(0, e.to_string())),
    }
    let mut skipped = Vec::new();
    let mut frames = Frames::new(&buf, FILE_HEADER);
    while let Some(frame) = frames.next() {
        let (offset, reason) = match frame {
            Ok(f) => {
                let start = f.payload.as_ptr() as usize - buf.as_ptr() as usize;
                match Op::decode(buf.slice(start..start + f.payload.len())) {
                    Ok(op) => {
                        state.apply(op);
                        continue;
                    }
                    // The checksum matched, so these bytes were written as they are: a real corruption
                    // (or a bug), never a torn write.
                    Err(e) => {
                        let next = f.offset + aether_core::record::FRAME_HEADER + f.payload.len();
                        match on_corrupt {
                            OnCorrupt::Fail => return Err(corrupt(f.offset, e.to_string())),
                            OnCorrupt::Skip => {
                                tracing::error!(path = %path.display(), offset = f.offset, error = %e, "skipping undecodable WAL record");
                                skipped.push(f.offset);
                                frames.resume_at(next);
                                continue;
                            }
                        }
                    }
                }
            }
            Err(e) => (e.offset(), e.to_string()),
        };
        match next_valid_frame(&buf, offset) {
            None if last => {
                return Ok(SegmentReplay { valid_len: offset as u64, torn_tail: true, skipped });
            }
            next => match on_corrupt {
                OnCorrupt::Fail => return Err(corrupt(offset, reason)),
                OnCorrupt::Skip => {
                    tracing::error!(path = %path.display(), offset, %reason, "skipping corrupt WAL record");
                    skipped.push(offset);
                    match next {
                        Some(p) => frames.resume_at(p),
                        None => break,
                    }
                }
            },
        }
    }
    Ok(SegmentReplay { valid_len: buf.len() as u64, torn_tail: false, skipped })
}
