//! Book, view and delete instances: placement on the right nodes, the queue with its
//! positions and reasons, expiry, quota, bad input. Each test books a GPU model of its own
//! on fake nodes of its own, so tests never compete for GPUs.

use std::time::{Duration, Instant};

use gpu_cloud_api::v1::{GpuInstance, GpuUser, Phase};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::harness::{self, eventually, phase};

fn spec(model: &str, count: u32, duration: &str) -> serde_json::Value {
    json!({"gpu": {"model": model, "count": count}, "image": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
           "command": ["sleep"], "args": ["infinity"], "env": [{"name": "MODE", "value": "test"}],
           "resources": {"cpu": "2", "memory": "4Gi"}, "duration": duration})
}

fn condition(inst: &GpuInstance, type_: &str) -> Option<(String, String)> {
    let s = inst.status.as_ref()?;
    let c = s.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn book_view_delete_and_queue() {
    let client = harness::operator().await;
    let model = "TEST-QUEUE-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-queue"), model, 1, 2).await;
    let name = harness::unique("dave");
    let ns = harness::user(
        &client,
        &name,
        json!({"subjects": [{"kind": "User", "name": name}]}),
    )
    .await;

    let started = Instant::now();
    let created = harness::book(&client, &ns, "a", spec(model, 2, "1h")).await;
    // The MutatingAdmissionPolicy put the finalizer on at creation: no write of ours needed.
    assert_eq!(
        created.finalizers(),
        [gpu_cloud_controller::instance::FINALIZER.to_owned()]
    );
    let a = harness::wait_instance(&client, &ns, "a", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    println!("apply-to-Running for one instance: {:?}", started.elapsed());
    let status = a.status.clone().unwrap();
    assert_eq!(status.node_name.as_deref(), Some(nodes[0].as_str()));
    assert_eq!(status.user.as_deref(), Some(name.as_str()));
    assert_eq!(
        condition(&a, "Ready"),
        Some(("True".into(), "Running".into()))
    );
    assert_eq!(
        a.status.as_ref().unwrap().observed_generation,
        a.meta().generation
    );
    let (started_at, expires) = (status.started_at.unwrap(), status.expires_at.unwrap());
    assert_eq!(expires.duration_since(started_at).as_secs(), 3600);

    // The pod: owned by the instance, on the chosen node, with the spec's container.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = pods.get("a").await.expect("instance pod");
    let owner = &pod.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.clone()),
        ("GpuInstance", a.uid().unwrap())
    );
    let ps = pod.spec.as_ref().unwrap();
    assert_eq!(ps.node_name.as_deref(), Some(nodes[0].as_str()));
    let c = &ps.containers[0];
    assert_eq!(c.args.as_deref(), Some(&["infinity".to_string()][..]));
    let limits = c.resources.as_ref().and_then(|r| r.limits.clone()).unwrap();
    assert_eq!(
        limits.get("nvidia.com/gpu").map(|q| q.0.as_str()),
        Some("2")
    );
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("4Gi"));

    // The node is full: the next two queue, in order, with reasons.
    harness::book(&client, &ns, "b", spec(model, 1, "1h")).await;
    harness::book(&client, &ns, "c", spec(model, 2, "1h")).await;
    let b = harness::wait_instance(&client, &ns, "b", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    let c = harness::wait_instance(&client, &ns, "c", "Queued at 2", |i| {
        i.status.as_ref().and_then(|s| s.queue_position) == Some(2)
    })
    .await;
    let bs = b.status.clone().unwrap();
    assert_eq!(bs.queue_position, Some(1));
    assert_eq!(
        bs.message.as_deref(),
        Some(format!("waiting for 1 x {model}: none free, 0 ahead").as_str())
    );
    assert_eq!(
        condition(&b, "Reconciling"),
        Some(("True".into(), "WaitingForGpus".into()))
    );
    assert_eq!(
        c.status.unwrap().message.as_deref(),
        Some(format!("waiting for 2 x {model}: none free, 1 ahead").as_str())
    );

    // View: through the API, and as a person sees it with kubectl.
    let all = Api::<GpuInstance>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
    let table = harness::kubectl_out(&["get", "gi", "-n", &ns, "-o", "wide"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "USER",
            "MODEL",
            "COUNT",
            "NODES",
            "SLICE",
            "PHASE",
            "NODE",
            "EXPIRES",
            "GPU",
            "UTIL",
            "BORROWED",
            "PREEMPTIBLE",
            "AGE",
            "WAITING"
        ],
        "{table}"
    );
    let row_a = table
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_default();
    for field in [name.as_str(), model, "2", "Running", nodes[0].as_str()] {
        assert!(
            row_a.split_whitespace().any(|w| w == field),
            "{field} missing in {row_a:?}"
        );
    }
    assert!(
        table.contains("waiting for 1 x TEST-QUEUE-GPU: none free, 0 ahead"),
        "{table}"
    );
    let both = harness::kubectl_out(&["get", "gpu", "-A"]);
    assert!(
        both.contains("gpuinstance.gpu-cloud.io/b")
            && both.contains(&format!("gpuuser.gpu-cloud.io/{name}")),
        "{both}"
    );
    harness::kubectl_out(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=10s",
        "-n",
        &ns,
        "gi/a",
    ]);

    // Delete frees the GPUs for the queue at once.
    Api::<GpuInstance>::namespaced(client.clone(), &ns)
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    harness::wait_instance(&client, &ns, "b", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    let c = harness::wait_instance(&client, &ns, "c", "still Queued", |i| {
        i.status.as_ref().and_then(|s| s.queue_position) == Some(1)
    })
    .await;
    assert_eq!(
        c.status.unwrap().message.as_deref(),
        Some(format!("waiting for 2 x {model}: at most 1 free on one node, 0 ahead").as_str())
    );
    eventually(Duration::from_secs(30), "pod of a gone", || async {
        pods.get_opt("a").await.unwrap().is_none()
    })
    .await;
    eventually(Duration::from_secs(30), "instance a gone", || async {
        Api::<GpuInstance>::namespaced(client.clone(), &ns)
            .get_opt("a")
            .await
            .unwrap()
            .is_none()
    })
    .await;
}

