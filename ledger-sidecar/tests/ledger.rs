//! The ledger sidecar against real relays and a real S3-compatible server
//! (moto), or the local file system store.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use aether_ledger::manifest;
use common::*;
use serde_json::Value;

fn file_store(dir: &Path) -> Vec<String> {
    args(&["--store", &format!("file://{}", dir.display())])
}

fn with(base: &[&str], dir: &Path, store: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = args(base);
    v.push("--data-dir".into());
    v.push(dir.display().to_string());
    v.extend(store.iter().cloned());
    v.extend(args(extra));
    v
}

fn relay_flags(snapshot_after: &str) -> Vec<&str> {
    let mut v = SIDECAR_RELAY.to_vec();
    v.push(snapshot_after);
    // Tests write faster than a browser may.
    v.extend(["--limit-msgs-per-sec", "1000000", "--limit-burst", "1000000"]);
    v
}

/// Write, ship, lose the disk, restore, boot: the same state, digest for
/// digest. The restored relay keeps shipping under the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_s3_restores_the_same_state() {
    let moto = Moto::start();
    let store = moto.store_args("rt");
    let data = tempdir();
    // Snapshots every ~128 KiB, so the store holds snapshots and segments.
    let relay = Relay::start(data.path(), &relay_flags("131072"));
    let shipper = Shipper::start(data.path(), "relay-0", &store, &["--multipart-bytes", "32768"]);
    let mut expected = BTreeMap::new();
    for space in ["alpha", "beta", "gamma"] {
        expected.extend(write_ops(&relay, space, "k", 1_500, 300).await);
    }
    wait_shipped(&relay).await;
    let before = digests(&relay).await;
    assert_eq!(before.len(), 3);
    assert!(shipper.metric("aether_ledger_shipped_segments_total") >= 2.0);
    assert!(shipper.metric("aether_ledger_last_upload_timestamp_seconds") > 0.0);
    drop(shipper);
    drop(relay);

    // The disk is lost.
    let fresh = tempdir();
    let out = ledger_ok(&with(&["restore", "--node", "relay-0"], fresh.path(), &store, &[]));
    assert!(out.contains("restored default/relay-0"), "{out}");
    let restored = Relay::start(fresh.path(), &relay_flags("131072"));
    assert_eq!(digests(&restored).await, before, "restored state differs");
    let (_, _, snap) = Client::join(&restored.ws_url("space=beta")).await;
    assert_eq!(snap.as_object().unwrap().len(), 300);

    // The restored dir continues the same ledger: new writes ship, and a second restore has them too.
    let shipper = Shipper::start(fresh.path(), "relay-0", &store, &[]);
    assert!(shipper.metric("aether_ledger_restore_duration_seconds") > 0.0);
    write_ops(&restored, "delta", "n", 200, 50).await;
    wait_shipped(&restored).await;
    let after = digests(&restored).await;
    drop(shipper);
    drop(restored);
    let again = tempdir();
    ledger_ok(&with(&["restore", "--node", "relay-0"], again.path(), &store, &[]));
    let relay = Relay::start(again.path(), &[]);
    assert_eq!(digests(&relay).await, after);
    let verify = ledger_ok(&[args(&["verify"]), store.clone()].concat());
    assert!(verify.contains("OK default/relay-0"), "{verify}");
}

