//! The native protocol (`/v1/ws`) against real relays: resume on the same
//! relay and at another one, superseded writes through an edge, catchup
//! chunking, and refusals.

mod common;

use aether_core::{Key, Space, Stamp};
use aether_proto::client::v1 as pb;
#[path = "common/native.rs"]
mod native;

use common::{Relay, eventually, free_port, tempdir};
use native::{CLIENT, Native, NativeEvent, set, write};
use pb::client_frame::Msg as C;
use pb::server_frame::Msg as S;

/// Merges ops into a replica; returns how many changed it.
fn merge(replica: &mut Space, ops: &[pb::Op]) -> usize {
    ops.iter()
        .filter(|o| {
            let s = o.stamp.expect("ops carry stamps");
            let value = (!o.delete).then(|| o.value.clone());
            let stamp = Stamp { wall_ns: s.wall_ns, counter: s.counter, actor: s.actor };
            replica.merge_owned(Key::from(o.key.as_bytes()), value, stamp) == aether_core::Merge::Applied
        })
        .count()
}

/// Reads frames until an ack of `id` (failing on an error); returns the superseded events before it.
async fn acked(c: &mut Native, id: u64) -> Vec<pb::Superseded> {
    let mut lost = Vec::new();
    loop {
        match c.recv().await {
            S::Ack(a) if a.id == id => return lost,
            S::Superseded(s) if s.id == id => lost.push(s),
            S::Error(e) => panic!("write {id} refused: {e:?}"),
            _ => {}
        }
    }
}

/// Reads `changes` until `n` ops arrived; returns them and the last seq.
async fn changes(c: &mut Native, n: usize) -> (Vec<pb::Op>, u64) {
    let (mut ops, mut seq) = (Vec::new(), 0);
    while ops.len() < n {
        match c.recv().await {
            S::Changes(mut ch) => {
                assert!(ch.seq > seq, "seqs increase: {} after {seq}", ch.seq);
                seq = ch.seq;
                ops.append(&mut ch.ops);
            }
            other => panic!("expected changes, got {other:?}"),
        }
    }
    assert_eq!(ops.len(), n, "no more changes than written");
    (ops, seq)
}

fn subscribe(space: &str) -> pb::Subscribe {
    pb::Subscribe { space: space.into(), ..Default::default() }
}

/// A subscribe that resumes from `epoch`/`seq` and offers the replica's bucket digests.
fn resume(space: &str, epoch: &[u8], seq: u64, replica: &Space, buckets: u32) -> pb::Subscribe {
    let digests = aether_core::sync::encode_digests(&aether_core::sync::bucket_digests(replica, buckets));
    pb::Subscribe {
        space: space.into(),
        epoch: epoch.to_vec().into(),
        seq,
        buckets,
        digests: digests.into(),
        presence: false,
    }
}

const A: u64 = CLIENT | 1;
const B: u64 = CLIENT | 2;

