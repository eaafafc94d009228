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

/// Logs written to a pipe (a container's log, a file) carry no terminal colour codes;
/// `--log-format json` writes one JSON object per event.
#[test]
fn logs_in_a_pipe_are_plain_text_or_json() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let kubeconfig = &harness::control_plane().kubeconfig;
    for format in ["text", "json"] {
        let port = harness::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"))
            .args(["webhook", "--no-inject", "--log-format", format])
            .arg(format!("--listen=127.0.0.1:{port}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gpu-cloud webhook");
        let stderr = child.stderr.take().expect("stderr pipe");
        let line = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("conversion webhook serving"));
        let _ = child.kill();
        let _ = child.wait();
        let line = line.unwrap_or_else(|| panic!("{format}: no 'serving' line"));
        assert!(
            !line.contains('\u{1b}'),
            "{format}: colour codes in a pipe: {line:?}"
        );
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
            assert_eq!(v["level"], "INFO", "{line}");
            assert_eq!(
                v["fields"]["message"], "conversion webhook serving",
                "{line}"
            );
        }
    }
}