#[tokio::test]
async fn a_booking_expires_and_frees_its_gpus() {
    let client = harness::operator().await;
    let model = "TEST-EXPIRY-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-expiry"), model, 1, 1).await;
    let name = harness::unique("erin");
    let ns = harness::user(&client, &name, json!({})).await;
    harness::book(&client, &ns, "short", spec(model, 1, "10s")).await;
    harness::wait_instance(&client, &ns, "short", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    harness::book(&client, &ns, "next", spec(model, 1, "1h")).await;
    harness::wait_instance(&client, &ns, "next", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;

    let short = harness::wait_instance(&client, &ns, "short", "Expired", |i| {
        phase(i) == Some(Phase::Expired)
    })
    .await;
    let s = short.status.unwrap();
    assert!(s.finished_at.unwrap() >= s.expires_at.unwrap());
    harness::wait_instance(&client, &ns, "next", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "expired pod gone", || async {
        pods.get_opt("short").await.unwrap().is_none()
    })
    .await;
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<_> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    for r in ["Running", "Expired", "WaitingForGpus"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn quota_is_checked_before_placement() {
    let client = harness::operator().await;
    let model = "TEST-QUOTA-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-quota"), model, 1, 8).await;
    let name = harness::unique("frank");
    let ns = harness::user(
        &client,
        &name,
        json!({"quota": {"maxGpus": 2, "maxInstances": 5}}),
    )
    .await;
    harness::book(&client, &ns, "a", spec(model, 2, "1h")).await;
    harness::wait_instance(&client, &ns, "a", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    harness::book(&client, &ns, "b", spec(model, 1, "1h")).await;
    harness::book(&client, &ns, "huge", spec(model, 3, "1h")).await;
    let b = harness::wait_instance(&client, &ns, "b", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    assert_eq!(
        condition(&b, "Reconciling"),
        Some(("True".into(), "WaitingForQuota".into()))
    );
    assert_eq!(
        b.status.unwrap().message.unwrap(),
        format!("waiting for quota: user {name} holds 2 of 2 GPUs, 1 x {model} would exceed it")
    );
    let huge = harness::wait_instance(&client, &ns, "huge", "Stalled", |i| {
        condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        condition(&huge, "Stalled"),
        Some(("True".into(), "QuotaExceeded".into()))
    );

    // Raising the quota lets the waiting one in.
    let users = Api::<GpuUser>::all(client.clone());
    users
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {"maxGpus": 3}}})),
        )
        .await
        .unwrap();
    harness::wait_instance(&client, &ns, "b", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    // Suspending the user stops new placements, not running ones.
    users
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspended": true, "quota": {"maxGpus": 8}}})),
        )
        .await
        .unwrap();
    let huge = harness::wait_instance(&client, &ns, "huge", "UserSuspended", |i| {
        condition(i, "Reconciling").is_some_and(|c| c.1 == "UserSuspended")
    })
    .await;
    assert_eq!(phase(&huge), Some(Phase::Queued));
    let a = harness::wait_instance(&client, &ns, "a", "Running", |i| phase(i).is_some()).await;
    assert_eq!(phase(&a), Some(Phase::Running));
}

