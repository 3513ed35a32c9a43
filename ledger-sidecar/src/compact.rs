//! `aether-ledger compact`: folds old segments into a snapshot in the store
//! and applies the retention policy.
//!
//! Retention keeps point-in-time restores possible for `--retain` (default
//! 7 days): segments are folded only while every op in them is older than
//! the window, into a snapshot whose newest entry is therefore older too
//! (`max_wall_ns`), which is the base a restore to any instant inside the
//! window starts from. Then segments the new snapshot covers and older
//! snapshots are deleted; nothing the newest snapshot does not cover is ever
//! deleted. Objects no manifest names and older than `--orphan-grace` (an
//! upload cut short) go too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_relay::config::parse_duration;
use aether_relay::wal::segment::{Replayer, State};
use aether_relay::wal::snapshot::{self, snapshot_dir_name};
use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use futures_util::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::format;
use crate::manifest::{self, Change, FileEntry, Manifest, SnapshotEntry};
use crate::progress::Progress;
use crate::store::{Ledger, Selection, Store, StoreArgs};

/// `aether-ledger compact` flags.
#[derive(Debug, Clone, Args)]
pub struct CompactArgs {
    /// Store settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Which ledgers.
    #[command(flatten)]
    pub select: Selection,
    /// Keep point-in-time restores possible for this long (e.g. `168h`; `0` keeps only the newest state).
    #[arg(long, env = "AETHER_LEDGER_RETAIN", default_value = "168h", value_parser = parse_duration)]
    pub retain: Duration,
    /// Delete objects no manifest names once they are this old.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub orphan_grace: Duration,
}

/// What compacting one ledger did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The new snapshot's `covers`, when segments were folded.
    pub folded_into: Option<u64>,
    /// Segments folded.
    pub folded_segments: usize,
    /// Segment objects deleted.
    pub deleted_segments: usize,
    /// Snapshots deleted.
    pub deleted_snapshots: usize,
    /// Unreferenced objects deleted.
    pub deleted_orphans: usize,
}

/// Runs compaction over the selected ledgers.
pub async fn run(args: CompactArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let ledgers = store.select(&args.select).await?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let cutoff = now.saturating_sub(args.retain.as_nanos() as u64);
    let mut failed = 0;
    for (mesh, node) in &ledgers {
        let o = match compact_ledger(&store, mesh, node, cutoff, args.orphan_grace).await {
            Ok(o) => o,
            Err(e) => {
                // One bad ledger does not stop the others.
                eprintln!("error: compacting {mesh}/{node}: {e:#}");
                failed += 1;
                continue;
            }
        };
        println!(
            "compacted {mesh}/{node}: {}; deleted {} segments, {} snapshots, {} unreferenced objects",
            o.folded_into.map_or("nothing to fold".into(), |c| format!(
                "folded {} segments into the snapshot covering segment {c}",
                o.folded_segments
            )),
            o.deleted_segments,
            o.deleted_snapshots,
            o.deleted_orphans
        );
    }
    if failed > 0 {
        bail!("{failed} of {} ledgers could not be compacted (see above)", ledgers.len());
    }
    Ok(())
}

/// Compacts one ledger: ops stamped before `cutoff_ns` may be folded.
pub async fn compact_ledger(
    store: &Store,
    mesh: &str,
    node: &str,
    cutoff_ns: u64,
    orphan_grace: Duration,
) -> anyhow::Result<Outcome> {
    let ledger = store.ledger(mesh, node)?;
    let Some(m) = manifest::load(&ledger).await? else { bail!("the store has no ledger for {mesh}/{node}") };
    let base = m.snapshots.iter().rev().find(|s| s.max_wall_ns <= cutoff_ns);
    let covers = base.map_or(0, |s| s.covers);
    let chain = match m.chain_after(covers) {
        Ok(chain) => chain,
        // The ledger starts with a snapshot (its dir ran without a sidecar before) that is
        // still inside the window: there is no base to fold onto yet.
        Err(g)
            if base.is_none()
                && m.snapshots
                    .first()
                    .is_some_and(|s0| m.segments.first().is_some_and(|f| f.seq == g.seq && f.prev == s0.covers)) =>
        {
            Vec::new()
        }
        Err(g) => bail!("not compacting {mesh}/{node}: segment {} follows {}, which is missing", g.seq, g.prev),
    };
    let fold: Vec<_> = chain.iter().take_while(|s| s.max_wall_ns <= cutoff_ns).map(|s| (*s).clone()).collect();
    let mut outcome = Outcome::default();
    // A fold ending exactly at an existing snapshot would only repeat it: use that snapshot instead.
    let keep_from = match fold.last() {
        Some(last) if !m.snapshots.iter().any(|s| s.covers == last.seq) => {
            let entry = fold_into_snapshot(&ledger, base, &fold).await?;
            outcome.folded_into = Some(entry.covers);
            outcome.folded_segments = fold.len();
            let covers = entry.covers;
            manifest::update(
                &ledger,
                |m| {
                    if !m.snapshots.iter().any(|s| s.covers == covers) {
                        m.snapshots.push(entry.clone());
                        m.snapshots.sort_by_key(|s| s.covers);
                    }
                    Ok(Change::Write)
                },
                || {},
            )
            .await?;
            covers
        }
        Some(last) => last.seq,
        None => covers,
    };
    // Retention: what the snapshot at `keep_from` covers goes, older snapshots with it.
    let mut doomed: Vec<ObjectPath> = Vec::new();
    let after = manifest::update(
        &ledger,
        |m| {
            doomed.clear();
            let newest = m.newest_snapshot().map_or(0, |s| s.covers);
            let keep_from = keep_from.min(newest);
            for s in m.segments.iter().filter(|s| s.seq <= keep_from) {
                doomed.push(ledger.segment_object(s));
            }
            for s in m.snapshots.iter().filter(|s| s.covers < keep_from) {
                doomed.extend(s.files.iter().map(|f| ledger.snapshot_object(s, &f.name)));
            }
            let before = (m.segments.len(), m.snapshots.len());
            m.segments.retain(|s| s.seq > keep_from);
            m.snapshots.retain(|s| s.covers >= keep_from);
            outcome.deleted_segments = before.0 - m.segments.len();
            outcome.deleted_snapshots = before.1 - m.snapshots.len();
            Ok(if doomed.is_empty() { Change::Keep } else { Change::Write })
        },
        || {},
    )
    .await?;
    for object in &doomed {
        if let Err(e) = ledger.store.delete(object).await {
            tracing::warn!(%object, error = %e, "could not delete; `verify` will list it, the next compact retries");
        }
    }
    outcome.deleted_orphans = delete_orphans(&ledger, &after, orphan_grace).await?;
    Ok(outcome)
}

