//! `aether`: the Aethermesh command-line client (see `aether --help`).

mod args;
mod data;
mod load;

use std::process::ExitCode;

use aether_client::{Client, ClientConfig, Error as ClientError, config::DEFAULT_CONNECT_TIMEOUT};
use clap::{CommandFactory, Parser};

use args::{Cli, Command, Global};

/// Exit code: not found, or the command failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad usage (also clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no relay could be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: a relay refused (auth, bad input).
pub const EXIT_REFUSED: u8 = 4;

/// A failure that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fail {
    /// The exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

/// An `anyhow::Error` with an explicit exit code.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    Fail { code, message: message.into() }.into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_writer(std::io::stderr)
        .init();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "aether", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aether: starting the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = rt.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aether: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Put { space, key, json } => data::put(g, &space, &key, &json).await,
        Command::Get { space, key } => data::get(g, &space, &key).await,
        Command::Del { space, key } => data::del(g, &space, &key).await,
        Command::Watch { space, from_now } => data::watch(g, &space, from_now).await,
        Command::Snapshot { space } => data::snapshot(g, &space).await,
        Command::Spaces { json } => data::spaces(g, json).await,
        Command::Clouds { json } => data::clouds(g, json).await,
        Command::Load(args) => load::run(g, &args).await,
        Command::Completions { .. } => Ok(()),
    }
}

/// The exit code for an error: an explicit [`Fail`], else by client error kind.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Fail>() {
            return f.code;
        }
        if let Some(ce) = cause.downcast_ref::<ClientError>() {
            if ce.is_unreachable() {
                // Every relay failed, or an HTTP request could not reach its relay.
                return EXIT_UNREACHABLE;
            }
            return match ce {
                ClientError::Refused { .. } => EXIT_REFUSED,
                ClientError::InvalidUrl { .. }
                | ClientError::Config(_)
                | ClientError::InvalidSpace(_)
                | ClientError::InvalidOp { .. }
                // A --ca-file that cannot be used.
                | ClientError::Tls(_) => EXIT_USAGE,
                _ => EXIT_FAILURE,
            };
        }
    }
    EXIT_FAILURE
}

/// The client configuration from the global options.
pub fn client_config(g: &Global) -> anyhow::Result<ClientConfig> {
    let mut config = match &g.cloud {
        Some(url) => {
            let mut c = ClientConfig::from_cloud(url, g.cloud_name.as_deref())?;
            c.endpoints = g.relays.clone();
            c
        }
        None if !g.relays.is_empty() => ClientConfig::new(g.relays.iter().cloned()),
        None => return Err(fail(EXIT_USAGE, "no relay: give --relay URL or --cloud URL (or set AETHER_RELAY)")),
    };
    config.token = g.token.clone();
    config.ca_file = g.ca_file.clone();
    config.hedge_delay = g.hedge_delay.0;
    config.queue_file = g.queue_file.clone();
    config.connect_timeout = g.timeout.min(DEFAULT_CONNECT_TIMEOUT);
    config.request_timeout = g.timeout;
    config.client_name = format!("aether-cli/{}", env!("CARGO_PKG_VERSION"));
    Ok(config)
}

/// Connects within `--timeout` (exit code 3 when no relay answers, 4 when one refuses).
pub async fn connect(g: &Global) -> anyhow::Result<Client> {
    let config = client_config(g)?;
    let what = if config.endpoints.is_empty() { "the cloud's relays".to_string() } else { config.endpoints.join(", ") };
    match tokio::time::timeout(g.timeout, Client::connect(config)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(fail(EXIT_UNREACHABLE, format!("cannot reach any relay within {:?}: {what}", g.timeout))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_error_kind() {
        assert_eq!(exit_code(&fail(EXIT_USAGE, "x")), 2);
        let refused = ClientError::Refused { relay: "r".into(), code: "auth-failed".into(), message: "m".into() };
        assert_eq!(exit_code(&anyhow::Error::new(refused).context("connecting")), 4);
        assert_eq!(exit_code(&ClientError::Unreachable(Default::default()).into()), 3);
        assert_eq!(exit_code(&ClientError::Closed.into()), 1);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        let http =
            |unreachable| ClientError::Http { url: "http://h/v1/spaces".into(), reason: "r".into(), unreachable };
        assert_eq!(exit_code(&anyhow::Error::new(http(true)).context("listing")), 3);
        assert_eq!(exit_code(&http(false).into()), 1);
        assert_eq!(exit_code(&ClientError::Tls("CA file x.pem: no PEM certificate in it".into()).into()), 2);
    }

    #[test]
    fn a_bad_ca_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap();
        let err = aether_client::Tls::new(Some(&bad)).unwrap_err();
        assert_eq!(exit_code(&err.into()), EXIT_USAGE);
    }
}
