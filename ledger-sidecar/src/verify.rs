//! `aether-ledger verify`: walks the store and checks every ledger.
//!
//! For each ledger: the manifest parses; the chain of segments has no gap
//! that no snapshot covers; every object the manifest names exists, has the
//! recorded size and CRC32C, and every record in it checks out. Objects no
//! manifest names (an interrupted upload, a compaction cut short) are
//! reported as notes: they are harmless, and `compact` removes them.

use std::collections::HashSet;

use anyhow::bail;
use clap::Args;
use clap::builder::TypedValueParser as _;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;

use crate::format;
use crate::manifest::{self, Manifest};
use crate::progress::Progress;
use crate::store::{Ledger, Selection, Store, StoreArgs};

/// `aether-ledger verify` flags.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Store settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Which ledgers.
    #[command(flatten)]
    pub select: Selection,
    /// Objects checked at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64).map(|v| v as usize))]
    pub concurrency: usize,
}

/// What verifying one ledger found.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems: damaged or missing objects, gaps. Each names its object.
    pub problems: Vec<String>,
    /// Harmless findings.
    pub notes: Vec<String>,
    /// Objects checked.
    pub objects: u64,
    /// Ops in checked files.
    pub ops: u64,
    /// Bytes checked.
    pub bytes: u64,
}

/// Runs verify; fails when any ledger has a problem.
pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let ledgers = store.select(&args.select).await?;
    if ledgers.is_empty() {
        bail!("no ledger found in {}", args.store.store);
    }
    let mut bad = 0;
    for (mesh, node) in &ledgers {
        let report = verify_ledger(&store, mesh, node, args.concurrency).await?;
        for n in &report.notes {
            println!("NOTE {n}");
        }
        for p in &report.problems {
            println!("{p}");
        }
        let verdict =
            if report.problems.is_empty() { "OK".to_owned() } else { format!("{} PROBLEMS", report.problems.len()) };
        println!(
            "{verdict} {mesh}/{node}: {} objects, {} ops, {} bytes checked",
            report.objects, report.ops, report.bytes
        );
        bad += usize::from(!report.problems.is_empty());
    }
    if bad > 0 {
        bail!("{bad} of {} ledgers have problems (listed above)", ledgers.len());
    }
    Ok(())
}

/// Verifies one ledger.
pub async fn verify_ledger(store: &Store, mesh: &str, node: &str, concurrency: usize) -> anyhow::Result<Report> {
    let ledger = store.ledger(mesh, node)?;
    let mut report = Report::default();
    let m = match manifest::load(&ledger).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            report.problems.push(format!("MISSING {}: no manifest", ledger.manifest_dir()));
            return Ok(report);
        }
        Err(e) => {
            report.problems.push(format!("CORRUPT {}: {e:#}", ledger.manifest_dir()));
            return Ok(report);
        }
    };
    report.problems.extend(gaps(&m).into_iter().map(|g| format!("GAP {}: {g}", ledger.base)));
    let mut expected: Vec<(ObjectPath, u64, u32, bool)> = Vec::new();
    for s in &m.segments {
        expected.push((ledger.segment_object(s), s.bytes, s.crc32c, true));
    }
    for s in &m.snapshots {
        for f in &s.files {
            if let Err(e) = manifest::check_relative(&f.name) {
                report.problems.push(format!("CORRUPT {}: {e:#}", ledger.manifest_dir()));
                continue;
            }
            expected.push((ledger.snapshot_object(s, &f.name), f.bytes, f.crc32c, f.name != "MANIFEST"));
        }
    }
    let named: HashSet<ObjectPath> = expected.iter().map(|e| e.0.clone()).collect();
    let total = expected.iter().map(|e| e.1).sum();
    let mut progress = Progress::new("verify", total);
    let mut checks = futures_util::stream::iter(expected.into_iter().map(|(object, bytes, crc, records)| {
        let ledger: &Ledger = &ledger;
        async move {
            let verdict = match ledger.download(&object).await {
                Err(object_store::Error::NotFound { .. }) => Err(format!("MISSING {object}")),
                Err(e) => Err(format!("UNREADABLE {object}: {e}")),
                Ok(data) if data.len() as u64 != bytes => {
                    Err(format!("CORRUPT {object}: {} bytes, the manifest says {bytes}", data.len()))
                }
                Ok(data) if crc32c::crc32c(&data) != crc => {
                    Err(format!("CORRUPT {object}: CRC32C {:08x}, the manifest says {crc:08x}", crc32c::crc32c(&data)))
                }
                Ok(data) if records => match format::check(&data) {
                    Ok(s) => Ok((s.ops, data.len() as u64)),
                    Err(d) => Err(format!("CORRUPT {object}: record at {d}")),
                },
                Ok(data) => Ok((0, data.len() as u64)),
            };
            (bytes, verdict)
        }
    }))
    .buffered(concurrency);
    while let Some((bytes, verdict)) = checks.next().await {
        report.objects += 1;
        match verdict {
            Ok((ops, b)) => {
                report.ops += ops;
                report.bytes += b;
            }
            Err(p) => report.problems.push(p),
        }
        progress.advance(bytes);
    }
    progress.finish();
    let manifest_dir = ledger.manifest_dir();
    let all: Vec<_> = ledger.store.list(Some(&ledger.base)).try_collect().await?;
    for meta in all {
        if !named.contains(&meta.location) && !meta.location.prefix_matches(&manifest_dir) {
            report.notes.push(format!(
                "{} is not in the manifest ({} bytes, {}): an interrupted upload or compaction; `compact` removes it",
                meta.location, meta.size, meta.last_modified
            ));
        }
    }
    Ok(report)
}

/// Breaks in the chain of segments that no snapshot covers.
pub fn gaps(m: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = 0;
    for s in &m.segments {
        let bridged = s.prev > last && m.snapshots.iter().any(|x| x.covers >= s.prev && x.covers < s.seq);
        if s.prev != last && !bridged {
            out.push(format!(
                "segment {} follows segment {}, but the previous segment in the store is {} and no snapshot covers \
                 the difference",
                s.seq, s.prev, last
            ));
        }
        last = s.seq;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SnapshotEntry;
    use crate::manifest::test_segment as seg;

    #[test]
    fn gaps_bridged_by_a_snapshot_are_not_gaps() {
        let snap = |covers| SnapshotEntry { covers, entries: 0, max_wall_ns: 0, files: vec![], dir: None };
        // Compacted through 10: segment 11 names 10, which the snapshot covers.
        let m = Manifest { segments: vec![seg(11, 10), seg(12, 11)], snapshots: vec![snap(10)], ..Manifest::default() };
        assert!(gaps(&m).is_empty());
        // Segment 12 went missing.
        let m = Manifest { segments: vec![seg(11, 10), seg(13, 12)], snapshots: vec![snap(10)], ..Manifest::default() };
        assert_eq!(gaps(&m).len(), 1);
        assert!(gaps(&m)[0].contains("segment 13 follows segment 12"), "{:?}", gaps(&m));
    }
}
