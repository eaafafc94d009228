//! `kubectl-gpu`: the kubectl plugin (`kubectl gpu book|ls|usage`).

use std::process::ExitCode;

use clap::Parser;
use gpu_cloud::plugin::PluginCli;

#[tokio::main]
async fn main() -> ExitCode {
    gpu_cloud::telemetry::init();
    match PluginCli::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
