//! The driver's decisions against fake connections: frames out are read from
//! the connection's queue, frames in are handed to the driver, time is passed
//! in (no relay, no network, no sleeping).

use std::time::{Duration, Instant};

use aether_core::Stamp;
use aether_proto::client::v1::{self as pb, ClientFrame, client_frame, server_frame};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::sessions::{Dialed, Dialing};
use super::*;
use crate::replica::{Change, Origin, stamp_to_pb};
use crate::shared::{Mutation, Queued};
use crate::stream::PresenceEvent;
use crate::transport::{ConnEvent, Connection, Established};

const ACTOR: u64 = (1 << 63) | 77;
const SKEW: u64 = 60_000_000_000;

struct Harness {
    d: Driver,
    shared: Arc<Shared>,
    _commands: mpsc::Sender<Command>,
    _first: oneshot::Receiver<Result<(), Error>>,
}

fn harness(endpoints: usize, loaded: Option<QueueFile>) -> Harness {
    let urls: Vec<String> = (0..endpoints).map(|i| format!("ws://127.0.0.1:{}", 1 + i)).collect();
    let config = ClientConfig::new(urls).hedge_delay(Some(Duration::from_millis(100)));
    let endpoints = config.validate().unwrap();
    let shared = Arc::new(Shared::new(ACTOR, 1024, 0));
    let (commands, commands_rx) = mpsc::channel(16);
    let (first_tx, first) = oneshot::channel();
    let d = Driver::new(DriverInit {
        config: Arc::new(config),
        endpoints,
        tls: Tls::new(None).unwrap(),
        shared: shared.clone(),
        loaded,
        queue_lock: None,
        commands: commands_rx,
        first: first_tx,
    });
    Harness { d, shared, _commands: commands, _first: first }
}

fn limits(f: impl FnOnce(&mut pb::Limits)) -> pb::Limits {
    let mut l = DEFAULT_LIMITS;
    f(&mut l);
    l
}

/// A relay session on `endpoint` that greeted with `limits` (and a clock `offset_ns` ahead of ours).
fn connect_at(
    h: &mut Harness,
    endpoint: usize,
    limits: pb::Limits,
    offset_ns: i64,
) -> (SessionId, mpsc::Receiver<ClientFrame>) {
    let sid = h.d.next_session;
    h.d.next_session += 1;
    h.d.dials.insert(sid, Dialing { endpoint, started: Instant::now(), early: Vec::new() });
    let (conn, rx) = Connection::fake(100_000);
    let welcome = pb::Welcome {
        version: 1,
        relay: format!("r{endpoint}"),
        now_ns: crate::clock::now_ns().saturating_add_signed(offset_ns),
        max_skew_ns: SKEW,
        session: "me".into(),
        color: "red".into(),
        limits: Some(limits),
    };
    h.d.on_dialed(Dialed { session: sid, result: Ok(Established { conn, welcome, rtt: Duration::from_millis(1) }) });
    (sid, rx)
}

fn connect(h: &mut Harness, endpoint: usize, limits: pb::Limits) -> (SessionId, mpsc::Receiver<ClientFrame>) {
    connect_at(h, endpoint, limits, 0)
}

/// What follows an event, without dialing real relays.
fn step(h: &mut Harness, now: Instant) {
    h.d.on_timers(now);
    h.d.drop_broken(now);
    h.d.pump_all(now);
    h.d.drop_broken(now);
}

fn sent(rx: &mut mpsc::Receiver<ClientFrame>) -> Vec<client_frame::Msg> {
    std::iter::from_fn(|| rx.try_recv().ok()).filter_map(|f| f.msg).collect()
}

