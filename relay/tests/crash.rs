//! Crash safety with real processes: SIGKILL at random points, torn tails,
//! corrupt records, and booting from snapshots.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, Relay, tempdir};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const FAST: &[&str] = &["--limit-msgs-per-sec", "1000000", "--limit-burst", "1000000", "--limit-send-queue", "100000"];

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("wal")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[derive(Default)]
struct Ledger {
    /// key → value of every set whose echo arrived.
    echoed_sets: HashMap<String, Value>,
    /// keys whose delete echo arrived.
    echoed_deletes: HashSet<String>,
    /// keys a delete was sent for (echoed or not).
    delete_sent: HashSet<String>,
}

/// Writes as fast as echoes allow (pipelined) until the relay dies; says
/// `joined` once it has its snapshot (the kill waits for every writer's).
async fn writer(url: String, prefix: String, ledger: Arc<Mutex<Ledger>>, joined: tokio::sync::oneshot::Sender<()>) {
    let (c, _, _) = Client::join(&url).await;
    let _ = joined.send(());
    let (mut sink, mut stream) = c.ws.split();
    let reader = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                let key = v["key"].as_str().unwrap_or_default().to_string();
                if !key.starts_with(&prefix) {
                    continue; // someone else's op
                }
                let mut l = ledger.lock().unwrap();
                match v["type"].as_str() {
                    Some("set") => {
                        l.echoed_sets.insert(key, v["value"].clone());
                    }
                    Some("delete") => {
                        l.echoed_deletes.insert(key);
                    }
                    _ => {}
                }
            }
        })
    };
    let prefix = reader_prefix(&url);
    let mut n = 0u64;
    loop {
        let key = format!("{prefix}-{n}");
        let msg = if n % 5 == 4 {
            // Delete the key written four ops ago.
            let victim = format!("{prefix}-{}", n - 4);
            ledger.lock().unwrap().delete_sent.insert(victim.clone());
            json!({"type":"delete","key":victim})
        } else {
            json!({"type":"set","key":key,"value":{"n":n,"pad":"x".repeat((n % 7 * 50) as usize)}})
        };
        if sink.send(Message::text(msg.to_string())).await.is_err() {
            break;
        }
        n += 1;
        if n.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    let _ = reader.await;
}

