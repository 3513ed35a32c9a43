//! The ledger manifest: what the store holds for one relay, and the only
//! thing that makes an uploaded object part of the ledger.
//!
//! Every version is its own object, `manifest/<generation>.json`, written
//! with a create-only conditional put (`PutMode::Create`, i.e. S3
//! `If-None-Match: *`). A writer reads the newest generation G, changes it,
//! and creates G+1; if another writer created G+1 first, the put fails, and
//! it re-reads and re-applies its change. Two shippers (an old pod still
//! running during a roll), a shipper and `compact`, can therefore never lose
//! each other's updates or leave a half-written manifest. Create-only puts
//! work on every backend object_store offers, the local file system included
//! (which has no compare-and-swap on an existing object). Generations behind
//! the newest 16 and older than an hour are pruned; an update that took over
//! ten minutes from read to write starts over, so a pruned number is never
//! created again by a writer that read before it was pruned.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::store::Ledger;

/// Manifest format version written. 2: objects under unique keys (`object`,
/// `dir`); older binaries refuse it rather than misread it.
pub const FORMAT: u32 = 2;
/// Oldest format read (1: objects at `wal/<seq>.seg` and `snapshots/<seq>/`).
pub const MIN_FORMAT: u32 = 1;
/// Generations kept behind the newest.
const KEEP_GENERATIONS: u64 = 16;
/// Older generations are pruned only once they are this old...
const PRUNE_MIN_AGE: Duration = Duration::from_secs(3600);
/// ...and an update that took longer than this from reading to writing starts over,
/// so it can never recreate a generation number that was pruned meanwhile.
const MAX_UPDATE_AGE: Duration = Duration::from_secs(600);
/// Longest a manifest put may take.
const MAX_PUT: Duration = Duration::from_secs(60);
/// Most attempts of one update under contention.
const MAX_ATTEMPTS: usize = 64;

/// One relay's ledger in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// The mesh.
    pub mesh: String,
    /// The relay (pod name).
    pub node: String,
    /// Identity of the data directory history this ledger continues (`ledger/lineage`).
    pub lineage: String,
    /// This version's generation.
    pub generation: u64,
    /// Every local segment up to this one has been shipped (or is covered by a shipped snapshot).
    pub shipped_through: u64,
    /// Segments, by sequence number.
    pub segments: Vec<SegmentEntry>,
    /// Snapshots, by the segment they cover.
    pub snapshots: Vec<SnapshotEntry>,
    /// When this version was written (RFC 3339).
    pub updated_at: String,
}

/// A shipped WAL segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Sequence number.
    pub seq: u64,
    /// `shipped_through` before this segment: the chain that reveals gaps.
    pub prev: u64,
    /// Size.
    pub bytes: u64,
    /// CRC32C of the object.
    pub crc32c: u32,
    /// Ops.
    pub ops: u64,
    /// Smallest stamp wall time in it (ns since the epoch).
    pub min_wall_ns: u64,
    /// Greatest stamp wall time in it.
    pub max_wall_ns: u64,
    /// Its object, relative to the ledger. Each upload gets a key of its own
    /// (`wal/<seq>-<random>.seg`), so no upload ever overwrites a recorded one.
    /// Absent in format 1: `wal/<seq>.seg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// A shipped snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// It covers every segment up to this one.
    pub covers: u64,
    /// Entries over all spaces.
    pub entries: u64,
    /// Greatest stamp wall time of any entry: usable for point-in-time restores at or after it.
    pub max_wall_ns: u64,
    /// Files, `MANIFEST` first.
    pub files: Vec<FileEntry>,
    /// Where its objects are, relative to the ledger (default `snapshots/<covers>`);
    /// compaction writes each of its snapshots under a directory of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

/// One object of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the snapshot directory.
    pub name: String,
    /// Size.
    pub bytes: u64,
    /// CRC32C.
    pub crc32c: u32,
}

/// The result of checking a manifest's chain of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The segment whose predecessor is missing.
    pub seq: u64,
    /// The predecessor it names.
    pub prev: u64,
    /// What precedes it in the manifest (a segment or the base snapshot).
    pub found: u64,
}

