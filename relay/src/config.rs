//! Command-line and environment configuration: one typed config, every default
//! in one place and shown by `--help`. Each flag also reads an `AETHER_*`
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

/// The `aether-relay` command line.
#[derive(Debug, Parser)]
#[command(name = "aether-relay", version, about = "Aethermesh relay: real-time state sync over WebSockets")]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "AETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
pub enum Command {
    /// One relay on its own: local filesystem ledger, no cluster, no object storage.
    Dev(RelayArgs),
    /// A relay in a mesh: spaces sharded over members and replicated over gRPC.
    Run(RunArgs),
}

/// `aether-relay run`: a relay plus its place in the mesh.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Relay settings (as for `dev`).
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Mesh settings.
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// Membership, placement and replication settings.
#[derive(Debug, Clone, Args)]
pub struct MeshArgs {
    /// This relay's member name, unique in the mesh and stable across restarts (e.g. the pod name).
    #[arg(long, env = "AETHER_NAME", value_parser = parse_member_name)]
    pub name: String,
    /// Relay-to-relay gRPC listen address.
    #[arg(long, env = "AETHER_MESH_LISTEN", default_value = "127.0.0.1:7070")]
    pub mesh_listen: SocketAddr,
    /// Address other relays use to reach this one (default: --mesh-listen).
    #[arg(long, env = "AETHER_MESH_ADVERTISE")]
    pub mesh_advertise: Option<String>,
    /// A static member `NAME=HOST:PORT` (its mesh address). Repeat or comma-separate.
    #[arg(long = "peer", env = "AETHER_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// A file listing members, one `NAME=HOST:PORT` per line (`#` comments); re-read when it changes.
    #[arg(long, env = "AETHER_MEMBERSHIP_FILE")]
    pub membership_file: Option<PathBuf>,
    /// A DNS SRV name listing members (a headless Service's named port, e.g.
    /// `_mesh._tcp.relay.ns.svc.cluster.local`): each target's first label is a
    /// member name, target:port its address. Re-resolved every --membership-poll.
    #[arg(long, env = "AETHER_MEMBERSHIP_SRV")]
    pub membership_srv: Option<String>,
    /// DNS server (IP:PORT) for --membership-srv instead of the system resolver.
    #[arg(long, env = "AETHER_MEMBERSHIP_DNS_SERVER", requires = "membership_srv")]
    pub membership_dns_server: Option<SocketAddr>,
    /// How often the membership file and DNS are checked for changes.
    #[arg(long, env = "AETHER_MEMBERSHIP_POLL", default_value = "2s", value_parser = parse_positive_duration)]
    pub membership_poll: Duration,
    /// Virtual shards of the mesh; must be the same on every relay and never change.
    #[arg(long, env = "AETHER_SHARDS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub shards: u32,
    /// Owners of each shard.
    #[arg(long, env = "AETHER_REPLICATION", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replication: u32,
    /// Owners that must hold a write durably before it is acknowledged.
    #[arg(long, env = "AETHER_WRITE_QUORUM", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub write_quorum: u32,
    /// How long a write waits for its quorum before the writer gets an error (the op stays applied).
    #[arg(long, env = "AETHER_QUORUM_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub quorum_timeout: Duration,
    /// Shared secret relays present to each other (`authorization: Bearer`). Unset: no mesh auth.
    #[arg(long, env = "AETHER_MESH_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub mesh_token: Option<String>,
    /// Mesh TLS certificate chain (PEM); with --mesh-tls-key and --mesh-tls-ca, relays use mutual TLS.
    #[arg(long, env = "AETHER_MESH_TLS_CERT", requires_all = ["mesh_tls_key", "mesh_tls_ca"])]
    pub mesh_tls_cert: Option<PathBuf>,
    /// Mesh TLS private key (PEM).
    #[arg(long, env = "AETHER_MESH_TLS_KEY", requires = "mesh_tls_cert")]
    pub mesh_tls_key: Option<PathBuf>,
    /// CA (PEM) that signs every relay's mesh certificate.
    #[arg(long, env = "AETHER_MESH_TLS_CA", requires = "mesh_tls_cert")]
    pub mesh_tls_ca: Option<PathBuf>,
    /// Speak plaintext gRPC between relays. Required when no mesh TLS is configured, so it is never an accident.
    #[arg(long, env = "AETHER_MESH_PLAINTEXT", default_value_t = false, conflicts_with = "mesh_tls_cert")]
    pub mesh_plaintext: bool,
    /// Ops queued for one peer; beyond, that peer is left to catch up by anti-entropy (it is never cut off).
    #[arg(long, env = "AETHER_REPLICATION_QUEUE", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(16..).map(|v| v as usize))]
    pub replication_queue: usize,
    /// Encoded bytes of ops queued for one peer; beyond, as for --replication-queue.
    #[arg(long, env = "AETHER_REPLICATION_QUEUE_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(65536..).map(|v| v as usize))]
    pub replication_queue_bytes: usize,
    /// Most ops in one replication batch or anti-entropy page.
    #[arg(long, env = "AETHER_REPLICATION_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536).map(|v| v as usize))]
    pub replication_batch: usize,
    /// Interval of the periodic anti-entropy pass (it also runs when a peer connects and at boot).
    #[arg(long, env = "AETHER_ANTI_ENTROPY_INTERVAL", default_value = "30s", value_parser = parse_positive_duration)]
    pub anti_entropy_interval: Duration,
}