fn reader_prefix(url: &str) -> String {
    url.rsplit("writer=").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_loses_an_echoed_op() {
    let seed: u64 = std::env::var("AETHER_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (AETHER_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempdir();
    // Small segments and snapshots so kills also land in rotations and snapshots.
    let mut flags = FAST.to_vec();
    flags.extend(["--wal-segment-bytes", "65536", "--snapshot-after-bytes", "131072"]);
    let extra = std::env::var("AETHER_CRASH_EXTRA_FLAGS").unwrap_or_default();
    flags.extend(extra.split_whitespace());
    let mut all_sets: HashMap<String, Value> = HashMap::new();
    let mut all_deletes: HashSet<String> = HashSet::new();
    let mut all_delete_sent: HashSet<String> = HashSet::new();
    let mut total_echoed = 0;
    for round in 0..6 {
        let mut relay = Relay::start(dir.path(), &flags);
        let (_, _, snap) = Client::join(&relay.ws_url("space=crash")).await;
        check(&snap, &all_sets, &all_deletes, &all_delete_sent, round);

        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (writers, joined): (Vec<_>, Vec<_>) = (0..3)
            .map(|w| {
                let url = relay.ws_url(&format!("space=crash&writer=r{round}w{w}"));
                let (joined, on_join) = tokio::sync::oneshot::channel();
                (tokio::spawn(writer(url.clone(), reader_prefix(&url), ledger.clone(), joined)), on_join)
            })
            .unzip();
        // Every writer has joined (a kill during a join, with its large snapshot,
        // would fail the join rather than test the WAL).
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        for on_join in joined {
            let joined = tokio::time::timeout_at(deadline, on_join).await;
            assert!(matches!(joined, Ok(Ok(()))), "a writer did not join: {joined:?}");
        }
        // Let some ops be echoed, then kill at a random moment.
        while ledger.lock().unwrap().echoed_sets.len() < 20 {
            assert!(tokio::time::Instant::now() < deadline, "no progress before the kill");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        relay.kill();
        for w in writers {
            w.await.unwrap();
        }
        let l = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
        total_echoed += l.echoed_sets.len() + l.echoed_deletes.len();
        all_sets.extend(l.echoed_sets);
        all_deletes.extend(l.echoed_deletes);
        all_delete_sent.extend(l.delete_sent);
    }
    let relay = Relay::start(dir.path(), &flags);
    let (_, _, snap) = Client::join(&relay.ws_url("space=crash")).await;
    check(&snap, &all_sets, &all_deletes, &all_delete_sent, 6);
    eprintln!("{total_echoed} echoed ops over 6 kills, all present");
    assert!(total_echoed > 100, "only {total_echoed} ops were echoed: the test exercised too little");
}

fn check(
    snap: &Value,
    sets: &HashMap<String, Value>,
    deletes: &HashSet<String>,
    delete_sent: &HashSet<String>,
    round: usize,
) {
    let data = snap.as_object().expect("snapshot data is an object");
    for (k, v) in sets {
        if delete_sent.contains(k) {
            continue; // its delete may or may not have been applied
        }
        assert_eq!(data.get(k), Some(v), "round {round}: echoed set of {k} was lost");
    }
    for k in deletes {
        assert!(!data.contains_key(k), "round {round}: echoed delete of {k} was lost");
    }
}

/// Writes `n` keys `k0..` through one client, waiting for every echo.
async fn write_keys(relay: &Relay, space: &str, n: usize) {
    let (mut c, _, _) = Client::join(&relay.ws_url(&format!("space={space}"))).await;
    for i in 0..n {
        c.send(json!({"type":"set","key":format!("k{i}"),"value":i})).await;
    }
    for i in 0..n {
        assert_eq!(c.recv().await["value"], i);
    }
}

async fn keys_of(relay: &Relay, space: &str) -> Value {
    Client::join(&relay.ws_url(&format!("space={space}"))).await.2
}

#[tokio::test]
async fn torn_tail_is_truncated_and_everything_before_it_survives() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), FAST);
    write_keys(&relay, "t", 50).await;
    relay.kill();
    let seg = segments(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    // Half a record: a length header promising more than what follows.
    let mut torn = fs::read(&seg).unwrap();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
    fs::write(&seg, &torn).unwrap();

    let mut relay = Relay::start(dir.path(), FAST);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len, "the torn tail was truncated");
    let kept = dir
        .path()
        .join("quarantine")
        .join(format!("{}.tail-at-{good_len}", seg.file_name().unwrap().to_str().unwrap()));
    assert_eq!(fs::read(kept).unwrap(), [200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7], "the torn bytes are kept");
    let snap = keys_of(&relay, "t").await;
    assert_eq!(snap.as_object().unwrap().len(), 50);
    assert_eq!(snap["k49"], 49);
    // Writes after recovery survive the next restart too.
    write_keys(&relay, "t2", 3).await;
    relay.kill();
    let relay = Relay::start(dir.path(), FAST);
    assert_eq!(keys_of(&relay, "t2").await["k2"], 2);
    assert_eq!(keys_of(&relay, "t").await["k0"], 0);
}

#[tokio::test]
async fn corrupt_record_in_the_middle_stops_boot_unless_skipped() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), FAST);
    write_keys(&relay, "c", 40).await;
    relay.kill();
    let seg = segments(dir.path()).into_iter().find(|p| fs::metadata(p).unwrap().len() > 100).unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    fs::write(&seg, &bytes).unwrap();

    let err = Relay::try_start(dir.path(), FAST).err().expect("the relay must refuse to start");
    assert!(err.contains("corrupt WAL record") && err.contains("at offset"), "unclear error: {err}");
    assert!(err.contains(&seg.display().to_string()), "error does not name the file: {err}");
    assert!(err.contains("--wal-skip-corrupt"), "error does not say how to proceed: {err}");
    // The file was left untouched.
    assert_eq!(fs::read(&seg).unwrap(), bytes);

    let mut flags = FAST.to_vec();
    flags.push("--wal-skip-corrupt");
    let relay = Relay::start(dir.path(), &flags);
    let snap = keys_of(&relay, "c").await;
    let n = snap.as_object().unwrap().len();
    assert!((38..40).contains(&n), "exactly the damaged record(s) are skipped, got {n} keys");
    assert_eq!(snap["k0"], 0);
    assert_eq!(snap["k39"], 39);
    let quarantined = dir.path().join("quarantine").join(seg.file_name().unwrap());
    assert_eq!(fs::read(&quarantined).unwrap(), bytes, "the damaged segment is kept in quarantine/");
    // The segment was rewritten without the damage: later boots need no flag.
    drop(relay);
    let relay = Relay::start(dir.path(), FAST);
    assert_eq!(keys_of(&relay, "c").await, snap);
}

