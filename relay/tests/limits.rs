//! Limits, close codes, auth and connection behaviour against a real relay process.

mod common;

use std::time::Duration;

use common::{Client, Event, Relay, tempdir};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--limit-frame-bytes", "4096"]);
    let (mut c, _, _) = Client::join(&relay.ws_url("")).await;
    let big = json!({"type":"set","key":"k","value":"x".repeat(5000)});
    c.send(big).await;
    assert_eq!(c.recv_close().await, (1009, "frame too large".into()));
    // Nothing of it was applied.
    let (_, _, snap) = Client::join(&relay.ws_url("")).await;
    assert_eq!(snap, json!({}));
}

#[tokio::test]
async fn oversized_key_value_and_message_get_errors_and_are_not_applied() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &["--limit-key-bytes", "8", "--limit-value-bytes", "32", "--limit-message-bytes", "200"],
    );
    let (mut c, _, _) = Client::join(&relay.ws_url("")).await;
    c.send(json!({"type":"set","key":"123456789","value":1})).await;
    assert_eq!(c.recv().await["code"], "key-too-large");
    c.send(json!({"type":"set","key":"k","value":"x".repeat(40)})).await;
    assert_eq!(c.recv().await["code"], "value-too-large");
    c.send(json!({"type":"set","key":"k","value":1,"pad":"x".repeat(300)})).await;
    assert_eq!(c.recv().await["code"], "message-too-large");
    c.send_text("{not json").await;
    assert_eq!(c.recv().await["code"], "invalid-json");
    c.send(json!({"type":"set","key":["k"],"value":1})).await;
    assert_eq!(c.recv().await["code"], "invalid-field");
    c.send(json!({"type":"presence","x":"1","y":2})).await;
    assert_eq!(c.recv().await["code"], "invalid-field");
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.recv().await["code"], "unsupported-frame");
    // The connection is still usable and nothing was stored.
    c.send(json!({"type":"set","key":"ok","value":true})).await;
    assert_eq!(c.recv().await, json!({"type":"set","key":"ok","value":true}));
    let (_, _, snap) = Client::join(&relay.ws_url("")).await;
    assert_eq!(snap, json!({"ok": true}));
    let (status, metrics) = relay.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("aether_client_errors_total{code=\"key-too-large\"} 1"), "{metrics}");
}

#[tokio::test]
async fn rate_limit_closes_with_1008() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--limit-msgs-per-sec", "1", "--limit-burst", "5"]);
    let (mut c, _, _) = Client::join(&relay.ws_url("")).await;
    for i in 0..20 {
        c.send(json!({"type":"presence","x":i,"y":0})).await;
    }
    assert_eq!(c.recv_close().await, (1008, "rate limit exceeded".into()));
}

#[tokio::test]
async fn connection_caps_close_with_1013() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &["--limit-conns", "3", "--limit-conns-per-ip", "2", "--trusted-proxy", "127.0.0.0/8"],
    );
    let from = |ip: &str| {
        let mut req = relay.ws_url("").into_client_request().unwrap();
        req.headers_mut().insert("x-forwarded-for", ip.parse().unwrap());
        req
    };
    let mut a1 = Client::connect_with(from("198.51.100.1")).await;
    let mut a2 = Client::connect_with(from("198.51.100.1")).await;
    assert_eq!(a1.recv().await["type"], "hello");
    assert_eq!(a2.recv().await["type"], "hello");
    let mut a3 = Client::connect_with(from("198.51.100.1")).await;
    assert_eq!(a3.recv_close().await, (1013, "connection limit per address reached".into()));
    let mut b1 = Client::connect_with(from("198.51.100.2")).await;
    assert_eq!(b1.recv().await["type"], "hello");
    let mut b2 = Client::connect_with(from("198.51.100.2")).await;
    assert_eq!(b2.recv_close().await, (1013, "connection limit reached".into()));
    // A place frees up when a client leaves.
    a1.ws.close(None).await.unwrap();
    while a1.next_event().await != Event::Gone {}
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let mut c = Client::connect_with(from("198.51.100.3")).await;
        match c.next_event().await {
            Event::Json(v) => {
                assert_eq!(v["type"], "hello");
                break;
            }
            // The server may not have seen a1's close yet.
            _ => assert!(tokio::time::Instant::now() < deadline, "the cap was never released"),
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn x_forwarded_for_from_untrusted_peers_is_ignored() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--limit-conns-per-ip", "1"]);
    let from = |ip: &str| {
        let mut req = relay.ws_url("").into_client_request().unwrap();
        req.headers_mut().insert("x-forwarded-for", ip.parse().unwrap());
        req
    };
    let mut a = Client::connect_with(from("198.51.100.1")).await;
    assert_eq!(a.recv().await["type"], "hello");
    // A different claimed address does not help: the peer (127.0.0.1) is what counts.
    let mut b = Client::connect_with(from("198.51.100.2")).await;
    assert_eq!(b.recv_close().await.0, 1013);
}

