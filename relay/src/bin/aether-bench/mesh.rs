//! `aether-bench mesh`: a mesh of `aether-relay run` processes on loopback,
//! measured from real clients: convergence of a burst of writes across every
//! relay, cross-relay round trip, acknowledged throughput, and how fast a
//! restarted replica catches up.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{join, next_text, pct, report, value};

/// Mesh benchmark settings.
#[derive(clap::Args)]
pub struct MeshBench {
    /// Relays in the mesh.
    #[arg(long, default_value_t = 5)]
    relays: usize,
    /// Owners per shard.
    #[arg(long, default_value_t = 3)]
    replication: usize,
    /// Owners that must hold a write durably before it is acknowledged.
    #[arg(long, default_value_t = 1)]
    write_quorum: usize,
    /// Writes per convergence round.
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Convergence rounds.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Sequential cross-relay round trips.
    #[arg(long, default_value_t = 3_000)]
    roundtrips: usize,
    /// Writer connections for the throughput run (spread over the relays).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Ops per writer in the throughput run.
    #[arg(long, default_value_t = 2_000)]
    ops_per_client: usize,
    /// Ops written while one replica is down, for the catch-up run.
    #[arg(long, default_value_t = 100_000)]
    catch_up_ops: usize,
}

struct Member {
    name: String,
    mesh_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free port below the kernel's ephemeral range, so the relays' own port-0
/// listeners cannot take it before its relay binds it.
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found in 20000..32000")
}

fn spawn(m: &mut Member, peers: &[String], replication: usize, quorum: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?.with_file_name("aether-relay");
    let mut cmd = Command::new(&exe);
    cmd.args(["run", "--listen", "127.0.0.1:0", "--name", &m.name, "--mesh-plaintext"])
        .args(["--mesh-listen", &format!("127.0.0.1:{}", m.mesh_port), "--replication", &replication.to_string()])
        .args(["--write-quorum", &quorum.to_string()])
        .arg("--data-dir")
        .arg(m.dir.path())
        .args(["--limit-msgs-per-sec", "1e9", "--limit-burst", "1000000000", "--limit-conns", "100000"])
        .args(["--limit-conns-per-ip", "100000", "--limit-send-queue", "1000000", "--anti-entropy-interval", "30s"])
        .env("AETHER_LOG", "warn")
        .stdout(Stdio::piped());
    for p in peers {
        cmd.args(["--peer", p]);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
    let out = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    let line = std::io::BufRead::lines(out)
        .map_while(Result::ok)
        .find(|l| l.starts_with("aether-relay listening on"))
        .context("no listening line")?;
    m.addr = line.trim().rsplit("://").next().and_then(|a| a.parse().ok()).context("bad listening line")?;
    m.child = Some(child);
    Ok(())
}

fn peers_of(members: &[Member], i: usize) -> Vec<String> {
    members
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, m)| format!("{}=127.0.0.1:{}", m.name, m.mesh_port))
        .collect()
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(serde_json::from_str(body)?)
}

