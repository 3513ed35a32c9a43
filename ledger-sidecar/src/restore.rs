//! `aether-ledger restore`: rebuilds a relay's data directory from the store,
//! as of the newest shipment or as of a point in time.
//!
//! Everything is downloaded into `<data-dir>/restore.tmp/` and checked there
//! (size and CRC32C against the manifest, then every record) before it is
//! moved into place: a damaged object or a gap in the chain of segments stops
//! the restore with the object named, and leaves the data directory as it was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aether_relay::wal::handoff::{self, Shipped};
use aether_relay::wal::segment::{Replayer, State, segment_name};
use aether_relay::wal::snapshot::{self, snapshot_dir_name};
use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use clap::builder::TypedValueParser as _;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;

use crate::format;
use crate::manifest::{self, Manifest, SnapshotEntry};
use crate::metrics::{RESTORE_REPORT, RestoreReport};
use crate::progress::Progress;
use crate::ship::{Ident, new_lineage, write_lineage};
use crate::store::{Ledger, StoreArgs};

/// `aether-ledger restore` flags.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The data directory to rebuild (created if missing; must hold no ledger).
    #[arg(long, env = "AETHER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Store settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Which ledger.
    #[command(flatten)]
    pub ident: Ident,
    /// Rebuild the state as of this instant (RFC 3339, e.g. `2026-11-23T10:00:00.5Z`): exactly the
    /// ops stamped at or before it. The result is a new lineage (ship it under another --node).
    #[arg(long, value_parser = parse_instant)]
    pub at: Option<Instant3339>,
    /// When the data directory already holds a ledger, do nothing (the init container's mode).
    #[arg(long, default_value_t = false)]
    pub if_empty: bool,
    /// When the store has no ledger for this relay, succeed without restoring (a first boot).
    #[arg(long, default_value_t = false)]
    pub allow_missing: bool,
    /// Objects downloaded at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64).map(|v| v as usize))]
    pub concurrency: usize,
}

/// An instant given as RFC 3339, kept with its text.
#[derive(Debug, Clone, Copy)]
pub struct Instant3339 {
    /// Nanoseconds since the Unix epoch.
    pub ns: u64,
}

fn parse_instant(s: &str) -> Result<Instant3339, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 instant (e.g. 2026-11-23T10:00:00Z): {e}"))?;
    let ns = u64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("{s:?} is before 1970"))?;
    Ok(Instant3339 { ns })
}

/// Formats nanoseconds since the epoch as RFC 3339.
pub fn rfc3339(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ns.to_string())
}

/// True when `dir` holds WAL segments or snapshots.
pub fn has_ledger(dir: &Path) -> anyhow::Result<bool> {
    let non_empty = |d: PathBuf| -> anyhow::Result<bool> {
        match std::fs::read_dir(&d) {
            Ok(mut it) => Ok(it.next().is_some()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("reading {}", d.display())),
        }
    };
    Ok(non_empty(dir.join("wal"))? || non_empty(dir.join("snapshots"))?)
}

/// Runs a restore.
pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let node = args.ident.node()?;
    let store = args.store.open()?;
    let ledger = store.ledger(&args.ident.mesh, &node)?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    if has_ledger(&args.data_dir)? {
        if args.if_empty {
            println!("{} already holds a ledger; nothing restored", args.data_dir.display());
            return Ok(());
        }
        bail!(
            "{} already holds a ledger (wal/ or snapshots/): restore only into an empty data dir, or pass --if-empty",
            args.data_dir.display()
        );
    }
    let Some(m) = manifest::load(&ledger).await? else {
        if args.allow_missing {
            println!("the store has no ledger for {}/{node}; nothing restored (a first start)", args.ident.mesh);
            return Ok(());
        }
        bail!("the store has no ledger for {}/{node} (wrong --mesh, --node or --store?)", args.ident.mesh);
    };
    let stage = args.data_dir.join("restore.tmp");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage)?;
    let r = Restorer { ledger, m, stage: stage.clone(), concurrency: args.concurrency };
    let outcome = match args.at {
        None => r.full(&args.data_dir).await,
        Some(at) => r.to_instant(&args.data_dir, at.ns).await,
    };
    let _ = std::fs::remove_dir_all(&stage);
    let (ops, bytes, summary) = outcome?;
    let took = started.elapsed();
    let report = RestoreReport {
        duration_seconds: took.as_secs_f64(),
        ops,
        bytes,
        at: args.at.map(|a| rfc3339(a.ns)),
        finished_at: manifest::now_rfc3339(),
    };
    std::fs::write(args.data_dir.join(RESTORE_REPORT), serde_json::to_vec_pretty(&report)?)
        .context("writing ledger/restore.json")?;
    println!(
        "restored {}/{node}: {summary}; {ops} ops, {bytes} bytes in {:.2}s ({:.0} ops/s)",
        args.ident.mesh,
        took.as_secs_f64(),
        ops as f64 / took.as_secs_f64().max(1e-9)
    );
    Ok(())
}

