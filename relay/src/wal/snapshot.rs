//! Snapshots: the winning op of every key (tombstones included), one file per
//! space, in a directory named for the last WAL segment it covers. In a mesh
//! the files are grouped by shard (`shard-NNNNN/space-NNNNNNNN.snap`) and the
//! manifest names each file's space and shard, so one shard's snapshot can be
//! shipped and restored on its own.
//!
//! A snapshot is built off the hot path from the previous snapshot and the
//! sealed segments on disk (never from live state), so writing one never
//! blocks writers. Boot = latest snapshot + the segments after it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aether_core::OpRef;
use aether_core::record::{FILE_HEADER, Frames, SNAPSHOT_MAGIC, file_header, parse_file_header, put_frame_with};
use aether_proto::v1::SnapshotHeader;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::segment::{Apply, Replayer, State};

/// The `MANIFEST` of a snapshot directory, written last.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Every WAL segment with a sequence number up to this one is covered.
    pub covers_segment: u64,
    /// Files of the snapshot, one per space, relative to the snapshot directory.
    pub files: Vec<String>,
    /// Entries written, over all spaces.
    pub entries: u64,
    /// The mesh's shard count when files are grouped by shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Space and shard of each file, in the order of `files` (mesh snapshots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contents: Vec<FileContents>,
}

/// What one snapshot file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContents {
    /// The space.
    pub space: String,
    /// Its shard.
    pub shard: u32,
    /// Entries in the file.
    pub entries: u64,
}

/// Name of the snapshot directory covering segments up to `seq`.
pub fn snapshot_dir_name(seq: u64) -> String {
    format!("{seq:020}")
}

/// The newest complete snapshot under `root`: `(covers_segment, dir)`.
/// Directories without a manifest (interrupted writes) are ignored.
pub fn latest(root: &Path) -> io::Result<Option<(u64, PathBuf)>> {
    let mut best = None;
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        let Some(seq) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if path.join("MANIFEST").is_file() && best.as_ref().is_none_or(|(s, _)| seq > *s) {
            best = Some((seq, path));
        }
    }
    Ok(best)
}

/// A snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// I/O failure.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Damaged content.
    #[error("snapshot {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Loads snapshot `dir` through `replayer`.
pub fn load(dir: &Path, replayer: &mut Replayer) -> Result<Manifest, SnapshotError> {
    let manifest_path = dir.join("MANIFEST");
    let raw = fs::read(&manifest_path).map_err(|source| SnapshotError::Io { path: manifest_path.clone(), source })?;
    let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| SnapshotError::Corrupt {
        path: manifest_path.clone(),
        offset: 0,
        reason: e.to_string(),
    })?;
    for name in &manifest.files {
        let path = dir.join(name);
        replayer.read(&path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
        replayer.scan(|buf, _, apply| scan_snapshot(buf, &path, apply))?;
    }
    Ok(manifest)
}

fn scan_snapshot(buf: &[u8], path: &Path, apply: &mut Apply<'_>) -> Result<(), SnapshotError> {
    let corrupt = |offset, reason: String| SnapshotError::Corrupt { path: path.to_owned(), offset, reason };
    let salt = parse_file_header(SNAPSHOT_MAGIC, buf).map_err(|e| corrupt(0, e.to_string()))?.salt;
    let mut frames = Frames::new(buf, FILE_HEADER, salt);
    let header = match frames.next() {
        Some(Ok(f)) => SnapshotHeader::decode(f.payload).map_err(|e| corrupt(f.offset, e.to_string()))?,
        Some(Err(e)) => return Err(corrupt(e.offset(), e.to_string())),
        None => return Err(corrupt(FILE_HEADER, "missing snapshot header".into())),
    };
    let mut count = 0u64;
    for frame in frames {
        let f = frame.map_err(|e| corrupt(e.offset(), e.to_string()))?;
        let op = OpRef::decode(f.payload).map_err(|e| corrupt(f.offset, e.to_string()))?;
        apply(&header.space, &op);
        count += 1;
    }
    if count != header.ops {
        return Err(corrupt(0, format!("header announces {} ops, file holds {count}", header.ops)));
    }
    Ok(())
}

