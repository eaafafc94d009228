//! `kubectl-gpu`: the kubectl plugin (`kubectl gpu book|ls|usage|slots|shell|forward|logs|dashboard`); all of it lives
//! in the `gpu-cloud-plugin` crate, a client of the API only.

use std::process::ExitCode;

use clap::Parser;
use gpu_cloud_plugin::PluginCli;

#[tokio::main]
async fn main() -> ExitCode {
    gpu_cloud_plugin::init_logging();
    match PluginCli::parse().run().await {
        Ok(()) => ExitCode::SUCCESS,
        // kubectl (shell, forward, logs) has said why; pass its status on.
        Err(gpu_cloud_plugin::PluginError::KubectlFailed(code)) => {
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(err) => {
            // The server's refusals already read as kubectl prints them.
            let text = err.to_string();
            if text.starts_with("Error from server") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            ExitCode::FAILURE
        }
    }
}
