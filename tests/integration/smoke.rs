//! The control plane itself works: kube-scheduler places a GPU pod on a kwok node, kwok
//! runs it and deletes it, and the fake nodes advertise GPUs the way real ones do.

use std::time::Duration;

use gpu_cloud_api::{GPU_PRODUCT_LABEL, GPU_RESOURCE};
use gpu_cloud_core::scheduler::NodeGpus;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{Condition, await_condition, conditions};

use crate::harness;

const MODELS: [&str; 3] = [
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-L4",
];

#[tokio::test]
async fn a_gpu_pod_runs_on_a_fake_gpu_node_and_goes_away_when_deleted() {
    let client = harness::client().await;
    let ns = harness::namespace(&client, "smoke").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cuda"},
        "spec": {
            "nodeSelector": {GPU_PRODUCT_LABEL: "NVIDIA-L4"},
            "containers": [{
                "name": "cuda",
                "image": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
                "resources": {"limits": {GPU_RESOURCE: "1"}}
            }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");

    let ready = await_condition(
        pods.clone(),
        "cuda",
        conditions::is_pod_running().and(is_ready()),
    );
    let pod = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("pod Running and Ready within 60 s")
        .expect("watching the pod")
        .expect("pod exists");
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("pod bound");
    assert!(
        node_name.starts_with("gpu-l4-"),
        "placed on {node_name}, wanted an L4 node"
    );

    let node = Api::<Node>::all(client.clone())
        .get(&node_name)
        .await
        .expect("get node");
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(GPU_PRODUCT_LABEL).map(String::as_str),
        Some("NVIDIA-L4")
    );

    pods.delete("cuda", &DeleteParams::default())
        .await
        .expect("delete pod");
    let uid = pod_uid(&pod);
    let gone = await_condition(pods, "cuda", conditions::is_deleted(&uid));
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("pod gone within 60 s of its deletion")
        .expect("watching the pod");
}

#[tokio::test]
async fn fake_nodes_advertise_gpus_with_product_labels() {
    let client = harness::client().await;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    // The cluster's own nodes (other tests add nodes of test-only models).
    let own: Vec<&Node> = nodes
        .items
        .iter()
        .filter(|n| n.name_any().starts_with("gpu-"))
        .collect();
    assert!(
        own.len() >= 3,
        "expected at least 3 GPU nodes, got {}",
        own.len()
    );
    for node in own {
        let gpus = NodeGpus::from_node(node);
        let model = gpus.model.clone().unwrap_or_default();
        assert!(
            MODELS.contains(&model.as_str()),
            "{}: unexpected model {model:?}",
            gpus.name
        );
        let expected = if model == "NVIDIA-L4" { 1 } else { 8 };
        assert_eq!(
            gpus.allocatable, expected,
            "{}: allocatable GPUs",
            gpus.name
        );
        let capacity = node.status.as_ref().and_then(|s| s.capacity.as_ref());
        let cap = capacity
            .and_then(|c| c.get(GPU_RESOURCE))
            .map(|q| q.0.clone());
        assert_eq!(cap, Some(expected.to_string()), "{}: capacity", gpus.name);
        assert!(
            gpus.ready && gpus.schedulable,
            "{} should be Ready and schedulable",
            gpus.name
        );
    }
}

#[tokio::test]
async fn gpu_cloud_nodes_prints_the_inventory() {
    let cp = harness::control_plane();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gpu-cloud"))
        .arg("nodes")
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .await
        .expect("run gpu-cloud nodes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gpu-cloud nodes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("NODE"), "{stdout}");
    for model in MODELS {
        assert!(stdout.contains(model), "{model} missing from:\n{stdout}");
    }
}

fn is_ready() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

fn pod_uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}
