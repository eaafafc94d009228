//! Node loss on the real control plane: a deleted node's instance goes back to the queue
//! and runs again elsewhere, one on a node that stays not Ready fails when it asks to; in
//! both the loss is named (never "its program failed"), the pod is removed at once and
//! billing stops at the loss. The shared controller runs with `--node-lost-after 5s`.

use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, NodeLossReason, Phase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::{self, eventually, phase};

fn spec(model: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"gpu": {"model": model, "count": 1}, "image": "busybox",
                       "duration": "1h"});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    s
}

fn on_node(inst: &GpuInstance) -> Option<String> {
    let s = inst.status.as_ref()?;
    (s.phase == Some(Phase::Running))
        .then(|| s.node_name.clone())
        .flatten()
}

/// The reasons of the Events on `name` in `ns`.
async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    harness::events_of(client, ns, name)
        .await
        .into_iter()
        .map(|(_, reason, _)| reason)
        .collect()
}

#[tokio::test]
async fn a_deleted_nodes_instance_goes_back_to_the_queue_and_runs_elsewhere() {
    let client = harness::operator().await;
    let model = "TEST-NODELOSS-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-lost"), model, 2, 1).await;
    let user = harness::unique("nl");
    let ns = harness::user(&client, &user, json!({"quota": {"maxGpus": 2}})).await;
    harness::book(&client, &ns, "job", spec(model, json!({}))).await;
    let first =
        harness::wait_instance(&client, &ns, "job", "Running", |i| on_node(i).is_some()).await;
    let lost = on_node(&first).expect("placed");
    let other = nodes.iter().find(|n| **n != lost).expect("a second node");

    let deleted_at = Timestamp::now();
    Api::<Node>::all(client.clone())
        .delete(&lost, &DeleteParams::default())
        .await
        .expect("delete the node");
    let again = harness::wait_instance(&client, &ns, "job", "Running on the other node", |i| {
        on_node(i).as_deref() == Some(other.as_str())
    })
    .await;
    let s = again.status.as_ref().expect("status");
    assert_eq!(s.previous_runs.len(), 1, "{s:?}");
    let run = &s.previous_runs[0];
    let loss = run
        .node_lost
        .as_ref()
        .expect("the run ended by its node's loss");
    assert_eq!(
        (loss.node.as_str(), loss.reason),
        (lost.as_str(), NodeLossReason::NodeDeleted)
    );
    // Billing stopped at the loss, seen within moments of the deletion.
    let after = run
        .figures
        .ended_at
        .duration_since(deleted_at)
        .as_secs_f64();
    assert!(
        (-1.0..10.0).contains(&after),
        "run ended {after} s after the deletion"
    );
    assert!(run.figures.ended_at >= run.figures.started_at);
    let reasons = event_reasons(&client, &ns, "job").await;
    assert!(reasons.iter().any(|r| r == "NodeLost"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Requeued"), "{reasons:?}");
    assert!(
        !reasons.iter().any(|r| r == "Failed" || r == "PodLost"),
        "{reasons:?}"
    );
    // One pod, on the node that is there.
    let pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("job")
        .await
        .expect("its pod");
    assert_eq!(
        pod.spec.and_then(|s| s.node_name).as_deref(),
        Some(other.as_str())
    );
}

#[tokio::test]
async fn a_node_not_ready_too_long_fails_the_instance_that_asks_to() {
    let client = harness::operator().await;
    let model = "TEST-NOTREADY-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-notready"), model, 1, 2).await;
    let user = harness::unique("nr");
    let ns = harness::user(&client, &user, json!({"quota": {"maxGpus": 2}})).await;
    harness::book(
        &client,
        &ns,
        "fails",
        spec(model, json!({"onNodeLost": "Fail"})),
    )
    .await;
    harness::book(&client, &ns, "stays", spec(model, json!({}))).await;
    for name in ["fails", "stays"] {
        harness::wait_instance(&client, &ns, name, "Running", |i| on_node(i).is_some()).await;
    }

    // kwok lets the node go (it stops heartbeating) and it reports not Ready, as a node
    // whose kubelet died does.
    let node_api = Api::<Node>::all(client.clone());
    let node = &nodes[0];
    node_api
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": null}}})),
        )
        .await
        .expect("release the node from kwok");
    let since = Timestamp::now();
    let since_k8s = since.round(jiff::Unit::Second).expect("whole seconds");
    node_api
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [{
                "type": "Ready", "status": "False", "reason": "KubeletDown",
                "message": "the test stopped its kubelet",
                "lastTransitionTime": since_k8s.to_string(),
                "lastHeartbeatTime": since_k8s.to_string()}]}})),
        )
        .await
        .expect("mark the node not Ready");

    let failed = harness::wait_instance(&client, &ns, "fails", "Failed", |i| {
        phase(i) == Some(Phase::Failed)
    })
    .await;
    let s = failed.status.as_ref().expect("status");
    let loss = s.node_lost.as_ref().expect("the loss recorded");
    assert_eq!(loss.reason, NodeLossReason::NodeNotReady);
    // Dated at the transition, so the GPUs are billed until then and no longer.
    assert_eq!(loss.at, since_k8s, "{loss:?}");
    assert_eq!(
        s.finished_at,
        Some(since_k8s.max(s.started_at.expect("started")))
    );
    let msg = s.message.clone().unwrap_or_default();
    assert!(msg.contains("lost") && !msg.contains("program"), "{msg}");
    let stalled = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .map(|c| (c.status.clone(), c.reason.clone()));
    assert_eq!(stalled, Some(("True".into(), "NodeLost".into())));
    // The other instance requeues; no Ready node of the model is left, so it waits.
    harness::wait_instance(&client, &ns, "stays", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    // Both pods removed, though no kubelet confirmed their end.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(20),
        "the lost node's pods removed",
        || async {
            pods.list(&ListParams::default())
                .await
                .expect("list pods")
                .items
                .is_empty()
        },
    )
    .await;
    node_api
        .delete(node, &DeleteParams::default())
        .await
        .expect("delete the node");
}
