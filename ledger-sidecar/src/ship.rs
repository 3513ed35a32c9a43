//! `aether-ledger ship`: uploads sealed WAL segments and snapshots of a
//! relay's data directory and tells the relay what it may delete.
//!
//! One cycle, every `--poll`:
//! 1. Read the store's manifest; check that the data directory continues the
//!    ledger it describes (`ledger/lineage`).
//! 2. On the very first shipment of a data directory that already has a
//!    snapshot (its older segments are gone), ship that snapshot first.
//! 3. Upload every sealed segment above `shipped_through`, in order, each
//!    checked record by record first; then one manifest update for the batch.
//! 4. Only then write `ledger/shipped` (the hand-off to the relay).
//! 5. Ship the relay's newest snapshot if the store lacks it.
//!
//! A segment is sealed once a later one exists (the relay seals by size and
//! by age, `--wal-seal-after`). Every failure is retried with exponential
//! backoff and jitter; nothing local is touched by the sidecar except the marker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aether_relay::config::parse_duration;
use aether_relay::wal::handoff::{self, Shipped};
use aether_relay::wal::segment::list_segments;
use aether_relay::wal::snapshot;
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use clap::builder::TypedValueParser as _;
use futures_util::StreamExt;

use crate::format;
use crate::manifest::{self, Change, FileEntry, Manifest, SegmentEntry, SnapshotEntry};
use crate::metrics::Metrics;
use crate::store::{Ledger, StoreArgs};

/// `aether-ledger ship` flags.
#[derive(Debug, Clone, Args)]
pub struct ShipArgs {
    /// The relay's data directory (shared volume).
    #[arg(long, env = "AETHER_DATA_DIR", default_value = "./aether-data")]
    pub data_dir: PathBuf,
    /// Store settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Ledger identity.
    #[command(flatten)]
    pub ident: Ident,
    /// Metrics and health (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "AETHER_LEDGER_LISTEN", default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    /// How often the data directory is checked for sealed segments.
    #[arg(long, env = "AETHER_LEDGER_POLL", default_value = "1s", value_parser = aether_relay::config::parse_positive_duration)]
    pub poll: Duration,
    /// Objects larger than this are uploaded in parts (never visible before the last part).
    #[arg(long, env = "AETHER_LEDGER_MULTIPART_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..).map(|v| v as usize))]
    pub multipart_bytes: usize,
    /// Segments uploaded at once.
    #[arg(long, env = "AETHER_LEDGER_UPLOAD_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64).map(|v| v as usize))]
    pub upload_concurrency: usize,
    /// Most segments recorded by one manifest update.
    #[arg(long, env = "AETHER_LEDGER_BATCH", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096).map(|v| v as usize))]
    pub batch: usize,
    /// First retry delay after a failure (doubles up to `--retry-max`, with jitter).
    #[arg(long, env = "AETHER_LEDGER_RETRY_MIN", default_value = "250ms", value_parser = parse_duration)]
    pub retry_min: Duration,
    /// Longest retry delay.
    #[arg(long, env = "AETHER_LEDGER_RETRY_MAX", default_value = "30s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Ship what is sealed now, then exit (instead of watching).
    #[arg(long, default_value_t = false)]
    pub once: bool,
}

/// Which ledger: mesh and relay name.
#[derive(Debug, Clone, Args)]
pub struct Ident {
    /// The mesh's name (the `Mesh` resource).
    #[arg(long, env = "AETHER_MESH", default_value = "default")]
    pub mesh: String,
    /// The relay's name: its pod name in Kubernetes. Default: `$HOSTNAME` (the pod name
    /// there), else the machine's host name.
    #[arg(long, env = "AETHER_NODE_NAME")]
    pub node: Option<String>,
}

impl Ident {
    /// The node name, falling back to `$HOSTNAME`, then the kernel's host name.
    pub fn node(&self) -> anyhow::Result<String> {
        if let Some(n) = &self.node {
            return Ok(n.clone());
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--node is required (no HOSTNAME to default to)"))
    }
}

/// An error that retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fatal(pub String);

/// Path of the data directory's lineage file.
pub fn lineage_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger/lineage")
}