#[tokio::test]
async fn auth_by_query_or_first_frame_and_failures_close_1008_before_any_state() {
    let dir = tempdir();
    // An auth deadline longer than the test waits for anything: the cases that
    // authenticate (or fail to) with a frame never race it on a slow machine.
    let relay = Relay::start(dir.path(), &["--auth-token", "s3cret", "--auth-timeout", "30s"]);

    let (mut ok, _, _) = Client::join(&relay.ws_url("auth_token=s3cret")).await;
    ok.send(json!({"type":"set","key":"secret","value":42})).await;
    assert_eq!(ok.recv().await["key"], "secret");

    let mut frame = Client::connect(&relay.ws_url("")).await;
    frame.send(json!({"type":"auth","token":"s3cret"})).await;
    assert_eq!(frame.recv().await["type"], "hello");
    assert_eq!(frame.recv().await["data"], json!({"secret": 42}));

    // Wrong token in the URL or in the frame: closed, and no hello or snapshot first.
    let mut wrong = Client::connect(&relay.ws_url("auth_token=nope")).await;
    assert_eq!(wrong.next_event().await, Event::Close(1008, "auth failed".into()));
    let mut wrong_frame = Client::connect(&relay.ws_url("")).await;
    wrong_frame.send(json!({"type":"auth","token":"s3cre"})).await;
    assert_eq!(wrong_frame.next_event().await, Event::Close(1008, "auth failed".into()));

    // A first frame that is not auth.
    let mut rude = Client::connect(&relay.ws_url("")).await;
    rude.send(json!({"type":"set","key":"secret","value":0})).await;
    assert_eq!(rude.next_event().await, Event::Close(1008, "auth required".into()));

    // Missing token: the deadline (a relay with a short one) closes it; a token after
    // that is too late.
    let quick_dir = tempdir();
    let quick = Relay::start(quick_dir.path(), &["--auth-token", "s3cret", "--auth-timeout", "300ms"]);
    let mut silent = Client::connect(&quick.ws_url("")).await;
    assert_eq!(silent.next_event().await, Event::Close(1008, "auth timeout".into()));
    // A token sent once the deadline has passed (the relay's close is on its way) is
    // not accepted: nothing but the close arrives.
    let mut late = Client::connect(&quick.ws_url("")).await;
    assert_eq!(late.next_event().await, Event::Close(1008, "auth timeout".into()));
    let _ = late.ws.send(Message::text(json!({"type":"auth","token":"s3cret"}).to_string())).await;
    assert!(matches!(late.next_event().await, Event::Gone | Event::Close(..)), "the late token opened nothing");

    // Nothing the rejected clients sent was applied.
    let (_, _, snap) = Client::join(&relay.ws_url("auth_token=s3cret")).await;
    assert_eq!(snap, json!({"secret": 42}));
}

