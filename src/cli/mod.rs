//! Command-line entry points: parse arguments, then hand over to the component.

mod nodes;
pub mod report;

use clap::{Parser, Subcommand};

use gpu_cloud_controller::metrics::ControllerMetrics;
use gpu_cloud_runtime::client;
use gpu_cloud_runtime::telemetry::LogFormat;

use crate::Error;

/// gpu-cloud: a GPU cloud inside Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "gpu-cloud", version, about)]
pub struct Cli {
    /// How log lines are written: `text` (coloured only on a terminal) or `json`.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "GPU_CLOUD_LOG_FORMAT",
        default_value_t
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// One subcommand per component.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show the cluster's GPU nodes: model, GPUs allocatable, in use and free, readiness.
    Nodes(nodes::NodesArgs),
    /// The chargeback report of a month or an ISO week: GPU-hours, energy and cost per user
    /// and GPU model, priced with the GpuPriceList `default`.
    Report(report::ReportArgs),
    /// Run the operator: reconcile GpuUsers and GpuInstances and place instances on GPU nodes.
    Controller(gpu_cloud_controller::ControllerArgs),
    /// Run on a GPU node: measure GPU use (NVML, or --simulate) and write it into the
    /// instances' status.usage and /metrics.
    Agent(gpu_cloud_agent::AgentArgs),
    /// Serve CRD conversion between gpu-cloud.io versions (a TLS webhook for the apiserver).
    Webhook(crate::webhook::WebhookArgs),
    /// Serve the read-only web dashboard (each viewer sees what their own token may).
    Dashboard(crate::dashboard::DashboardArgs),
    /// Rewrite every stored object at the storage version, then trim storedVersions.
    Migrate(crate::migrate::MigrateArgs),
    /// Print the CustomResourceDefinitions generated from the Rust types (the source of crds/).
    Crd,
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> Result<(), Error> {
        match self.command {
            Command::Nodes(args) => nodes::run(args).await,
            Command::Report(args) => report::run(args).await,
            Command::Controller(args) => {
                let metrics = std::sync::Arc::new(ControllerMetrics::new());
                let client = client::build(&args.api, metrics.api_requests.clone()).await?;
                Ok(gpu_cloud_controller::run(client, args, metrics).await?)
            }
            Command::Agent(args) => Ok(gpu_cloud_agent::run(args).await?),
            Command::Webhook(args) => crate::webhook::run(client::plain().await?, args).await,
            Command::Dashboard(args) => crate::dashboard::run(client::plain().await?, args).await,
            Command::Migrate(args) => crate::migrate::run(client::plain().await?, args).await,
            Command::Crd => {
                let yaml = gpu_cloud_api::crds_yaml()?;
                std::io::Write::write_all(&mut std::io::stdout().lock(), yaml.as_bytes())?;
                Ok(())
            }
        }
    }
}