/// `restore --at T` rebuilds exactly the ops stamped at or before T.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_at_an_instant_keeps_exactly_the_ops_stamped_before_it() {
    let store_dir = tempdir();
    let store = file_store(store_dir.path());
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("65536"));
    let _shipper = Shipper::start(data.path(), "r", &store, &[]);
    let first = write_ops(&relay, "doc", "k", 800, 100).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let t = time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Later writes overwrite half of the keys and add new ones.
    let second = write_ops(&relay, "doc", "k", 300, 150).await;
    wait_shipped(&relay).await;
    let at = t.format(&time::format_description::well_known::Rfc3339).unwrap();

    let target = tempdir();
    let out = ledger_ok(&with(&["restore", "--node", "r", "--at", &at], target.path(), &store, &[]));
    assert!(out.contains("later ops left out"), "{out}");
    let restored = Relay::start(target.path(), &[]);
    let (_, _, snap) = Client::join(&restored.ws_url("space=doc")).await;
    let got: BTreeMap<String, Value> = snap.as_object().unwrap().clone().into_iter().collect();
    assert_eq!(got, first, "the state at T is the first batch, nothing of the second");
    assert!(second.iter().any(|(k, v)| first.get(k) != Some(v)), "the second batch changed something");

    // And now is everything.
    let now = tempdir();
    let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    ledger_ok(&with(&["restore", "--node", "r", "--at", &at], now.path(), &store, &[]));
    let latest = Relay::start(now.path(), &[]);
    assert_eq!(digests(&latest).await, digests(&relay).await);

    // A restored point in time is a new lineage: shipping it as "r" is refused.
    drop(latest);
    let out = ledger(&with(&["ship", "--node", "r", "--once"], now.path(), &store, &[]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lineage"), "{err}");
}

/// The store goes away during writes: the relay keeps acknowledging, the
/// backlog grows and is reported, then drains; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_keeps_the_relay_serving_and_loses_nothing() {
    let moto = Moto::start();
    let store = moto.store_args("outage");
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("1073741824"));
    let shipper = Shipper::start(data.path(), "relay-0", &store, &[]);
    write_ops(&relay, "s", "a", 300, 300).await;
    wait_shipped(&relay).await;
    assert_eq!(shipper.readyz(), 200);

    moto.freeze();
    write_ops(&relay, "s", "b", 3_000, 3_000).await;
    eventually("the backlog to be reported", || async {
        let segments = relay_metric(&relay, "aether_ledger_backlog_segments").await;
        let sidecar = shipper.metric("aether_ledger_backlog_segments");
        if segments >= 3.0 && sidecar >= 3.0 { Ok(()) } else { Err(format!("relay {segments}, sidecar {sidecar}")) }
    })
    .await;
    eventually("the sidecar to report the outage", || async {
        if shipper.readyz() == 503 && shipper.metric("aether_ledger_errors_total") >= 1.0 {
            Ok(())
        } else {
            Err(format!("readyz {}", shipper.readyz()))
        }
    })
    .await;
    // Unshipped segments are still on disk, and the relay still reads as ready.
    let on_disk = std::fs::read_dir(data.path().join("wal")).unwrap().count();
    assert!(on_disk >= 3, "{on_disk} segments");
    assert_eq!(relay.http_get("/readyz").await.0, 200);

    moto.thaw();
    wait_shipped(&relay).await;
    eventually("the sidecar to recover", || async {
        if shipper.readyz() == 200 { Ok(()) } else { Err("still failing".into()) }
    })
    .await;
    let live = digests(&relay).await;
    let restored_dir = tempdir();
    ledger_ok(&with(&["restore", "--node", "relay-0"], restored_dir.path(), &store, &[]));
    let restored = Relay::start(restored_dir.path(), &[]);
    assert_eq!(digests(&restored).await, live);
}

/// Over `--ledger-backlog-max-bytes`, the relay refuses writes with a clear
/// error and `/readyz` says why; once the sidecar catches up, writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_refuses_writes_until_the_sidecar_catches_up() {
    let store_dir = tempdir();
    let data = tempdir();
    let mut flags = relay_flags("1073741824");
    flags.extend(["--ledger-backlog-max-bytes", "200000"]);
    let relay = Relay::start(data.path(), &flags);
    // No sidecar yet: everything stays in the backlog.
    let (mut c, _, _) = Client::join(&relay.ws_url("space=s")).await;
    let until = std::time::Instant::now() + DEADLINE;
    let refused = loop {
        assert!(std::time::Instant::now() < until, "writes were never refused");
        for i in 0..200 {
            c.send(serde_json::json!({"type": "set", "key": format!("k{i}"), "value": "x".repeat(500)})).await;
        }
        let mut last = None;
        for _ in 0..200 {
            let m = c.recv().await;
            if m["type"] == "error" {
                last = Some(m);
            }
        }
        if let Some(m) = last {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(refused["code"], "overloaded", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("ledger backlog"), "{refused}");
    let (status, body) = relay.http_get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ledger backlog"), "{body}");

    let _shipper = Shipper::start(data.path(), "r", &file_store(store_dir.path()), &[]);
    eventually("the relay to be ready again", || async {
        let (status, body) = relay.http_get("/readyz").await;
        if status == 200 { Ok(()) } else { Err(body) }
    })
    .await;
    write_ops(&relay, "s", "after", 10, 10).await;
}

/// SIGKILL the sidecar again and again mid-upload: the store ends with every
/// segment exactly once, no gap, and restores to the relay's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sidecar_mid_upload_leaves_no_duplicate_or_missing_segment() {
    let moto = Moto::start();
    let store = moto.store_args("kill");
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("1073741824"));
    // Many segments before the sidecar ever runs: each start has a backlog to upload.
    write_ops(&relay, "s", "k", 6_000, 2_000).await;
    for round in 0..6u64 {
        let mut shipper =
            Shipper::start(data.path(), "relay-0", &store, &["--batch", "2", "--multipart-bytes", "4096"]);
        tokio::time::sleep(std::time::Duration::from_millis(40 + 70 * round)).await;
        shipper.kill();
        write_ops(&relay, "s", "k", 300, 2_000).await;
    }
    let _shipper = Shipper::start(data.path(), "relay-0", &store, &[]);
    wait_shipped(&relay).await;

    let ledger = open_store(&store).ledger("default", "relay-0").unwrap();
    let m = manifest::load(&ledger).await.unwrap().expect("a manifest");
    let seqs: Vec<u64> = m.segments.iter().map(|s| s.seq).collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(seqs, unique, "a segment recorded twice");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    m.chain_after(0).expect("no gap");
    // Exactly the segments the relay sealed (no snapshot was taken, so it deleted none).
    let local = aether_relay::wal::segment::list_segments(&data.path().join("wal")).unwrap();
    let sealed: Vec<u64> = local[..local.len() - 1].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, sealed, "the store's segments differ from the relay's sealed ones");
    assert!(seqs.len() >= 8, "{seqs:?}");
    let verify = ledger_ok(&[args(&["verify", "--mesh", "default", "--node", "relay-0"]), store.clone()].concat());
    assert!(verify.contains("OK default/relay-0"), "{verify}");

    let live = digests(&relay).await;
    let restored_dir = tempdir();
    ledger_ok(&with(&["restore", "--node", "relay-0"], restored_dir.path(), &store, &[]));
    let restored = Relay::start(restored_dir.path(), &[]);
    assert_eq!(digests(&restored).await, live);
}