/// Checks a relative path taken from a manifest before it becomes an object
/// or file name: no absolute paths, no `.`/`..` or empty parts, no backslashes.
pub fn check_relative(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if !ok {
        bail!("the manifest names {name:?}, which is not a plain relative path; refusing to use it");
    }
    Ok(())
}

impl Manifest {
    /// The newest snapshot.
    pub fn newest_snapshot(&self) -> Option<&SnapshotEntry> {
        self.snapshots.last()
    }

    /// Segments after `base` (a snapshot's `covers`, or 0), checked for gaps:
    /// each one's `prev` must be the one before it, the first one's at most `base`.
    pub fn chain_after(&self, base: u64) -> Result<Vec<&SegmentEntry>, Gap> {
        let mut out = Vec::new();
        let mut last = base;
        for s in self.segments.iter().filter(|s| s.seq > base) {
            let linked = if out.is_empty() { s.prev <= base } else { s.prev == last };
            if !linked {
                return Err(Gap { seq: s.seq, prev: s.prev, found: last });
            }
            last = s.seq;
            out.push(s);
        }
        Ok(out)
    }
}

/// Object of generation `g`.
fn generation_path(ledger: &Ledger, g: u64) -> Path {
    ledger.manifest_dir().join(format!("{g:020}.json"))
}

/// All generations present, ascending.
pub async fn generations(ledger: &Ledger) -> anyhow::Result<Vec<u64>> {
    let dir = ledger.manifest_dir();
    let metas: Vec<_> = ledger.store.list(Some(&dir)).try_collect().await.context("listing manifest generations")?;
    let mut gens: Vec<u64> =
        metas.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok()).collect();
    gens.sort_unstable();
    Ok(gens)
}

/// The newest generation, if any.
pub async fn latest_generation(ledger: &Ledger) -> anyhow::Result<Option<u64>> {
    Ok(generations(ledger).await?.last().copied())
}

/// Reads the newest manifest (`None`: the store has no ledger here).
pub async fn load(ledger: &Ledger) -> anyhow::Result<Option<Manifest>> {
    // A generation can be pruned between listing and reading: list again.
    for _ in 0..MAX_ATTEMPTS {
        let Some(g) = latest_generation(ledger).await? else { return Ok(None) };
        match ledger.download(&generation_path(ledger, g)).await {
            Ok(raw) => {
                let m: Manifest = serde_json::from_slice(&raw)
                    .with_context(|| format!("manifest {} is not valid", generation_path(ledger, g)))?;
                if !(MIN_FORMAT..=FORMAT).contains(&m.format) {
                    bail!(
                        "manifest {} has format {}, this tool reads {MIN_FORMAT} to {FORMAT} (upgrade aether-ledger)",
                        generation_path(ledger, g),
                        m.format
                    );
                }
                for d in m.snapshots.iter().filter_map(|s| s.dir.as_deref()) {
                    check_relative(d)?;
                }
                for o in m.segments.iter().filter_map(|s| s.object.as_deref()) {
                    check_relative(o)?;
                }
                if m.generation != g {
                    bail!("manifest {} says it is generation {}", generation_path(ledger, g), m.generation);
                }
                return Ok(Some(m));
            }
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e).context("reading the manifest"),
        }
    }
    bail!("the manifest kept changing while being read")
}

/// What an update decided.
pub enum Change {
    /// Write the changed manifest.
    Write,
    /// Nothing to change.
    Keep,
}

