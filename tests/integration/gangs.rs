//! Multi-node gangs on the real control plane: a 2 x 8 gang runs whole with its launcher
//! environment and headless Service, one pod killed ends the gang and frees every GPU; a
//! gang that requires one zone stays in it; a gang booked ahead opens on all its nodes.
//! Each test has fake nodes of a GPU model of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, Phase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use crate::harness::{self, phase, poll};

fn gang(model: &str, nodes: u32, count: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"gpu": {"model": model, "count": count, "nodes": nodes},
                       "image": "pytorch/pytorch:2.5.1", "duration": "1h"});
    if let (Some(gpu), Some(extra)) = (s["gpu"].as_object_mut(), extra.as_object()) {
        gpu.extend(extra.clone());
    }
    s
}

fn status(inst: &GpuInstance) -> gpu_cloud_api::v1::GpuInstanceStatus {
    inst.status.clone().unwrap_or_default()
}

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

/// GPUs held per node by the pods of `ns`.
async fn held(client: &kube::Client, ns: &str) -> BTreeMap<String, u32> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items;
    harness::gpus_held_per_node(&pods)
}

#[tokio::test]
async fn a_gang_runs_whole_with_its_env_and_service_and_one_lost_pod_ends_it_all() {
    let client = harness::operator().await;
    let model = "TEST-GANG-H100";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-gang"), model, 3, 8).await;
    let user = harness::unique("gina");
    let ns = harness::user(&client, &user, json!({"quota": {"maxGpus": 24}})).await;
    harness::book(&client, &ns, "train", gang(model, 2, 8, json!({}))).await;
    let running = harness::wait_instance(&client, &ns, "train", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    let s = status(&running);
    let on: BTreeSet<&String> = s.node_names.iter().collect();
    assert_eq!((s.node_names.len(), on.len()), (2, 2), "{s:?}");
    assert_eq!(s.node_name.as_ref(), s.node_names.first());
    assert!(on.iter().all(|n| nodes.contains(n)), "{s:?}");

    // Its pods: one per node, rank by rank, with what torchrun and friends read.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for (rank, node) in s.node_names.iter().enumerate() {
        let pod = pods
            .get(&format!("train-{rank}"))
            .await
            .expect("member pod");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_ref(), Some(node));
        assert_eq!(
            (spec.hostname.clone(), spec.subdomain.as_deref()),
            (Some(format!("train-{rank}")), Some("train"))
        );
        let env = env_of(&pod);
        let rank = rank.to_string();
        for (k, v) in [
            ("MASTER_ADDR", "train-0.train"),
            ("MASTER_PORT", "29500"),
            ("WORLD_SIZE", "2"),
            ("NODE_RANK", rank.as_str()),
            ("PET_NNODES", "2"),
            ("PET_NPROC_PER_NODE", "8"),
        ] {
            assert_eq!(
                env.get(k).map(String::as_str),
                Some(v),
                "{k} of rank {rank}"
            );
        }
    }
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .get("train")
        .await
        .expect("the gang's headless service");
    let svc = svc.spec.expect("service spec");
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
    assert_eq!(held(&client, &ns).await.values().sum::<u32>(), 16);

    // Usage and cost count the whole gang: GPU-seconds held grow at 16 a second. Each
    // node's agent writes its member's figures; rank 0's sums them.
    let _agents: Vec<_> = nodes
        .iter()
        .map(|n| {
            harness::simulated_agent(
                &harness::control_plane().kubeconfig,
                n,
                harness::free_port(),
            )
        })
        .collect();
    harness::wait_gpu_seconds_rate(&client, &ns, "train", 16.0, 1.0).await;

    let i = Api::<GpuInstance>::namespaced(client.clone(), &ns)
        .get("train")
        .await
        .expect("the gang");
    let s = status(&i);
    // In the order the agents first wrote them.
    let mut members: Vec<(u32, &str)> = s
        .member_usage
        .iter()
        .map(|m| (m.rank, m.node_name.as_str()))
        .collect();
    members.sort();
    assert_eq!(
        members,
        [(0, nodes[0].as_str()), (1, nodes[1].as_str())],
        "{s:?}"
    );
    let rank0 = s.current_member_usage(0).expect("rank 0's figures");
    let total = s.usage.as_ref().expect("the gang's usage");
    // Both members run alike: the total is about twice rank 0's (rank 1's figures may be
    // a write older or newer than rank 0's).
    for (what, sum, one) in [
        ("energy", total.energy_joules, rank0.energy_joules),
        ("power", total.power_watts, rank0.power_watts),
        ("GPU-seconds", total.gpu_seconds, rank0.gpu_seconds),
    ] {
        assert!(
            sum > 1.5 * one && sum < 2.5 * one,
            "{what}: gang {sum}, rank 0 {one}"
        );
    }

    // One member killed: the whole gang ends, every GPU is freed.
    pods.delete(
        "train-1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("kill rank 1");
    let failed = harness::wait_instance(&client, &ns, "train", "Failed", |i| {
        phase(i) == Some(Phase::Failed)
    })
    .await;
    let s = status(&failed);
    let stalled = s.conditions.iter().find(|c| c.type_ == "Stalled");
    assert_eq!(
        stalled.map(|c| c.reason.as_str()),
        Some("GangMemberLost"),
        "{s:?}"
    );
    poll(
        Duration::from_secs(30),
        "every GPU of the gang freed",
        || async {
            let h = held(&client, &ns).await;
            if h.values().sum::<u32>() == 0 {
                Ok(())
            } else {
                Err(format!("still held: {h:?}"))
            }
        },
    )
    .await;
    let reasons: Vec<String> = harness::events_of(&client, &ns, "train")
        .await
        .into_iter()
        .map(|(_, reason, _)| reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "GangMemberLost"), "{reasons:?}");
    // Each member's last figures are written, then the gang's: final, their sum.
    poll(
        Duration::from_secs(60),
        "the gang's final usage",
        || async {
            let i = Api::<GpuInstance>::namespaced(client.clone(), &ns)
                .get("train")
                .await
                .map_err(|e| e.to_string())?;
            let s = status(&i);
            let total = s.usage.as_ref().ok_or("no usage")?;
            let finals: Vec<bool> = s.member_usage.iter().map(|m| m.usage.final_).collect();
            let sum: f64 = s.member_usage.iter().map(|m| m.usage.gpu_seconds).sum();
            if total.final_ && finals == [true, true] && (total.gpu_seconds - sum).abs() < 1e-6 {
                Ok(())
            } else {
                Err(format!(
                    "gang {total:?}, members final {finals:?}, sum {sum}"
                ))
            }
        },
    )
    .await;

    // All three nodes are free again: a gang of three fits.
    harness::book(&client, &ns, "wide", gang(model, 3, 8, json!({}))).await;
    harness::wait_instance(&client, &ns, "wide", "Running on 3 nodes", |i| {
        phase(i) == Some(Phase::Running) && status(i).node_names.len() == 3
    })
    .await;
}