/// Reads the data directory's lineage, if it has one.
pub fn read_lineage(data_dir: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(lineage_path(data_dir)) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading ledger/lineage"),
    }
}

/// Writes the data directory's lineage (durably).
pub fn write_lineage(data_dir: &Path, lineage: &str) -> anyhow::Result<()> {
    let path = lineage_path(data_dir);
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("lineage.tmp");
    std::fs::write(&tmp, format!("{lineage}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    snapshot::sync_dir(dir)?;
    Ok(())
}

/// A fresh lineage id.
pub fn new_lineage() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Runs the shipper until SIGTERM/SIGINT (or once).
pub async fn run(args: ShipArgs) -> anyhow::Result<()> {
    let node = args.ident.node()?;
    let store = args.store.open()?;
    let ledger = store.ledger(&args.ident.mesh, &node)?;
    let metrics = Metrics::new();
    metrics.load_restore_report(&args.data_dir);
    let mut shipper = Shipper { args: args.clone(), ledger, mesh: args.ident.mesh.clone(), node, metrics };
    if args.once {
        return shipper.cycle().await.map(|_| ());
    }
    let health = Arc::new(crate::metrics::Health::default());
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::metrics::serve(listener, shipper.metrics.clone(), health.clone()));
    tracing::info!(%addr, store = %args.store.store, mesh = %shipper.mesh, node = %shipper.node, "aether-ledger ship started");
    println!("aether-ledger metrics on http://{addr}");
    let mut failures = 0u32;
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let delay = match shipper.cycle().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "the store is reachable again; shipping resumed");
                }
                failures = 0;
                health.ok();
                args.poll
            }
            Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
            Err(e) => {
                failures += 1;
                health.failed(format!("{e:#}"));
                shipper.metrics.errors.inc();
                let delay = backoff(args.retry_min, args.retry_max, failures);
                tracing::warn!(error = %format!("{e:#}"), failures, retry_in = ?delay, "shipping failed; nothing local is deleted, retrying");
                delay
            }
        };
        shipper.measure_backlog();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random.
pub fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::random::<f64>())
}

struct Shipper {
    args: ShipArgs,
    ledger: Ledger,
    mesh: String,
    node: String,
    metrics: Metrics,
}

/// A local sealed segment read and checked, ready to upload.
struct Ready {
    seq: u64,
    data: Bytes,
    stats: format::Stats,
    key: String,
}

impl Shipper {
    fn wal_dir(&self) -> PathBuf {
        self.args.data_dir.join("wal")
    }

