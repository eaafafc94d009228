//! 200 bookings applied at once while the controller is SIGKILLed and restarted: no node
//! ever holds more GPUs than it has, no instance gets two pods, and every instance ends up
//! Running or Queued with a reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use gpu_cloud_api::v1::{GpuInstance, Phase};
use gpu_cloud_core::scheduler::pod_gpu_request;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::harness::{self, eventually};

const INSTANCES: usize = 200;
const NODES: usize = 10;
const GPUS_PER_NODE: u32 = 8;

#[tokio::test]
async fn two_hundred_bookings_at_once_survive_a_controller_crash() {
    let client = harness::operator().await;
    let model = "TEST-SCALE-GPU";
    let nodes = harness::gpu_nodes(
        &client,
        &harness::unique("t-scale"),
        model,
        NODES,
        GPUS_PER_NODE,
    )
    .await;
    let name = harness::unique("heidi");
    let ns = harness::user(&client, &name, json!({})).await;

    let started = Instant::now();
    let client2 = client.clone();
    let ns2 = ns.clone();
    let apply = tokio::spawn(async move {
        stream::iter(0..INSTANCES)
            .map(|i| {
                let (client, ns) = (client2.clone(), ns2.clone());
                async move {
                    let count = [1, 2, 1, 4, 1, 8, 2, 1][i % 8];
                    let spec = json!({"gpu": {"model": model, "count": count}, "image": "x", "duration": "1h"});
                    harness::book(&client, &ns, &format!("i{i:03}"), spec).await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    });

    // Throughout the run, every sample of the pods must fit the nodes.
    let watch_client = client.clone();
    let watch_ns = ns.clone();
    let sampler = tokio::spawn(async move {
        let pods = Api::<Pod>::namespaced(watch_client, &watch_ns);
        let mut samples = 0u32;
        loop {
            let list = pods.list(&ListParams::default()).await.expect("list pods");
            let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
            for p in &list.items {
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                *per_node.entry(node).or_default() += pod_gpu_request(p);
            }
            if let Some((node, used)) = per_node.iter().find(|(_, u)| **u > GPUS_PER_NODE) {
                return Err(format!(
                    "sample {samples}: {node} holds {used} GPUs of {GPUS_PER_NODE}"
                ));
            }
            samples += 1;
            if list.items.len() >= 20 && samples > 50 {
                return Ok(samples);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Crash the controller once placements are under way, then let a new one take over.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "first placements", || async {
        pods.list(&ListParams::default())
            .await
            .map(|l| l.items.len() >= 10)
            .unwrap_or(false)
    })
    .await;
    harness::kill_and_restart_controller();
    apply.await.expect("all bookings applied");

    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(120),
        "every instance Running or Queued with a reason",
        || async {
            let list = api
                .list(&ListParams::default())
                .await
                .expect("list instances");
            list.items.len() == INSTANCES
                && list.items.iter().all(|i| {
                    let s = i.status.clone().unwrap_or_default();
                    match s.phase {
                        Some(Phase::Running) => true,
                        Some(Phase::Queued) => s.message.is_some() && s.queue_position.is_some(),
                        _ => false,
                    }
                })
        },
    )
    .await;
    let settled = started.elapsed();
    let samples = sampler
        .await
        .expect("sampler")
        .unwrap_or_else(|e| panic!("over capacity during the run: {e}"));

    let instances = api.list(&ListParams::default()).await.unwrap().items;
    let pods = pods.list(&ListParams::default()).await.unwrap().items;
    // One pod per instance, named after it, on one of the test's nodes.
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for p in &pods {
        *per_instance
            .entry(
                p.labels()
                    .get("gpu-cloud.io/instance")
                    .cloned()
                    .unwrap_or_default(),
            )
            .or_default() += 1;
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(nodes.contains(&node), "pod {} on {node}", p.name_any());
        *per_node.entry(node).or_default() += pod_gpu_request(p);
    }
    assert!(
        per_instance.values().all(|&n| n == 1),
        "duplicate pods: {per_instance:?}"
    );
    for (node, used) in &per_node {
        assert!(
            *used <= GPUS_PER_NODE,
            "{node} holds {used} GPUs of {GPUS_PER_NODE}"
        );
    }
    let running: Vec<_> = instances
        .iter()
        .filter(|i| harness::phase(i) == Some(Phase::Running))
        .collect();
    assert_eq!(running.len(), pods.len(), "a Running instance per pod");
    // Nothing placeable is left waiting: the head of the queue fits on no node.
    let free: Vec<u32> = nodes
        .iter()
        .map(|n| GPUS_PER_NODE - per_node.get(n).copied().unwrap_or(0))
        .collect();
    if let Some(head) = instances
        .iter()
        .find(|i| i.status.as_ref().and_then(|s| s.queue_position) == Some(1))
    {
        assert!(
            free.iter().all(|&f| f < head.spec.gpu.count),
            "head {} fits in {free:?}",
            head.name_any()
        );
    }
    let used: u32 = per_node.values().sum();
    println!(
        "{INSTANCES} instances applied at once with a controller SIGKILL: settled in {settled:?}; \
         {} Running holding {used} of {} GPUs, {} Queued; capacity held in {samples} samples",
        running.len(),
        NODES as u32 * GPUS_PER_NODE,
        INSTANCES - running.len()
    );
}
