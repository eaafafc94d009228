//! The plumbing gpu-cloud's long-running processes (controller, agent, webhook) share: the
//! API client with its rate limit and request counts ([`client`]), the `/metrics` and
//! health endpoint ([`metrics`]), logging ([`telemetry`]) and stopping on SIGTERM
//! ([`shutdown_signal`]). No gpu-cloud types: it depends on no crate of ours.

pub mod client;
pub mod metrics;
pub mod telemetry;

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
