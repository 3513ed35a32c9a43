//! The `aether-relay` binary.

use aether_relay::config::{Cli, Command};
use aether_relay::telemetry;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for every TLS user in the process (client gateway, tonic).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let service = match &cli.command {
            Command::Dev(_) => "aether-relay".to_string(),
            Command::Run(args) => format!("aether-relay/{}", args.mesh.name),
        };
        // Flushes pending traces when dropped, after the relay stopped.
        let _telemetry = telemetry::init(cli.log_format, &service)?;
        match cli.command {
            Command::Dev(args) => aether_relay::server::run_dev(args).await,
            Command::Run(args) => aether_relay::server::run_mesh(args).await,
        }
    })
}