/// Loads `base` and the segments of `fold`, writes the folded state as a
/// snapshot covering the last of them, uploads it create-only, and returns its entry.
async fn fold_into_snapshot(
    ledger: &Ledger,
    base: Option<&SnapshotEntry>,
    fold: &[manifest::SegmentEntry],
) -> anyhow::Result<SnapshotEntry> {
    let covers = fold.last().expect("something to fold").seq;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut state = State::default();
    let mut shards = None;
    let mut max_wall_ns = 0;
    if let Some(s) = base {
        let dir = tmp.path().join("base").join(snapshot_dir_name(s.covers));
        for f in &s.files {
            manifest::check_relative(&f.name)?;
            let data = fetch_checked(ledger, &ledger.snapshot_object(s, &f.name), f.bytes, f.crc32c).await?;
            let dest = dir.join(&f.name);
            std::fs::create_dir_all(dest.parent().expect("in a directory"))?;
            std::fs::write(&dest, &data)?;
        }
        let mut replayer = Replayer::with_workers(1);
        shards = snapshot::load(&dir, &mut replayer)?.shards;
        state = replayer.finish();
        max_wall_ns = s.max_wall_ns;
    }
    let mut progress = Progress::new("compact", fold.iter().map(|s| s.bytes).sum());
    for s in fold {
        let object = ledger.segment_object(s);
        let data = fetch_checked(ledger, &object, s.bytes, s.crc32c).await?;
        format::for_each_op(&data, |space, op, _| state.apply(space, op))
            .map_err(|d| anyhow::anyhow!("not compacting: {object} is corrupt at {d}"))?;
        max_wall_ns = max_wall_ns.max(s.max_wall_ns);
        progress.advance(s.bytes);
    }
    progress.finish();
    let root = tmp.path().join("new");
    std::fs::create_dir_all(&root)?;
    let dir = snapshot::write(&root, covers, &state, shards).context("writing the folded snapshot")?;
    let local: snapshot::Manifest = serde_json::from_slice(&std::fs::read(dir.join("MANIFEST"))?)?;
    // A directory of its own: a rerun after a crash, or a shipper's snapshot of the same
    // segment, can never overwrite (or be overwritten by) these objects.
    let entry_dir = format!("snapshots/{}-compact-{:016x}", snapshot_dir_name(covers), rand::random::<u64>());
    let mut entry =
        SnapshotEntry { covers, entries: local.entries, max_wall_ns, files: Vec::new(), dir: Some(entry_dir) };
    for name in std::iter::once("MANIFEST".to_owned()).chain(local.files.iter().cloned()) {
        let data = Bytes::from(std::fs::read(dir.join(&name))?);
        let object = ledger.snapshot_object(&entry, &name);
        ledger.upload(&object, data.clone(), 16 << 20).await.with_context(|| format!("uploading {object}"))?;
        entry.files.push(FileEntry { name, bytes: data.len() as u64, crc32c: crc32c::crc32c(&data) });
    }
    Ok(entry)
}

async fn fetch_checked(ledger: &Ledger, object: &ObjectPath, bytes: u64, crc: u32) -> anyhow::Result<Bytes> {
    let data = ledger.download(object).await.with_context(|| format!("downloading {object}"))?;
    if data.len() as u64 != bytes || crc32c::crc32c(&data) != crc {
        bail!("not compacting: {object} does not match the manifest (size or CRC32C); run `aether-ledger verify`");
    }
    Ok(data)
}

async fn delete_orphans(ledger: &Ledger, m: &Manifest, grace: Duration) -> anyhow::Result<usize> {
    let mut named: std::collections::HashSet<ObjectPath> =
        m.segments.iter().map(|s| ledger.segment_object(s)).collect();
    for s in &m.snapshots {
        named.extend(s.files.iter().map(|f| ledger.snapshot_object(s, &f.name)));
    }
    let manifest_dir = ledger.manifest_dir();
    let now = SystemTime::now();
    let all: Vec<_> = ledger.store.list(Some(&ledger.base)).try_collect().await?;
    let mut deleted = 0;
    for meta in all {
        let age = now.duration_since(SystemTime::from(meta.last_modified)).unwrap_or_default();
        if named.contains(&meta.location) || meta.location.prefix_matches(&manifest_dir) || age < grace {
            continue;
        }
        // A shipper may have uploaded it a moment ago and not yet recorded it: only old ones go.
        match ledger.store.delete(&meta.location).await {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(object = %meta.location, error = %e, "could not delete an unreferenced object"),
        }
    }
    Ok(deleted)
}