/// A static mesh member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Member name.
    pub name: String,
    /// Mesh address `HOST:PORT`.
    pub addr: String,
}

/// A member name: 1–253 characters of `[A-Za-z0-9._-]`.
pub fn parse_member_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(format!("{s:?} is not a member name: use 1-253 of A-Z a-z 0-9 . _ -"));
    }
    Ok(s.to_owned())
}

/// `NAME=HOST:PORT`.
pub fn parse_peer(s: &str) -> Result<Peer, String> {
    let (name, addr) = s.trim().split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=HOST:PORT"))?;
    let name = parse_member_name(name.trim())?;
    let addr = addr.trim();
    let port_ok = addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!("{s:?}: expected NAME=HOST:PORT"));
    }
    Ok(Peer { name, addr: addr.to_owned() })
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// When a write is acknowledged (echoed) to its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckMode {
    /// After the WAL record is on disk (fdatasync).
    Durable,
    /// On receipt; the WAL is written in the background.
    Memory,
}

/// Everything a single relay process needs; `run` will flatten the same groups.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Client-facing listen address (WebSocket, HTTP, metrics).
    #[arg(long, env = "AETHER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Shared secret clients must present (`?auth_token=` or a first `auth` frame). Unset: no auth.
    #[arg(long, env = "AETHER_AUTH_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub auth_token: Option<String>,
    /// How long a client may take to send its `auth` frame.
    #[arg(long, env = "AETHER_AUTH_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub auth_timeout: Duration,
    /// TLS certificate chain (PEM). With `--tls-key`, serves `wss://` and `https://`.
    #[arg(long, env = "AETHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "AETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Per-cloud relay endpoint lists to serve at `/v1/clouds/{cloud}` (a JSON document the
    /// operator writes into a ConfigMap; format in docs/protocol.md). Re-read every `--clouds-poll`.
    #[arg(long, env = "AETHER_CLOUDS_FILE")]
    pub clouds_file: Option<PathBuf>,
    /// How often the clouds file is re-read.
    #[arg(long, env = "AETHER_CLOUDS_POLL", default_value = "2s", value_parser = parse_positive_duration)]
    pub clouds_poll: Duration,
    /// Also serve the native protocol over QUIC (UDP, ALPN `aether/1`) on this address. Uses
    /// `--tls-cert`/`--tls-key` when set; otherwise a self-signed certificate for localhost,
    /// kept in `<data-dir>/quic-cert.pem` (and `quic-key.pem`) for clients to trust.
    #[arg(long, env = "AETHER_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// Serve the web pages (`/`, `/demos/…`; `dev` only) and the browser client (`/client/aether.js`) from
    /// this checkout (the repository root) instead of the copies built into the binary, so
    /// they can be edited without rebuilding.
    #[arg(long, env = "AETHER_WEB_ASSETS_DIR")]
    pub web_assets_dir: Option<PathBuf>,
    /// Storage settings.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Client limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// WAL and snapshot settings.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Directory holding the WAL segments and snapshots.
    #[arg(long, env = "AETHER_DATA_DIR", default_value = "./aether-data")]
    pub data_dir: PathBuf,
    /// When writes are acknowledged: after fdatasync (durable) or on receipt (memory).
    #[arg(long, env = "AETHER_ACK", value_enum, default_value_t = AckMode::Durable)]
    pub ack: AckMode,
    /// A WAL segment is sealed and a new one started past this size.
    #[arg(long, env = "AETHER_WAL_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..))]
    pub wal_segment_bytes: u64,
    /// Write a snapshot once this many bytes of sealed segments are not yet covered by one.
    #[arg(long, env = "AETHER_SNAPSHOT_AFTER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub snapshot_after_bytes: u64,
    /// Most bytes of appended records waiting for the WAL writer; beyond, writes get an `overloaded` error.
    #[arg(long, env = "AETHER_WAL_MAX_PENDING_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub wal_max_pending_bytes: usize,
    /// Seal a WAL segment holding data once its first record is this old, so a ledger
    /// sidecar never lags by more (the recovery point objective after losing a disk,
    /// shipping time aside). 0 seals by size only.
    #[arg(long, env = "AETHER_WAL_SEAL_AFTER", default_value = "5s", value_parser = parse_duration)]
    pub wal_seal_after: Duration,
    /// A ledger sidecar (`aether-ledger ship`) ships this data dir: WAL segments are kept
    /// until its `ledger/shipped` marker says the store has them.
    #[arg(long, env = "AETHER_LEDGER_SIDECAR", default_value_t = false)]
    pub ledger_sidecar: bool,
    /// With `--ledger-sidecar`: most bytes of WAL not yet in object storage. Beyond it, writes get
    /// an `overloaded` error and `/readyz` answers 503 until the sidecar catches up.
    #[arg(long, env = "AETHER_LEDGER_BACKLOG_MAX_BYTES", default_value_t = 2 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub ledger_backlog_max_bytes: u64,
    /// Start even if a WAL record in the middle of a segment is corrupt, skipping it (logged with its offset).
    #[arg(long, env = "AETHER_WAL_SKIP_CORRUPT", default_value_t = false)]
    pub wal_skip_corrupt: bool,
    /// Reject client stamps more than this far ahead of local time.
    #[arg(long, env = "AETHER_MAX_CLOCK_SKEW", default_value = "60s", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
}

