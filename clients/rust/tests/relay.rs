//! `aether-client` against real `aether-relay` processes: WebSocket and QUIC,
//! failover when a relay is killed, hedging when one is stalled (SIGSTOP),
//! the offline queue across a restart with a superseded offline edit, resume
//! after failover, pacing to a relay's rate limit, a restored write refused
//! and undone, `maxSpaces` and unsubscribing, presence after failover, and
//! the `aether` CLI.

#[path = "../../../relay/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use aether_client::{Client, ClientConfig, Error, Origin, Status};
use common::{Relay, free_port, tempdir};
use serde_json::json;

/// Upper bound for anything awaited here.
const T: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// Short backoffs, so failovers happen within a test's patience.
fn fast(config: ClientConfig) -> ClientConfig {
    config.backoff(Duration::from_millis(20), Duration::from_millis(300))
}

fn ws(r: &Relay) -> String {
    format!("ws://{}", r.addr)
}

fn quic(r: &Relay) -> String {
    format!("quic://127.0.0.1:{}", r.quic.expect("started with --quic-listen").port())
}

/// Two relays that both own every space (R = 2), optionally with QUIC.
fn pair(extra: &[&str]) -> (Relay, Relay, [tempfile::TempDir; 2]) {
    let ports = [free_port(), free_port()];
    let dirs = [tempdir(), tempdir()];
    let mut args = vec!["--shards", "8", "--replication", "2", "--limit-msgs-per-sec", "100000"];
    args.extend_from_slice(extra);
    let peer = |i: usize| vec![format!("r{}=127.0.0.1:{}", i + 1, ports[i])];
    let r1 = Relay::start_member("r1", ports[0], &peer(1), dirs[0].path(), &args);
    let r2 = Relay::start_member("r2", ports[1], &peer(0), dirs[1].path(), &args);
    (r1, r2, dirs)
}

