//! Usage tracking end to end with the agent in simulated mode on kwok nodes: the exact
//! simulated totals appear on the instances, survive an agent SIGKILL and restart (nothing
//! lost, nothing counted twice), show on /metrics, and a deleted instance's final figures
//! are folded into its user.

use std::time::Duration;

use gpu_cloud_agent::simulated::{UTILIZATION_ANNOTATION, power_per_gpu};
use gpu_cloud_api::v1::{GpuInstance, GpuUser, Phase, Usage, UsageSource};
use kube::api::Api;
use serde_json::json;

use crate::harness::{self, phase, poll};

/// Checks `inst`'s usage against the simulated truth at its own `sampledAt`.
fn assert_exact(inst: &GpuInstance, util: f64) -> Usage {
    let status = inst.status.clone().expect("status");
    let usage = status.usage.clone().expect("usage");
    let gpus = f64::from(inst.spec.gpu.count);
    let secs = usage
        .sampled_at
        .duration_since(status.started_at.expect("startedAt"))
        .as_secs_f64();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    assert_eq!(usage.source, UsageSource::Simulated);
    assert!(
        close(usage.gpu_seconds, gpus * secs),
        "gpuSeconds {} != {gpus} x {secs}",
        usage.gpu_seconds
    );
    let energy = gpus * power_per_gpu(util) * secs;
    assert!(
        close(usage.energy_joules, energy),
        "energy {} != {energy}",
        usage.energy_joules
    );
    assert!(
        close(usage.avg_utilization, util),
        "avg {} != {util}",
        usage.avg_utilization
    );
    let peak = (8.0 * f64::from(1u32 << 30) * util / 100.0) as u64 * inst.spec.gpu.count as u64;
    assert_eq!(usage.peak_memory_bytes, peak);
    usage
}

