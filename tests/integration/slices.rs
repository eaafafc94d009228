//! GPU slices on the real control plane: a MIG booking runs on a MIG node with its
//! profile's resource, time-sliced bookings share a GPU up to its replicas, and a user's
//! quota counts slices as their fraction of a GPU (the default table's or the cluster's
//! `--slice-fraction`). Each test has fake nodes of its own model.

use gpu_cloud_api::v1::{GpuInstance, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;

use crate::harness::{self, phase};

fn slices(model: &str, slice: &str, count: u32) -> serde_json::Value {
    json!({"gpu": {"model": model, "slice": slice, "count": count},
           "image": "pytorch/pytorch:2.5.1", "duration": "1h"})
}

/// The limits of the container of pod `ns/name`.
async fn limits(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("its pod");
    pod.spec
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.resources)
        .and_then(|r| r.limits)
        .unwrap_or_default()
}

fn message(i: &GpuInstance) -> String {
    i.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_mig_booking_runs_on_its_profile_and_quota_counts_its_fraction() {
    let client = harness::operator().await;
    let model = "TEST-MIG-A100";
    let nodes = harness::gpu_nodes_with(
        &client,
        &harness::unique("t-mig"),
        model,
        1,
        json!({"nvidia.com/mig.strategy": "mixed"}),
        json!({"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "1"}),
    )
    .await;
    let user = harness::unique("mia");
    let ns = harness::user(&client, &user, json!({"quota": {"maxGpus": 1}})).await;
    harness::book(&client, &ns, "nb", slices(model, "1g.10gb", 3)).await;
    let running = harness::wait_instance(&client, &ns, "nb", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    assert_eq!(
        running.status.as_ref().and_then(|s| s.node_name.clone()),
        Some(nodes[0].clone())
    );
    let limits = limits(&client, &ns, "nb").await;
    assert_eq!(
        limits.get("nvidia.com/mig-1g.10gb").map(|q| q.0.as_str()),
        Some("3")
    );
    assert!(!limits.contains_key("nvidia.com/gpu"), "{limits:?}");

    // 3 x 1g.10gb is 0.43 of a GPU; a 3g.40gb more (0.43) fits the 1-GPU quota, four
    // more 1g.10gb (0.57) would not.
    harness::book(&client, &ns, "big", slices(model, "3g.40gb", 1)).await;
    harness::wait_instance(&client, &ns, "big", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    harness::book(&client, &ns, "more", slices(model, "1g.10gb", 4)).await;
    let waiting = harness::wait_instance(&client, &ns, "more", "waiting for quota", |i| {
        message(i).contains("waiting for quota")
    })
    .await;
    assert!(
        message(&waiting).contains("holds 0.86 of 1 GPUs"),
        "{}",
        message(&waiting)
    );

    // A whole GPU of the model: none (the node is all MIG), so it waits for GPUs.
    let ns2 = harness::user(&client, &harness::unique("max"), json!({})).await;
    harness::book(
        &client,
        &ns2,
        "whole",
        json!({"gpu": {"model": model, "count": 1}, "image": "x", "duration": "1h"}),
    )
    .await;
    let whole = harness::wait_instance(&client, &ns2, "whole", "stalled", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    assert!(message(&whole).contains("no "), "{}", message(&whole));
}

#[tokio::test]
async fn time_sliced_bookings_share_a_gpu_up_to_its_replicas() {
    let client = harness::operator().await;
    let model = "TEST-SHARED-L4";
    harness::gpu_nodes_with(
        &client,
        &harness::unique("t-ts"),
        model,
        1,
        json!({"nvidia.com/gpu.replicas": "4"}),
        json!({"nvidia.com/gpu.shared": "4"}),
    )
    .await;
    let user = harness::unique("tess");
    let ns = harness::user(&client, &user, json!({})).await;
    for i in 0..5 {
        harness::book(&client, &ns, &format!("nb{i}"), slices(model, "shared", 1)).await;
    }
    for i in 0..4 {
        harness::wait_instance(&client, &ns, &format!("nb{i}"), "Running", |i| {
            phase(i) == Some(Phase::Running)
        })
        .await;
    }
    let fifth = harness::wait_instance(&client, &ns, "nb4", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    assert!(
        message(&fifth).contains(&format!("waiting for 1 x {model} shared: none free")),
        "{}",
        message(&fifth)
    );
    assert_eq!(
        limits(&client, &ns, "nb0")
            .await
            .get("nvidia.com/gpu.shared")
            .map(|q| q.0.as_str()),
        Some("1")
    );
    // One ends: the fifth takes its share.
    Api::<GpuInstance>::namespaced(client.clone(), &ns)
        .delete("nb0", &Default::default())
        .await
        .expect("delete nb0");
    harness::wait_instance(&client, &ns, "nb4", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
}

/// The shared controller runs with `--slice-fraction 2g.20gb=0.5`
/// ([`harness::OVERRIDDEN_SLICE_FRACTION`]): a 1-GPU quota takes two `2g.20gb`, not the
/// three the default table's 2/7 would allow; an agent given the same table counts the
/// GPU-seconds of one at half a GPU.
#[tokio::test]
async fn a_cluster_may_set_what_a_slice_counts_for() {
    let client = harness::operator().await;
    let model = "TEST-MIG-OVERRIDE";
    let nodes = harness::gpu_nodes_with(
        &client,
        &harness::unique("t-migo"),
        model,
        1,
        json!({"nvidia.com/mig.strategy": "mixed"}),
        json!({"nvidia.com/gpu": "0", "nvidia.com/mig-2g.20gb": "3"}),
    )
    .await;
    assert_eq!(gpu_cloud_api::default_slice_milli("2g.20gb"), 286);
    let ns = harness::user(
        &client,
        &harness::unique("ovid"),
        json!({"quota": {"maxGpus": 1}}),
    )
    .await;
    for name in ["a", "b", "c"] {
        harness::book(&client, &ns, name, slices(model, "2g.20gb", 1)).await;
    }
    for name in ["a", "b"] {
        harness::wait_instance(&client, &ns, name, "Running", |i| {
            phase(i) == Some(Phase::Running)
        })
        .await;
    }
    let third = harness::wait_instance(&client, &ns, "c", "waiting for quota", |i| {
        message(i).contains("waiting for quota")
    })
    .await;
    assert!(
        message(&third).contains("holds 1 of 1 GPUs"),
        "{}",
        message(&third)
    );

    let _agent = harness::simulated_agent_with(
        &harness::control_plane().kubeconfig,
        &nodes[0],
        harness::free_port(),
        &["--slice-fraction", harness::OVERRIDDEN_SLICE_FRACTION],
    );
    harness::wait_gpu_seconds_rate(&client, &ns, "a", 0.5, 0.05).await;
}
