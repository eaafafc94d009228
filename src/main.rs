//! The `gpu-cloud` binary: one program, one subcommand per component.

use std::process::ExitCode;

use clap::Parser;
use gpu_cloud::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    gpu_cloud::telemetry::init();
    let cli = Cli::parse();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
