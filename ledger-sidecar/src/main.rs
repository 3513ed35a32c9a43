//! `aether-ledger`: the relay's ledger sidecar and its tools.

use std::process::ExitCode;

use aether_ledger::{compact, inspect, restore, ship, verify};
use clap::{Parser, Subcommand};

/// Ships a relay's write-ahead log to object storage and restores, compacts,
/// verifies and inspects what is there.
#[derive(Debug, Parser)]
#[command(name = "aether-ledger", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a relay's data dir and upload sealed segments and snapshots (the sidecar).
    Ship(ship::ShipArgs),
    /// Rebuild a data dir from the store (the init container), optionally as of an instant (`--at`).
    Restore(restore::RestoreArgs),
    /// Fold old segments into a snapshot in the store and apply retention.
    Compact(compact::CompactArgs),
    /// Check every object, CRC and the manifests of the store; report gaps.
    Verify(verify::VerifyArgs),
    /// Print the ops of a segment or snapshot object as JSON lines.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // One TLS provider for reqwest (object_store) in this process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Ship(a) => ship::run(a).await,
            Command::Restore(a) => restore::run(a).await,
            Command::Compact(a) => compact::run(a).await,
            Command::Verify(a) => verify::run(a).await,
            Command::Inspect(a) => inspect::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