/// Writes `state` as the snapshot covering segments up to `covers_segment`,
/// atomically: a temporary directory, fsynced, then renamed into place. With
/// `shards`, files are grouped in one directory per shard.
pub fn write(root: &Path, covers_segment: u64, state: &State, shards: Option<u32>) -> io::Result<PathBuf> {
    let final_dir = root.join(snapshot_dir_name(covers_segment));
    let tmp = root.join(format!("{}.tmp", snapshot_dir_name(covers_segment)));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let mut files = Vec::with_capacity(state.spaces.len());
    let mut contents = Vec::new();
    let mut entries = 0u64;
    let mut names: Vec<&String> = state.spaces.keys().collect();
    names.sort_unstable();
    let mut buf = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let space = &state.spaces[name];
        buf.clear();
        let salt = rand::random::<u32>();
        buf.extend_from_slice(&file_header(SNAPSHOT_MAGIC, covers_segment, salt));
        let header = SnapshotHeader { space: name.clone(), ops: space.len() as u64 };
        put_frame_with(&mut buf, salt, |o| header.encode(o).expect("Vec grows"));
        for (key, entry) in space.iter() {
            // The space name lives in the header; ops carry it empty.
            let op = OpRef { space: "", key, value: entry.value.as_deref(), stamp: entry.stamp, origin: 0 };
            put_frame_with(&mut buf, salt, |o| op.encode(o));
        }
        entries += space.len() as u64;
        let file_name = match shards {
            Some(s) => {
                let shard = aether_core::placement::shard_of(name, s);
                let dir = format!("shard-{shard:05}");
                if !tmp.join(&dir).is_dir() {
                    fs::create_dir(tmp.join(&dir))?;
                }
                contents.push(FileContents { space: name.clone(), shard, entries: space.len() as u64 });
                format!("{dir}/space-{i:08}.snap")
            }
            None => format!("space-{i:08}.snap"),
        };
        let mut f = File::create(tmp.join(&file_name))?;
        f.write_all(&buf)?;
        f.sync_data()?;
        files.push(file_name);
    }
    if shards.is_some() {
        for c in contents.iter().map(|c| c.shard).collect::<std::collections::BTreeSet<_>>() {
            sync_dir(&tmp.join(format!("shard-{c:05}")))?;
        }
    }
    let manifest = Manifest { covers_segment, files, entries, shards, contents };
    let mut f = File::create(tmp.join("MANIFEST"))?;
    f.write_all(&serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?)?;
    f.sync_data()?;
    sync_dir(&tmp)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp, &final_dir)?;
    sync_dir(root)?;
    Ok(final_dir)
}

/// Makes a directory's entries (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_core::Stamp;

    #[test]
    fn mesh_snapshots_group_files_by_shard_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::default();
        for i in 0..20u64 {
            let name = format!("space-{i}");
            let op = OpRef {
                space: "",
                key: b"k",
                value: Some(b"v"),
                stamp: Stamp { wall_ns: i + 1, counter: 0, actor: 1 },
                origin: 0,
            };
            state.apply(&name, &op);
        }
        let written = write(dir.path(), 7, &state, Some(8)).unwrap();
        let mut replayer = Replayer::new();
        let manifest = load(&written, &mut replayer).unwrap();
        assert_eq!((manifest.shards, manifest.contents.len(), manifest.entries), (Some(8), 20, 20));
        for (file, c) in manifest.files.iter().zip(&manifest.contents) {
            assert_eq!(c.shard, aether_core::placement::shard_of(&c.space, 8));
            assert!(file.starts_with(&format!("shard-{:05}/", c.shard)), "{file}");
            assert!(written.join(file).is_file());
        }
        let back = replayer.finish();
        assert_eq!(back.spaces.len(), 20);
        for (name, space) in &state.spaces {
            assert_eq!(back.spaces[name].digest(), space.digest());
        }
        // Without shards (dev mode) the layout is flat, as before.
        let flat = write(dir.path(), 8, &state, None).unwrap();
        let manifest = load(&flat, &mut Replayer::new()).unwrap();
        assert!(manifest.shards.is_none() && manifest.contents.is_empty());
        assert!(manifest.files.iter().all(|f| !f.contains('/')));
    }
}