/// A corrupted object: `verify` names it, `restore` refuses and leaves the
/// data dir empty, `inspect` stops at the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_is_named_by_verify_and_refused_by_restore() {
    let store_dir = tempdir();
    let store = file_store(store_dir.path());
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("1073741824"));
    let _shipper = Shipper::start(data.path(), "r", &store, &[]);
    write_ops(&relay, "s", "k", 2_000, 500).await;
    wait_shipped(&relay).await;

    // inspect prints every op of a segment as a JSON line.
    let wal = store_dir.path().join("default/r/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    let name = segs[1].file_name().unwrap().to_str().unwrap().to_owned();
    let object = format!("default/r/wal/{name}");
    let out = ledger_ok(&[args(&["inspect"]), store.clone(), args(&[&object])].concat());
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["space"] == "s" && l["key"].as_str().unwrap().starts_with('k')), "{out}");
    assert!(lines[0]["value"]["pad"].is_string(), "{}", lines[0]);

    // Flip one byte in the middle of that segment.
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&segs[1], &bytes).unwrap();

    let out = ledger(&[args(&["verify"]), store.clone()].concat());
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("CORRUPT {object}")), "{stdout}");

    let target = tempdir();
    let out = ledger(&with(&["restore", "--node", "r"], target.path(), &store, &[]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&object) && stderr.contains("refusing to restore"), "{stderr}");
    assert!(!aether_ledger::restore::has_ledger(target.path()).unwrap(), "a refused restore wrote a ledger");

    let out = ledger(&[args(&["inspect"]), store.clone(), args(&[&object])].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged at offset"));
}

