//! The controller's Prometheus metrics and health endpoints.

use std::time::Duration;

use serde_json::json;

use crate::harness::{self, eventually};

#[tokio::test]
async fn the_controller_serves_metrics_health_and_readiness() {
    let client = harness::operator().await;
    let port = harness::controller_metrics_port();
    eventually(Duration::from_secs(30), "/readyz 200", || async {
        harness::http_get(port, "/readyz").is_ok_and(|(status, _)| status.contains(" 200 "))
    })
    .await;
    let (status, body) = harness::http_get(port, "/healthz").expect("GET /healthz");
    assert!(status.contains(" 200 ") && body == "ok", "{status} {body}");

    // Something to count: a user and an instance that waits (no node has its model).
    let name = harness::unique("judy");
    let ns = harness::user(
        &client,
        &name,
        json!({"quota": {"gpuHours": {"limit": 5.0}}}),
    )
    .await;
    let spec =
        json!({"gpu": {"model": "NVIDIA-NOWHERE", "count": 1}, "image": "x", "duration": "1h"});
    harness::book(&client, &ns, "w", spec).await;
    harness::poll(
        Duration::from_secs(30),
        "metrics that show the work done",
        || async {
            let (_, body) = harness::http_get(port, "/metrics").map_err(|e| e.to_string())?;
            let value = |prefix: &str| {
                body.lines()
                    .find(|l| l.starts_with(prefix))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let counted = value("gpu_cloud_placement_pass_seconds_count") > 0.0
                && value(r#"gpu_cloud_reconciles_total{controller="instance",result="ok"}"#) > 0.0
                && value(r#"gpu_cloud_reconciles_total{controller="user",result="ok"}"#) > 0.0
                && value("gpu_cloud_instances_stalled") >= 1.0
                // Per-user figures: this month's GPU-hours and the budget left (the cost
                // series needs the shared price list; tests/integration/cost.rs).
                && body.contains(&format!("gpu_cloud_user_gpu_hours{{user=\"{name}\"}} "))
                && value(&format!(
                    "gpu_cloud_user_budget_remaining_gpu_hours{{user=\"{name}\"}}"
                )) == 5.0;
            if counted { Ok(()) } else { Err(body) }
        },
    )
    .await;
}
