//! Criterion benches of the sans-IO core: merge, digest, op codec, record framing.

use std::hint::black_box;

use aether_core::record::{FILE_HEADER, Frames, WAL_MAGIC, file_header, put_frame_with};
use aether_core::{Op, OpRef, Space, Stamp};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const OPS: usize = 10_000;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("doc:{i}:title")).collect()
}

fn merge(c: &mut Criterion) {
    let keys = keys(1_000);
    let value = [b'v'; 64];
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Elements(OPS as u64));
    g.bench_function("10k ops over 1k keys", |b| {
        b.iter_batched(
            Space::new,
            |mut space| {
                for i in 0..OPS {
                    let stamp = Stamp { wall_ns: i as u64, counter: 0, actor: 1 };
                    let v = (i % 10 != 0).then_some(&value[..]);
                    space.merge(keys[i % keys.len()].as_bytes(), v, stamp);
                }
                space
            },
            BatchSize::SmallInput,
        )
    });
    let mut full = Space::new();
    for (i, k) in keys.iter().enumerate() {
        full.merge(k.as_bytes(), Some(&value), Stamp { wall_ns: i as u64, counter: 0, actor: 1 });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("superseded (stale) op", |b| {
        b.iter(|| full.merge(black_box(keys[7].as_bytes()), Some(&value), Stamp::default()))
    });
    g.finish();
    c.bench_function("digest of 1k keys", |b| b.iter(|| black_box(&full).digest()));
}

fn codec(c: &mut Criterion) {
    let value = [b'v'; 64];
    let op = OpRef {
        space: "room-42",
        key: b"doc:17:title",
        value: Some(&value),
        stamp: Stamp { wall_ns: 1_700_000_000_000_000_000, counter: 3, actor: 0xdead_beef },
        origin: 0xdead_beef,
    };
    let enc = op.encode_to_vec();
    let enc_bytes = Bytes::from(enc.clone());
    let mut g = c.benchmark_group("op codec");
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(256);
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(op).encode(&mut buf);
        })
    });
    g.bench_function("decode zero-copy (OpRef)", |b| b.iter(|| OpRef::decode(black_box(&enc)).unwrap().stamp));
    g.bench_function("decode owned (prost, Op)", |b| {
        b.iter(|| Op::decode(black_box(enc_bytes.clone())).unwrap().stamp)
    });
    g.finish();

    let mut file = file_header(WAL_MAGIC, 1, 7).to_vec();
    for _ in 0..OPS {
        put_frame_with(&mut file, 7, |o| op.encode(o));
    }
    let mut g = c.benchmark_group("records");
    g.throughput(Throughput::Elements(OPS as u64));
    g.bench_function("frame 10k ops", |b| {
        let mut out = Vec::with_capacity(file.len());
        b.iter(|| {
            out.clear();
            for _ in 0..OPS {
                put_frame_with(&mut out, 7, |o| op.encode(o));
            }
        })
    });
    g.bench_function("scan + decode 10k records", |b| {
        b.iter(|| {
            Frames::new(&file, FILE_HEADER, 7)
                .map(|f| OpRef::decode(f.unwrap().payload).unwrap().stamp.counter)
                .sum::<u32>()
        })
    });
    g.finish();
}

criterion_group!(benches, merge, codec);
criterion_main!(benches);
