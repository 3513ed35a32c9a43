//! Test kit: real `aether-relay` processes on free ports and a WebSocket client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for anything a test waits for; a hang fails instead of blocking CI.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A relay process started with `dev`. Killed on drop.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    /// The QUIC address, when started with `--quic-listen`.
    pub quic: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

impl Relay {
    /// Starts `aether-relay dev` on a free loopback port with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Relay {
        Self::try_start(data_dir, extra).unwrap_or_else(|e| panic!("relay did not start: {e}"))
    }

    /// Like [`Relay::start`], returning the relay's stderr tail if it exits instead.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Relay, String> {
        Self::spawn("dev", data_dir, extra)
    }

    /// Starts `aether-relay run` as mesh member `name` with its mesh gRPC on
    /// `mesh_port` (see [`free_port`]), the given `NAME=HOST:PORT` peers and
    /// extra flags (plaintext mesh).
    pub fn start_member(name: &str, mesh_port: u16, peers: &[String], data_dir: &Path, extra: &[&str]) -> Relay {
        Self::start_member_with_env(name, mesh_port, peers, data_dir, extra, &[])
    }

    /// [`Relay::start_member`] with extra environment variables.
    pub fn start_member_with_env(
        name: &str,
        mesh_port: u16,
        peers: &[String],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        let mut args: Vec<String> = vec![
            "--name".into(),
            name.into(),
            "--mesh-listen".into(),
            format!("127.0.0.1:{mesh_port}"),
            "--mesh-plaintext".into(),
        ];
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn_in(None, "run", "127.0.0.1:0", data_dir, &args, env)
            .unwrap_or_else(|e| panic!("relay {name} did not start: {e}"))
    }

    fn spawn(mode: &str, data_dir: &Path, extra: &[&str]) -> Result<Relay, String> {
        Self::spawn_in(None, mode, "127.0.0.1:0", data_dir, extra, &[])
    }

    /// Starts `aether-relay MODE --listen LISTEN --data-dir DIR EXTRA...`,
    /// inside network namespace `netns` when given (`ip netns exec`).
    pub fn spawn_in(
        netns: Option<&str>,
        mode: &str,
        listen: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Relay, String> {
        let bin = relay_bin();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .arg(mode)
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("AETHER_LOG", std::env::var("AETHER_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aether-relay");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Forward stderr to the test's stderr (visible on failure) and keep it for errors.
        let (err_tx, err_rx) = std::sync::mpsc::channel::<String>();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[relay] {line}");
                let _ = err_tx.send(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // `run` prints its mesh (and QUIC) address first; the client listener's line comes last.
            let mut quic = None;
            let first = lines.by_ref().map_while(Result::ok).find(|l| {
                if let Some(a) = l.strip_prefix("aether-relay QUIC listening on quic://") {
                    quic = a.parse::<SocketAddr>().ok();
                }
                l.starts_with("aether-relay listening on")
            });
            let _ = tx.send(first.map(|l| (l, quic)));
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no listening line in time".into());
        };
        let Some((line, quic)) = line else {
            // The relay exited: its stderr reaches EOF, so the reader thread ends.
            let _ = child.wait();
            let _ = stderr_reader.join();
            return Err(err_rx.try_iter().collect::<Vec<_>>().join("\n"));
        };
        let url = line.rsplit(' ').next().unwrap_or_default();
        let addr = url.split("://").nth(1).and_then(|a| a.parse().ok()).ok_or(format!("bad line {line:?}"))?;
        Ok(Relay { child, addr, quic, data_dir: data_dir.to_owned() })
    }

    /// `ws://ADDR/ws?QUERY`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    /// The process id (for SIGSTOP / SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (at most [`DEADLINE`]) for the exit; returns the exit
    /// status. A relay still running then is killed and the test fails.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let until = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for relay") {
                return status;
            }
            if std::time::Instant::now() >= until {
                self.kill();
                panic!("relay {pid} did not exit within {DEADLINE:?} of SIGTERM (killed it)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /v1/admin/spaces`: space name → its JSON row (role, shard, entries, digest).
    pub async fn admin_spaces(&self) -> std::collections::BTreeMap<String, Value> {
        let (status, body) = self.http_get("/v1/admin/spaces").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("admin JSON");
        let rows = v["spaces"].as_array().expect("spaces array");
        rows.iter().map(|s| (s["space"].as_str().expect("name").to_string(), s.clone())).collect()
    }

    /// `GET /v1/admin/shards` as JSON (members, table, peers, ...).
    pub async fn admin_shards(&self) -> Value {
        let (status, body) = self.http_get("/v1/admin/shards").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("admin JSON")
    }

    /// Waits until this mesh member's replication streams to all its peers
    /// are open (`/v1/admin/shards` reports each peer `connected`): a peer
    /// that just started is reached only after the stream's reconnect backoff.
    pub async fn wait_peers_connected(&self) {
        eventually("replication streams to every peer", || async {
            let shards = self.admin_shards().await;
            let peers = shards["peers"].as_array().cloned().unwrap_or_default();
            if !peers.is_empty() && peers.iter().all(|p| p["connected"] == true) {
                Ok(())
            } else {
                Err(shards["peers"].to_string())
            }
        })
        .await
    }

    /// GET a path over plain HTTP/1.1, returning (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(DEADLINE, s.read_to_string(&mut out)).await.expect("http timeout").unwrap();
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A browser-protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What ended a read: a message, a close frame, or the socket going away.
#[derive(Debug, PartialEq)]
pub enum Event {
    Json(Value),
    Close(u16, String),
    Gone,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::connect_with(tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap())
            .await
    }

    pub async fn connect_with(req: tokio_tungstenite::tungstenite::handshake::client::Request) -> Client {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timeout")
            .expect("connect");
        Client { ws }
    }

    /// Connects and reads hello + snapshot; returns (client, hello, snapshot data).
    pub async fn join(url: &str) -> (Client, Value, Value) {
        let mut c = Client::connect(url).await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        let snap = c.recv().await;
        assert_eq!(snap["type"], "snapshot", "{snap}");
        (c, hello, snap["data"].clone())
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_string())).await.expect("send");
    }

    /// The next event (JSON message, close or EOF); pings are answered by tungstenite.
    pub async fn next_event(&mut self) -> Event {
        // One deadline for the whole wait: keep-alive pings must not extend it.
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let msg = tokio::time::timeout_at(until, self.ws.next()).await.expect("no message before the deadline");
            match msg {
                Some(Ok(Message::Text(t))) => return Event::Json(serde_json::from_str(&t).expect("relay sent JSON")),
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Event::Close(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Event::Close(1005, String::new()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(b))) => panic!("unexpected binary frame {b:?}"),
                Some(Err(_)) | None => return Event::Gone,
            }
        }
    }

    /// The next JSON message; panics on close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until a close frame; returns its code and reason (skipping messages).
    pub async fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.next_event().await {
                Event::Json(_) => continue,
                Event::Close(code, reason) => return (code, reason),
                Event::Gone => panic!("connection dropped without a close frame"),
            }
        }
    }
}

/// Polls `check` (every 50 ms) until it returns `Ok`, for at most
/// [`DEADLINE`]; then fails the test with `what` and the last state `check`
/// reported. The one way tests here wait for something to become true.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) => assert!(std::time::Instant::now() < until, "{what}: {state}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback TCP port that was free a moment ago (for addresses peers must
/// know before a relay starts). Chosen below the kernel's ephemeral range
/// (32768 and up), so the port-0 listeners of relays started meanwhile by
/// other tests cannot take it before its relay binds it.
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `aether-relay` binary: Cargo's for this crate's tests; for other crates'
/// tests (which include this kit), the one built beside their test binary
/// (`cargo test --workspace` builds it).
pub fn relay_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_aether-relay") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join("aether-relay");
    assert!(bin.is_file(), "{} is missing: build it first (cargo build -p aether-relay)", bin.display());
    bin
}

/// Replaces `path` with `contents` atomically (a temporary file beside it,
/// then a rename), so a relay polling the file never reads it half written.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write the temporary file");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("aether-test-").tempdir().expect("tempdir")
}
