//! The HTTP endpoint every long-running component serves: `/metrics` (Prometheus text
//! format), `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tracing::{info, warn};

/// What a metrics endpoint serves: a registry of metrics, and whether the process is ready.
pub trait Exporter: Send + Sync + 'static {
    /// The metrics.
    fn registry(&self) -> &prometheus_client::registry::Registry;
    /// `/readyz` answers 200.
    fn ready(&self) -> bool;
    /// The metrics in the Prometheus text format.
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, self.registry())?;
        Ok(body)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, exporter: Arc<dyn Exporter>) {
    let for_ready = exporter.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = exporter.encode();
                async move {
                    match body {
                        Ok(body) => (StatusCode::OK, body),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = for_ready.ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            info!(%addr, "metrics and health endpoints serving");
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "metrics endpoint stopped");
            }
        }
        Err(e) => warn!(%addr, error = %e, "cannot serve metrics"),
    }
}