#[tokio::test]
async fn a_gang_requiring_one_zone_stays_in_it_and_one_too_large_is_stalled() {
    let client = harness::operator().await;
    let model = "TEST-GANG-ZONES";
    let zone = |z: &str| json!({"topology.kubernetes.io/zone": z});
    let prefix = harness::unique("t-zone");
    let a =
        harness::gpu_nodes_labelled(&client, &format!("{prefix}-a"), model, 2, 4, zone("a")).await;
    let b =
        harness::gpu_nodes_labelled(&client, &format!("{prefix}-b"), model, 1, 4, zone("b")).await;
    let user = harness::unique("zed");
    let ns = harness::user(&client, &user, json!({})).await;

    // Three nodes in no one zone: refused for good, with what there is.
    harness::book(
        &client,
        &ns,
        "three",
        gang(model, 3, 4, json!({"topology": "Required"})),
    )
    .await;
    let stalled = harness::wait_instance(&client, &ns, "three", "stalled", |i| {
        status(i)
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == "TooFewNodes")
    })
    .await;
    let msg = status(&stalled).message.unwrap_or_default();
    assert!(
        msg.contains("only 2") && msg.contains("in one domain"),
        "{msg}"
    );

    // Two nodes: zone a, never one of each.
    harness::book(
        &client,
        &ns,
        "two",
        gang(model, 2, 4, json!({"topology": "Required"})),
    )
    .await;
    let running = harness::wait_instance(&client, &ns, "two", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    let on: BTreeSet<String> = status(&running).node_names.into_iter().collect();
    assert_eq!(on, a.iter().cloned().collect(), "zone b is {b:?}");
}

#[tokio::test]
async fn a_gang_booked_ahead_holds_its_nodes_and_starts_on_all_of_them() {
    let client = harness::operator().await;
    let model = "TEST-GANG-AHEAD";
    harness::gpu_nodes(&client, &harness::unique("t-gahead"), model, 3, 2).await;
    let user = harness::unique("gail");
    let ns = harness::user(&client, &user, json!({})).await;
    let start = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(15))
        .unwrap();
    let mut spec = gang(model, 2, 2, json!({}));
    spec["startTime"] = json!(start.to_string());
    spec["duration"] = json!("30s");
    harness::book(&client, &ns, "ahead", spec).await;
    let reserved = harness::wait_instance(&client, &ns, "ahead", "Reserved", |i| {
        phase(i) == Some(Phase::Reserved)
    })
    .await;
    let s = status(&reserved);
    assert_eq!(s.reserved_nodes.len(), 2, "{s:?}");
    assert_eq!(s.reserved_node.as_ref(), s.reserved_nodes.first());
    let window = s.reserved_nodes.clone();

    // Meanwhile a long gang of two may not run into the window: only one node is free
    // of it, so it waits; at the window's start the gang starts on its own nodes.
    let mut long = gang(model, 2, 2, json!({}));
    long["duration"] = json!("1h");
    harness::book(&client, &ns, "long", long).await;
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    let running = poll(Duration::from_secs(60), "the window to open", || async {
        let i = api.get("ahead").await.map_err(|e| e.to_string())?;
        let l = api.get("long").await.map_err(|e| e.to_string())?;
        if phase(&l) == Some(Phase::Running) && phase(&i) != Some(Phase::Running) {
            return Ok(Err(format!("long ran first: {:?}", l.status)));
        }
        if phase(&i) == Some(Phase::Running) {
            Ok(Ok(i))
        } else {
            Err(format!("{:?}", phase(&i)))
        }
    })
    .await
    .expect("the window first");
    let s = status(&running);
    assert_eq!(s.node_names, window);
    let started = s.started_at.expect("started");
    assert!(
        started
            >= start
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap(),
        "started {started} before its window {start}"
    );
}