    /// One pass; see the module docs.
    async fn cycle(&mut self) -> anyhow::Result<()> {
        let current = manifest::load(&self.ledger).await?;
        let lineage = self.lineage(current.as_ref())?;
        let mut shipped = current.as_ref().map_or(0, |m| m.shipped_through);
        let local_mark = match handoff::read_shipped(&self.args.data_dir) {
            Ok(s) => s.segments_through,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // Rewritten below from the store, after checking the local segments against it.
                tracing::warn!(error = %e, "unreadable ledger/shipped; rebuilding it from the store");
                0
            }
            Err(e) => return Err(e).context("reading ledger/shipped"),
        };
        if let Some(m) = &current
            && m.shipped_through > local_mark
        {
            // The store is ahead of the marker: a shipper died between the manifest update and
            // the marker, or this dir was restored. Hand off only what this dir really shipped.
            self.check_local_against(m, local_mark).await?;
            self.hand_off(m.shipped_through)?;
        }
        let fresh = current.as_ref().is_none_or(|m| m.segments.is_empty() && m.snapshots.is_empty());
        if fresh && !self.complete_history(local_mark) {
            // Older segments of this dir are gone (folded into its snapshots): the ledger must
            // start with the newest snapshot, and no segment may be recorded before it.
            let root = self.args.data_dir.join("snapshots");
            if snapshot::latest(&root).context("listing snapshots")?.is_some() {
                match self.ship_snapshot(&lineage, current.as_ref(), true).await? {
                    Some(m) => shipped = m.shipped_through,
                    None => return Ok(()), // replaced while uploading: next cycle
                }
            }
            // No snapshot: no segment was ever deleted, the history is whole.
        }
        let local = list_segments(&self.wal_dir()).context("listing wal/")?;
        let open = local.last().map_or(0, |(s, _)| *s);
        let sealed: Vec<(u64, PathBuf)> = local.into_iter().filter(|(s, _)| *s > shipped && *s < open).collect();
        for chunk in sealed.chunks(self.args.batch) {
            let ready: Vec<Ready> = futures_util::stream::iter(chunk.iter().cloned())
                .map(|(seq, path)| self.upload_segment(seq, path))
                .buffered(self.args.upload_concurrency)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
            let m = self.record_segments(&lineage, &ready).await?;
            shipped = m.shipped_through;
            self.hand_off(shipped)?;
        }
        self.ship_snapshot(&lineage, None, false).await?;
        self.measure_backlog();
        Ok(())
    }

    /// True when the ledger may start at this dir's first segment: it was created in
    /// sidecar mode (which deletes nothing unshipped) and never handed anything off.
    fn complete_history(&self, local_mark: u64) -> bool {
        local_mark == 0 && self.args.data_dir.join(handoff::COMPLETE_HISTORY_FILE).exists()
    }

    /// Every local segment above `local_mark` that the store counts as shipped must be
    /// in its manifest byte for byte (or covered by one of its snapshots).
    async fn check_local_against(&self, m: &Manifest, local_mark: u64) -> anyhow::Result<()> {
        let newest = m.newest_snapshot().map_or(0, |s| s.covers);
        for (seq, path) in list_segments(&self.wal_dir()).context("listing wal/")? {
            if seq <= local_mark || seq > m.shipped_through {
                continue;
            }
            let data = tokio::fs::read(&path).await.with_context(|| format!("reading {}", path.display()))?;
            let crc = crc32c::crc32c(&data);
            match m.segments.iter().find(|e| e.seq == seq) {
                Some(e) if e.crc32c == crc && e.bytes == data.len() as u64 => {}
                None if seq <= newest => {}
                _ => {
                    return Err(Fatal(format!(
                        "local segment {} is not the one the store's ledger {}/{} holds as segment {seq}: this data \
                         dir has diverged from the ledger (a copy of it ships under the same name?). Ship it under \
                         another --node",
                        path.display(),
                        self.mesh,
                        self.node
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The data directory's lineage, checked against the store's.
    fn lineage(&self, current: Option<&Manifest>) -> anyhow::Result<String> {
        let local = read_lineage(&self.args.data_dir)?;
        match (current, local) {
            (Some(m), Some(l)) if m.lineage == l => Ok(l),
            (Some(m), Some(l)) => Err(Fatal(format!(
                "the store's ledger for {}/{} continues data dir lineage {}, but {} is lineage {l}: it was \
                 restored to a point in time or belongs to another relay. Ship it under another --node, or \
                 restore this node from the store first",
                self.mesh,
                self.node,
                m.lineage,
                self.args.data_dir.display()
            ))
            .into()),
            (Some(m), None) => Err(Fatal(format!(
                "the store already holds a ledger for {}/{} (lineage {}), and {} has none: run `aether-ledger \
                 restore` first (the init container does), or ship under another --node",
                self.mesh,
                self.node,
                m.lineage,
                self.args.data_dir.display()
            ))
            .into()),
            (None, Some(l)) => Ok(l),
            (None, None) => {
                let l = new_lineage();
                write_lineage(&self.args.data_dir, &l)?;
                Ok(l)
            }
        }
    }

    async fn upload_segment(&self, seq: u64, path: PathBuf) -> anyhow::Result<Ready> {
        let data = Bytes::from(tokio::fs::read(&path).await.with_context(|| format!("reading {}", path.display()))?);
        let stats = format::check(&data).map_err(|d| {
            anyhow::anyhow!(
                "local segment {} is damaged at {d}; it is not shipped (see `aether-ledger inspect`)",
                path.display()
            )
        })?;
        // A key of its own: an upload never overwrites anything, recorded or not (leftovers
        // of uploads cut short are unreferenced objects, which `compact` removes).
        let key = crate::store::Ledger::new_segment_key(seq);
        let object = self.ledger.base.clone();
        let object = key.split('/').fold(object, |p, part| p.join(part));
        let t = Instant::now();
        self.ledger
            .upload(&object, data.clone(), self.args.multipart_bytes)
            .await
            .with_context(|| format!("uploading segment {seq}"))?;
        self.metrics.observe_upload(t.elapsed(), data.len() as u64, "segment");
        Ok(Ready { seq, data, stats, key })
    }

    async fn record_segments(&self, lineage: &str, ready: &[Ready]) -> anyhow::Result<Manifest> {
        let m = manifest::update(
            &self.ledger,
            |m| {
                self.claim(m, lineage)?;
                let before = m.shipped_through;
                for r in ready {
                    if r.seq <= m.shipped_through {
                        continue;
                    }
                    m.segments.push(SegmentEntry {
                        seq: r.seq,
                        prev: m.shipped_through,
                        bytes: r.data.len() as u64,
                        crc32c: r.stats.crc32c,
                        ops: r.stats.ops,
                        min_wall_ns: r.stats.min_wall_ns,
                        max_wall_ns: r.stats.max_wall_ns,
                        object: Some(r.key.clone()),
                    });
                    m.shipped_through = r.seq;
                }
                Ok(if m.shipped_through == before && m.generation > 0 { Change::Keep } else { Change::Write })
            },
            || self.metrics.conflicts.inc(),
        )
        .await?;
        // Whoever recorded a segment must have recorded these very bytes.
        for r in ready {
            if let Some(e) = m.segments.iter().find(|e| e.seq == r.seq)
                && e.crc32c != r.stats.crc32c
            {
                return Err(Fatal(format!(
                    "segment {} of {}/{} in the store is not this data dir's: another data dir ships under the \
                     same name and lineage",
                    r.seq, self.mesh, self.node
                ))
                .into());
            }
        }
        let ops: u64 = ready.iter().map(|r| r.stats.ops).sum();
        self.metrics.ops.inc_by(ops);
        self.metrics.segments.inc_by(ready.len() as u64);
        self.metrics.shipped_segment.set(m.shipped_through as i64);
        self.metrics.last_upload.set(unix_now());
        tracing::debug!(through = m.shipped_through, segments = ready.len(), ops, "segments shipped");
        Ok(m)
    }

    /// Sets identity fields on a new manifest; refuses someone else's.
    fn claim(&self, m: &mut Manifest, lineage: &str) -> anyhow::Result<()> {
        if m.lineage.is_empty() {
            m.lineage = lineage.to_owned();
            m.mesh = self.mesh.clone();
            m.node = self.node.clone();
        } else if m.lineage != lineage {
            return Err(Fatal(format!(
                "the store's ledger for {}/{} changed to lineage {} while shipping lineage {lineage}: another data \
                 dir ships under the same name",
                self.mesh, self.node, m.lineage
            ))
            .into());
        }
        Ok(())
    }

    fn hand_off(&self, through: u64) -> anyhow::Result<()> {
        let current = handoff::read_shipped(&self.args.data_dir).unwrap_or_default();
        if current.segments_through != through {
            handoff::write_shipped(&self.args.data_dir, Shipped { segments_through: through })
                .context("writing ledger/shipped")?;
        }
        Ok(())
    }

    /// Ships the relay's newest snapshot when the store lacks it. `first`: the
    /// data dir's first shipment, when it becomes the start of the ledger.
    async fn ship_snapshot(
        &self,
        lineage: &str,
        known: Option<&Manifest>,
        first: bool,
    ) -> anyhow::Result<Option<Manifest>> {
        let root = self.args.data_dir.join("snapshots");
        let Some((covers, dir)) = snapshot::latest(&root).context("listing snapshots")? else { return Ok(None) };
        let current = match known {
            Some(m) => Some(m.clone()),
            None => manifest::load(&self.ledger).await?,
        };
        let in_store = current.as_ref().and_then(|m| m.newest_snapshot()).map_or(0, |s| s.covers);
        let shipped = current.as_ref().map_or(0, |m| m.shipped_through);
        if (covers <= in_store && current.as_ref().is_some_and(|m| !m.snapshots.is_empty()))
            || (!first && covers > shipped)
        {
            return Ok(None);
        }
        // The relay may replace (and delete) the snapshot while it is uploaded: then give up
        // on this one; the next cycle ships the newer snapshot.
        let Some(entry) = self.upload_snapshot(covers, &dir).await? else { return Ok(None) };
        let m = manifest::update(
            &self.ledger,
            |m| {
                self.claim(m, lineage)?;
                if m.newest_snapshot().is_some_and(|s| s.covers >= covers) {
                    return Ok(Change::Keep);
                }
                m.snapshots.push(entry.clone());
                if first {
                    m.shipped_through = m.shipped_through.max(covers);
                }
                Ok(Change::Write)
            },
            || self.metrics.conflicts.inc(),
        )
        .await?;
        self.metrics.snapshots.inc();
        self.metrics.last_upload.set(unix_now());
        if first {
            self.hand_off(m.shipped_through)?;
        }
        tracing::info!(covers, entries = entry.entries, "snapshot shipped");
        Ok(Some(m))
    }

    async fn upload_snapshot(&self, covers: u64, dir: &Path) -> anyhow::Result<Option<SnapshotEntry>> {
        let raw = match tokio::fs::read(dir.join("MANIFEST")).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading a snapshot MANIFEST"),
        };
        let local: snapshot::Manifest = serde_json::from_slice(&raw)
            .map_err(|e| anyhow::anyhow!("snapshot {} has an invalid MANIFEST: {e}", dir.display()))?;
        let mut entry = SnapshotEntry {
            covers,
            entries: local.entries,
            max_wall_ns: 0,
            files: Vec::with_capacity(local.files.len() + 1),
            dir: Some(format!("snapshots/{}-{:016x}", snapshot::snapshot_dir_name(covers), rand::random::<u64>())),
        };
        for name in &local.files {
            let path = dir.join(name);
            let data = match tokio::fs::read(&path).await {
                Ok(d) => Bytes::from(d),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let stats = format::check(&data)
                .map_err(|d| anyhow::anyhow!("local snapshot file {} is damaged at {d}", path.display()))?;
            entry.max_wall_ns = entry.max_wall_ns.max(stats.max_wall_ns);
            let t = Instant::now();
            self.ledger
                .upload(&self.ledger.snapshot_object(&entry, name), data.clone(), self.args.multipart_bytes)
                .await
                .with_context(|| format!("uploading snapshot file {name}"))?;
            self.metrics.observe_upload(t.elapsed(), data.len() as u64, "snapshot");
            entry.files.push(FileEntry { name: name.clone(), bytes: data.len() as u64, crc32c: stats.crc32c });
        }
        let raw = Bytes::from(raw);
        self.ledger
            .upload(&self.ledger.snapshot_object(&entry, "MANIFEST"), raw.clone(), self.args.multipart_bytes)
            .await
            .context("uploading a snapshot MANIFEST")?;
        entry
            .files
            .insert(0, FileEntry { name: "MANIFEST".into(), bytes: raw.len() as u64, crc32c: crc32c::crc32c(&raw) });
        Ok(Some(entry))
    }

    /// Local backlog: sealed segments not yet shipped.
    fn measure_backlog(&self) {
        let shipped = handoff::read_shipped(&self.args.data_dir).map_or(0, |s| s.segments_through);
        let Ok(local) = list_segments(&self.wal_dir()) else { return };
        let open = local.last().map_or(0, |(s, _)| *s);
        if let Ok(b) = handoff::backlog(&self.wal_dir(), shipped, open) {
            self.metrics.backlog_bytes.set(b.bytes as i64);
            self.metrics.backlog_segments.set(b.segments as i64);
            self.metrics.lag.set(b.oldest_sealed.as_secs_f64());
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for failures in 1..40 {
            let d = backoff(min, max, failures);
            let exp = min.saturating_mul(1 << (failures - 1).min(16)).min(max);
            assert!(d >= exp / 2 && d <= exp, "failure {failures}: {d:?} outside [{:?}, {exp:?}]", exp / 2);
        }
        assert!(backoff(min, max, 30) >= max / 2);
    }
}