/// A garbled hand-off marker does not stop shipping: the sidecar checks the
/// local segments against the store and writes the marker again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_marker_is_rebuilt_from_the_store() {
    let store_dir = tempdir();
    let store = file_store(store_dir.path());
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("1073741824"));
    let _shipper = Shipper::start(data.path(), "r", &store, &[]);
    write_ops(&relay, "s", "k", 1_000, 100).await;
    wait_shipped(&relay).await;
    let marker = aether_relay::wal::handoff::shipped_path(data.path());
    let before = aether_relay::wal::handoff::read_shipped(data.path()).unwrap().segments_through;
    assert!(before > 0);
    std::fs::write(&marker, b"\x00garbage").unwrap();
    eventually("the marker to be rewritten", || async {
        match aether_relay::wal::handoff::read_shipped(data.path()) {
            Ok(s) if s.segments_through >= before => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    write_ops(&relay, "s", "more", 500, 50).await;
    wait_shipped(&relay).await;
    let live = digests(&relay).await;
    let restored = tempdir();
    ledger_ok(&with(&["restore", "--node", "r"], restored.path(), &store, &[]));
    assert_eq!(digests(&Relay::start(restored.path(), &[])).await, live);
}

/// `compact` folds segments older than the retention window into a snapshot
/// in the store and deletes what it covers; a point-in-time restore inside
/// the window still works on top of it, and the ledger restores to the same
/// state throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_folds_old_segments_and_keeps_the_state() {
    let store_dir = tempdir();
    let store = file_store(store_dir.path());
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("1073741824"));
    let _shipper = Shipper::start(data.path(), "r", &store, &[]);
    let first = write_ops(&relay, "s", "k", 2_000, 400).await;
    wait_shipped(&relay).await;
    let t_first = time::OffsetDateTime::now_utc();
    // A gap between the batches; the retention window below ends in its middle, so
    // `compact` may start up to half of it late and still split them there.
    let gap = std::time::Duration::from_secs(8);
    tokio::time::sleep(gap).await;
    write_ops(&relay, "s", "k", 1_000, 200).await;
    write_ops(&relay, "t", "k", 500, 50).await;
    wait_shipped(&relay).await;
    let live = digests(&relay).await;
    // The file store removes directories that become empty.
    let segments = || std::fs::read_dir(store_dir.path().join("default/r/wal")).map_or(0, |d| d.count());
    let before = segments();
    assert!(before >= 4, "{before}");

    // Everything is within a week: nothing is folded.
    let out = ledger_ok(&[args(&["compact"]), store.clone()].concat());
    assert!(out.contains("nothing to fold"), "{out}");
    assert_eq!(segments(), before);

    // Measured now: `compact` counts the window back from its own start.
    let retain = time::OffsetDateTime::now_utc() - (t_first + gap / 2);
    let retain = format!("{}ms", retain.whole_milliseconds());
    let out = ledger_ok(&[args(&["compact", "--retain", &retain]), store.clone()].concat());
    assert!(out.contains("folded"), "{out}");
    let partial = segments();
    assert!(partial > 0 && partial < before, "{partial} of {before} segments left: {out}");
    // A restore to an instant inside the window starts from the folded snapshot.
    let at = t_first.format(&time::format_description::well_known::Rfc3339).unwrap();
    let pitr = tempdir();
    let out = ledger_ok(&with(&["restore", "--node", "r", "--at", &at], pitr.path(), &store, &[]));
    assert!(out.contains("over the snapshot covering segment"), "{out}");
    let restored = Relay::start(pitr.path(), &[]);
    let (_, _, snap) = Client::join(&restored.ws_url("space=s")).await;
    let got: BTreeMap<String, Value> = snap.as_object().unwrap().clone().into_iter().collect();
    assert_eq!(got, first);
    drop(restored);

    // Everything folds with no window; a second compaction builds on the first one's snapshot.
    let out = ledger_ok(&[args(&["compact", "--retain", "0"]), store.clone()].concat());
    assert!(out.contains("folded"), "{out}");
    assert_eq!(segments(), 0);
    let verify = ledger_ok(&[args(&["verify"]), store.clone()].concat());
    assert!(verify.contains("OK default/r"), "{verify}");
    let restored_dir = tempdir();
    ledger_ok(&with(&["restore", "--node", "r"], restored_dir.path(), &store, &[]));
    let restored = Relay::start(restored_dir.path(), &[]);
    assert_eq!(digests(&restored).await, live);
    // The shipper keeps appending after a compaction.
    write_ops(&relay, "s", "late", 100, 10).await;
    wait_shipped(&relay).await;
    assert!(segments() >= 1);
    ledger_ok(&[args(&["verify"]), store.clone()].concat());
}