struct Restorer {
    ledger: Ledger,
    m: Manifest,
    stage: PathBuf,
    concurrency: usize,
}

/// One object to fetch and where it goes.
struct Fetch {
    object: ObjectPath,
    dest: PathBuf,
    bytes: u64,
    crc32c: u32,
    /// A ledger file (checked record by record), not a MANIFEST.
    records: bool,
}

impl Restorer {
    /// Newest snapshot + every later segment, as files.
    async fn full(&self, data_dir: &Path) -> anyhow::Result<(u64, u64, String)> {
        let base = self.m.newest_snapshot();
        let chain = self.chain(base)?;
        let mut fetches = Vec::new();
        if let Some(s) = base {
            fetches.extend(self.snapshot_fetches(s, &self.stage.join("snapshots"))?);
        }
        for s in &chain {
            fetches.push(Fetch {
                object: self.ledger.segment_object(s),
                dest: self.stage.join("wal").join(segment_name(s.seq)),
                bytes: s.bytes,
                crc32c: s.crc32c,
                records: true,
            });
        }
        let (ops, bytes) = self.fetch_all(fetches, "restore").await?;
        for d in ["snapshots", "wal"] {
            let from = self.stage.join(d);
            if from.exists() {
                let to = data_dir.join(d);
                if to.exists() {
                    std::fs::remove_dir(&to).with_context(|| format!("{} is not empty", to.display()))?;
                }
                std::fs::rename(&from, &to).with_context(|| format!("moving {} into place", to.display()))?;
            }
        }
        write_lineage(data_dir, &self.m.lineage)?;
        handoff::write_shipped(data_dir, Shipped { segments_through: self.m.shipped_through })?;
        snapshot::sync_dir(data_dir)?;
        let summary = format!(
            "snapshot {} + {} segments through {}",
            base.map_or("none".into(), |s| format!("covering segment {} ({} entries)", s.covers, s.entries)),
            chain.len(),
            self.m.shipped_through
        );
        Ok((ops, bytes, summary))
    }

    /// The state as of `at_ns`, written as a snapshot (a new lineage).
    async fn to_instant(&self, data_dir: &Path, at_ns: u64) -> anyhow::Result<(u64, u64, String)> {
        let base = self.m.snapshots.iter().rev().find(|s| s.max_wall_ns <= at_ns);
        let chain = self.chain(base).map_err(|e| match self.m.snapshots.first() {
            Some(oldest) if base.is_none() => anyhow::anyhow!(
                "cannot restore to {}: the ledger reaches back only to its oldest snapshot, whose newest entry is \
                 from {} (older history was compacted, or predates the sidecar)",
                rfc3339(at_ns),
                rfc3339(oldest.max_wall_ns)
            ),
            _ => e,
        })?;
        let mut state = State::default();
        let mut shards = None;
        let mut bytes = 0u64;
        let mut ops = 0u64;
        if let Some(s) = base {
            let dir = self.stage.join("base");
            let (o, b) = self.fetch_all(self.snapshot_fetches(s, &dir)?, "base").await?;
            ops += o;
            bytes += b;
            let mut replayer = Replayer::new();
            let local = snapshot::load(&dir.join(snapshot_dir_name(s.covers)), &mut replayer)?;
            shards = local.shards;
            state = replayer.finish();
        }
        // Segments whose every op is later than `at` cannot contribute.
        let wanted: Vec<_> = chain.iter().filter(|s| s.min_wall_ns <= at_ns).collect();
        let total: u64 = wanted.iter().map(|s| s.bytes).sum();
        let mut progress = Progress::new("replay", total);
        let (mut kept, mut left_out) = (0u64, 0u64);
        let mut downloads = futures_util::stream::iter(wanted.iter().map(|s| {
            let object = self.ledger.segment_object(s);
            let (size, crc) = (s.bytes, s.crc32c);
            async move { (self.ledger.download(&object).await, object, size, crc) }
        }))
        .buffered(self.concurrency);
        while let Some((data, object, size, crc)) = downloads.next().await {
            let data = data.with_context(|| format!("downloading {object}"))?;
            check_object(&object, &data, size, crc)?;
            let stats = format::for_each_op(&data, |space, op, _| {
                if op.stamp.wall_ns <= at_ns {
                    state.apply(space, op);
                    kept += 1;
                } else {
                    left_out += 1;
                }
            })
            .map_err(|d| refuse(&object, d))?;
            ops += stats.ops;
            bytes += data.len() as u64;
            progress.advance(data.len() as u64);
        }
        progress.finish();
        let spaces = state.spaces.len();
        let entries: usize = state.spaces.values().map(|s| s.len()).sum();
        let root = data_dir.join("snapshots");
        std::fs::create_dir_all(&root)?;
        snapshot::write(&root, 0, &state, shards).context("writing the restored snapshot")?;
        let lineage = new_lineage();
        write_lineage(data_dir, &lineage)?;
        let summary = format!(
            "state as of {} ({kept} ops at or before it applied over {}, {left_out} later ops left out): {spaces} \
             spaces, {entries} entries, new lineage {lineage}",
            rfc3339(at_ns),
            base.map_or("no snapshot".into(), |s| format!("the snapshot covering segment {}", s.covers)),
        );
        Ok((ops, bytes, summary))
    }

