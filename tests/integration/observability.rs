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

/// The metric names a PromQL expression reads: label matchers, strings, ranges, `by (...)`
/// lists, variables, functions and keywords taken out.
fn metric_names(expr: &str) -> Vec<String> {
    let mut text = String::new();
    let mut depth_braces = 0;
    let mut in_string = false;
    let mut in_range = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            '[' => in_range = true,
            ']' => in_range = false,
            _ if depth_braces > 0 || in_range => {}
            c => text.push(c),
        }
        if c == '}' || c == ']' {
            text.push(' ');
        }
    }
    // `by (a, b)` and `without (...)` hold label names.
    let mut cleaned = String::new();
    let mut rest = text.as_str();
    while let Some(at) = ["by", "without"]
        .iter()
        .filter_map(|k| rest.find(&format!("{k} (")).map(|i| (i, k.len())))
        .min()
    {
        cleaned.push_str(&rest[..at.0]);
        let after = &rest[at.0 + at.1..];
        let close = after.find(')').map_or(after.len(), |i| i + 1);
        rest = &after[close..];
    }
    cleaned.push_str(rest);
    let keywords = [
        "and",
        "or",
        "unless",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
    ];
    let mut names = vec![];
    let chars: Vec<char> = cleaned.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            while i < chars.len()
                && (chars[i] == '$' || chars[i].is_alphanumeric() || chars[i] == '_')
            {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if next != Some(&'(') && !keywords.contains(&word.as_str()) {
                names.push(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

/// Every series name an exposition declares (`# TYPE`) or carries, with the suffixes a
/// counter's and a histogram's samples take.
fn served(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (f.next(), f.next()) {
                out.insert(name.to_owned());
                match kind {
                    "counter" => {
                        out.insert(format!("{name}_total"));
                    }
                    "histogram" => {
                        for s in ["_bucket", "_sum", "_count"] {
                            out.insert(format!("{name}{s}"));
                        }
                    }
                    _ => {}
                }
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_series_the_exporters_serve() {
    let client = harness::operator().await;
    let kubeconfig = harness::control_plane().kubeconfig.clone();
    let model = "TEST-GRAFANA-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-grafana"), model, 1, 2).await;
    let agent_port = harness::free_port();
    let _agent = harness::simulated_agent(&kubeconfig, &nodes[0], agent_port);
    // Prices and a budget, so that the cost and budget series have samples too.
    harness::prices(&client).await;
    let name = harness::unique("gina");
    let ns = harness::user(
        &client,
        &name,
        json!({"quota": {"gpuHours": {"limit": 10.0}}}),
    )
    .await;
    let spec = json!({"gpu": {"model": model, "count": 1}, "image": "x", "duration": "1h"});
    harness::book(&client, &ns, "g", spec).await;
    // And one that waits (no node has its model), for the queue's series.
    let waits = json!({"gpu": {"model": "TEST-GRAFANA-NOWHERE", "count": 1}, "image": "x", "duration": "1h"});
    harness::book(&client, &ns, "w", waits).await;
    // Both exporters with real samples: the agent measuring the instance.
    let agent = harness::poll(Duration::from_secs(60), "the agent's samples", || async {
        let (_, body) = harness::http_get(agent_port, "/metrics").map_err(|e| e.to_string())?;
        if body.contains("pod=\"g\"") {
            Ok(body)
        } else {
            Err("no samples of the instance yet".to_string())
        }
    })
    .await;
    let (_, controller) = harness::http_get(harness::controller_metrics_port(), "/metrics")
        .expect("controller /metrics");
    let mut series = served(&agent);
    series.extend(served(&controller));

    let rendered = harness::render_chart(
        "gpu-cloud",
        &[
            "--set",
            "grafana.dashboard.enabled=true",
            "--show-only",
            "templates/grafana-dashboard.yaml",
        ],
    );
    let cm: serde_json::Value =
        serde_saphyr::from_slice(&rendered).expect("the dashboard ConfigMap as YAML");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{cm}");
    let dashboard: serde_json::Value = serde_json::from_str(
        cm["data"]["gpu-cloud.json"]
            .as_str()
            .expect("the dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = v["definition"].as_str() {
            // label_values(metric, label): the metric.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            exprs.push(inner.split(',').next().unwrap_or_default().to_owned());
        }
    }
    assert!(exprs.len() >= 12, "{exprs:?}");
    let mut read = std::collections::BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no series in {e}");
        for n in names {
            assert!(
                series.contains(&n),
                "the dashboard reads {n} ({e}), which no exporter serves"
            );
            read.insert(n);
        }
    }
    // What the issue asks the dashboard to show, and that the check itself can fail.
    for must in [
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_POWER_USAGE",
        "gpu_cloud_instances_waiting_by_reason",
        "gpu_cloud_instances_placed_total",
        "gpu_cloud_user_budget_remaining_gpu_hours",
        "gpu_cloud_user_cost",
    ] {
        assert!(read.contains(must), "the dashboard shows no {must}");
    }
    assert_eq!(
        metric_names(
            r#"sum by (reason) (rate(gpu_cloud_nope_total{user=~"$user"}[$__rate_interval]))"#
        ),
        ["gpu_cloud_nope_total"]
    );
    assert!(!series.contains("gpu_cloud_nope_total"));
}