#[tokio::test]
async fn simulated_usage_is_exact_resumes_after_a_crash_and_rolls_up() {
    let client = harness::operator().await;
    let kubeconfig = harness::control_plane().kubeconfig.clone();
    let model = "TEST-USAGE-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-usage"), model, 1, 4).await;
    let name = harness::unique("kate");
    let ns = harness::user(&client, &name, json!({})).await;
    let port = harness::free_port();
    let mut running_agent = Some(harness::simulated_agent(&kubeconfig, &nodes[0], port));

    // Its simulated utilization is set from the start, so the truth is one number.
    let a: GpuInstance = serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
        "metadata": {"name": "a", "namespace": ns, "annotations": {UTILIZATION_ANNOTATION: "40"}},
        "spec": {"gpu": {"model": model, "count": 2}, "image": "x", "duration": "1h"}
    }))
    .unwrap();
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    api.create(&Default::default(), &a).await.expect("book a");
    harness::book(
        &client,
        &ns,
        "b",
        json!({"gpu": {"model": model, "count": 1}, "image": "x", "duration": "1h"}),
    )
    .await;

    let usage_after = |name: &'static str, secs: f64| {
        let api = api.clone();
        async move {
            poll(
                Duration::from_secs(60),
                &format!("{name} with {secs} GPU-seconds"),
                || async {
                    let i = api.get(name).await.map_err(|e| e.to_string())?;
                    match i.status.as_ref().and_then(|s| s.usage.as_ref()) {
                        Some(u) if u.gpu_seconds >= secs => Ok(i),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await
        }
    };
    let first = assert_exact(&usage_after("a", 6.0).await, 40.0);
    assert_exact(&usage_after("b", 3.0).await, 50.0);

    // /metrics: dcgm-exporter's series for the simulated GPUs, and gpu-cloud's totals.
    let (ready, _) = harness::http_get(port, "/readyz").expect("agent /readyz");
    assert!(ready.contains(" 200 "), "{ready}");
    let (_, body) = harness::http_get(port, "/metrics").expect("agent /metrics");
    let util_a = body
        .lines()
        .find(|l| {
            l.starts_with("DCGM_FI_DEV_GPU_UTIL{")
                && l.contains(&format!("namespace=\"{ns}\",pod=\"a\""))
        })
        .unwrap_or_else(|| panic!("no DCGM_FI_DEV_GPU_UTIL for a:\n{body}"));
    assert!(
        util_a.ends_with(" 40.0") && util_a.contains(&format!("modelName=\"{model}\"")),
        "{util_a}"
    );
    assert!(
        body.contains(&format!("gpu_cloud_user_gpu_seconds{{user=\"{name}\"}}")),
        "{body}"
    );

    // SIGKILL the agent, let time pass, start a new one: totals pick up where they were.
    drop(running_agent.take());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _agent = harness::simulated_agent(&kubeconfig, &nodes[0], harness::free_port());
    let resumed = usage_after("a", first.gpu_seconds + 8.0).await;
    let after = assert_exact(&resumed, 40.0);
    assert!(after.sampled_at > first.sampled_at);

    // Delete b: its final figures (to its deletion) are recorded before it goes.
    let final_b = harness::delete_for_final_usage(&api, "b").await;
    let final_usage = assert_exact(&final_b, 50.0);
    harness::eventually(Duration::from_secs(60), "b gone", || async {
        api.get_opt("b").await.unwrap().is_none()
    })
    .await;
    let users = Api::<GpuUser>::all(client.clone());
    let user_usage = poll(
        Duration::from_secs(30),
        "user usage with b recorded",
        || async {
            let u = users.get(&name).await.map_err(|e| e.to_string())?;
            let usage = u.status.and_then(|s| s.usage).ok_or("no usage")?;
            if usage.retired.instances == 1 {
                Ok(usage)
            } else {
                Err(format!("{usage:?}"))
            }
        },
    )
    .await;
    assert!((user_usage.retired.gpu_hours - final_usage.gpu_seconds / 3600.0).abs() < 1e-9);
    assert!((user_usage.retired.energy_kwh - final_usage.energy_joules / 3.6e6).abs() < 1e-12);
    assert_eq!(user_usage.retired.instances, 1);
    assert!(
        user_usage.lifetime.gpu_hours > user_usage.retired.gpu_hours,
        "a's live usage counts too"
    );
    assert_eq!(user_usage.lifetime.instances, 2);
    assert_eq!(phase(&api.get("a").await.unwrap()), Some(Phase::Running));

    // Delete a too: the user's totals are then exactly the two final records.
    let final_a = harness::delete_for_final_usage(&api, "a").await;
    let final_a = assert_exact(&final_a, 40.0);
    let totals = poll(Duration::from_secs(60), "both folded", || async {
        let u = users.get(&name).await.map_err(|e| e.to_string())?;
        let usage = u.status.and_then(|s| s.usage).ok_or("no usage")?;
        if usage.retired.instances == 2 {
            Ok(usage)
        } else {
            Err(format!("{usage:?}"))
        }
    })
    .await;
    let hours = (final_a.gpu_seconds + final_usage.gpu_seconds) / 3600.0;
    let kwh = (final_a.energy_joules + final_usage.energy_joules) / 3.6e6;
    assert!(
        (totals.lifetime.gpu_hours - hours).abs() < 1e-9,
        "{totals:?}"
    );
    assert!(
        (totals.lifetime.energy_kwh - kwh).abs() < 1e-12,
        "{totals:?}"
    );
    assert_eq!(totals.lifetime.instances, 2);
}

#[tokio::test]
async fn without_nvml_the_agent_says_so_and_exits_non_zero() {
    let cp = harness::control_plane();
    let (ok, _, err) = harness::gpu_cloud(&cp.kubeconfig, &["agent", "--node", "any"]);
    assert!(!ok, "the agent ran without NVML and without --simulate");
    assert!(
        err.contains("NVML is not available") && err.contains("--simulate"),
        "{err}"
    );
}
