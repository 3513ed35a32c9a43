//! Criterion bench of WAL replay: one 200k-op segment, sequential and parallel.

use aether_core::{OpRef, Stamp};
use aether_relay::metrics::Metrics;
use aether_relay::wal::{OnCorrupt, Replayer, Wal, WalConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const OPS: u64 = 200_000;

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    // One segment holds all the ops.
    let cfg = WalConfig { segment_bytes: 1 << 30, ..WalConfig::unbounded(dir.path()) };
    let value = [b'v'; 64];
    {
        let (wal, _, _) = Wal::open(&cfg, &Metrics::new()).expect("open");
        for i in 0..OPS {
            let key = format!("key-{}", i % 10_000);
            let stamp = Stamp { wall_ns: 1 + i, counter: 0, actor: 7 };
            wal.append(OpRef { space: "bench", key: key.as_bytes(), value: Some(&value), stamp, origin: 7 })
                .expect("append");
        }
    }
    let seg = std::fs::read_dir(dir.path().join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a segment");
    let mut g = c.benchmark_group("replay 200k ops, 10k keys");
    g.throughput(Throughput::Elements(OPS));
    g.sample_size(20);
    for workers in [1, 2] {
        g.bench_function(format!("{workers} worker(s)"), |b| {
            b.iter(|| {
                let mut r = Replayer::with_workers(workers);
                r.replay_segment(&seg, false, OnCorrupt::Fail).expect("replay");
                r.finish().ops
            })
        });
    }
    g.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
