//! `kubectl gpu`: the GPU cloud in a person's words — book (now or ahead), list, usage and
//! cost, free windows, and a shell, a port or the logs of an instance. Installed as the `kubectl-gpu` binary on the PATH, so kubectl finds
//! it as a plugin.
//!
//! - [`commands`]: the command line and what each command does;
//! - [`connect`]: a shell in an instance, a port forwarded to it, its logs (through kubectl);
//! - [`dashboard`]: the web dashboard on a local port, through the apiserver's service proxy;
//! - [`actions`]: what it asks of the API (as the person running it, or `--as` someone);
//! - [`tables`]: what it prints (pure, tested without a cluster);
//! - [`whoami`]: the caller's own namespace, for commands without `-n`;
//! - [`table`]: the one table renderer, shared with `gpu-cloud nodes` and `gpu-cloud report`.
//!
//! A client of the API only: it depends on the api and core crates, never on the
//! controller or the agent.

pub mod actions;
pub mod commands;
pub mod connect;
pub mod dashboard;
mod error;
pub mod table;
pub mod tables;
pub mod whoami;

pub use commands::PluginCli;
pub use error::PluginError;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Calling it twice is harmless.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // The client library logs each refused request at ERROR; the plugin says every failure
    // itself, in kubectl's words, so that line would only say it twice.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client::client::builder=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
