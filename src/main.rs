//! The `gpu-cloud` binary: one program, one subcommand per component (controller, agent,
//! webhook, migrate) and the operator's commands (nodes, report, crd). The components are
//! the workspace's crates; this binary parses arguments, hands over, and turns their
//! errors into one message.

mod cli;
mod dashboard;
mod error;
mod migrate;
mod webhook;

use std::process::ExitCode;

use clap::Parser;

pub use error::Error;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    gpu_cloud_runtime::telemetry::init(cli.log_format);
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