/// A client read on a task of its own: reading is what answers pings
/// (tungstenite replies while polling), so it keeps answering whatever the
/// test awaits meanwhile (e.g. another client's echo behind a slow fsync).
struct Polled {
    outbox: mpsc::UnboundedSender<Value>,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Polled {
    fn new(mut c: Client) -> Polled {
        let (outbox, mut to_send) = mpsc::unbounded_channel::<Value>();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    v = to_send.recv() => match v {
                        Some(v) => c.send(v).await,
                        None => return,
                    },
                    e = c.next_event() => {
                        let end = !matches!(e, Event::Json(_));
                        if tx.send(e).is_err() || end {
                            return;
                        }
                    }
                }
            }
        });
        Polled { outbox, events }
    }

    fn send(&self, v: Value) {
        self.outbox.send(v).expect("the client's task is running");
    }

    /// The next message; panics on close.
    async fn recv(&mut self) -> Value {
        let e = tokio::time::timeout(common::DEADLINE, self.events.recv()).await.expect("no message in time");
        match e {
            Some(Event::Json(v)) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn passive_listener_is_kept_alive_by_pings() {
    let dir = tempdir();
    // Pings every 200 ms, idle cut-off 1 s, auth deadline 1 s: a listener that
    // authenticated with a first frame and then only answers pings must survive
    // many idle periods (the auth deadline no longer applies).
    let relay = Relay::start(
        dir.path(),
        &["--ping-interval", "200ms", "--idle-timeout", "1s", "--auth-timeout", "1s", "--auth-token", "tok"],
    );
    let mut listener = Client::connect(&relay.ws_url("")).await;
    listener.send(json!({"type":"auth","token":"tok"})).await;
    assert_eq!(listener.recv().await["type"], "hello");
    assert_eq!(listener.recv().await["type"], "snapshot");
    let mut listener = Polled::new(listener);
    let mut writer = Polled::new(Client::join(&relay.ws_url("auth_token=tok")).await.0);
    for round in 0..4 {
        // Both clients keep reading and must get nothing but pings for two and a
        // half idle periods.
        let (idle, writer_idle) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(2500), listener.events.recv()),
            tokio::time::timeout(Duration::from_millis(2500), writer.events.recv()),
        );
        assert!(idle.is_err(), "round {round}: listener got {idle:?} while idle");
        assert!(writer_idle.is_err(), "round {round}: writer got {writer_idle:?} while idle");
        writer.send(json!({"type":"set","key":"tick","value":round}));
        assert_eq!(listener.recv().await, json!({"type":"set","key":"tick","value":round}));
        assert_eq!(writer.recv().await["value"], round);
    }
}

#[tokio::test]
async fn client_that_never_answers_pings_is_closed_as_idle() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--ping-interval", "100ms", "--idle-timeout", "1s"]);
    // A raw socket: it completes the handshake, then only reads bytes, so it never
    // answers a ping (a WebSocket library would).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    // Read until the relay hangs up.
    let mut all = Vec::new();
    tokio::time::timeout(common::DEADLINE, tcp.read_to_end(&mut all)).await.expect("relay never hung up").unwrap();
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP response") + 4;
    assert!(all.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&all[..head_end]));
    // Server frames are unmasked and small here: [FIN|opcode, len, payload...].
    let (mut pos, mut pings, mut close) = (head_end, 0, None);
    while pos + 2 <= all.len() {
        let (opcode, len) = (all[pos] & 0x0f, all[pos + 1] as usize);
        assert!(len < 126, "unexpectedly large frame");
        let payload = &all[pos + 2..pos + 2 + len];
        match opcode {
            0x9 => pings += 1,
            0x8 => {
                close = Some((
                    u16::from_be_bytes([payload[0], payload[1]]),
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                ))
            }
            _ => {}
        }
        pos += 2 + len;
    }
    assert!(pings >= 1, "the relay pinged before giving up");
    assert_eq!(close, Some((1001, "idle timeout".to_string())));
}

