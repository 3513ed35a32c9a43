//! Test kit for the ledger sidecar: real relays (the relay's own kit), real
//! `aether-ledger` processes, and a real S3-compatible server (moto).

#![allow(dead_code)]

#[path = "../../../relay/tests/common/mod.rs"]
pub mod relay;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use relay::{Client, DEADLINE, Relay, eventually, free_port, tempdir};
use serde_json::{Value, json};

/// The `aether-ledger` binary.
pub fn ledger_bin() -> &'static str {
    env!("CARGO_BIN_EXE_aether-ledger")
}

/// How long moto may take to answer after its start: a Python server with
/// many imports, far slower to start than our binaries on a loaded machine.
const MOTO_START_DEADLINE: Duration = Duration::from_secs(60);

/// A moto S3 server on a free loopback port, with one bucket. Killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts `moto_server` (`$AETHER_MOTO_SERVER`, or from `PATH`; `.ci/run` installs it).
    pub fn start() -> Moto {
        let bin = std::env::var("AETHER_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (pip install 'moto[server]'; .ci/run does): {e}"));
        let moto = Moto { child, port };
        let until = std::time::Instant::now() + MOTO_START_DEADLINE;
        while http(port, "GET", "/", b"").map(|(s, _)| s) != Some(200) {
            assert!(std::time::Instant::now() < until, "moto_server did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, body) = http(port, "PUT", "/ledger", b"").expect("create bucket");
        assert_eq!(status, 200, "creating the bucket: {body}");
        moto
    }

    /// Store flags for the bucket, under `prefix` (short client timeouts: the outage
    /// test freezes the server).
    pub fn store_args(&self, prefix: &str) -> Vec<String> {
        s3_store_args(self.port, prefix, &["--store-option", "timeout=2s,connect_timeout=1s"])
    }

    /// Freezes the server (SIGSTOP): connections hang, as with a store that went away.
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s3s-fs: an S3-compatible server that checks SigV4 signatures, storing
/// objects as files under a temporary directory. Killed on drop.
pub struct S3sFs {
    child: Child,
    pub port: u16,
    _root: tempfile::TempDir,
}

impl S3sFs {
    /// Starts `s3s-fs` (`$AETHER_S3S_FS`, or from `PATH`; `.ci/run` installs it) with the
    /// keys of [`S3_ENV`] and a `ledger` bucket.
    pub fn start() -> S3sFs {
        let bin = std::env::var("AETHER_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        let root = tempdir();
        std::fs::create_dir(root.path().join("ledger")).expect("bucket dir");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ENV[0].1, "--secret-key", S3_ENV[1].1])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (cargo install s3s-fs --features binary; .ci/run does): {e}"));
        let until = std::time::Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < until, "s3s-fs did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3sFs { child, port, _root: root }
    }

    /// Store flags for the bucket, under `prefix`.
    pub fn store_args(&self, prefix: &str) -> Vec<String> {
        s3_store_args(self.port, prefix, &[])
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `aether-ledger` store flags for bucket `ledger` of a local S3 server on `port`.
fn s3_store_args(port: u16, prefix: &str, extra: &[&str]) -> Vec<String> {
    let mut v = args(&[
        "--store",
        &format!("s3://ledger/{prefix}"),
        "--s3-endpoint",
        &format!("http://127.0.0.1:{port}"),
        "--s3-region",
        "us-east-1",
        "--allow-http",
        "--request-retry-timeout",
        "3s",
    ]);
    v.extend(args(extra));
    v
}

/// Opens a store in the test process from the same flags the binary takes,
/// with the credentials of [`S3_ENV`].
pub fn open_store(flags: &[String]) -> aether_ledger::store::Store {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        store: aether_ledger::store::StoreArgs,
    }
    // SAFETY: tests set the same fixed values; nothing reads them concurrently with a change.
    unsafe {
        for (k, v) in S3_ENV {
            std::env::set_var(k, v);
        }
    }
    let parsed = Flags::try_parse_from(std::iter::once("test".to_string()).chain(flags.iter().cloned())).unwrap();
    parsed.store.open().unwrap()
}

/// Environment for `aether-ledger` against moto (which accepts any key) and s3s-fs (which checks them).
pub const S3_ENV: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// A minimal HTTP/1.1 request to 127.0.0.1:`port`: (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Runs `aether-ledger ARGS` to completion.
pub fn ledger(args: &[String]) -> Output {
    Command::new(ledger_bin()).args(args).envs(S3_ENV).env("RUST_LOG", "warn").output().expect("run aether-ledger")
}

/// Runs `aether-ledger ARGS` and asserts success; returns stdout.
pub fn ledger_ok(args: &[String]) -> String {
    let out = ledger(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aether-ledger {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// `[a, b, c]` as owned strings.
pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// A running `aether-ledger ship`. Killed on drop.
pub struct Shipper {
    child: Child,
    pub metrics: SocketAddr,
}

impl Shipper {
    /// Starts `aether-ledger ship --data-dir DIR --node NODE --poll 100ms STORE...`.
    pub fn start(data_dir: &Path, node: &str, store: &[String], extra: &[&str]) -> Shipper {
        let mut child = Command::new(ledger_bin())
            .arg("ship")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--node", node, "--poll", "100ms", "--retry-min", "100ms", "--retry-max", "1s"])
            .args(["--listen", "127.0.0.1:0"])
            .args(store)
            .args(extra)
            .envs(S3_ENV)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aether-ledger ship");
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ledger] {line}");
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("aether-ledger metrics on"));
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = rx.recv_timeout(DEADLINE).ok().flatten().expect("the shipper printed its address");
        let metrics = line.rsplit("http://").next().and_then(|a| a.parse().ok()).expect("address");
        Shipper { child, metrics }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A metric's value from `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http(self.metrics.port(), "GET", "/metrics", b"").unwrap_or_default();
        metric_value(&body, name)
    }

    /// `/readyz` status.
    pub fn readyz(&self) -> u16 {
        http(self.metrics.port(), "GET", "/readyz", b"").map_or(0, |(s, _)| s)
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Value of the sample `name` (no labels) in a Prometheus exposition.
pub fn metric_value(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Relay flags for sidecar mode with small, quickly sealed segments.
pub const SIDECAR_RELAY: [&str; 6] =
    ["--ledger-sidecar", "--wal-seal-after", "200ms", "--wal-segment-bytes", "65536", "--snapshot-after-bytes"];

/// Writes `n` ops (`{prefix}{i % keys}` = i) to `space`, each acknowledged; returns the final values.
pub async fn write_ops(relay: &Relay, space: &str, prefix: &str, n: usize, keys: usize) -> BTreeMap<String, Value> {
    let (mut c, _, _) = Client::join(&relay.ws_url(&format!("space={space}"))).await;
    let mut last = BTreeMap::new();
    // Pipelined in windows: each window waits for its echoes.
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        for i in chunk {
            let key = format!("{prefix}{}", i % keys);
            c.send(json!({"type": "set", "key": key, "value": {"i": i, "pad": "x".repeat(64)}})).await;
            last.insert(key, json!({"i": i, "pad": "x".repeat(64)}));
        }
        let mut echoed = 0;
        while echoed < chunk.len() {
            let m = c.recv().await;
            assert_ne!(m["type"], "error", "write refused: {m}");
            if m["type"] == "set" {
                echoed += 1;
            }
        }
    }
    last
}

/// The relay's `/metrics` value of `name`.
pub async fn relay_metric(relay: &Relay, name: &str) -> f64 {
    let (_, body) = relay.http_get("/metrics").await;
    metric_value(&body, name)
}

/// Waits until everything the relay has acknowledged is in the store: the
/// segment open now is sealed and shipped (or, if it holds nothing, the one
/// before it), as the sidecar's `ledger/shipped` marker says; then until the
/// relay has measured that (its backlog metric is refreshed every second).
pub async fn wait_shipped(relay: &Relay) {
    let wal = relay.data_dir.join("wal");
    let segments = aether_relay::wal::segment::list_segments(&wal).expect("list wal/");
    let (open, path) = segments.last().cloned().expect("an open segment");
    let empty = std::fs::metadata(&path).map(|m| m.len() <= 24).unwrap_or(false);
    let needed = if empty { open - 1 } else { open };
    eventually("the relay's WAL to be shipped", || async {
        let shipped = aether_relay::wal::handoff::read_shipped(&relay.data_dir).unwrap_or_default().segments_through;
        if shipped >= needed { Ok(()) } else { Err(format!("shipped through {shipped}, need {needed}")) }
    })
    .await;
    eventually("the relay to see it shipped", || async {
        let bytes = relay_metric(relay, "aether_ledger_backlog_bytes").await;
        let segments = relay_metric(relay, "aether_ledger_backlog_segments").await;
        if bytes <= 24.0 && segments <= 1.0 {
            Ok(())
        } else {
            Err(format!("backlog {bytes} bytes in {segments} segments"))
        }
    })
    .await;
}

/// `space -> digest` of every space a relay holds.
pub async fn digests(relay: &Relay) -> BTreeMap<String, String> {
    relay
        .admin_spaces()
        .await
        .into_iter()
        .map(|(name, row)| (name, row["digest"].as_str().expect("digest").to_owned()))
        .collect()
}