/// Applies `change` to the newest manifest (or to an empty one, when the store
/// has none, with `generation` 0) and writes the result as the next
/// generation, retrying on conflict. Returns the manifest now in the store.
///
/// `change` must be idempotent: a put whose reply was lost (and whose retry is
/// then refused as a conflict) did land, so the change can meet a manifest
/// that already holds it.
pub async fn update(
    ledger: &Ledger,
    mut change: impl FnMut(&mut Manifest) -> anyhow::Result<Change>,
    conflicts: impl Fn(),
) -> anyhow::Result<Manifest> {
    for attempt in 0..MAX_ATTEMPTS {
        let started = std::time::Instant::now();
        let current = load(ledger).await?;
        let mut m = current.clone().unwrap_or(Manifest { format: FORMAT, ..Manifest::default() });
        if let Change::Keep = change(&mut m)? {
            return Ok(m);
        }
        let next = current.as_ref().map_or(1, |c| c.generation + 1);
        m.generation = next;
        m.format = FORMAT;
        m.updated_at = now_rfc3339();
        // A generation number is reused only if it was pruned, and only generations older
        // than PRUNE_MIN_AGE are: a writer this slow starts over instead of creating one.
        if started.elapsed() > MAX_UPDATE_AGE {
            conflicts();
            continue;
        }
        let body = serde_json::to_vec_pretty(&m).context("encoding the manifest")?;
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let path = generation_path(ledger, next);
        let put = ledger.store.put_opts(&path, PutPayload::from(body), opts);
        // Bounded, so that read-to-write stays far below PRUNE_MIN_AGE. A put that timed out
        // may still land: callers' changes are idempotent, and the caller retries.
        let put =
            tokio::time::timeout(MAX_PUT, put).await.map_err(|_| anyhow::anyhow!("writing the manifest timed out"))?;
        match put {
            Ok(_) => {
                prune(ledger, next).await;
                return Ok(m);
            }
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                conflicts();
                tracing::debug!(generation = next, attempt, "manifest conflict; re-reading");
                let jitter = rand::random_range(1..=20u64 * (attempt as u64 + 1).min(10));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            Err(e) => return Err(e).context("writing the manifest"),
        }
    }
    bail!("gave up updating the manifest after {MAX_ATTEMPTS} conflicting writers")
}

/// Deletes generations older than the newest [`KEEP_GENERATIONS`]; best effort.
async fn prune(ledger: &Ledger, newest: u64) {
    if newest <= KEEP_GENERATIONS || !newest.is_multiple_of(8) {
        return;
    }
    let dir = ledger.manifest_dir();
    let Ok(metas) = ledger.store.list(Some(&dir)).try_collect::<Vec<_>>().await else { return };
    // Ages by the store's clock (the newest generation's time), not this host's.
    let Some(now) = metas.iter().map(|m| m.last_modified).max() else { return };
    let old_enough =
        |m: &object_store::ObjectMeta| (now - m.last_modified).to_std().is_ok_and(|age| age >= PRUNE_MIN_AGE);
    let gens = metas
        .iter()
        .filter(|m| old_enough(m))
        .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok());
    for g in gens.filter(|g| *g + KEEP_GENERATIONS <= newest) {
        if let Err(e) = ledger.store.delete(&generation_path(ledger, g)).await {
            tracing::debug!(generation = g, error = %e, "could not prune a manifest generation");
        }
    }
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

/// A segment entry for unit tests: sequence number and predecessor, the rest dummies.
#[cfg(test)]
pub(crate) fn test_segment(seq: u64, prev: u64) -> SegmentEntry {
    SegmentEntry { seq, prev, bytes: 1, crc32c: 0, ops: 1, min_wall_ns: 0, max_wall_ns: 0, object: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_segment as seg;

    #[test]
    fn chains_reveal_gaps() {
        let m = Manifest { segments: vec![seg(2, 0), seg(3, 2), seg(5, 3), seg(7, 6)], ..Manifest::default() };
        assert_eq!(m.chain_after(0).unwrap_err(), Gap { seq: 7, prev: 6, found: 5 });
        let m = Manifest { segments: vec![seg(2, 0), seg(3, 2), seg(5, 3)], ..Manifest::default() };
        assert_eq!(m.chain_after(0).unwrap().len(), 3);
        // After a snapshot covering 3, only 5 matters, and it links to at most 3.
        assert_eq!(m.chain_after(3).unwrap().iter().map(|s| s.seq).collect::<Vec<_>>(), vec![5]);
        let m = Manifest { segments: vec![seg(9, 8)], ..Manifest::default() };
        assert!(m.chain_after(3).is_err(), "segments 4..8 are missing");
    }
}
