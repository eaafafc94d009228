//! gpu-cloud: a GPU cloud inside Kubernetes.
//!
//! The crate is split the way `DESIGN.md` describes: pure decisions (the [`scheduler`]
//! module never touches a client) and thin I/O layers (the [`cli`] commands) that gather
//! inputs from the cluster and act on the outcome.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod controller;
pub mod error;
pub mod metrics;
pub mod migrate;
pub mod plugin;
pub mod policy;
pub mod scheduler;
pub mod telemetry;
pub mod webhook;

pub use error::Error;

/// Resolves on SIGINT or SIGTERM (what a pod gets when it is stopped).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