/// Per-connection and per-process limits of the browser JSON gateway.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Sustained messages per second per connection (token bucket rate); above: close 1008.
    #[arg(long, env = "AETHER_LIMIT_MSGS_PER_SEC", default_value_t = 100.0, value_parser = parse_rate)]
    pub limit_msgs_per_sec: f64,
    /// Burst of messages per connection (token bucket size).
    #[arg(long, env = "AETHER_LIMIT_BURST", default_value_t = 200)]
    pub limit_burst: u32,
    /// Largest WebSocket frame or message accepted; above: close 1009.
    #[arg(long, env = "AETHER_LIMIT_FRAME_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(1024..).map(|v| v as usize))]
    pub limit_frame_bytes: usize,
    /// Largest JSON message applied; above: an `error` reply, the op is not applied.
    #[arg(long, env = "AETHER_LIMIT_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub limit_message_bytes: usize,
    /// Largest key, in UTF-8 bytes.
    #[arg(long, env = "AETHER_LIMIT_KEY_BYTES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096).map(|v| v as usize))]
    pub limit_key_bytes: usize,
    /// Largest value, in bytes of its JSON text.
    #[arg(long, env = "AETHER_LIMIT_VALUE_BYTES", default_value_t = 32 * 1024)]
    pub limit_value_bytes: usize,
    /// Largest space name, in UTF-8 bytes.
    #[arg(long, env = "AETHER_LIMIT_SPACE_BYTES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024).map(|v| v as usize))]
    pub limit_space_bytes: usize,
    /// Open WebSocket connections in total; above: close 1013.
    #[arg(long, env = "AETHER_LIMIT_CONNS", default_value_t = 256)]
    pub limit_conns: usize,
    /// Open WebSocket connections per client IP; above: close 1013.
    #[arg(long, env = "AETHER_LIMIT_CONNS_PER_IP", default_value_t = 32)]
    pub limit_conns_per_ip: usize,
    /// Messages queued for one client before it is dropped as a slow consumer (close 1013).
    #[arg(long, env = "AETHER_LIMIT_SEND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub limit_send_queue: usize,
    /// Proxies (IPs or CIDRs) whose `X-Forwarded-For` header is believed. Repeat or comma-separate.
    #[arg(long = "trusted-proxy", env = "AETHER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
    /// Spaces one native connection (or QUIC stream) may subscribe to.
    #[arg(long, env = "AETHER_LIMIT_SPACES_PER_CONN", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536).map(|v| v as usize))]
    pub limit_spaces_per_conn: usize,
    /// Ops in one native `write`.
    #[arg(long, env = "AETHER_LIMIT_OPS_PER_WRITE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536).map(|v| v as usize))]
    pub limit_ops_per_write: usize,
    /// Ops in one `catchup` chunk (chunks also stay under half of --limit-frame-bytes).
    #[arg(long, env = "AETHER_LIMIT_CATCHUP_OPS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536).map(|v| v as usize))]
    pub limit_catchup_ops: usize,
    /// Interval of keep-alive pings to each client.
    #[arg(long, env = "AETHER_PING_INTERVAL", default_value = "20s", value_parser = parse_positive_duration)]
    pub ping_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is disconnected.
    #[arg(long, env = "AETHER_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
}

