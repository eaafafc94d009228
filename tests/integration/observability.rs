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
    let ns = harness::user(&client, &name, json!({})).await;
    let spec =
        json!({"gpu": {"model": "NVIDIA-NOWHERE", "count": 1}, "image": "x", "duration": "1h"});
    harness::book(&client, &ns, "w", spec).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = harness::http_get(port, "/metrics").expect("GET /metrics");
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
            && value("gpu_cloud_instances_stalled") >= 1.0;
        if counted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed the work done:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
