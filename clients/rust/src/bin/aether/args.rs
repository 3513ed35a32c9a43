//! Command-line arguments (clap derive). Defaults live here and show in `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

/// Reads and writes Aethermesh spaces from the command line, over the
/// relay's native protocol (WebSocket `/v1/ws` or QUIC `aether/1`).
///
/// Relays come from `--relay` (repeatable, tried in order, with failover)
/// or from a cloud's endpoint list (`--cloud`).
///
/// Exit codes: 0 ok; 1 not found or failed; 2 usage; 3 cannot reach any
/// relay; 4 refused by the relay (auth, bad input).
#[derive(Debug, Parser)]
#[command(name = "aether", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Relay endpoint: ws://, wss://, http(s):// base or quic://host:port.
    /// Repeat (or separate with commas) for failover, in order.
    #[arg(long = "relay", global = true, env = "AETHER_RELAY", value_delimiter = ',', value_name = "URL")]
    pub relays: Vec<String>,

    /// Take the endpoints from a cloud's list: either a relay's HTTP base
    /// with --cloud-name, or the full URL `http(s)://relay/v1/clouds/NAME`.
    #[arg(long, global = true, env = "AETHER_CLOUD", value_name = "URL")]
    pub cloud: Option<String>,

    /// The cloud whose endpoint list to use (with a --cloud base URL).
    #[arg(long, global = true, env = "AETHER_CLOUD_NAME", value_name = "NAME")]
    pub cloud_name: Option<String>,

    /// The mesh's client token.
    #[arg(long, global = true, env = "AETHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM certificates to trust besides the Mozilla roots (e.g. a dev
    /// relay's `<data-dir>/quic-cert.pem`).
    #[arg(long, global = true, env = "AETHER_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Bound on connecting and on each request or ack (e.g. 10s, 500ms).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Hedge a write to the next relay when not acked within RTT + this ("off" disables).
    #[arg(long, global = true, default_value = "100ms", value_parser = parse_hedge)]
    pub hedge_delay: Hedge,

    /// Keep unacknowledged writes (and the client's actor id) in this file
    /// across runs.
    #[arg(long, global = true, env = "AETHER_QUEUE_FILE", value_name = "PATH")]
    pub queue_file: Option<PathBuf>,

    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// A hedge delay, or none.
#[derive(Debug, Clone, Copy)]
pub struct Hedge(pub Option<Duration>);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set KEY to a JSON value (waits for the relay's ack).
    Put {
        /// The space.
        space: String,
        /// The key.
        key: String,
        /// The value, as JSON text (`'{"title": "x"}'`, `42`, `'"text"'`, `null`).
        json: String,
    },
    /// Print KEY's JSON value (exit code 1 when absent).
    Get {
        /// The space.
        space: String,
        /// The key.
        key: String,
    },
    /// Delete KEY (waits for the relay's ack).
    Del {
        /// The space.
        space: String,
        /// The key.
        key: String,
    },
    /// Print changes as JSON lines until Ctrl-C: {"key":K,"value":V} or {"key":K,"deleted":true}.
    Watch {
        /// The space.
        space: String,
        /// Skip the current state; print only changes from now on.
        #[arg(long)]
        from_now: bool,
    },
    /// Print the whole space as one JSON object.
    Snapshot {
        /// The space.
        space: String,
    },
    /// List the spaces a relay holds (name and entry count).
    Spaces {
        /// Print the relay's JSON answer instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Write N ops at R ops/s and print the ack latency summary.
    Load(LoadArgs),
    /// Print the endpoint list of the cloud (--cloud).
    Clouds {
        /// Print the relay's JSON answer instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// `aether load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The space.
    pub space: String,
    /// Ops to write.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,
    /// Target rate, ops per second.
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Distinct keys written round robin (`load/0` … `load/K-1`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Approximate size of each value's JSON text.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (like 10s or 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_hedge(s: &str) -> Result<Hedge, String> {
    if s == "off" {
        return Ok(Hedge(None));
    }
    let d = parse_duration(s)?;
    Ok(Hedge((!d.is_zero()).then_some(d)))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(r.is_finite() && r > 0.0 && r <= 1e6) {
        return Err("the rate must be above 0 and at most 1000000 ops/s".into());
    }
    Ok(r)
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
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10h").is_err() && parse_duration("x").is_err() && parse_duration("-1s").is_err());
        assert!(parse_hedge("off").unwrap().0.is_none() && parse_hedge("0ms").unwrap().0.is_none());
        assert!(parse_rate("0").is_err() && parse_rate("inf").is_err() && parse_rate("250").is_ok());
    }

    #[test]
    fn relays_repeat_or_split_on_commas() {
        let cli =
            Cli::try_parse_from(["aether", "--relay", "ws://a:1,quic://b:2", "--relay", "ws://c:3", "get", "s", "k"])
                .unwrap();
        assert_eq!(cli.global.relays, vec!["ws://a:1", "quic://b:2", "ws://c:3"]);
        let cli = Cli::try_parse_from(["aether", "get", "s", "k", "--relay", "ws://c:3"]).unwrap();
        assert_eq!(cli.global.relays, vec!["ws://c:3"]);
        assert!(Cli::try_parse_from(["aether", "load", "s", "--ops", "0"]).is_err());
    }
}