/// A data dir that ran without a sidecar has lost its older segments to
/// snapshots: its ledger starts with its newest snapshot, restores to the same
/// state, and refuses point-in-time restores before that snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dir_that_ran_without_a_sidecar_starts_its_ledger_with_a_snapshot() {
    let store_dir = tempdir();
    let store = file_store(store_dir.path());
    let data = tempdir();
    let marker = data.path().join("ledger/complete-history");
    // Created in sidecar mode: its history is whole...
    drop(Relay::start(data.path(), &relay_flags("65536")));
    assert!(marker.exists());
    // ...until it runs without a sidecar, whose snapshots delete segments.
    let plain = ["--wal-segment-bytes", "65536", "--snapshot-after-bytes", "65536"];
    let limits = ["--limit-msgs-per-sec", "1000000", "--limit-burst", "1000000"];
    let relay = Relay::start(data.path(), &[&plain[..], &limits[..]].concat());
    assert!(!marker.exists(), "the marker outlived a run without a sidecar");
    let t_early = time::OffsetDateTime::now_utc();
    write_ops(&relay, "s", "k", 3_000, 300).await;
    let snaps = data.path().join("snapshots");
    // A complete one: a snapshot being written is a `<seq>.tmp` directory.
    eventually("a snapshot", || async {
        let done = std::fs::read_dir(&snaps).unwrap().flatten().filter(|d| d.path().extension().is_none()).count();
        if done > 0 { Ok(()) } else { Err("none".into()) }
    })
    .await;
    drop(relay);

    let relay = Relay::start(data.path(), &relay_flags("1073741824"));
    let _shipper = Shipper::start(data.path(), "r", &store, &[]);
    write_ops(&relay, "s", "late", 200, 20).await;
    wait_shipped(&relay).await;
    let live = digests(&relay).await;

    let stored = open_store(&store).ledger("default", "r").unwrap();
    let m = manifest::load(&stored).await.unwrap().expect("a manifest");
    let first = m.snapshots.first().expect("the ledger starts with a snapshot");
    assert!(m.segments.iter().all(|s| s.seq > first.covers), "a segment the snapshot covers was shipped");
    assert_eq!(m.segments.first().map(|s| s.prev), Some(first.covers));

    let restored_dir = tempdir();
    ledger_ok(&with(&["restore", "--node", "r"], restored_dir.path(), &store, &[]));
    assert_eq!(digests(&Relay::start(restored_dir.path(), &[])).await, live);
    let at = t_early.format(&time::format_description::well_known::Rfc3339).unwrap();
    let out = ledger(&with(&["restore", "--node", "r", "--at", &at], tempdir().path(), &store, &[]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot restore to"), "{err}");
}

/// Against s3s-fs, which checks SigV4 signatures: the round trip works with
/// the right keys, and a wrong secret is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_round_trip_and_a_wrong_key_is_refused() {
    let s3 = S3sFs::start();
    let store = s3.store_args("signed");
    let data = tempdir();
    let relay = Relay::start(data.path(), &relay_flags("65536"));
    let _shipper = Shipper::start(data.path(), "relay-0", &store, &[]);
    write_ops(&relay, "s", "k", 1_000, 200).await;
    wait_shipped(&relay).await;
    let live = digests(&relay).await;
    let restored_dir = tempdir();
    ledger_ok(&with(&["restore", "--node", "relay-0"], restored_dir.path(), &store, &[]));
    assert_eq!(digests(&Relay::start(restored_dir.path(), &[])).await, live);

    let out = std::process::Command::new(ledger_bin())
        .args([args(&["verify"]), store.clone()].concat())
        .env("AWS_ACCESS_KEY_ID", S3_ENV[0].1)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403") || err.to_lowercase().contains("signature"), "{err}");
}

/// Sixteen writers updating one manifest at once on moto: every update lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_updates_never_lose_one() {
    let moto = Moto::start();
    let file_dir = tempdir();
    let stores = [moto.store_args("race"), file_store(file_dir.path())];
    for flags in stores {
        let ledger = open_store(&flags).ledger("m", "n").unwrap();
        let conflicts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let ledger = ledger.clone();
            let conflicts = conflicts.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..4u64 {
                    let seq = w * 100 + k + 1;
                    manifest::update(
                        &ledger,
                        |m| {
                            m.lineage = "l".into();
                            if m.segments.iter().any(|s| s.seq == seq) {
                                return Ok(manifest::Change::Keep); // idempotent, as update() requires
                            }
                            m.segments.push(manifest::SegmentEntry {
                                seq,
                                prev: 0,
                                bytes: 0,
                                crc32c: 0,
                                ops: 0,
                                min_wall_ns: 0,
                                max_wall_ns: 0,
                                object: None,
                            });
                            Ok(manifest::Change::Write)
                        },
                        || {
                            conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        },
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let m = manifest::load(&ledger).await.unwrap().unwrap();
        let mut seqs: Vec<u64> = m.segments.iter().map(|s| s.seq).collect();
        seqs.sort_unstable();
        let want: Vec<u64> = (0..16u64).flat_map(|w| (0..4).map(move |k| w * 100 + k + 1)).collect();
        assert_eq!(seqs, want, "{}: an update was lost", flags[1]);
        assert_eq!(m.generation, 64, "{}", flags[1]);
        assert!(conflicts.load(std::sync::atomic::Ordering::Relaxed) > 0, "{}: the writers never raced", flags[1]);
    }
}
