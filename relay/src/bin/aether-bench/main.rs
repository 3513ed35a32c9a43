//! `aether-bench`: load generator for a relay (or a mesh of them) over real WebSockets.
//!
//! Starts an `aether-relay dev` child process (next to this binary) with a
//! temporary data dir and raised limits, unless `--addr` points at a running
//! relay. Prints its figures; docs/benchmarks.md records them.

mod mesh;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aether_core::OpRef;
use aether_relay::metrics::Metrics;
use aether_relay::wal::{Wal, WalConfig};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser)]
#[command(name = "aether-bench", about = "Aethermesh load generator")]
struct Cli {
    /// Use a running relay instead of starting one.
    #[arg(long, global = true)]
    addr: Option<SocketAddr>,
    /// `--ack` mode of the relay this tool starts.
    #[arg(long, global = true, default_value = "durable")]
    ack: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A sets, B receives, one op in flight: latency of delivery (A→relay→B) and of A's durable echo.
    Roundtrip {
        #[arg(long, default_value_t = 20_000)]
        ops: usize,
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
    },
    /// One writer, N subscribers: deliveries per second.
    Fanout {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 5_000)]
        ops: usize,
        /// Ops the writer keeps in flight (unechoed).
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// C clients write with W ops in flight each: acknowledged (durable) writes per second.
    Durable {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5_000)]
        ops_per_client: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
    },
    /// Writes N ops to a WAL in a temp dir, then times recovery (replay).
    Replay {
        #[arg(long, default_value_t = 2_000_000)]
        ops: u64,
        /// Distinct keys the ops are spread over.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long, default_value_t = 64)]
        value_bytes: usize,
        /// Replay the same data this many times (each is reported).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Baseline: latency of one small append + fdatasync in a temp dir.
    Fsync {
        #[arg(long, default_value_t = 2_000)]
        ops: usize,
    },
    /// A mesh of `aether-relay run` processes: convergence, cross-relay round trip, throughput, catch-up.
    Mesh(mesh::MeshBench),
    /// Baseline: a bare tokio-tungstenite echo server on loopback, one message in flight.
    EchoBaseline {
        #[arg(long, default_value_t = 20_000)]
        ops: usize,
    },
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Spawned {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_relay(cli: &Cli) -> anyhow::Result<Spawned> {
    if let Some(addr) = cli.addr {
        return Ok(Spawned { child: None, addr, _dir: None });
    }
    let exe = std::env::current_exe()?.with_file_name("aether-relay");
    let dir = tempfile::Builder::new().prefix("aether-bench-").tempdir()?;
    let mut child = Command::new(&exe)
        .args(["dev", "--listen", "127.0.0.1:0", "--ack", &cli.ack, "--data-dir"])
        .arg(dir.path())
        .args(["--limit-msgs-per-sec", "1e9", "--limit-burst", "1000000000", "--limit-conns", "100000"])
        .args(["--limit-conns-per-ip", "100000", "--limit-send-queue", "1000000"])
        .env("AETHER_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().context("stdout")?), &mut line)?;
    let addr = line.trim().rsplit("://").next().and_then(|a| a.parse().ok()).context("no listening line")?;
    Ok(Spawned { child: Some(child), addr, _dir: Some(dir) })
}

/// tungstenite zero-fills its whole read buffer before each read; the 128 KiB
/// default would make the load generator measure memset.
fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

async fn join(addr: SocketAddr, space: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{addr}/ws?space={space}");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true).await?;
    for _ in 0..2 {
        ws.next().await.context("closed during hello")??; // hello, snapshot
    }
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await.context("connection closed")?? {
            Message::Text(t) => return Ok(t),
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => continue,
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    println!(
        "{name}: n={} p50={:.1}µs p90={:.1}µs p99={:.1}µs max={:.1}µs",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e6,
        pct(&v, 0.9).as_secs_f64() * 1e6,
        pct(&v, 0.99).as_secs_f64() * 1e6,
        v.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
    );
}

fn value(n: usize) -> String {
    format!("\"{}\"", "v".repeat(n))
}

async fn roundtrip(addr: SocketAddr, ops: usize, value_bytes: usize) -> anyhow::Result<()> {
    let mut a = join(addr, "rt").await?;
    let mut b = join(addr, "rt").await?;
    let v = value(value_bytes);
    let (mut deliver, mut ack) = (Vec::with_capacity(ops), Vec::with_capacity(ops));
    let mut before = None;
    for i in 0..ops + 1000 {
        if i == 1000 {
            before = Some(server_ack_sums(addr).await?);
        }
        let msg = format!(r#"{{"type":"set","key":"k{}","value":{v}}}"#, i % 100);
        let t0 = Instant::now();
        a.send(Message::text(msg)).await?;
        next_text(&mut b).await?;
        let t_b = t0.elapsed();
        next_text(&mut a).await?;
        let t_a = t0.elapsed();
        if i >= 1000 {
            deliver.push(t_b);
            ack.push(t_a);
        }
    }
    report("roundtrip A→relay→B", deliver);
    report("writer echo (ack)  ", ack);
    // The server's own view of the same ops: receive → echo vs one fdatasync.
    let after = server_ack_sums(addr).await?;
    if let Some(b) = before {
        let n = (after.ack_count - b.ack_count).max(1.0);
        let ack_mean = (after.ack_sum - b.ack_sum) / n * 1e6;
        let syncs = (after.fsync_count - b.fsync_count).max(1.0);
        let fsync_mean = (after.fsync_sum - b.fsync_sum) / syncs * 1e6;
        println!(
            "server side: receive→echo mean {ack_mean:.1}µs, fdatasync mean {fsync_mean:.1}µs, overhead {:.1}µs",
            ack_mean - fsync_mean
        );
    }
    Ok(())
}

/// Sums and counts of the relay's ack-latency and fsync histograms.
#[derive(Clone, Copy, Default)]
struct AckSums {
    ack_sum: f64,
    ack_count: f64,
    fsync_sum: f64,
    fsync_count: f64,
}

async fn server_ack_sums(addr: SocketAddr) -> anyhow::Result<AckSums> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    let value = |name: &str| -> f64 {
        body.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
    };
    Ok(AckSums {
        ack_sum: value("aether_op_latency_seconds_sum{ack=\"durable\"} "),
        ack_count: value("aether_op_latency_seconds_count{ack=\"durable\"} "),
        fsync_sum: value("aether_wal_fsync_seconds_sum "),
        fsync_count: value("aether_wal_fsync_seconds_count "),
    })
}

async fn fanout(addr: SocketAddr, subscribers: usize, ops: usize, window: usize) -> anyhow::Result<()> {
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        subs.push(join(addr, "fan").await?);
    }
    let mut w = join(addr, "fan").await?;
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut s in subs {
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ops {
                next_text(&mut s).await?;
                received.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let (mut sent, mut acked) = (0, 0);
    while acked < ops {
        while sent < ops && sent - acked < window {
            w.feed(Message::text(format!(r#"{{"type":"set","key":"k{}","value":{sent}}}"#, sent % 100))).await?;
            sent += 1;
        }
        w.flush().await?;
        next_text(&mut w).await?;
        acked += 1;
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = received.load(Ordering::Relaxed);
    println!(
        "fanout: {subscribers} subscribers × {ops} ops = {n} deliveries in {secs:.2}s = {:.0} deliveries/s",
        n as f64 / secs
    );
    Ok(())
}

async fn durable(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    window: usize,
    value_bytes: usize,
) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        // One space per client: measures the write path, not fan-out.
        conns.push(join(addr, &format!("d{c}")).await?);
    }
    let v = value(value_bytes);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut ws) in conns.into_iter().enumerate() {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut acked) = (0, 0);
            while acked < per_client {
                while sent < per_client && sent - acked < window {
                    let msg = format!(r#"{{"type":"set","key":"c{c}k{}","value":{v}}}"#, sent % 1000);
                    ws.feed(Message::text(msg)).await?;
                    sent += 1;
                }
                ws.flush().await?;
                next_text(&mut ws).await?;
                acked += 1;
                // Take every echo already here before refilling the window.
                while acked < per_client {
                    match ws.next().now_or_never() {
                        Some(Some(Ok(Message::Text(_)))) => acked += 1,
                        Some(Some(Ok(_))) => continue,
                        Some(Some(Err(e))) => return Err(e.into()),
                        Some(None) => bail!("connection closed"),
                        None => break,
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = clients * per_client;
    println!(
        "durable writes: {clients} clients × {per_client} ops (window {window}) = {n} acknowledged in {secs:.2}s = {:.0} ops/s",
        n as f64 / secs
    );
    Ok(())
}

fn replay(ops: u64, keys: u64, value_bytes: usize, repeat: usize) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("aether-replay-").tempdir()?;
    let cfg = WalConfig::unbounded(dir.path());
    let metrics = Metrics::new();
    let value = vec![b'v'; value_bytes];
    {
        let (wal, _, _) = Wal::open(&cfg, &metrics)?;
        for i in 0..ops {
            let key = format!("key-{}", i % keys);
            let stamp = aether_core::Stamp { wall_ns: 1_700_000_000_000_000_000 + i, counter: 0, actor: 7 };
            wal.append(OpRef { space: "bench", key: key.as_bytes(), value: Some(&value), stamp, origin: 7 })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        wal.close();
    }
    let bytes: u64 = std::fs::read_dir(dir.path().join("wal"))?
        .flat_map(|e| e.map(|e| e.metadata().map(|m| m.len())))
        .flatten()
        .sum();
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let (wal, state, rec) = Wal::open(&cfg, &metrics)?;
        let secs = start.elapsed().as_secs_f64();
        let live: usize = state.spaces.values().map(|s| s.live_len()).sum();
        anyhow::ensure!(rec.ops == ops && live as u64 == keys.min(ops), "replayed {} ops, {live} keys", rec.ops);
        println!(
            "replay: {ops} ops ({:.0} MiB, {keys} keys) in {secs:.3}s = {:.2}M ops/s",
            bytes as f64 / (1 << 20) as f64,
            ops as f64 / secs / 1e6
        );
        drop(state);
        wal.close();
    }
    Ok(())
}

fn fsync(ops: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = tempfile::Builder::new().prefix("aether-fsync-").tempdir()?;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("f"))?;
    let buf = [7u8; 100];
    let mut v = Vec::with_capacity(ops);
    for _ in 0..ops {
        let t = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        v.push(t.elapsed());
    }
    report("append 100 B + fdatasync", v);
    Ok(())
}

async fn echo_baseline(ops: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The server runs on its own thread and runtime, like a separate process.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tcp.set_nodelay(true).expect("nodelay");
            let mut ws =
                tokio_tungstenite::accept_async_with_config(tcp, Some(client_config())).await.expect("handshake");
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), Some(client_config()), true).await?;
    let mut v = Vec::with_capacity(ops);
    for i in 0..ops + 1000 {
        let t = Instant::now();
        ws.send(Message::text(r#"{"type":"set","key":"k","value":"vvvvvvvvvvvvvvvvvvvvvvvv"}"#)).await?;
        next_text(&mut ws).await?;
        if i >= 1000 {
            v.push(t.elapsed());
        }
    }
    report("bare WebSocket echo", v);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Replay { ops, keys, value_bytes, repeat } => return replay(ops, keys, value_bytes, repeat),
        Cmd::Fsync { ops } => return fsync(ops),
        Cmd::EchoBaseline { ops } => return rt.block_on(echo_baseline(ops)),
        Cmd::Mesh(b) => return rt.block_on(mesh::run(b)),
        _ => {}
    }
    let relay = start_relay(&cli)?;
    let addr = relay.addr;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Roundtrip { ops, value_bytes } => roundtrip(addr, ops, value_bytes).await,
            Cmd::Fanout { subscribers, ops, window } => fanout(addr, subscribers, ops, window).await,
            Cmd::Durable { clients, ops_per_client, window, value_bytes } => {
                durable(addr, clients, ops_per_client, window, value_bytes).await
            }
            _ => unreachable!("handled above"),
        }
    })
}
