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
        /// Log format on stderr. Traces go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
        #[arg(long, env = "AETHER_LOG_FORMAT", value_enum, default_value_t = aether_relay::config::LogFormat::Json)]
        log_format: aether_relay::config::LogFormat,
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
        Command::Run { listen, log_format } => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(anyhow::Error::from).and_then(
                |rt| {
                    rt.block_on(async {
                        // Logs (AETHER_LOG filters them) and, with an OTLP endpoint, traces of every reconcile.
                        let _telemetry =
                            aether_relay::telemetry::init_for(log_format, "aether-operator", "aether_operator")?;
                        aether_operator::run::run(listen).await
                    })
                },
            )
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