#[tokio::test]
async fn a_client_back_on_the_same_relay_gets_exactly_what_it_missed() {
    let dir = tempdir();
    let mut relay = Relay::start(dir.path(), &["--limit-msgs-per-sec", "100000", "--limit-burst", "100000"]);
    let (mut a, _) = Native::hello(relay.addr, false, A, "").await;
    let (mut b, _) = Native::hello(relay.addr, true, B, "").await;
    a.subscribe(subscribe("doc")).await;
    b.subscribe(subscribe("doc")).await;
    let mut t = 1_700_000_000_000_000_000u64;
    let mut tick = || {
        t += 1;
        t
    };
    let first: Vec<pb::Op> = (0..50).map(|i| set(&format!("k{i}"), &i.to_string(), tick(), B)).collect();
    b.send(write(1, "doc", first)).await;
    acked(&mut b, 1).await;
    let (ops, seen) = changes(&mut a, 50).await;
    let mut replica = Space::new();
    assert_eq!(merge(&mut replica, &ops), 50);
    let (_, start) = a.subscribe(subscribe("doc")).await;
    let epoch = start.epoch.clone();
    assert_eq!(start.seq, seen);
    drop(a);

    // While A is away: k0..k19 rewritten four times, k20..k24 deleted.
    for round in 0..4u64 {
        let ops = (0..20).map(|i| set(&format!("k{i}"), &format!("{}", 100 * round + i), tick(), B)).collect();
        b.send(write(10 + round, "doc", ops)).await;
        acked(&mut b, 10 + round).await;
    }
    let deletes = (20..25)
        .map(|i| pb::Op { delete: true, value: Default::default(), ..set(&format!("k{i}"), "", tick(), B) })
        .collect();
    b.send(write(20, "doc", deletes)).await;
    acked(&mut b, 20).await;

    let (mut a, _) = Native::hello(relay.addr, false, A, "").await;
    let (delta, last) = a.subscribe(resume("doc", &epoch, seen, &replica, 64)).await;
    assert_eq!(last.kind, pb::catchup::Kind::Delta as i32);
    let mut keys: Vec<&str> = delta.iter().map(|o| o.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!((delta.len(), keys.len()), (25, 25), "each changed key once, nothing A had: {keys:?}");
    assert_eq!(merge(&mut replica, &delta), 25, "every op of the delta was new to A");
    assert_eq!(last.total, 25);
    // A's replica is now exactly the relay's state.
    let (all, _) = Native::hello(relay.addr, false, CLIENT | 9, "").await.0.subscribe(subscribe("doc")).await;
    let mut fresh = Space::new();
    merge(&mut fresh, &all);
    assert_eq!(replica.digest(), fresh.digest());
    assert_eq!(replica.live_len(), 45);

    // Live again, seq continuing from the delta.
    b.send(write(30, "doc", vec![set("k0", "\"again\"", tick(), B)])).await;
    acked(&mut b, 30).await;
    let (ops, seq) = changes(&mut a, 1).await;
    assert_eq!((ops[0].key.as_str(), seq), ("k0", last.seq + 1));
    drop((a, b));

    // After a restart the epoch is unknown: digests let the relay send only
    // the buckets that differ (here: k0's), nothing else.
    assert!(relay.terminate().success());
    let relay = Relay::start(dir.path(), &[]);
    let (mut a, _) = Native::hello(relay.addr, true, A, "").await;
    let (ops, last) = a.subscribe(resume("doc", &epoch, seen, &replica, 64)).await;
    assert_eq!(last.kind, pb::catchup::Kind::Buckets as i32);
    assert!(ops.iter().any(|o| o.key == "k0"), "k0 changed after the replica: {ops:?}");
    assert!(ops.len() < 10, "only the differing bucket, not all 50 entries: {}", ops.len());
    assert_eq!(merge(&mut replica, &ops), 1, "only k0 was news");
    // Without digests, the whole space.
    let (ops, last) = a.subscribe(pb::Subscribe { epoch: epoch.clone(), seq: seen, ..subscribe("doc") }).await;
    assert_eq!((last.kind, ops.len()), (pb::catchup::Kind::Full as i32, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_relay_gets_only_the_buckets_that_differ() {
    let ports = [free_port(), free_port()];
    let dirs = [tempdir(), tempdir()];
    let extra = [
        "--shards",
        "8",
        "--replication",
        "2",
        "--limit-msgs-per-sec",
        "1e5",
        "--limit-burst",
        "100000",
        "--anti-entropy-interval",
        "1s",
    ];
    let peer = |i: usize| vec![format!("r{}=127.0.0.1:{}", i + 1, ports[i])];
    let r1 = Relay::start_member("r1", ports[0], &peer(1), dirs[0].path(), &extra);
    let r2 = Relay::start_member("r2", ports[1], &peer(0), dirs[1].path(), &extra);
    let (mut a, _) = Native::hello(r1.addr, false, A, "").await;
    let (mut b, _) = Native::hello(r1.addr, false, B, "").await;
    a.subscribe(subscribe("big")).await;
    b.subscribe(subscribe("big")).await;
    let mut t = 1_700_000_000_000_000_000u64;
    for w in 0..4u64 {
        let ops = (0..250).map(|i| set(&format!("key-{}", w * 250 + i), "{\"v\":1}", t + w * 250 + i, B)).collect();
        b.send(write(w, "big", ops)).await;
        acked(&mut b, w).await;
    }
    t += 10_000;
    let (ops, seq) = changes(&mut a, 1000).await;
    let mut replica = Space::new();
    assert_eq!(merge(&mut replica, &ops), 1000);
    let (_, start) = a.subscribe(subscribe("big")).await;
    assert_eq!(start.seq, seq);
    drop(a);
    // Missed while away: 10 updates.
    let missed: Vec<pb::Op> = (0..10).map(|i| set(&format!("key-{}", i * 97), "{\"v\":2}", t + i, B)).collect();
    b.send(write(9, "big", missed)).await;
    acked(&mut b, 9).await;
    // r2 holds the same state once replication settles.
    eventually("r2 converges", || async {
        let (one, two) = (r1.admin_spaces().await, r2.admin_spaces().await);
        let d = |m: &std::collections::BTreeMap<String, serde_json::Value>| m.get("big").map(|v| v["digest"].clone());
        if d(&one).is_some() && d(&one) == d(&two) { Ok(()) } else { Err(format!("{one:?} vs {two:?}")) }
    })
    .await;

    let (mut a, _) = Native::hello(r2.addr, false, A, "").await;
    let (ops, last) = a.subscribe(resume("big", &start.epoch, start.seq, &replica, 256)).await;
    assert_eq!(last.kind, pb::catchup::Kind::Buckets as i32, "r1's epoch means nothing to r2");
    assert!(ops.len() >= 10 && ops.len() <= 100, "10 differing buckets of ~4 entries, not 1000: {}", ops.len());
    assert_eq!(merge(&mut replica, &ops), 10, "exactly the 10 missed updates are news; the rest merge as duplicates");
    let row = r2.admin_spaces().await["big"].clone();
    let hex: String = replica.digest().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(row["digest"], hex.as_str(), "A's replica equals r2's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loser_of_a_concurrent_write_through_an_edge_is_told_what_won() {
    let ports = [free_port(), free_port()];
    let dirs = [tempdir(), tempdir()];
    let extra = ["--shards", "8", "--replication", "1"];
    let peer = |i: usize| vec![format!("r{}=127.0.0.1:{}", i + 1, ports[i])];
    let r1 = Relay::start_member("r1", ports[0], &peer(1), dirs[0].path(), &extra);
    let r2 = Relay::start_member("r2", ports[1], &peer(0), dirs[1].path(), &extra);
    // A space only r1 owns: r2 serves it as an edge.
    let shards = r1.admin_shards().await;
    let owned: Vec<u64> = shards["owned"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect();
    let space = (0..)
        .map(|i| format!("race-{i}"))
        .find(|s| owned.contains(&(aether_core::placement::shard_of(s, 8) as u64)))
        .unwrap();
    let (mut a, _) = Native::hello(r1.addr, false, A, "").await;
    let (mut b, _) = Native::hello(r2.addr, false, B, "").await;
    a.subscribe(subscribe(&space)).await;
    b.subscribe(subscribe(&space)).await;
    // B's write is older than A's: wherever it arrives, it loses.
    let t = 1_700_000_000_000_000_000u64;
    a.send(write(1, &space, vec![set("k", "\"A\"", t + 10, A)])).await;
    assert!(acked(&mut a, 1).await.is_empty());
    b.send(write(1, &space, vec![set("k", "\"B\"", t, B), set("other", "1", t, B)])).await;
    let lost = acked(&mut b, 1).await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    let w = lost[0].winner.as_ref().unwrap();
    assert_eq!((lost[0].key.as_str(), &w.value[..], w.stamp.unwrap().actor), ("k", &b"\"A\""[..], A));
    assert_eq!(lost[0].yours.unwrap().wall_ns, t);
    // The owner kept A's value; B's other op applied.
    let (all, _) = Native::hello(r1.addr, false, CLIENT | 9, "").await.0.subscribe(subscribe(&space)).await;
    let mut state = Space::new();
    merge(&mut state, &all);
    assert_eq!(state.value(b"k").map(|v| &v[..]), Some(&b"\"A\""[..]));
    assert_eq!(state.value(b"other").map(|v| &v[..]), Some(&b"1"[..]));
}

#[tokio::test]
async fn large_catchups_come_in_bounded_chunks() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &["--limit-catchup-ops", "300", "--limit-msgs-per-sec", "100000", "--limit-burst", "100000"],
    );
    let (mut b, _) = Native::hello(relay.addr, false, B, "").await;
    b.subscribe(subscribe("many")).await;
    for w in 0..10u64 {
        let ops = (0..100).map(|i| set(&format!("k{}", w * 100 + i), "\"x\"", 1_000 + w * 100 + i, B)).collect();
        b.send(write(w, "many", ops)).await;
        acked(&mut b, w).await;
    }
    let (mut a, _) = Native::hello(relay.addr, false, A, "").await;
    a.send(C::Subscribe(subscribe("many"))).await;
    let mut sizes = Vec::new();
    loop {
        let S::Catchup(c) = a.recv().await else { panic!("catchup expected") };
        sizes.push(c.ops.len());
        if c.done {
            assert_eq!(c.total, 1000);
            break;
        }
    }
    assert_eq!(sizes, vec![300, 300, 300, 100]);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &[
            "--auth-token",
            "s3cret",
            "--limit-spaces-per-conn",
            "2",
            "--limit-ops-per-write",
            "3",
            "--limit-frame-bytes",
            "4096",
        ],
    );
    let code = |m: S| match m {
        S::Error(e) => (e.code, e.fatal),
        other => panic!("expected an error, got {other:?}"),
    };
    // Wrong token, a relay actor, a wrong version: fatal.
    for (hello, want) in [
        (pb::Hello { version: 1, token: "nope".into(), actor: A, ..Default::default() }, "auth-failed"),
        (pb::Hello { version: 1, token: "s3cret".into(), actor: 5, ..Default::default() }, "bad-actor"),
        (pb::Hello { version: 2, token: "s3cret".into(), actor: A, ..Default::default() }, "unsupported-version"),
    ] {
        let mut c = Native::connect(relay.addr, false).await;
        c.send(C::Hello(hello)).await;
        assert_eq!(code(c.recv().await), (want.to_owned(), true));
        assert!(matches!(c.next_event().await, NativeEvent::Close(1008) | NativeEvent::Gone));
    }
    let (mut c, w) = Native::hello(relay.addr, false, A, "s3cret").await;
    assert_eq!(w.limits.unwrap().max_spaces, 2);
    c.subscribe(subscribe("one")).await;
    c.subscribe(subscribe("two")).await;
    c.send(C::Subscribe(subscribe("three"))).await;
    assert_eq!(code(c.recv().await), ("too-many-spaces".into(), false));
    c.send(C::Subscribe(subscribe(""))).await;
    assert_eq!(code(c.recv().await), ("bad-space".into(), false));
    let four = (0..4).map(|i| set(&format!("k{i}"), "1", 10, A)).collect();
    c.send(write(1, "one", four)).await;
    assert_eq!(code(c.recv().await), ("too-many-ops".into(), false));
    // One bad op refuses the whole write: the good one before it is not applied.
    c.send(write(2, "one", vec![set("good", "1", 10, A), set("bad", "{not json", 10, A)])).await;
    assert_eq!(code(c.recv().await), ("bad-op".into(), false));
    let (ops, _) = c.subscribe(subscribe("one")).await;
    assert!(ops.is_empty(), "nothing of a refused write applied: {ops:?}");
    // A frame over --limit-frame-bytes closes with 1009; an undecodable one with a fatal error.
    c.send(write(3, "one", vec![set("big", &format!("\"{}\"", "x".repeat(5000)), 10, A)])).await;
    assert_eq!(code(c.recv().await), ("bad-frame".into(), true));
    assert!(matches!(c.next_event().await, NativeEvent::Close(1009)));
    let (mut c, _) = Native::hello(relay.addr, false, A, "s3cret").await;
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![0xff, 0xff, 0xff])).await.unwrap();
    assert_eq!(code(c.recv().await), ("bad-frame".into(), true));
    // The relay still serves.
    let (mut c, _) = Native::hello(relay.addr, true, A, "s3cret").await;
    c.subscribe(subscribe("one")).await;
    c.send(write(4, "one", vec![set("fine", "true", 10, A)])).await;
    assert!(acked(&mut c, 4).await.is_empty());
}

use futures_util::SinkExt as _;

#[tokio::test]
async fn over_the_rate_a_write_is_refused_and_the_connection_stays() {
    let dir = tempdir();
    // A token every 5 s: the refusal below holds unless the test stalls that long.
    let relay = Relay::start(dir.path(), &["--limit-msgs-per-sec", "0.2", "--limit-burst", "5"]);
    let (mut c, w) = Native::hello(relay.addr, false, A, "").await;
    let limits = w.limits.unwrap();
    assert_eq!((limits.ops_per_sec, limits.burst), (0.2, 5), "the rate is advertised");
    c.send(C::Subscribe(subscribe("slow"))).await;
    c.catchup().await;
    // Ten ops cost at most a full bucket (4 tokens are left after the subscribe: refused).
    let ops = (0..10).map(|i| set(&format!("k{i}"), "1", 10 + i, A)).collect();
    c.send(write(1, "slow", ops)).await;
    match c.recv().await {
        S::Error(e) => assert_eq!((e.id, e.code.as_str(), e.fatal), (1, "rate-limited", false)),
        other => panic!("expected rate-limited, got {other:?}"),
    }
    // Once the bucket has refilled (a token in 5 s), the same write goes through on
    // the same connection; retries meanwhile (a dozen, well under the relay's
    // strikes before a fatal close) are refused, not fatal.
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let ops = (0..10).map(|i| set(&format!("k{i}"), "1", 10 + i, A)).collect();
        c.send(write(2, "slow", ops)).await;
        match c.recv().await {
            S::Ack(a) if a.id == 2 => break,
            S::Error(e) if e.code == "rate-limited" && !e.fatal => {
                assert!(tokio::time::Instant::now() < deadline, "the bucket never refilled");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (ops, _) = Native::hello(relay.addr, false, B, "").await.0.subscribe(subscribe("slow")).await;
    assert_eq!(ops.len(), 10, "the refused write changed nothing, the accepted one everything");
}