async fn all_connected(members: &[Member]) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    for m in members {
        loop {
            let v = get(m.addr, "/v1/admin/shards").await?;
            if v["peers"].as_array().is_some_and(|p| p.iter().all(|p| p["connected"] == true)) {
                break;
            }
            if Instant::now() > until {
                bail!("{} did not connect to its peers: {v}", m.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Reads until `n` messages of type `set` arrived.
async fn read_sets(ws: &mut super::Ws, n: usize) -> anyhow::Result<()> {
    let mut got = 0;
    while got < n {
        if next_text(ws).await?.as_str().starts_with(r#"{"type":"set""#) {
            got += 1;
        }
    }
    Ok(())
}

/// Each connection writes `per` distinct keys with 32 writes in flight and
/// waits for every one of its echoes (an echo is an acknowledgement).
async fn write_all(conns: Vec<super::Ws>, per: usize, prefix: &'static str) -> anyhow::Result<()> {
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut ws)| {
            tokio::spawn(async move {
                let (mut sent, mut acked) = (0, 0);
                while acked < per {
                    while sent < per && sent - acked < 32 {
                        let msg = format!(r#"{{"type":"set","key":"{prefix}{c}k{sent}","value":{sent}}}"#);
                        ws.feed(Message::text(msg)).await?;
                        sent += 1;
                    }
                    ws.flush().await?;
                    // Only this writer's echoes count: others may write to the same space.
                    let mine = format!(r#""key":"{prefix}{c}k"#);
                    acked += usize::from(next_text(&mut ws).await?.as_str().contains(&mine));
                    while acked < per {
                        match ws.next().now_or_never() {
                            Some(Some(Ok(Message::Text(t)))) => acked += usize::from(t.as_str().contains(&mine)),
                            Some(Some(Ok(_))) => continue,
                            Some(Some(Err(e))) => return Err(e.into()),
                            Some(None) => bail!("connection closed"),
                            None => break,
                        }
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Runs every mesh measurement and prints the figures.
pub async fn run(b: MeshBench) -> anyhow::Result<()> {
    let mut members = Vec::new();
    for i in 0..b.relays {
        let dir = tempfile::Builder::new().prefix("aether-bench-mesh-").tempdir()?;
        members.push(Member {
            name: format!("relay-{i}"),
            mesh_port: free_port()?,
            dir,
            child: None,
            addr: "127.0.0.1:0".parse()?,
        });
    }
    for i in 0..b.relays {
        let peers = peers_of(&members, i);
        spawn(&mut members[i], &peers, b.replication, b.write_quorum)?;
    }
    all_connected(&members).await?;
    println!("mesh: {} relays, R={}, 256 shards, W={}, loopback", b.relays, b.replication, b.write_quorum);

    // 1. Convergence: a burst of writes on relay 0 until a reader on every relay has all of them.
    let mut conv = Vec::with_capacity(b.rounds);
    for round in 0..b.rounds {
        let space = format!("conv-{round}");
        let mut readers = Vec::new();
        for m in &members {
            readers.push(join(m.addr, &space).await?);
        }
        let mut w = join(members[0].addr, &space).await?;
        let t0 = Instant::now();
        for i in 0..b.writes {
            w.feed(Message::text(format!(r#"{{"type":"set","key":"k{i}","value":{i}}}"#))).await?;
        }
        w.flush().await?;
        let waits = readers.iter_mut().map(|r| async { read_sets(r, b.writes).await.map(|_| t0.elapsed()) });
        let times = futures_util::future::try_join_all(waits).await?;
        conv.push(times.into_iter().max().unwrap_or_default());
    }
    conv.sort_unstable();
    println!(
        "convergence of {} writes across {} relays: n={} p50={:.2}ms p90={:.2}ms max={:.2}ms",
        b.writes,
        b.relays,
        conv.len(),
        pct(&conv, 0.5).as_secs_f64() * 1e3,
        pct(&conv, 0.9).as_secs_f64() * 1e3,
        conv.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );

    // 2. Cross-relay round trip: writer on relay 0, reader on relay 1, one op in flight.
    let mut a = join(members[0].addr, "rtt").await?;
    let mut r = join(members[1].addr, "rtt").await?;
    let v = value(64);
    let (mut rtt, mut ack) = (Vec::with_capacity(b.roundtrips), Vec::with_capacity(b.roundtrips));
    for i in 0..b.roundtrips + 200 {
        let t0 = Instant::now();
        a.send(Message::text(format!(r#"{{"type":"set","key":"k{}","value":{v}}}"#, i % 100))).await?;
        next_text(&mut r).await?;
        let t_r = t0.elapsed();
        next_text(&mut a).await?;
        if i >= 200 {
            rtt.push(t_r);
            ack.push(t0.elapsed());
        }
    }
    report("cross-relay A(relay-0)→B(relay-1)", rtt);
    report("writer's echo (acknowledged at W)", ack);

    // 3. Throughput: writers spread over every relay, one space each, 32 in flight.
    let mut conns = Vec::new();
    for c in 0..b.clients {
        conns.push(join(members[c % members.len()].addr, &format!("tp{c}")).await?);
    }
    let start = Instant::now();
    let per = b.ops_per_client;
    write_all(conns, per, "tp").await?;
    let secs = start.elapsed().as_secs_f64();
    let n = b.clients * per;
    println!(
        "throughput R={}: {} clients over {} relays = {n} acknowledged writes in {secs:.2}s = {:.0} ops/s",
        b.replication,
        b.clients,
        b.relays,
        n as f64 / secs
    );

    // 4. Catch-up: the last relay is killed, writes land on the others, then it restarts.
    let last = b.relays - 1;
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let space = (0..)
        .map(|i| format!("catchup-{i}"))
        .find(|s| {
            let shard = aether_core::placement::shard_of(s, 256);
            aether_core::placement::owners(shard, &names, b.replication).contains(&names[last].as_str())
        })
        .expect("some space is owned by the last relay");
    if let Some(c) = &mut members[last].child {
        c.kill()?;
        c.wait()?;
    }
    members[last].child = None;
    let mut writers = Vec::new();
    for c in 0..8 {
        writers.push(join(members[c % last].addr, &space).await?);
    }
    let per = b.catch_up_ops / writers.len();
    write_all(writers, per, "cu").await?;
    let total = per * 8;
    let peers = peers_of(&members, last);
    let t0 = Instant::now();
    spawn(&mut members[last], &peers, b.replication, b.write_quorum)?;
    let booted = t0.elapsed();
    loop {
        let v = get(members[last].addr, "/v1/admin/spaces").await?;
        let entries = v["spaces"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["space"] == space.as_str()))
            .and_then(|s| s["entries"].as_u64())
            .unwrap_or(0);
        if entries as usize >= total {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the restarted replica did not catch up: {entries} of {total}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "catch-up: {total} ops missed by a restarted replica, recovered in {secs:.2}s after restart (boot {:.0}ms) = {:.0} ops/s",
        booted.as_secs_f64() * 1e3,
        total as f64 / secs
    );
    Ok(())
}
