//! `aether-operator`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "aether-operator", version, about = "Reconciles Aethermesh Mesh, Node and ClientQuota resources")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every CRD (YAML documents; the same as crds/aethermesh.io.yaml).
    Crdgen,
    /// Run the controller against the cluster (in-cluster config or KUBECONFIG).
    Run {
        /// `/metrics` and `/healthz`.
        #[arg(long, env = "AETHER_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
    },
    /// Print, without a cluster, every object the operator would apply for the given resources.
    Render {
        /// YAML files with Mesh, Node and ClientQuota documents.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen => aether_operator::crds_yaml().map(|y| print!("{y}")).map_err(anyhow::Error::from),
        Command::Render { files } => aether_operator::render::run(&files),
        Command::Run { listen } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(aether_operator::run::run(listen)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
