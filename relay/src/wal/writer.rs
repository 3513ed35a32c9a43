//! The two WAL threads: the group-commit writer and the snapshotter.

use std::fs::{self, File};
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aether_core::record::FILE_HEADER;

use super::segment::{OnCorrupt, Replayer, list_segments};
use super::{LedgerHandoff, Shared, WalConfig, create_segment, handoff, publish_failed, snapshot};
use crate::metrics::Metrics;

/// A segment the writer finished: its sequence number and size.
pub(crate) struct Sealed {
    seq: u64,
    bytes: u64,
}

pub(crate) fn spawn_writer(
    shared: Arc<Shared>,
    cfg: WalConfig,
    file: File,
    seq: u64,
    sealed: std::sync::mpsc::Sender<Sealed>,
    metrics: Metrics,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("wal-writer".into()).spawn(move || {
        if let Err(e) = write_loop(&shared, &cfg, file, seq, &sealed, &metrics) {
            tracing::error!(error = %e, "WAL write failed; no further writes can be acknowledged");
            publish_failed(&shared);
        }
    })
}

fn write_loop(
    shared: &Shared,
    cfg: &WalConfig,
    mut file: File,
    mut seq: u64,
    sealed: &std::sync::mpsc::Sender<Sealed>,
    metrics: &Metrics,
) -> io::Result<()> {
    let wal_dir = cfg.dir.join("wal");
    let mut size = file.metadata()?.len();
    let mut batch = Vec::with_capacity(1 << 20);
    // When the open segment got its first record (sealing by age).
    let mut first_write: Option<Instant> = (size > FILE_HEADER as u64).then(Instant::now);
    loop {
        let (records, upto, closed) = {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            while p.buf.is_empty() && !p.closed {
                let deadline = cfg.seal_after.zip(first_write).map(|(after, first)| first + after);
                match deadline {
                    None => p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner()),
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        p = shared.wake.wait_timeout(p, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
            std::mem::swap(&mut p.buf, &mut batch);
            let records = std::mem::take(&mut p.records);
            (records, p.last_lsn, p.closed)
        };
        if !batch.is_empty() {
            file.write_all(&batch)?;
            if let Some(hook) = &cfg.before_sync {
                hook()?;
            }
            let t = Instant::now();
            file.sync_data()?;
            metrics.wal_fsync.observe(t.elapsed().as_secs_f64());
            metrics.wal_batch_ops.observe(records as f64);
            metrics.wal_bytes.inc_by(batch.len() as u64);
            size += batch.len() as u64;
            first_write.get_or_insert_with(Instant::now);
            batch.clear();
            // Keep the spare buffer from growing without bound after a burst.
            batch.shrink_to(4 << 20);
            shared.durable.send_modify(|d| d.lsn = upto);
        }
        if closed {
            return Ok(());
        }
        let too_old = cfg.seal_after.zip(first_write).is_some_and(|(after, first)| first.elapsed() >= after);
        if size >= cfg.segment_bytes || too_old {
            let next = create_segment(&wal_dir, seq + 1, shared.salt)?;
            shared.open_segment.store(seq + 1, Ordering::Release);
            let _ = sealed.send(Sealed { seq, bytes: size });
            metrics.wal_segments.inc();
            file = next;
            seq += 1;
            size = file.metadata()?.len();
            first_write = None;
        }
    }
}

/// How often the snapshot thread measures the ledger backlog (sidecar mode).
const HOUSEKEEPING_TICK: Duration = Duration::from_secs(1);

pub(crate) fn spawn_snapshotter(
    shared: Arc<Shared>,
    cfg: WalConfig,
    mut covered: u64,
    mut uncovered_bytes: u64,
    sealed: Receiver<Sealed>,
    metrics: Metrics,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("snapshotter".into()).spawn(move || {
        let mut keeper = Housekeeper::default();
        loop {
            let s = match cfg.ledger {
                None => match sealed.recv() {
                    Ok(s) => s,
                    Err(_) => return,
                },
                Some(ledger) => {
                    let got = sealed.recv_timeout(HOUSEKEEPING_TICK);
                    keeper.run(&cfg, ledger, covered, &shared, &metrics);
                    match got {
                        Ok(s) => s,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            uncovered_bytes += s.bytes;
            if uncovered_bytes < cfg.snapshot_after_bytes {
                continue;
            }
            let upto = s.seq;
            let t = Instant::now();
            match take_snapshot(&cfg, covered, upto, &metrics) {
                Ok(entries) => {
                    metrics.snapshots.inc();
                    metrics.snapshot_duration.observe(t.elapsed().as_secs_f64());
                    tracing::info!(covers_segment = upto, entries, elapsed = ?t.elapsed(), "snapshot written");
                    covered = upto;
                    uncovered_bytes = 0;
                }
                // The segments stay; the next sealed segment retries.
                Err(e) => tracing::error!(error = %e, "snapshot failed; WAL segments are kept"),
            }
        }
    })
}

/// Folds the previous snapshot and the sealed segments `(covered, upto]` into a
/// new snapshot, then deletes what it covers. Reads only immutable files.
fn take_snapshot(cfg: &WalConfig, covered: u64, upto: u64, metrics: &Metrics) -> Result<u64, String> {
    let wal_dir = cfg.dir.join("wal");
    let snap_root = cfg.dir.join("snapshots");
    // One partition: this runs beside the live relay and should not take every core.
    let mut replayer = Replayer::with_workers(1);
    let previous = snapshot::latest(&snap_root).map_err(|e| e.to_string())?;
    if let Some((_, dir)) = &previous {
        snapshot::load(dir, &mut replayer).map_err(|e| e.to_string())?;
    }
    let segments = list_segments(&wal_dir).map_err(|e| e.to_string())?;
    for (seq, path) in segments.iter().filter(|(s, _)| *s > covered && *s <= upto) {
        // Never skip here: the segments are deleted afterwards. Boot already rewrote any
        // segment whose damaged records the operator chose to skip.
        replayer.replay_segment(path, false, OnCorrupt::Fail).map_err(|e| format!("segment {seq}: {e}"))?;
    }
    let state = replayer.finish();
    snapshot::write(&snap_root, upto, &state, cfg.shards).map_err(|e| e.to_string())?;
    let entries = state.spaces.values().map(|s| s.len() as u64).sum();
    drop(state);
    if let Some((seq, dir)) = previous.filter(|(seq, _)| *seq != upto) {
        fs::remove_dir_all(&dir).map_err(|e| format!("removing snapshot {seq}: {e}"))?;
    }
    // With a ledger sidecar, a segment stays until the store has it (the housekeeper removes it then).
    let removable = match cfg.ledger {
        None => upto,
        Some(_) => handoff::read_shipped(&cfg.dir).map_or(0, |s| s.segments_through.min(upto)),
    };
    for (_, path) in segments.iter().filter(|(s, _)| *s <= removable) {
        fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        metrics.wal_segments.dec();
    }
    Ok(entries)
}

/// Sidecar mode: removes segments that are both covered by a snapshot and
/// shipped, measures the backlog, and refuses appends while it is over its bound.
#[derive(Default)]
struct Housekeeper {
    last_error: Option<String>,
}

impl Housekeeper {
    fn run(&mut self, cfg: &WalConfig, ledger: LedgerHandoff, covered: u64, shared: &Shared, metrics: &Metrics) {
        match self.try_run(cfg, ledger, covered, shared, metrics) {
            Ok(()) => self.last_error = None,
            Err(e) => {
                if self.last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "ledger housekeeping failed; WAL segments are kept");
                }
                self.last_error = Some(e);
            }
        }
    }

    fn try_run(
        &mut self,
        cfg: &WalConfig,
        ledger: LedgerHandoff,
        covered: u64,
        shared: &Shared,
        metrics: &Metrics,
    ) -> Result<(), String> {
        let wal_dir = cfg.dir.join("wal");
        let shipped = handoff::read_shipped(&cfg.dir).map_err(|e| format!("reading the ledger marker: {e}"))?;
        let removable = shipped.segments_through.min(covered);
        for (_, path) in list_segments(&wal_dir).map_err(|e| e.to_string())?.iter().filter(|(s, _)| *s <= removable) {
            fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
            metrics.wal_segments.dec();
        }
        let open = shared.open_segment.load(Ordering::Acquire);
        let b = handoff::backlog(&wal_dir, shipped.segments_through, open).map_err(|e| e.to_string())?;
        metrics.ledger_backlog_bytes.set(b.bytes as i64);
        metrics.ledger_backlog_segments.set(b.segments as i64);
        metrics.ledger_lag.set(b.oldest_sealed.as_secs_f64());
        let full = b.bytes > ledger.backlog_max_bytes;
        let was = shared.backlog_full.swap(full, Ordering::Relaxed);
        metrics.ledger_backlog_full.set(i64::from(full));
        if full && !was {
            tracing::error!(
                backlog_bytes = b.bytes,
                limit = ledger.backlog_max_bytes,
                segments = b.segments,
                "ledger backlog over its bound: object storage is behind, refusing writes until the sidecar catches up"
            );
        } else if was && !full {
            tracing::info!(backlog_bytes = b.bytes, "ledger backlog back under its bound: accepting writes");
        }
        *shared.backlog.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
        Ok(())
    }
}