async fn wait_online_at(c: &Client, relay: &str) {
    within(async {
        while !matches!(c.status(), Status::Online { relay: ref r, .. } if r == relay) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_quic_clients_sync_through_one_relay() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--quic-listen", "127.0.0.1:0"]);
    let ca = dir.path().join("quic-cert.pem");
    let a = within(Client::connect(fast(ClientConfig::new([ws(&relay)])))).await.unwrap();
    let b = within(Client::connect(fast(ClientConfig::new([quic(&relay)]).ca_file(&ca)))).await.unwrap();
    assert!(matches!(b.status(), Status::Online { ref relay, .. } if relay == "dev"));
    // Three spaces on QUIC (one stream each), written from the WebSocket client.
    for name in ["s1", "s2", "s3"] {
        let (sa, sb) = (a.space(name).unwrap(), b.space(name).unwrap());
        within(sa.ready()).await.unwrap();
        within(sb.ready()).await.unwrap();
        let mut wb = sb.watch();
        let acked = within(sa.set("k", &json!({"space": name}))).await.unwrap();
        assert!(!acked.superseded && acked.quorum);
        let c = within(wb.recv()).await.unwrap();
        assert_eq!((c.key.as_str(), c.origin, c.value), ("k", Origin::Remote, Some(json!({"space": name}))));
        assert_eq!(sb.get::<serde_json::Value>("k").unwrap(), Some(json!({"space": name})));
    }
    // And back, with a delete.
    let (sa, sb) = (a.space("s1").unwrap(), b.space("s1").unwrap());
    let mut wa = sa.watch();
    within(sb.delete("k")).await.unwrap();
    let c = within(wa.recv()).await.unwrap();
    assert_eq!((c.key.as_str(), c.origin, c.value), ("k", Origin::Remote, None));
    assert!(sa.get_raw("k").is_none());
    // Presence over QUIC reaches the WebSocket client.
    let mut pa = sa.presence_events();
    within(sb.presence(&json!({"cursor": [3, 4]}))).await.unwrap();
    let p = within(pa.recv()).await.unwrap();
    assert_eq!(p.state, Some(json!({"cursor": [3, 4]})));
    // The relay's view matches.
    let spaces = within(a.list_spaces()).await.unwrap();
    let names: HashSet<_> = spaces.iter().map(|s| s.name.as_str()).collect();
    assert!(["s1", "s2", "s3"].iter().all(|n| names.contains(n)), "{spaces:?}");
    a.close().await.unwrap();
    b.close().await.unwrap();
    assert_eq!(a.status(), Status::Closed);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_an_unreachable_list_names_every_endpoint() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--auth-token", "s3cret"]);
    let err = within(Client::connect(fast(ClientConfig::new([ws(&relay)]).token("nope")))).await.err().unwrap();
    assert!(err.is_refusal(), "{err}");
    within(Client::connect(fast(ClientConfig::new([ws(&relay)]).token("s3cret")))).await.unwrap();
    let (p1, p2) = (free_port(), free_port());
    let urls = [format!("ws://127.0.0.1:{p1}"), format!("ws://127.0.0.1:{p2}")];
    let err = within(Client::connect(fast(ClientConfig::new(urls.clone())))).await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains(&urls[0]) && msg.contains(&urls[1]), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_fails_over_and_loses_or_duplicates_nothing() {
    let (mut r1, r2, _dirs) = pair(&[]);
    // No hedging: a slow fsync at r1 must not get a write acknowledged by r2 first; nor a
    // slow first dial to r1 a session with r2 (a dead r1 refuses at once, so failover is
    // not slowed by the long dial hedge).
    let mut config = fast(ClientConfig::new([ws(&r1), ws(&r2)])).hedge_delay(None);
    config.dial_hedge_delay = Duration::from_secs(60);
    let writer = within(Client::connect(config)).await.unwrap();
    let reader = within(Client::connect(fast(ClientConfig::new([ws(&r1), ws(&r2)])))).await.unwrap();
    let (sw, sr) = (writer.space("s").unwrap(), reader.space("s").unwrap());
    within(sw.ready()).await.unwrap();
    within(sr.ready()).await.unwrap();
    let (mut ww, mut wr) = (sw.watch(), sr.watch());
    for i in 0..20 {
        assert_eq!(within(sw.set(&format!("k{i}"), &i)).await.unwrap().relay, "r1");
    }
    r1.kill();
    let mut tickets = Vec::new();
    for i in 20..40 {
        tickets.push(sw.set_nowait(&format!("k{i}"), &i).await.unwrap());
    }
    for t in tickets {
        assert_eq!(within(t).await.unwrap().relay, "r2");
    }
    wait_online_at(&writer, "r2").await;
    // The reader moved to r2 too, resumed, and saw every key exactly once.
    let mut seen = HashSet::new();
    while seen.len() < 40 {
        let c = within(wr.recv()).await.unwrap();
        assert_eq!(c.origin, Origin::Remote);
        assert!(seen.insert(c.key.clone()), "duplicate event for {}", c.key);
    }
    for _ in 0..40 {
        assert_eq!(within(ww.recv()).await.unwrap().origin, Origin::Local, "the writer hears only itself");
    }
    // Nothing more arrives: a probe write proves the stream is live and is the next event.
    within(sw.set("probe", &true)).await.unwrap();
    let next = within(wr.recv()).await.unwrap();
    assert_eq!(next.key, "probe", "no duplicate came before the probe");
    assert_eq!(sr.snapshot().len(), 41);
    assert_eq!(sr.snapshot(), sw.snapshot());
}

/// Hedging: with the current relay frozen (SIGSTOP: TCP still accepts, nothing
/// answers), a write is also sent to the next relay after RTT + the hedge
/// delay and acknowledged there.
async fn hedge(quic_transport: bool) {
    let (r1, r2, dirs) = pair(&["--quic-listen", "127.0.0.1:0"]);
    let url = |r: &Relay| if quic_transport { quic(r) } else { ws(r) };
    let ca = dirs[0].path().join("ca.pem");
    let pems = [0, 1].map(|i| std::fs::read_to_string(dirs[i].path().join("quic-cert.pem")).unwrap());
    std::fs::write(&ca, pems.concat()).unwrap();
    let config = fast(ClientConfig::new([url(&r1), url(&r2)]))
        .ca_file(&ca)
        .hedge_delay(Some(Duration::from_millis(100)))
        .liveness(Duration::from_secs(5), Duration::from_secs(2));
    let c = within(Client::connect(config)).await.unwrap();
    assert!(matches!(c.status(), Status::Online { ref relay, .. } if relay == "r1"), "{:?}", c.status());
    let s = c.space("hedged").unwrap();
    within(s.ready()).await.unwrap();
    // A warm-up write measures the RTT; a slow fsync may get it hedged too, so
    // which relay acknowledged it is not the point.
    within(s.set("warm", &0)).await.unwrap();
    r1.signal("STOP");
    let acked = within(s.set("k", &1)).await;
    r1.signal("CONT");
    let acked = acked.unwrap();
    assert_eq!(acked.relay, "r2", "{acked:?}");
    // r1 got the same write too once it woke up (stamps make it harmless): both hold it.
    let reader = within(Client::connect(fast(ClientConfig::new([ws(&r2)])))).await.unwrap();
    let sr = reader.space("hedged").unwrap();
    within(sr.ready()).await.unwrap();
    assert_eq!(sr.get::<i64>("k").unwrap(), Some(1));
    assert_eq!(sr.stamp("k"), s.stamp("k"), "one write, one stamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_relay_is_hedged_over_websocket() {
    hedge(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_relay_is_hedged_over_quic() {
    hedge(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_survive_a_restart_and_merge_by_their_stamps() {
    let dir = tempdir();
    let queue = dir.path().join("queue.json");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    // Offline: nothing listens on the port yet.
    let c = Client::start(fast(ClientConfig::new([url.clone()])).queue_file(&queue)).await.unwrap();
    let actor = c.actor();
    let s = c.space("notes").unwrap();
    s.set_nowait("offline", &"written offline").await.unwrap();
    s.set_nowait("contested", &"old offline edit").await.unwrap();
    assert_eq!(c.queued_ops(), 2);
    c.close().await.unwrap();

    // The relay comes up; someone else edits `contested` later than the offline edit.
    let data = dir.path().join("data");
    let relay = Relay::spawn_in(None, "dev", &format!("127.0.0.1:{port}"), &data, &[], &[]).unwrap();
    let other = within(Client::connect(fast(ClientConfig::new([ws(&relay)])))).await.unwrap();
    let so = other.space("notes").unwrap();
    within(so.ready()).await.unwrap();
    within(so.set("contested", &"newer online edit")).await.unwrap();
    let mut watch = so.watch();

    // The offline client restarts from its queue file: same actor, same stamps.
    // The relay is frozen meanwhile (SIGSTOP), so nothing of the restarted client
    // is answered before its watch is taken: a superseded event is not replayed.
    relay.signal("STOP");
    let c = Client::start(fast(ClientConfig::new([url])).queue_file(&queue)).await.unwrap();
    let s = c.space("notes").unwrap();
    let mut mine = s.watch();
    relay.signal("CONT");
    assert_eq!(c.actor(), actor);
    assert_eq!(s.get::<String>("offline").unwrap().as_deref(), Some("written offline"));
    within(c.flush()).await.unwrap();
    // The offline edit of `contested` lost its LWW race: the writer is told, with the winner.
    let lost = within(async {
        loop {
            let ch = mine.recv().await.expect("watch open");
            if ch.origin == Origin::Superseded {
                return ch;
            }
        }
    })
    .await;
    assert_eq!((lost.key.as_str(), lost.value), ("contested", Some(json!("newer online edit"))));
    within(s.ready()).await.unwrap();
    assert_eq!(c.queued_ops(), 0);
    // The offline write landed; the older offline edit did not clobber the newer one.
    let change = within(watch.recv()).await.unwrap();
    assert_eq!((change.key.as_str(), change.value), ("offline", Some(json!("written offline"))));
    assert_eq!(so.get::<String>("contested").unwrap().as_deref(), Some("newer online edit"));
    assert_eq!(s.get::<String>("contested").unwrap().as_deref(), Some("newer online edit"));
    c.close().await.unwrap();
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aether"))
        .args(args)
        .env_remove("AETHER_RELAY")
        .env_remove("AETHER_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn cli_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_against_a_running_relay() {
    let dir = tempdir();
    let clouds = dir.path().join("clouds.json");
    let data = dir.path().join("data");
    let port = free_port();
    let doc = json!({"version": 1, "mesh": "dev", "clouds": {"local": [{"url": format!("ws://127.0.0.1:{port}"), "cloud": "local"}]}});
    std::fs::write(&clouds, doc.to_string()).unwrap();
    let relay = Relay::spawn_in(
        None,
        "dev",
        &format!("127.0.0.1:{port}"),
        &data,
        &["--auth-token", "tok", "--clouds-file", clouds.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let url = ws(&relay);
    let a = |v: &[&str]| {
        let mut args =
            vec!["--relay".to_string(), url.clone(), "--token".into(), "tok".into(), "--timeout".into(), "5s".into()];
        args.extend(v.iter().map(|s| s.to_string()));
        args
    };
    let (code, out, err) = cli_async(a(&["put", "cli", "k", r#"{"a": [1, 2]}"#])).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = cli_async(a(&["get", "cli", "k"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), json!({"a": [1, 2]}));
    let (code, _, err) = cli_async(a(&["get", "cli", "nope"])).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cli_async(a(&["put", "cli", "k", "{bad"])).await;
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = cli_async(a(&["put", "cli", "other", "true"])).await;
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = cli_async(a(&["snapshot", "cli"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), json!({"k": {"a": [1, 2]}, "other": true}));
    let (code, _, err) = cli_async(a(&["del", "cli", "k"])).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = cli_async(a(&["get", "cli", "k"])).await;
    assert_eq!(code, 1, "deleted");
    let (code, out, err) = cli_async(a(&["spaces"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("cli\t")), "{out}");
    let (code, out, err) =
        cli_async(a(&["load", "cli-load", "--ops", "300", "--rate", "2000", "--keys", "10", "--json"])).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ops"], 300, "{out}");
    assert_eq!(v["reconnects"], 0, "{out}");
    let (code, out, err) = cli_async(vec![
        "--cloud".into(),
        format!("http://127.0.0.1:{port}"),
        "--cloud-name".into(),
        "local".into(),
        "clouds".into(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("ws://127.0.0.1:{port}\tlocal\n"));
    // Relays picked from the cloud's endpoint list (the full /v1/clouds URL form).
    let (code, out, err) = cli_async(vec![
        "--cloud".into(),
        format!("http://127.0.0.1:{port}/v1/clouds/local"),
        "--token".into(),
        "tok".into(),
        "get".into(),
        "cli".into(),
        "other".into(),
    ])
    .await;
    assert_eq!((code, out.trim()), (0, "true"), "{err}");
    let (code, _, err) = cli_async(vec![
        "--relay".into(),
        format!("ws://127.0.0.1:{}", free_port()),
        "get".into(),
        "s".into(),
        "k".into(),
    ])
    .await;
    assert_eq!(code, 3, "unreachable: {err}");
    let (code, _, err) = cli_async(vec![
        "--relay".into(),
        url.clone(),
        "--token".into(),
        "bad".into(),
        "get".into(),
        "s".into(),
        "k".into(),
    ])
    .await;
    assert_eq!(code, 4, "refused: {err}");
    assert!(err.contains("auth"), "{err}");
    let (code, out, _) = cli_async(vec!["completions".into(), "bash".into()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("aether"));

    // watch prints the state, then changes, until Ctrl-C.
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aether"))
        .args(["--relay", &url, "--token", "tok", "watch", "cli"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    assert_eq!(within(rx.recv()).await.unwrap(), r#"{"key":"other","value":true}"#);
    let (code, _, err) = cli_async(a(&["put", "cli", "live", "1"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(within(rx.recv()).await.unwrap(), r#"{"key":"live","value":1}"#);
    let (code, _, err) = cli_async(a(&["del", "cli", "live"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(within(rx.recv()).await.unwrap(), r#"{"key":"live","deleted":true}"#);
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The relay's count of `error` replies with `code` (its `/metrics`).
async fn errors_sent(relay: &Relay, code: &str) -> u64 {
    let (status, body) = relay.http_get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    let line = format!("aether_client_errors_total{{code=\"{code}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_relay_is_paced_and_never_costs_the_connection() {
    let dir = tempdir();
    let queue = dir.path().join("queue.json");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    // Offline: 300 writes over 3 spaces wait in the queue file.
    let c = Client::start(fast(ClientConfig::new([url.clone()])).queue_file(&queue)).await.unwrap();
    for i in 0..300 {
        let s = c.space(&format!("paced{}", i % 3)).unwrap();
        s.set_nowait(&format!("k{i}"), &i).await.unwrap();
    }
    c.close().await.unwrap();

    // A relay allowing 200 ops/s with a burst of 50.
    let data = dir.path().join("data");
    let limits = ["--limit-msgs-per-sec", "200", "--limit-burst", "50"];
    let relay = Relay::spawn_in(None, "dev", &format!("127.0.0.1:{port}"), &data, &limits, &[]).unwrap();
    let c = Client::start(fast(ClientConfig::new([url])).queue_file(&queue)).await.unwrap();
    within(c.flush()).await.unwrap();
    // Live writes far over the rate: paced, every one acked.
    let s = c.space("paced0").unwrap();
    let mut tickets = Vec::new();
    for i in 0..200 {
        tickets.push(s.set_nowait(&format!("live{i}"), &i).await.unwrap());
    }
    for t in tickets {
        within(t).await.unwrap();
    }
    assert_eq!(c.reconnects(), 0, "the rate limit never cost the connection");
    assert!(matches!(c.status(), Status::Online { .. }));
    // Paced to the advertised rate; a scheduling stall that bunches the client's
    // sends may still cost a refusal or two (retried, never fatal).
    let refused = errors_sent(&relay, "rate-limited").await;
    assert!(refused <= 2, "the client kept under the relay's rate: {refused} writes refused");
    c.close().await.unwrap();

    let reader = within(Client::connect(fast(ClientConfig::new([ws(&relay)])))).await.unwrap();
    for (i, want) in [(0, 300), (1, 100), (2, 100)] {
        let s = reader.space(&format!("paced{i}")).unwrap();
        within(s.ready()).await.unwrap();
        assert_eq!(s.snapshot().len(), want, "paced{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_write_the_relay_refuses_is_undone_and_the_rest_lands() {
    let dir = tempdir();
    let queue = dir.path().join("queue.json");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let long = "k".repeat(40);
    let c = Client::start(fast(ClientConfig::new([url.clone()])).queue_file(&queue)).await.unwrap();
    let s = c.space("strict").unwrap();
    s.set_nowait("before", &1).await.unwrap();
    s.set_nowait(&long, &"too long a key for the relay").await.unwrap();
    s.set_nowait("after", &2).await.unwrap();
    c.close().await.unwrap();

    // The client restarts from its queue file, its watch taken before the relay is
    // up (a rejected event is not replayed to a later watch).
    let c = Client::start(fast(ClientConfig::new([url])).queue_file(&queue)).await.unwrap();
    let s = c.space("strict").unwrap();
    let mut changes = s.watch();
    assert!(s.get_raw(&long).is_some(), "offline reads see it until refused");
    // The relay allows keys of 16 bytes only: the restored write of the long key is refused.
    let data = dir.path().join("data");
    let relay =
        Relay::spawn_in(None, "dev", &format!("127.0.0.1:{port}"), &data, &["--limit-key-bytes", "16"], &[]).unwrap();
    within(c.flush()).await.unwrap();
    let rejected = within(async {
        loop {
            let ch = changes.recv().await.expect("watch open");
            if ch.origin == Origin::Rejected {
                return ch;
            }
        }
    })
    .await;
    assert_eq!((rejected.key.as_str(), rejected.value), (long.as_str(), None));
    assert!(s.get_raw(&long).is_none());
    within(s.ready()).await.unwrap();
    let reader = within(Client::connect(fast(ClientConfig::new([ws(&relay)])))).await.unwrap();
    let r = reader.space("strict").unwrap();
    within(r.ready()).await.unwrap();
    assert_eq!(r.snapshot(), [("after".to_string(), json!(2)), ("before".to_string(), json!(1))].into());
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaces_beyond_the_relay_limit_are_refused_until_one_is_unsubscribed() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--limit-spaces-per-conn", "2"]);
    let c = within(Client::connect(fast(ClientConfig::new([ws(&relay)])))).await.unwrap();
    let (a, b, extra) = (c.space("a").unwrap(), c.space("b").unwrap(), c.space("c").unwrap());
    within(a.ready()).await.unwrap();
    within(b.ready()).await.unwrap();
    let err = within(extra.ready()).await.unwrap_err();
    assert!(matches!(&err, Error::Refused { code, .. } if code == "too-many-spaces"), "{err}");
    assert!(!extra.is_synced());
    // Unsubscribing one makes room: the refused space is subscribed and syncs.
    b.unsubscribe().await.unwrap();
    within(extra.ready()).await.unwrap();
    assert!(matches!(within(b.ready()).await, Err(Error::Unsubscribed(_))));
    // The unsubscribed space no longer follows the relay.
    let writer = within(Client::connect(fast(ClientConfig::new([ws(&relay)])))).await.unwrap();
    let wb = writer.space("b").unwrap();
    within(wb.ready()).await.unwrap();
    within(wb.set("k", &1)).await.unwrap();
    let wc = writer.space("c").unwrap();
    within(wc.ready()).await.unwrap();
    let mut changes = extra.watch();
    within(wc.set("k", &2)).await.unwrap();
    assert_eq!(within(changes.recv()).await.unwrap().key, "k");
    assert!(b.get_raw("k").is_none(), "b was unsubscribed");
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_from_a_lost_relay_is_announced_gone() {
    let (mut r1, r2, _dirs) = pair(&[]);
    let urls = [ws(&r1), ws(&r2)];
    let watcher = within(Client::connect(fast(ClientConfig::new(urls.clone())))).await.unwrap();
    let other = within(Client::connect(fast(ClientConfig::new([ws(&r1)])))).await.unwrap();
    let sw = watcher.space("room").unwrap();
    let mut events = sw.presence_events();
    within(sw.ready()).await.unwrap();
    let so = other.space("room").unwrap();
    within(so.ready()).await.unwrap();
    within(so.presence(&json!({"cursor": 1}))).await.unwrap();
    let joined = within(events.recv()).await.unwrap();
    assert_eq!(joined.state, Some(json!({"cursor": 1})));
    // The relay that announced it dies (and `other` with it, as it only knew r1).
    r1.kill();
    let left = within(async {
        loop {
            let e = events.recv().await.expect("presence stream open");
            if e.session == joined.session {
                return e;
            }
        }
    })
    .await;
    assert_eq!(left.state, None, "no ghost after failover");
    wait_online_at(&watcher, "r2").await;
    assert_eq!(watcher.reconnects(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_names_are_dialed_at_every_address() {
    let dir = tempdir();
    let relay = Relay::start(dir.path(), &["--quic-listen", "127.0.0.1:0"]);
    let ca = dir.path().join("quic-cert.pem");
    // `localhost` may resolve to ::1 first (nothing listens there): 127.0.0.1 is tried too.
    let url = format!("quic://localhost:{}", relay.quic.unwrap().port());
    let c = within(Client::connect(fast(ClientConfig::new([url])).ca_file(&ca))).await.unwrap();
    let s = c.space("q").unwrap();
    within(s.ready()).await.unwrap();
    within(s.set("k", &1)).await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn cli_exit_codes_for_unreachable_relays_and_bad_ca_files() {
    let dead = format!("ws://127.0.0.1:{}", free_port());
    // `spaces` is an HTTP request: an unreachable relay is exit code 3 like any other.
    let (code, _, err) =
        cli_async(vec!["--relay".into(), dead.clone(), "--timeout".into(), "2s".into(), "spaces".into()]).await;
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = cli_async(vec![
        "--cloud".into(),
        format!("{dead}/v1/clouds/x"),
        "--timeout".into(),
        "2s".into(),
        "get".into(),
        "s".into(),
        "k".into(),
    ])
    .await;
    assert_eq!(code, 3, "{err}");
    // A CA file that is no certificate: usage.
    let dir = tempdir();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let ca = bad.to_str().unwrap().to_string();
    let (code, _, err) =
        cli_async(vec!["--relay".into(), dead, "--ca-file".into(), ca, "get".into(), "s".into(), "k".into()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ca.pem"), "{err}");
}