/// A rate (per second) that must be a positive, finite number.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// A duration that must be more than zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// An auth token: an empty one (e.g. an unset template variable) is refused
/// rather than turning auth into a formality.
pub fn parse_token(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the auth token is empty; leave --auth-token unset to run without auth".into());
    }
    Ok(s.to_owned())
}

/// Parses `250ms`, `5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert!(Cli::try_parse_from(["aether-relay", "dev", "--ping-interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["aether-relay", "dev", "--auth-token", ""]).is_err());
        for bad in [
            ["--wal-segment-bytes", "10"],
            ["--limit-msgs-per-sec", "-1"],
            ["--limit-msgs-per-sec", "NaN"],
            ["--limit-send-queue", "0"],
            ["--limit-frame-bytes", "12"],
            // Peers refuse longer keys and space names (see replication::from_pb).
            ["--limit-key-bytes", "5000"],
            ["--limit-space-bytes", "2000"],
        ] {
            assert!(Cli::try_parse_from(["aether-relay", "dev", bad[0], bad[1]]).is_err(), "{bad:?} accepted");
        }
        assert!(Cli::try_parse_from(["aether-relay", "dev", "--limit-msgs-per-sec", "1e9"]).is_ok());
    }

    #[test]
    fn dev_defaults() {
        let cli = Cli::try_parse_from(["aether-relay", "dev"]).unwrap();
        let Command::Dev(a) = cli.command else { panic!("dev") };
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(a.storage.data_dir, PathBuf::from("./aether-data"));
        assert_eq!(a.storage.ack, AckMode::Durable);
        assert_eq!((a.limits.limit_conns, a.limits.limit_conns_per_ip), (256, 32));
    }

    #[test]
    fn run_parses_peers_and_refuses_bad_ones() {
        let cli = Cli::try_parse_from([
            "aether-relay",
            "run",
            "--name",
            "r1",
            "--mesh-plaintext",
            "--peer",
            "r2=127.0.0.1:7002,r3=[::1]:7003",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else { panic!("run") };
        assert_eq!(a.mesh.peers[1], Peer { name: "r3".into(), addr: "[::1]:7003".into() });
        assert_eq!((a.mesh.shards, a.mesh.replication, a.mesh.write_quorum), (256, 3, 1));
        for bad in [["--peer", "r2"], ["--peer", "r 2=h:1"], ["--peer", "r2=host"], ["--shards", "0"], ["--name", ""]] {
            let mut argv = vec!["aether-relay", "run", "--name", "r1", "--mesh-plaintext"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?} accepted");
        }
        assert!(Cli::try_parse_from(["aether-relay", "run"]).is_err(), "--name is required");
    }
}