#[tokio::test]
async fn bad_input_is_refused_or_reported_without_a_hot_loop() {
    let client = harness::operator().await;
    let name = harness::unique("grace");
    let ns = harness::user(&client, &name, json!({})).await;
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);

    // Refused by the apiserver, saying which field and why.
    let bad: GpuInstance = serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": {"name": "bad"},
        "spec": {"gpu": {"model": "NVIDIA-L4", "count": 0}, "image": "x", "duration": "2d"}
    }))
    .unwrap();
    let err = api
        .create(&Default::default(), &bad)
        .await
        .expect_err("invalid spec refused");
    let msg = err.to_string();
    assert!(
        msg.contains("spec.gpu.count") && msg.contains("greater than or equal to 1"),
        "{msg}"
    );
    assert!(
        msg.contains("spec.duration must look like 30m, 8h or 1h30m"),
        "{msg}"
    );
    // An image that is no image reference (kwok would report it Running).
    for image in ["::bad::", "Upper/Case:1", "a//b", "x:"] {
        let bad: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": {"name": "bad-image"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": image, "duration": "1h"}
        }))
        .unwrap();
        let msg = api
            .create(&Default::default(), &bad)
            .await
            .expect_err("a bad image reference is refused")
            .to_string();
        assert!(
            msg.contains("spec.image must be an image reference"),
            "{image}: {msg}"
        );
    }
    for image in [
        "pytorch/pytorch:2.5.1",
        "registry.example.com:5000/team/trainer:v3",
        &format!("nvcr.io/nvidia/pytorch@sha256:{}", "a".repeat(64)),
    ] {
        let ok: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": {"name": "good-image"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": image, "duration": "1h"}
        }))
        .unwrap();
        let dry = kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry, &ok)
            .await
            .unwrap_or_else(|e| panic!("{image} is an image reference: {e}"));
    }

    // A model no node has: queued with the reason, stalled, and left alone.
    harness::book(&client, &ns, "b200", spec("NVIDIA-B200-NOWHERE", 1, "1h")).await;
    let i = harness::wait_instance(&client, &ns, "b200", "Stalled", |i| {
        condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(phase(&i), Some(Phase::Queued));
    assert_eq!(
        i.status.as_ref().unwrap().message.as_deref(),
        Some("no node has NVIDIA-B200-NOWHERE GPUs")
    );
    let rv = i.resource_version();
    tokio::time::sleep(Duration::from_secs(5)).await; // several placement passes
    assert_eq!(
        api.get("b200").await.unwrap().resource_version(),
        rv,
        "status rewritten while nothing changed"
    );

    // Placed instances cannot change what they run on.
    let model = "TEST-IMMUTABLE-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-immutable"), model, 1, 2).await;
    harness::book(&client, &ns, "placed", spec(model, 1, "1h")).await;
    harness::wait_instance(&client, &ns, "placed", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    let err = api
        .patch(
            "placed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gpu": {"count": 2}}})),
        )
        .await
        .expect_err("spec.gpu is immutable once placed");
    assert!(
        err.to_string()
            .contains("cannot change once the instance is placed"),
        "{err}"
    );

    // An instance in a namespace of no GpuUser.
    let plain = harness::namespace(&client, "nouser").await;
    harness::book(&client, &plain, "orphan", spec("NVIDIA-L4", 1, "1h")).await;
    let o = harness::wait_instance(&client, &plain, "orphan", "Stalled", |i| {
        condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(condition(&o, "Stalled").unwrap().1, "NoGpuUser");
}
