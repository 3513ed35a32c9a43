//! Ledger load generator: writes a data directory of N ops with the relay's
//! own WAL, ships it to a store (`aether-ledger ship --once`), then restores
//! it (full, and to a point in time), printing MB/s and ops/s of each.
//!
//! ```text
//! cargo run --release -p aether-ledger --bin aether-ledger-bench -- --ops 2000000 --store file:///tmp/bench-store
//! ```

use std::path::Path;
use std::time::Instant;

use aether_core::{OpRef, Stamp};
use aether_ledger::restore::{self, RestoreArgs};
use aether_ledger::ship::{self, Ident, ShipArgs};
use aether_ledger::store::StoreArgs;
use aether_relay::metrics::Metrics;
use aether_relay::wal::{Wal, WalConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Measure shipping and restoring a relay ledger")]
struct Args {
    /// Ops to write.
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    /// Distinct keys (over 16 spaces).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// WAL segment size.
    #[arg(long, default_value_t = 16 << 20)]
    segment_bytes: u64,
    /// Segments uploaded at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    store: StoreArgs,
}

fn write_data_dir(dir: &Path, a: &Args) -> anyhow::Result<u64> {
    let cfg = WalConfig { segment_bytes: a.segment_bytes, ..WalConfig::unbounded(dir) };
    let (wal, _, _) = Wal::open(&cfg, &Metrics::new())?;
    let value = vec![b'7'; a.value_bytes];
    let mut durable = wal.durable();
    let mut last = 0;
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    for i in 0..a.ops {
        let k = i % a.keys;
        let space = format!("space-{}", k % 16);
        let key = format!("key-{k}");
        let stamp = Stamp { wall_ns: base + i, counter: 0, actor: 1 };
        last = wal.append(OpRef { space: &space, key: key.as_bytes(), value: Some(&value), stamp, origin: 1 })?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(durable.wait_for(|d| d.lsn >= last))?;
    wal.close();
    drop(wal);
    // Reopening seals the last segment (a new one is started), so all of it ships.
    drop(Wal::open(&cfg, &Metrics::new())?);
    Ok(base + a.ops / 2)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let data = tempfile::tempdir()?;
    let t = Instant::now();
    let middle = write_data_dir(data.path(), &a)?;
    let bytes = dir_bytes(&data.path().join("wal"));
    println!("wrote {} ops, {:.1} MB of WAL in {:.2}s", a.ops, bytes as f64 / 1e6, t.elapsed().as_secs_f64());

    let node = format!("bench-{}", std::process::id());
    let ident = Ident { mesh: "bench".into(), node: Some(node.clone()) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ship_args = ShipArgs {
        data_dir: data.path().to_owned(),
        store: a.store.clone(),
        ident: ident.clone(),
        listen: "127.0.0.1:0".parse()?,
        poll: std::time::Duration::from_secs(1),
        multipart_bytes: 16 << 20,
        upload_concurrency: a.concurrency,
        batch: 64,
        retry_min: std::time::Duration::from_millis(250),
        retry_max: std::time::Duration::from_secs(5),
        once: true,
    };
    let t = Instant::now();
    rt.block_on(ship::run(ship_args))?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "upload:  {:.1} MB/s, {:.0} ops/s ({:.2}s) to {}",
        bytes as f64 / 1e6 / s,
        a.ops as f64 / s,
        s,
        a.store.store
    );

    for (what, at) in [("restore", None), ("restore --at", Some(middle))] {
        let target = tempfile::tempdir()?;
        let at = at.map(|ns| restore::Instant3339 { ns });
        let args = RestoreArgs {
            data_dir: target.path().to_owned(),
            store: a.store.clone(),
            ident: ident.clone(),
            at,
            if_empty: false,
            allow_missing: false,
            concurrency: a.concurrency,
        };
        let t = Instant::now();
        rt.block_on(restore::run(args))?;
        let s = t.elapsed().as_secs_f64();
        let report: aether_ledger::metrics::RestoreReport =
            serde_json::from_slice(&std::fs::read(target.path().join(aether_ledger::metrics::RESTORE_REPORT))?)?;
        println!(
            "{what}: {:.0} ops/s, {:.1} MB/s ({} ops, {:.1} MB read in {:.2}s)",
            report.ops as f64 / s,
            report.bytes as f64 / 1e6 / s,
            report.ops,
            report.bytes as f64 / 1e6,
            s
        );
    }
    Ok(())
}
