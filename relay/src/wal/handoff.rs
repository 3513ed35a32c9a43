//! The hand-off between the relay and its ledger sidecar (`aether-ledger ship`).
//!
//! The sidecar uploads sealed WAL segments to object storage and, once the
//! store has confirmed an upload (object written and the store's manifest
//! updated), records the highest shipped segment in `ledger/shipped` with an
//! atomic rename. The relay only reads that file: with a sidecar configured
//! ([`WalConfig::ledger`](super::WalConfig::ledger)) it never deletes a segment
//! above the mark, even when a snapshot covers it, and it refuses writes once
//! the unshipped backlog passes its bound.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::segment::list_segments;
use super::snapshot::sync_dir;

/// The marker file, relative to the data directory.
pub const SHIPPED_FILE: &str = "ledger/shipped";

/// Present when every segment this data directory ever wrote is still on
/// disk or shipped: it was created in sidecar mode, which deletes nothing
/// unshipped. The sidecar's first shipment then starts the ledger at the first
/// segment, not at a snapshot, so point-in-time restores reach back to the start.
pub const COMPLETE_HISTORY_FILE: &str = "ledger/complete-history";

/// Writes [`COMPLETE_HISTORY_FILE`] (durably).
pub fn mark_complete_history(dir: &Path) -> io::Result<()> {
    let path = dir.join(COMPLETE_HISTORY_FILE);
    let parent = path.parent().expect("in a directory");
    fs::create_dir_all(parent)?;
    File::create(&path)?.sync_all()?;
    sync_dir(parent)?;
    sync_dir(dir)
}

/// Removes [`COMPLETE_HISTORY_FILE`] (a relay opened without a sidecar).
pub fn clear_complete_history(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(COMPLETE_HISTORY_FILE)) {
        Ok(()) => sync_dir(&dir.join("ledger")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Contents of the marker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipped {
    /// Every WAL segment with a sequence number up to this one is confirmed in the store.
    pub segments_through: u64,
}

/// Path of the marker in data directory `dir`.
pub fn shipped_path(dir: &Path) -> PathBuf {
    dir.join(SHIPPED_FILE)
}

/// Reads the marker; a missing file means nothing is shipped yet.
pub fn read_shipped(dir: &Path) -> io::Result<Shipped> {
    let path = shipped_path(dir);
    match fs::read(&path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Shipped::default()),
        Err(e) => Err(e),
    }
}

/// Writes the marker atomically and durably (temporary file, fsync, rename,
/// directory fsync). Only the sidecar calls this.
pub fn write_shipped(dir: &Path, shipped: Shipped) -> io::Result<()> {
    let path = shipped_path(dir);
    let parent = path.parent().expect("the marker lives in a directory");
    fs::create_dir_all(parent)?;
    let tmp = parent.join("shipped.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&shipped).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(parent)
}

/// What is on local disk and not yet in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Bytes of segments above the shipped mark (the open segment included).
    pub bytes: u64,
    /// Segments above the shipped mark (the open segment included).
    pub segments: u64,
    /// How long the oldest sealed segment above the mark has waited since it was last written.
    pub oldest_sealed: Duration,
}

/// Measures the backlog of `wal_dir` above `shipped`; `open` is the segment the writer has open.
pub fn backlog(wal_dir: &Path, shipped: u64, open: u64) -> io::Result<Backlog> {
    let mut b = Backlog::default();
    let now = SystemTime::now();
    for (seq, path) in list_segments(wal_dir)? {
        if seq <= shipped {
            continue;
        }
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        b.bytes += meta.len();
        b.segments += 1;
        if seq < open {
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            b.oldest_sealed = b.oldest_sealed.max(age);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_and_defaults_to_nothing_shipped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_shipped(dir.path()).unwrap(), Shipped::default());
        write_shipped(dir.path(), Shipped { segments_through: 42 }).unwrap();
        assert_eq!(read_shipped(dir.path()).unwrap().segments_through, 42);
        fs::write(shipped_path(dir.path()), b"{not json").unwrap();
        let err = read_shipped(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ledger/shipped"), "{err}");
    }
}
