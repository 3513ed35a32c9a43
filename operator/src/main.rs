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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
