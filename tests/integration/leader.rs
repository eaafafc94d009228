//! Two controllers with leader election on a control plane of the test's own: SIGKILL the
//! leader during a burst of bookings; the standby takes over (failover time measured and
//! printed) and no GPU is booked twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use gpu_cloud_api::v1::{GpuInstance, Phase};
use gpu_cloud_core::scheduler::pod_gpu_request;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::harness::{self, Background, PrivateControlPlane, poll};

const INSTANCES: usize = 60;
const GPUS_PER_NODE: u32 = 8;

async fn holder(client: &Client) -> Option<String> {
    harness::lease_holder(client).await
}

fn controller(kubeconfig: &std::path::Path, identity: &str) -> Background {
    harness::leader_replica(kubeconfig, identity, &[])
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_is_killed() {
    let cp = PrivateControlPlane::start("leader");
    let client = cp.client().await;
    harness::install(&cp.kubeconfig).expect("install CRDs");
    let model = "TEST-LEADER-GPU";
    let nodes = harness::gpu_nodes(&client, "t-leader", model, 4, GPUS_PER_NODE).await;
    let mut controllers = BTreeMap::from([
        ("a".to_string(), controller(&cp.kubeconfig, "a")),
        ("b".to_string(), controller(&cp.kubeconfig, "b")),
    ]);
    let first = poll(Duration::from_secs(60), "a leader", || async {
        holder(&client).await.ok_or("no holder".to_string())
    })
    .await;
    let ns = harness::user(&client, "lena", json!({})).await;

    let (c2, ns2) = (client.clone(), ns.clone());
    let burst = tokio::spawn(async move {
        stream::iter(0..INSTANCES)
            .map(|i| {
                let (client, ns) = (c2.clone(), ns2.clone());
                async move {
                    let count = [1, 2, 4, 1, 8][i % 5];
                    let spec = json!({"gpu": {"model": model, "count": count}, "image": "x", "duration": "1h"});
                    harness::book(&client, &ns, &format!("i{i:03}"), spec).await;
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
    });
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    harness::eventually(Duration::from_secs(60), "placements under way", || async {
        pods.list(&ListParams::default())
            .await
            .map(|l| l.items.len() >= 5)
            .unwrap_or(false)
    })
    .await;
    // On a loaded machine a leader can miss a renewal, lose the Lease to the standby and
    // stop, as it must; its Deployment would start it again as the new standby. Do the
    // same, then kill whoever leads now.
    for (id, c) in controllers.iter_mut() {
        if c.exited() {
            *c = controller(&cp.kubeconfig, id);
        }
    }
    let first = holder(&client).await.unwrap_or(first);
    let killed_at = Instant::now();
    drop(controllers.remove(&first)); // SIGKILL
    let second = poll(Duration::from_secs(60), "the standby leading", || async {
        match holder(&client).await {
            Some(h) if h != first => Ok(h),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let failover = killed_at.elapsed();
    burst.await.expect("bookings applied");

    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    harness::eventually(
        Duration::from_secs(120),
        "all Running or Queued with a reason",
        || async {
            let list = api.list(&ListParams::default()).await.expect("list");
            list.items.len() == INSTANCES
                && list.items.iter().all(|i| {
                    let s = i.status.clone().unwrap_or_default();
                    matches!(s.phase, Some(Phase::Running))
                        || (s.phase == Some(Phase::Queued) && s.message.is_some())
                })
        },
    )
    .await;
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    let mut per_instance: BTreeMap<String, u32> = BTreeMap::new();
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        *per_node.entry(node).or_default() += pod_gpu_request(&p);
        *per_instance.entry(p.name_any()).or_default() += 1;
    }
    assert!(
        per_node
            .iter()
            .all(|(n, used)| nodes.contains(n) && *used <= GPUS_PER_NODE),
        "{per_node:?}"
    );
    assert!(per_instance.values().all(|&n| n == 1), "{per_instance:?}");
    println!(
        "leader {first} SIGKILLed during a burst of {INSTANCES} bookings: {second} took over after {failover:?}"
    );

    // A Lease deleted by hand comes back, and someone leads again: two replicas running,
    // none started again (a replica's start creates a missing Lease; the ones running must
    // put it back themselves).
    controllers.insert(first.clone(), controller(&cp.kubeconfig, &first));
    // Let it build its manager (which creates a missing Lease) before the Lease goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    leases
        .delete("gpu-cloud-controller", &Default::default())
        .await
        .expect("delete the Lease");
    let deleted_at = Instant::now();
    let mut again = None;
    while again.is_none() && deleted_at.elapsed() < Duration::from_secs(60) {
        again = holder(&client).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = again.expect("a leader within 60 s of the Lease's deletion");
    println!(
        "the Lease was deleted: {again} leads again after {:?}",
        deleted_at.elapsed()
    );
    assert!(
        failover < Duration::from_secs(30),
        "failover took {failover:?}"
    );
}