#[tokio::test]
async fn stalled_reader_is_dropped_without_delaying_others() {
    let dir = tempdir();
    let relay = Relay::start(
        dir.path(),
        &["--limit-send-queue", "16", "--limit-msgs-per-sec", "100000", "--limit-burst", "100000"],
    );
    // The staller joins and then never reads; its socket buffers fill up.
    let (mut staller, _, _) = Client::join(&relay.ws_url("space=s")).await;
    let (mut reader, _, _) = Client::join(&relay.ws_url("space=s")).await;
    let (mut writer, _, _) = Client::join(&relay.ws_url("space=s")).await;
    let value = "v".repeat(16 * 1024);
    // Write until the relay gives up on the staller (its kernel buffers fill first,
    // however large they are here), checking the others get every op meanwhile.
    let mut dropped = false;
    for i in 0..20_000 {
        if i % 50 == 49 {
            let (_, m) = relay.http_get("/metrics").await;
            if m.contains("aether_disconnects_total{reason=\"slow_consumer\"} 1") {
                dropped = true;
                break;
            }
        }
        writer.send(json!({"type":"set","key":format!("k{}", i % 8),"value":value})).await;
        // The healthy reader gets every op, in order, while the staller is stuck
        // (and then gone: its presence-leave may arrive in between).
        let got = recv_op(&mut reader).await;
        assert_eq!(got["key"], format!("k{}", i % 8));
        let echo = recv_op(&mut writer).await;
        assert_eq!(echo["key"], format!("k{}", i % 8));
    }
    assert!(dropped, "the stalled reader was never dropped");
    assert_eq!(staller.recv_close().await, (1013, "slow consumer".into()));
}

/// The next set/delete, skipping presence traffic.
async fn recv_op(c: &mut Client) -> serde_json::Value {
    loop {
        let v = c.recv().await;
        if v["type"] != "presence-leave" && v["type"] != "presence" {
            return v;
        }
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    assert_eq!(relay.http_get("/healthz").await.0, 200);
    assert_eq!(relay.http_get("/readyz").await.0, 200);
    let (mut c, _, _) = Client::join(&relay.ws_url("")).await;
    c.send(json!({"type":"set","key":"k","value":1})).await;
    c.recv().await;
    let (status, body) = relay.http_get("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "aether_ops_total{kind=\"set\"} 1",
        "aether_connections 1",
        "aether_op_latency_seconds_count{ack=\"durable\"} 1",
        "aether_wal_fsync_seconds_count",
        "aether_wal_batch_records_bucket",
        "aether_fanout_deliveries_bucket",
    ] {
        assert!(body.contains(needle), "missing {needle} in\n{body}");
    }
    assert_eq!(relay.http_get("/nope").await.0, 404);
    // The dev pages and the browser client (the browser suites in browser.rs use them).
    let (status, page) = relay.http_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("topology"), "{page}");
    let (status, page) = relay.http_get("/demos/counter.html").await;
    assert_eq!(status, 200);
    assert!(page.contains("/ws?space="));
    let (status, client) = relay.http_get("/client/aether.js").await;
    assert_eq!(status, 200);
    assert!(client.contains("export class Aether"));
    // Only plain paths into the embedded files.
    assert_eq!(relay.http_get("/demos/../Cargo.toml").await.0, 404);
}

#[tokio::test]
async fn visiting_empty_spaces_does_not_grow_the_registry() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &[]);
    let (mut keeper, _, _) = Client::join(&relay.ws_url("space=kept")).await;
    keeper.send(json!({"type":"set","key":"k","value":1})).await;
    keeper.recv().await;
    for i in 0..20 {
        let (mut c, _, _) = Client::join(&relay.ws_url(&format!("space=visit-{i}"))).await;
        c.ws.close(None).await.unwrap();
        while c.next_event().await != Event::Gone {}
    }
    // Only the space with data stays (the server forgets the others as they close).
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let (_, m) = relay.http_get("/metrics").await;
        if m.lines().any(|l| l == "aether_spaces 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "empty spaces were kept:\n{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And a space that was forgotten starts empty and works when visited again.
    let (mut again, _, snap) = Client::join(&relay.ws_url("space=visit-3")).await;
    assert_eq!(snap, json!({}));
    again.send(json!({"type":"set","key":"x","value":2})).await;
    assert_eq!(again.recv().await["value"], 2);
}