    fn chain(&self, base: Option<&SnapshotEntry>) -> anyhow::Result<Vec<manifest::SegmentEntry>> {
        let covers = base.map_or(0, |s| s.covers);
        match self.m.chain_after(covers) {
            Ok(c) => Ok(c.into_iter().cloned().collect()),
            Err(g) => bail!(
                "refusing to restore {}: the ledger has a gap: segment {} follows segment {}, but the manifest's \
                 previous entry is {} (run `aether-ledger verify`)",
                self.ledger.base,
                g.seq,
                g.prev,
                g.found
            ),
        }
    }

    fn snapshot_fetches(&self, s: &SnapshotEntry, root: &Path) -> anyhow::Result<Vec<Fetch>> {
        let dir = root.join(snapshot_dir_name(s.covers));
        s.files
            .iter()
            .map(|f| {
                manifest::check_relative(&f.name)?;
                Ok(Fetch {
                    object: self.ledger.snapshot_object(s, &f.name),
                    dest: dir.join(&f.name),
                    bytes: f.bytes,
                    crc32c: f.crc32c,
                    records: f.name != "MANIFEST",
                })
            })
            .collect()
    }

    /// Downloads and checks every fetch, writing each file durably; returns (ops, bytes).
    async fn fetch_all(&self, fetches: Vec<Fetch>, what: &str) -> anyhow::Result<(u64, u64)> {
        let total = fetches.iter().map(|f| f.bytes).sum();
        let mut progress = Progress::new(what, total);
        let mut downloads = futures_util::stream::iter(fetches.into_iter().map(|f| async move {
            let data = self.ledger.download(&f.object).await;
            (f, data)
        }))
        .buffered(self.concurrency);
        let (mut ops, mut bytes) = (0, 0);
        while let Some((f, data)) = downloads.next().await {
            let data = data.with_context(|| format!("downloading {}", f.object))?;
            check_object(&f.object, &data, f.bytes, f.crc32c)?;
            if f.records {
                ops += format::check(&data).map_err(|d| refuse(&f.object, d))?.ops;
            }
            write_durably(&f.dest, &data)?;
            bytes += data.len() as u64;
            progress.advance(data.len() as u64);
        }
        progress.finish();
        Ok((ops, bytes))
    }
}

/// Size and CRC32C of a downloaded object against the manifest.
fn check_object(object: &ObjectPath, data: &Bytes, bytes: u64, crc: u32) -> anyhow::Result<()> {
    if data.len() as u64 != bytes {
        bail!("refusing to restore: {object} has {} bytes, the manifest says {bytes}", data.len());
    }
    let actual = crc32c::crc32c(data);
    if actual != crc {
        bail!("refusing to restore: {object} is corrupt (CRC32C {actual:08x}, the manifest says {crc:08x})");
    }
    Ok(())
}

fn refuse(object: &ObjectPath, d: format::Damage) -> anyhow::Error {
    anyhow::anyhow!("refusing to restore: {object} is corrupt at {d}")
}

fn write_durably(dest: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = dest.parent().expect("files live in directories");
    std::fs::create_dir_all(dir)?;
    std::fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))?;
    std::fs::File::open(dest)?.sync_all()?;
    snapshot::sync_dir(dir)?;
    Ok(())
}