#[tokio::test]
async fn damaged_segment_header_stops_boot_unless_skipped() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), FAST);
    write_keys(&relay, "h1", 5).await;
    relay.kill();
    let mut relay = Relay::start(dir.path(), FAST);
    write_keys(&relay, "h2", 5).await;
    relay.kill();
    // Damage the header of the older segment (the one holding h1).
    let seg = segments(dir.path()).into_iter().find(|p| fs::metadata(p).unwrap().len() > 100).unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    let err = Relay::try_start(dir.path(), FAST).err().expect("must refuse");
    assert!(err.contains("at offset 0") && err.contains("header"), "{err}");
    let mut flags = FAST.to_vec();
    flags.push("--wal-skip-corrupt");
    let relay = Relay::start(dir.path(), &flags);
    assert_eq!(keys_of(&relay, "h1").await, json!({}), "the unreadable segment is skipped");
    assert_eq!(keys_of(&relay, "h2").await.as_object().unwrap().len(), 5, "the others are kept");
    let quarantined = dir.path().join("quarantine").join(seg.file_name().unwrap());
    assert_eq!(fs::read(quarantined).unwrap(), bytes);
    assert!(!seg.exists());
}

#[tokio::test]
async fn snapshots_replace_old_segments_and_boot_restores_them() {
    let dir = tempdir();
    let mut flags = FAST.to_vec();
    flags.extend(["--wal-segment-bytes", "8192", "--snapshot-after-bytes", "16384"]);
    let mut relay = Relay::start(dir.path(), &flags);
    let (mut c, _, _) = Client::join(&relay.ws_url("space=snap")).await;
    let mut model: HashMap<String, Value> = HashMap::new();
    // Six rounds, each waiting for its echoes (durable by default): every round is more
    // than a segment's worth of records, so each one seals at least one segment however
    // the group commit batched it, and six seals of 8 KiB cross 16 KiB at least thrice.
    for round in 0..6u64 {
        for i in round * 500..(round + 1) * 500 {
            let key = format!("k{}", i % 300);
            if i % 11 == 0 {
                c.send(json!({"type":"delete","key":key})).await;
                model.remove(&key);
            } else {
                c.send(json!({"type":"set","key":key,"value":i})).await;
                model.insert(key, json!(i));
            }
        }
        for _ in 0..500 {
            c.recv().await;
        }
    }
    // Wait (bounded) for the snapshot thread to catch up with the sealed segments.
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let (_, m) = relay.http_get("/metrics").await;
        let snapshots = m.lines().find_map(|l| l.strip_prefix("aether_snapshots_total ")).unwrap_or("0");
        if snapshots.parse::<u64>().unwrap() >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{snapshots} snapshots written, 2 expected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A clean stop lets a snapshot in progress finish; the SIGKILL test covers kills during snapshots.
    assert!(relay.terminate().success());
    // Exactly one complete snapshot remains, and no segment it covers.
    let snaps: Vec<_> = fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .collect();
    assert_eq!(snaps.len(), 1, "older snapshots are deleted: {snaps:?}");
    let manifest: Value = serde_json::from_slice(&fs::read(snaps[0].join("MANIFEST")).unwrap()).unwrap();
    let covers = manifest["covers_segment"].as_u64().unwrap();
    assert!(covers >= 2);
    for seg in segments(dir.path()) {
        let seq: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert!(seq > covers, "segment {seq} is covered by snapshot {covers} but was not deleted");
    }

    let relay = Relay::start(dir.path(), &flags);
    let snap = keys_of(&relay, "snap").await;
    let got: HashMap<String, Value> = snap.as_object().unwrap().clone().into_iter().collect();
    assert_eq!(got, model);
}

#[tokio::test]
async fn clean_shutdown_on_sigterm_keeps_everything() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), FAST);
    write_keys(&relay, "term", 10).await;
    // `null` is a value (docs/protocol.md): it must survive a restart as one.
    let (mut c, _, _) = Client::join(&relay.ws_url("space=nulls")).await;
    c.send(json!({"type":"set","key":"n","value":null})).await;
    c.send(json!({"type":"set","key":"gone","value":1})).await;
    c.send(json!({"type":"delete","key":"gone"})).await;
    for _ in 0..3 {
        c.recv().await;
    }
    let (mut listener, _, _) = Client::join(&relay.ws_url("space=term")).await;
    let status = relay.terminate();
    assert!(status.success(), "exit status {status}");
    assert_eq!(listener.recv_close().await, (1001, "relay shutting down".into()));
    let relay = Relay::start(dir.path(), FAST);
    assert_eq!(keys_of(&relay, "term").await.as_object().unwrap().len(), 10);
    assert_eq!(keys_of(&relay, "nulls").await, json!({"n": null}));
}

#[tokio::test]
async fn a_second_relay_cannot_share_the_data_dir() {
    let dir = tempdir();
    let _relay = Relay::start(dir.path(), &[]);
    let err = Relay::try_start(dir.path(), &[]).err().expect("second relay must not start");
    assert!(err.contains("in use by another process"), "{err}");
}