fn writes(frames: &[client_frame::Msg]) -> Vec<pb::Write> {
    frames
        .iter()
        .filter_map(|m| match m {
            client_frame::Msg::Write(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

fn subscribes(frames: &[client_frame::Msg]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|m| match m {
            client_frame::Msg::Subscribe(s) => Some(s.space.clone()),
            _ => None,
        })
        .collect()
}

fn keys(w: &pb::Write) -> Vec<&str> {
    w.ops.iter().map(|o| o.key.as_str()).collect()
}

fn deliver(h: &mut Harness, sid: SessionId, msg: server_frame::Msg) {
    let frame = pb::ServerFrame { msg: Some(msg) };
    h.d.on_inbound(Inbound { session: sid, event: ConnEvent::Frame(Box::new(frame)) });
}

fn ack(h: &mut Harness, sid: SessionId, id: u64) {
    deliver(h, sid, server_frame::Msg::Ack(pb::Ack { id }));
}

fn error(h: &mut Harness, sid: SessionId, id: u64, space: &str, code: &str) {
    let e = pb::Error { id, space: space.into(), code: code.into(), message: format!("{code}!"), fatal: false };
    deliver(h, sid, server_frame::Msg::Error(e));
}

fn caught_up(h: &mut Harness, sid: SessionId, space: &str) {
    let c =
        pb::Catchup { space: space.into(), done: true, epoch: Bytes::from_static(b"E"), seq: 1, ..Default::default() };
    deliver(h, sid, server_frame::Msg::Catchup(c));
}

fn set(h: &mut Harness, space: &str, kvs: &[(&str, serde_json::Value)]) -> Queued {
    let cell = h.shared.space(space);
    let ops = kvs
        .iter()
        .map(|(k, v)| Mutation { key: k.to_string(), value: Some((Bytes::from(v.to_string()), v.clone())) })
        .collect();
    h.d.enqueue(cell, ops, Instant::now()).unwrap()
}

fn changes(h: &Harness, space: &str) -> broadcast::Receiver<Change> {
    lock(&h.shared.space(space).state).changes.subscribe()
}

fn drain<T: Clone>(rx: &mut broadcast::Receiver<T>) -> Vec<T> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn stamp(wall_ns: u64, actor: u64) -> Stamp {
    Stamp { wall_ns, counter: 0, actor }
}

#[tokio::test]
async fn queued_writes_are_resent_grouped_and_each_resolves_on_its_own() {
    let mut h = harness(1, None);
    let mut tickets = Vec::new();
    for i in 0..5 {
        tickets.push(set(&mut h, "a", &[(&format!("k{i}"), json!(i))]));
    }
    tickets.push(set(&mut h, "a", &[("k0", json!("again"))]));
    tickets.push(set(&mut h, "b", &[("x", json!(1))]));
    tickets.push(set(&mut h, "b", &[("y", json!(2)), ("z", json!(3))]));
    let (sid, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let out = sent(&mut rx);
    assert_eq!(subscribes(&out), ["a", "b"], "subscriptions first, in creation order");
    let ws = writes(&out);
    assert_eq!(ws.len(), 3, "{ws:?}");
    assert_eq!((ws[0].space.as_str(), keys(&ws[0])), ("a", vec!["k0", "k1", "k2", "k3", "k4"]));
    // k0 again: the later write of the key goes in a later frame.
    assert_eq!((ws[1].space.as_str(), keys(&ws[1])), ("a", vec!["k0"]));
    assert_eq!((ws[2].space.as_str(), keys(&ws[2])), ("b", vec!["x", "y", "z"]));

    // One ack settles the five writes of its frame, and only them.
    ack(&mut h, sid, ws[0].id);
    for t in tickets.iter_mut().take(5) {
        let acked = t.done.try_recv().unwrap().unwrap();
        assert_eq!((acked.relay.as_str(), acked.quorum), ("r0", true));
    }
    assert!(tickets[5].done.try_recv().is_err());
    assert_eq!(h.d.queue.ops(), 4);

    // An overloaded frame is retried later (grouped again), never failed.
    let now = Instant::now();
    error(&mut h, sid, ws[2].id, "b", "overloaded");
    assert!(tickets[6].done.try_recv().is_err() && tickets[7].done.try_recv().is_err());
    assert!(sent(&mut rx).is_empty());
    step(&mut h, now + Duration::from_secs(1));
    let again = writes(&sent(&mut rx));
    assert_eq!(again.len(), 1);
    assert_eq!(keys(&again[0]), vec!["x", "y", "z"]);
    assert_ne!(again[0].id, ws[2].id, "a new frame id");
    ack(&mut h, sid, again[0].id);
    ack(&mut h, sid, ws[1].id);
    assert!(tickets.iter_mut().skip(5).all(|t| t.done.try_recv().unwrap().is_ok()));
    assert_eq!(h.d.queue.ops(), 0);
    // A late duplicate ack of a settled frame changes nothing.
    ack(&mut h, sid, ws[2].id);
}

#[tokio::test]
async fn frames_are_paced_to_the_relay_rate_and_rate_limited_is_temporary() {
    let mut h = harness(1, None);
    let paced = limits(|l| {
        l.ops_per_sec = 10.0;
        l.burst = 10;
    });
    let (sid, mut rx) = connect(&mut h, 0, paced);
    let t0 = Instant::now();
    let mut tickets: Vec<Queued> = (0..20).map(|i| set(&mut h, "a", &[(&format!("k{i}"), json!(i))])).collect();
    // 90% of the burst: 9 tokens, one for the subscribe, 8 writes.
    let out = sent(&mut rx);
    assert_eq!(subscribes(&out), ["a"]);
    assert_eq!(writes(&out).len(), 8);
    let wake = h.d.next_wake(t0).unwrap();
    assert!(wake > t0 && wake < t0 + Duration::from_millis(200), "{:?}", wake - t0);
    // A second later: 9 more (9 ops per second).
    step(&mut h, t0 + Duration::from_secs(1));
    let more = writes(&sent(&mut rx));
    assert!((8..=10).contains(&more.len()), "{}", more.len());

    // The relay still says rate-limited: the write waits and goes again, no failure.
    let first = writes(&out)[0].clone();
    error(&mut h, sid, first.id, "a", "rate-limited");
    assert!(tickets[0].done.try_recv().is_err());
    assert!(h.d.retry_timers.is_armed(1));
    step(&mut h, t0 + Duration::from_secs(30));
    let later = writes(&sent(&mut rx));
    assert!(later.iter().any(|w| keys(w) == ["k0"]), "{later:?}");
    assert!(h.d.sessions.contains_key(&sid), "no reconnect for a rate limit");
    for w in writes(&out).iter().chain(&more).chain(&later) {
        ack(&mut h, sid, w.id);
    }
    assert!(tickets[0].done.try_recv().unwrap().is_ok());

    // After a reconnect, grouped frames stay within the burst.
    let mut h = harness(1, None);
    for i in 0..30 {
        set(&mut h, "a", &[(&format!("k{i}"), json!(i))]);
    }
    let (_sid, mut rx) = connect(&mut h, 0, paced);
    for i in 1..=50 {
        step(&mut h, t0 + Duration::from_millis(100) * i);
    }
    let ws = writes(&sent(&mut rx));
    assert!(ws.iter().all(|w| w.ops.len() <= 9), "{:?}", ws.iter().map(|w| w.ops.len()).collect::<Vec<_>>());
    assert_eq!(ws.iter().map(|w| w.ops.len()).sum::<usize>(), 30);
}

#[tokio::test]
async fn temporary_refusals_never_fail_a_write_and_future_stamps_wait_for_the_relay_clock() {
    let mut h = harness(2, None);
    let (a, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let mut t = set(&mut h, "s", &[("k", json!(1))]);
    let mut now = Instant::now();
    let mut wire = writes(&sent(&mut rx))[0].id;
    for (i, code) in
        ["overloaded", "write-failed", "some-new-code", "not-subscribed"].iter().cycle().take(40).enumerate()
    {
        error(&mut h, a, wire, "s", code);
        assert!(t.done.try_recv().is_err(), "{code} is temporary");
        assert_eq!(h.d.writes[&1].retry, Some((a, i as u32 + 1)));
        // The delay grows but stays within backoff_max (10 s).
        let due = h.d.retry_timers.next().unwrap();
        assert!(due <= now + Duration::from_secs(10) + Duration::from_millis(1));
        now = due;
        step(&mut h, now);
        let ws = writes(&sent(&mut rx));
        assert_eq!(ws.len(), 1, "{code}");
        wire = ws[0].id;
    }
    // Another session starts its own count.
    h.d.broken.push((a, "test".into()));
    step(&mut h, now);
    let (b, mut rx) = connect(&mut h, 1, DEFAULT_LIMITS);
    let ws = writes(&sent(&mut rx));
    error(&mut h, b, ws[0].id, "s", "overloaded");
    assert_eq!(h.d.writes[&1].retry, Some((b, 1)));
    let due = h.d.retry_timers.next().unwrap();
    assert!(due <= now + Duration::from_millis(300), "the backoff starts over");
    step(&mut h, due);
    ack(&mut h, b, writes(&sent(&mut rx))[0].id);
    assert!(t.done.try_recv().unwrap().is_ok());

    // A write stamped 30 s ahead of a relay allowing 1 s waits ~29 s.
    let file = QueueFile {
        actor: ACTOR,
        last_stamp: Stamp::default(),
        writes: vec![queue::QueuedWrite {
            space: "s".into(),
            ops: vec![queue::QueuedOp {
                key: "f".into(),
                value: Some(Bytes::from_static(b"1")),
                stamp: stamp(crate::clock::now_ns() + 30_000_000_000, ACTOR),
            }],
        }],
    };
    let mut h = harness(1, Some(file));
    let (sid, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    h.d.max_skew_ns = 1_000_000_000;
    let now = Instant::now();
    let w = writes(&sent(&mut rx))[0].id;
    error(&mut h, sid, w, "s", "future-stamp");
    assert_eq!(h.d.queue.ops(), 1, "still queued");
    let due = h.d.retry_timers.next().unwrap();
    assert!(due > now + Duration::from_secs(28) && due < now + Duration::from_secs(31), "{:?}", due - now);
    let out = sent(&mut rx);
    assert!(out.iter().any(|m| matches!(m, client_frame::Msg::Ping(_))), "the relay clock is sampled again");
}

#[tokio::test]
async fn a_refusal_from_one_relay_does_not_fail_a_write_another_may_still_ack() {
    let mut h = harness(2, None);
    let (p, mut rxp) = connect(&mut h, 0, DEFAULT_LIMITS);
    let mut t = set(&mut h, "s", &[("k", json!(1))]);
    let wp = writes(&sent(&mut rxp))[0].id;
    // Overdue at the primary: a hedge session gets it too.
    h.d.on_hedge_due(1, Instant::now());
    let (hs, mut rxh) = connect(&mut h, 1, DEFAULT_LIMITS);
    assert_eq!(h.d.hedge, Some(hs));
    let wh = writes(&sent(&mut rxh))[0].id;
    // The primary refuses it for good; the hedge may still take it.
    error(&mut h, p, wp, "s", "bad-op");
    assert!(t.done.try_recv().is_err());
    assert_eq!(h.d.writes[&1].sent_on, vec![(hs, wh)]);
    ack(&mut h, hs, wh);
    let acked = t.done.try_recv().unwrap().unwrap();
    assert_eq!(acked.relay, "r1");

    // Refused for good by the primary, and the hedge is lost: it fails then.
    let mut changes = changes(&h, "s");
    let mut t = set(&mut h, "s", &[("j", json!(2))]);
    let wp = writes(&sent(&mut rxp)).last().unwrap().id;
    h.d.on_hedge_due(2, Instant::now());
    assert_eq!(writes(&sent(&mut rxh)).len(), 1);
    error(&mut h, p, wp, "s", "forged-stamp");
    assert!(t.done.try_recv().is_err());
    h.d.broken.push((hs, "gone".into()));
    step(&mut h, Instant::now());
    let err = t.done.try_recv().unwrap().unwrap_err();
    assert!(matches!(&err, Error::Refused { code, .. } if code == "forged-stamp"), "{err}");
    let seen = drain(&mut changes);
    assert_eq!(seen.last().map(|c| (c.key.as_str(), c.origin)), Some(("j", Origin::Rejected)));

    // A grouped frame refused for one bad op: each write alone, only the culprit fails.
    let mut h = harness(1, None);
    let mut ok = set(&mut h, "s", &[("a", json!(1))]);
    let mut bad = set(&mut h, "s", &[("b", json!(2))]);
    let (sid, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let group = writes(&sent(&mut rx));
    assert_eq!(group.len(), 1);
    error(&mut h, sid, group[0].id, "s", "bad-op");
    let alone = writes(&sent(&mut rx));
    assert_eq!(alone.iter().map(keys).collect::<Vec<_>>(), [["a"], ["b"]]);
    ack(&mut h, sid, alone[0].id);
    error(&mut h, sid, alone[1].id, "s", "bad-op");
    assert!(ok.done.try_recv().unwrap().is_ok());
    assert!(bad.done.try_recv().unwrap().is_err());
}

#[tokio::test]
async fn a_lost_race_is_reported_once_per_key_even_when_two_relays_report_it() {
    let mut h = harness(2, None);
    let (p, mut rxp) = connect(&mut h, 0, DEFAULT_LIMITS);
    let mut changes = changes(&h, "s");
    let mut t = set(&mut h, "s", &[("k1", json!("mine")), ("k2", json!("mine too")), ("k3", json!("won"))]);
    let ours = t.stamps.clone();
    let wp = writes(&sent(&mut rxp))[0].id;
    h.d.on_hedge_due(1, Instant::now());
    let (hs, mut rxh) = connect(&mut h, 1, DEFAULT_LIMITS);
    let wh = writes(&sent(&mut rxh))[0].id;
    drain(&mut changes);
    let winner = |key: &str, wall: u64| pb::Op {
        key: key.into(),
        value: Bytes::from_static(b"\"theirs\""),
        delete: false,
        stamp: Some(stamp_to_pb(stamp(wall, 5))),
    };
    let sup = |id: u64, key: &str, i: usize, wall: u64| {
        server_frame::Msg::Superseded(pb::Superseded {
            id,
            space: "s".into(),
            key: key.into(),
            yours: Some(stamp_to_pb(ours[i])),
            winner: Some(winner(key, wall)),
        })
    };
    let far = ours[2].wall_ns + 1_000_000;
    // The winner of k2 reached the replica first, as a change.
    let c = pb::Changes { space: "s".into(), ops: vec![winner("k2", far)], seq: 9 };
    h.d.ensure_subscribed(p, &h.shared.space("s"), false);
    deliver(&mut h, p, server_frame::Msg::Changes(c));
    assert_eq!(drain(&mut changes).len(), 1);
    deliver(&mut h, p, sup(wp, "k1", 0, far));
    deliver(&mut h, hs, sup(wh, "k1", 0, far));
    deliver(&mut h, hs, sup(wh, "k2", 1, far));
    deliver(&mut h, p, sup(wp, "k2", 1, far));
    ack(&mut h, p, wp);
    deliver(&mut h, hs, sup(wh, "k1", 0, far));
    ack(&mut h, hs, wh);
    let lost: Vec<_> =
        drain(&mut changes).into_iter().filter(|c| c.origin == Origin::Superseded).map(|c| c.key).collect();
    assert_eq!(lost, ["k1", "k2"], "one event per losing key");
    assert!(t.done.try_recv().unwrap().unwrap().superseded);

    // A retried write that reaches the relay after our own later write of the key lost to us: no event.
    let mut first = set(&mut h, "s", &[("k", json!(1))]);
    let mut second = set(&mut h, "s", &[("k", json!(2))]);
    let ws = writes(&sent(&mut rxp));
    drain(&mut changes);
    let own = pb::Op {
        key: "k".into(),
        value: Bytes::from_static(b"2"),
        delete: false,
        stamp: Some(stamp_to_pb(second.stamps[0])),
    };
    let s = pb::Superseded {
        id: ws[0].id,
        space: "s".into(),
        key: "k".into(),
        yours: Some(stamp_to_pb(first.stamps[0])),
        winner: Some(own),
    };
    deliver(&mut h, p, server_frame::Msg::Superseded(s));
    ack(&mut h, p, ws[0].id);
    ack(&mut h, p, ws[1].id);
    assert!(drain(&mut changes).is_empty());
    assert!(!first.done.try_recv().unwrap().unwrap().superseded);
    assert!(second.done.try_recv().unwrap().is_ok());
}

#[tokio::test]
async fn restored_writes_refused_by_a_relay_are_undone_to_absent() {
    let file = QueueFile {
        actor: ACTOR,
        last_stamp: Stamp::default(),
        writes: vec![
            queue::QueuedWrite {
                space: "s".into(),
                ops: vec![queue::QueuedOp {
                    key: "bad".into(),
                    value: Some(Bytes::from_static(b"1")),
                    stamp: stamp(10, ACTOR),
                }],
            },
            queue::QueuedWrite {
                space: "s".into(),
                ops: vec![queue::QueuedOp {
                    key: "good".into(),
                    value: Some(Bytes::from_static(b"2")),
                    stamp: stamp(11, ACTOR),
                }],
            },
        ],
    };
    let mut h = harness(1, Some(file));
    let cell = h.shared.space("s");
    assert!(lock(&cell.state).replica.value("bad").is_some(), "offline reads see restored writes");
    let mut changes = changes(&h, "s");
    let (sid, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let group = writes(&sent(&mut rx));
    assert_eq!(keys(&group[0]), ["bad", "good"]);
    error(&mut h, sid, group[0].id, "s", "bad-op");
    let alone = writes(&sent(&mut rx));
    error(&mut h, sid, alone[0].id, "s", "bad-op");
    ack(&mut h, sid, alone[1].id);
    let c = drain(&mut changes);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].key.as_str(), c[0].value.clone(), c[0].origin), ("bad", None, Origin::Rejected));
    assert!(lock(&cell.state).replica.value("bad").is_none());
    assert!(lock(&cell.state).replica.value("good").is_some());
    // The relay's value comes back through a resubscription by digests.
    assert_eq!(subscribes(&sent(&mut rx)), ["s"]);
    assert_eq!(h.d.queue.ops(), 0);
}

#[tokio::test]
async fn a_close_that_comes_before_the_dial_result_is_not_lost() {
    let mut h = harness(1, None);
    let sid = h.d.next_session;
    h.d.next_session += 1;
    h.d.dials.insert(sid, Dialing { endpoint: 0, started: Instant::now(), early: Vec::new() });
    // The connection's reader reports the close before the dialing task reports success.
    h.d.on_inbound(Inbound { session: sid, event: ConnEvent::Closed("closed by the relay".into()) });
    let (conn, _rx) = Connection::fake(16);
    let welcome = pb::Welcome { relay: "r0".into(), limits: Some(DEFAULT_LIMITS), ..Default::default() };
    h.d.on_dialed(Dialed { session: sid, result: Ok(Established { conn, welcome, rtt: Duration::ZERO }) });
    step(&mut h, Instant::now());
    assert!(h.d.sessions.is_empty() && h.d.primary.is_none(), "the dead session does not pass for alive");
    // Accepting and closing at once counts as a failed attempt (the only endpoint: offline).
    assert!(matches!(&*h.shared.status.borrow(), Status::Offline { error } if error.contains("closed by the relay")));
    assert!(h.d.reconnect_at.is_some(), "closed right after welcome: backed off");
}

#[tokio::test]
async fn the_reconnect_backoff_resets_only_after_a_healthy_session() {
    let mut h = harness(1, None);
    h.shared.space("s");
    let (a, _rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    assert_eq!(h.d.backoff.attempts(), 0);
    // Lost right after welcome: back off, and again.
    h.d.broken.push((a, "closed".into()));
    step(&mut h, Instant::now());
    assert_eq!(h.d.backoff.attempts(), 1);
    let (b, _rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    h.d.broken.push((b, "closed".into()));
    step(&mut h, Instant::now());
    assert_eq!(h.d.backoff.attempts(), 2);
    assert!(h.d.reconnect_at.is_some());
    // A session whose catchup completed and that stayed up resets it...
    let (c, _rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let now = Instant::now();
    caught_up(&mut h, c, "s");
    step(&mut h, now + Duration::from_secs(1));
    assert_eq!(h.d.backoff.attempts(), 2, "not healthy yet");
    step(&mut h, now + HEALTHY_AFTER + Duration::from_millis(10));
    assert_eq!(h.d.backoff.attempts(), 0);
    // ...and its loss is retried at once.
    h.d.broken.push((c, "closed".into()));
    step(&mut h, Instant::now());
    assert_eq!(h.d.reconnect_at, None);
    assert_eq!(h.shared.connects.load(Ordering::Relaxed), 3);
    // A catchup that never completes: healthy after a longer while all the same.
    let (d, _rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let welcomed = h.d.sessions[&d].welcomed;
    assert_eq!(h.d.sessions[&d].healthy_at(), Some(welcomed + HEALTHY_AFTER * 10));
}

#[tokio::test]
async fn presence_of_the_old_primary_leaves_with_it() {
    let mut h = harness(1, None);
    let cell = h.shared.space("s");
    cell.presence_wanted.store(true, Ordering::Relaxed);
    let mut events = lock(&cell.state).presence.subscribe();
    let (p, _rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let presence = |session: &str, state: &'static [u8]| {
        server_frame::Msg::Presence(pb::PresenceEvent {
            space: "s".into(),
            session: session.into(),
            color: format!("c-{session}"),
            state: Bytes::from_static(state),
        })
    };
    deliver(&mut h, p, presence("s1", b"{\"x\":1}"));
    deliver(&mut h, p, presence("s2", b"{\"x\":2}"));
    deliver(&mut h, p, presence("s2", b""));
    assert_eq!(drain(&mut events).len(), 3);
    h.d.broken.push((p, "lost".into()));
    step(&mut h, Instant::now());
    let left = drain(&mut events);
    assert_eq!(left, [PresenceEvent { session: "s1".into(), color: "c-s1".into(), state: None }]);
    assert!(h.d.presence_seen.is_empty());
}

#[tokio::test]
async fn spaces_beyond_max_spaces_are_refused_not_left_stale() {
    let mut h = harness(1, None);
    let cells: Vec<_> = ["a", "b", "c"].iter().map(|n| h.shared.space(n)).collect();
    let (p, mut rx) = connect(&mut h, 0, limits(|l| l.max_spaces = 2));
    assert_eq!(subscribes(&sent(&mut rx)), ["a", "b"]);
    assert!(matches!(&*cells[2].synced.borrow(), SyncState::Failed(r) if r.code == "too-many-spaces"));
    caught_up(&mut h, p, "a");
    assert_eq!(*cells[0].synced.borrow(), SyncState::Synced);
    // Unsubscribing one makes room for the refused one.
    cells[1].subscribed.store(false, Ordering::Release);
    h.d.unsubscribe(&cells[1]);
    let out = sent(&mut rx);
    assert!(matches!(&out[0], client_frame::Msg::Unsubscribe(u) if u.space == "b"), "{out:?}");
    assert_eq!(subscribes(&out), ["c"]);
    assert_eq!(*cells[2].synced.borrow(), SyncState::Pending, "asked again: ready() waits for the answer");
    caught_up(&mut h, p, "c");
    assert_eq!(*cells[2].synced.borrow(), SyncState::Synced);
    // A relay refusing a space that was synced: not synced any more.
    error(&mut h, p, 0, "a", "too-many-spaces");
    assert!(matches!(&*cells[0].synced.borrow(), SyncState::Failed(_)));
    assert!(!h.d.sessions[&p].spaces.contains_key("a"));
}

#[tokio::test]
async fn an_unsubscribed_space_stays_subscribed_until_its_writes_are_acked() {
    let mut h = harness(1, None);
    let (p, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    let mut t = set(&mut h, "s", &[("k", json!(1))]);
    let w = writes(&sent(&mut rx))[0].id;
    let cell = h.shared.space("s");
    cell.subscribed.store(false, Ordering::Release);
    h.d.unsubscribe(&cell);
    assert!(sent(&mut rx).is_empty(), "its write still needs the subscription");
    ack(&mut h, p, w);
    assert!(t.done.try_recv().unwrap().is_ok());
    let out = sent(&mut rx);
    assert!(matches!(&out[..], [client_frame::Msg::Unsubscribe(u)] if u.space == "s"), "{out:?}");
    // Not resubscribed after a failover.
    h.d.broken.push((p, "lost".into()));
    step(&mut h, Instant::now());
    let (_q, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    assert!(subscribes(&sent(&mut rx)).is_empty());
    // Followed again on demand.
    h.shared.space("s");
    h.d.on_spaces_changed();
    assert_eq!(subscribes(&sent(&mut rx)), ["s"]);
}

#[tokio::test]
async fn a_rate_limited_subscribe_is_sent_again() {
    let mut h = harness(1, None);
    h.shared.space("s");
    let (p, mut rx) = connect(&mut h, 0, DEFAULT_LIMITS);
    assert_eq!(subscribes(&sent(&mut rx)), ["s"]);
    let now = Instant::now();
    error(&mut h, p, 0, "", "rate-limited");
    let at = h.d.sessions[&p].resync_at.unwrap();
    step(&mut h, at);
    assert_eq!(subscribes(&sent(&mut rx)), ["s"]);
    assert!(at >= now + Duration::from_millis(100));
}

#[tokio::test]
async fn a_client_whose_clock_is_late_stamps_and_follows_at_the_relay_time() {
    let minute = 60_000_000_000i64;
    let mut h = harness(1, None);
    // The relay's clock is 5 minutes ahead of ours.
    let (p, mut rx) = connect_at(&mut h, 0, DEFAULT_LIMITS, 5 * minute);
    let t = set(&mut h, "s", &[("k", json!(1))]);
    let relay_now = crate::clock::now_ns() + 5 * minute as u64;
    assert!(t.stamps[0].wall_ns + 1_000_000_000 > relay_now, "not minutes in the past");
    // A remote stamp at the relay's time (minutes ahead of ours) is followed.
    sent(&mut rx);
    let remote = stamp(relay_now + 2_000_000_000, 9);
    h.d.ensure_subscribed(p, &h.shared.space("s"), false);
    let c = pb::Changes {
        space: "s".into(),
        ops: vec![pb::Op {
            key: "r".into(),
            value: Bytes::from_static(b"1"),
            delete: false,
            stamp: Some(stamp_to_pb(remote)),
        }],
        seq: 1,
    };
    deliver(&mut h, p, server_frame::Msg::Changes(c));
    let t2 = set(&mut h, "s", &[("k", json!(2))]);
    assert!(t2.stamps[0] > remote, "our next write orders after what we saw");
}
