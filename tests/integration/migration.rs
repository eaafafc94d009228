//! The upgrade path on a real apiserver (a control plane of the test's own, since it
//! changes the GpuInstance CRD): v1alpha1-only CRD and objects → v1alpha1 + v1 with the
//! conversion webhook → read as v1 → `gpu-cloud migrate` → storedVersions [v1] → a
//! v1alpha1 client still reads and writes without loss → rollback to v1alpha1 storage.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use gpu_cloud_api::{instance_crd, v1, v1alpha1};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;

use crate::harness::{self, Background, PrivateControlPlane};

const OBJECTS: usize = 1000;
const CRD: &str = "gpuinstances.gpu-cloud.io";

async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    api.patch(CRD, &PatchParams::apply("test").force(), &Patch::Apply(crd))
        .await
        .expect("apply CRD");
    harness::eventually(Duration::from_secs(30), "CRD established", || async {
        let c = api.get(CRD).await.expect("get CRD");
        let est = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        // The apiserver serves exactly the versions we asked for.
        let served: Vec<_> = c
            .spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.storage))
            .collect();
        let want: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.storage))
            .collect();
        est && served == want
    })
    .await;
}

async fn stored_versions(client: &Client) -> Vec<String> {
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(CRD)
        .await
        .expect("get CRD");
    crd.status
        .and_then(|s| s.stored_versions)
        .unwrap_or_default()
}

fn alpha(name: &str, i: usize) -> v1alpha1::GpuInstance {
    serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1alpha1", "kind": "GpuInstance",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"user": format!("user{}", i % 7), "gpuModel": "NVIDIA-L4", "gpuCount": 1 + (i % 4) as u32,
                 "image": "cuda:12", "command": ["python", "run.py"], "hours": 1 + (i % 24) as u32}
    }))
    .expect("v1alpha1 object")
}

#[tokio::test]
async fn upgrade_migrate_downgrade_on_a_real_apiserver() {
    let cp = PrivateControlPlane::start("migration");
    let client = cp.client().await;

    // db init: the first schema, v1alpha1 only, and objects written in it.
    apply_crd(&client, &v1alpha1::GpuInstance::crd()).await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let old_api = Api::<v1alpha1::GpuInstance>::namespaced(client.clone(), "team");
    stream::iter(0..OBJECTS)
        .map(|i| {
            let api = old_api.clone();
            async move {
                api.create(&PostParams::default(), &alpha(&format!("old-{i:04}"), i))
                    .await
                    .expect("create v1alpha1")
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(stored_versions(&client).await, ["v1alpha1"]);

    // db upgrade: both versions served, v1 stored, the webhook converting.
    apply_crd(&client, &instance_crd()).await;
    let port = harness::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _webhook = Background::start(
        &cp.kubeconfig,
        &[
            "webhook",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--url",
            &url,
        ],
    );
    let new_api = Api::<v1::GpuInstance>::namespaced(client.clone(), "team");
    harness::eventually(
        Duration::from_secs(30),
        "objects readable as v1 through the webhook",
        || async { new_api.list(&ListParams::default().limit(1)).await.is_ok() },
    )
    .await;
    let converted = new_api
        .get("old-0005")
        .await
        .expect("read v1alpha1 object as v1");
    assert_eq!(converted.spec.gpu.model, "NVIDIA-L4");
    assert_eq!(converted.spec.gpu.count, 2);
    assert_eq!(converted.spec.duration, "6h");
    assert_eq!(converted.spec.command, ["python", "run.py"]);
    assert_eq!(stored_versions(&client).await, ["v1alpha1", "v1"]);

    // A v1 object with fields v1alpha1 has no place for.
    let rich: v1::GpuInstance = serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": {"name": "rich", "namespace": "team"},
        "spec": {"gpu": {"model": "NVIDIA-H100-80GB-HBM3", "count": 8}, "image": "pytorch", "args": ["--epochs", "3"],
                 "env": [{"name": "A", "value": "1"}], "resources": {"cpu": "16"}, "duration": "90m", "priority": 7}
    }))
    .unwrap();
    new_api
        .create(&PostParams::default(), &rich)
        .await
        .expect("create v1");

    // A policy that refuses updates to one object: migrate must fail, name it, not trim.
    freeze(&client, "old-0007").await;
    let (ok, _, err) = harness::gpu_cloud(&cp.kubeconfig, &["migrate"]);
    assert!(
        !ok,
        "migrate succeeded although an object could not be rewritten"
    );
    assert!(
        err.contains("team/old-0007") && err.contains("storedVersions was not trimmed"),
        "{err}"
    );
    assert_eq!(stored_versions(&client).await, ["v1alpha1", "v1"]);
    unfreeze(&client).await;

    // gpu-cloud migrate: every object rewritten as v1, storedVersions trimmed.
    let started = Instant::now();
    let (ok, _, err) = harness::gpu_cloud(&cp.kubeconfig, &["migrate"]);
    let took = started.elapsed();
    assert!(ok, "migrate failed: {err}");
    println!("gpu-cloud migrate: {} objects in {took:?}", OBJECTS + 1);
    assert_eq!(stored_versions(&client).await, ["v1"]);
    let (ok, status, _) = harness::gpu_cloud(&cp.kubeconfig, &["migrate", "status"]);
    assert!(ok);
    let row = status
        .lines()
        .find(|l| l.starts_with(CRD))
        .unwrap_or_default();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        [CRD, "v1,v1alpha1", "v1", "v1", &(OBJECTS + 1).to_string()],
        "{status}"
    );
    assert!(row.ends_with("migrated"), "{status}");

    // Re-running is a no-op: nothing is written again.
    let before: Vec<String> = new_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.resource_version().unwrap_or_default())
        .collect();
    let (ok, _, err) = harness::gpu_cloud(&cp.kubeconfig, &["migrate"]);
    assert!(ok, "second migrate failed: {err}");
    let after: Vec<String> = new_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.resource_version().unwrap_or_default())
        .collect();
    assert_eq!(before, after, "a second migrate rewrote objects");

    // A v1alpha1 client reads and writes without loss.
    let old = old_api.get("old-0005").await.expect("read as v1alpha1");
    assert_eq!(
        old.spec,
        alpha("old-0005", 5).spec,
        "v1alpha1 view changed by the round trip"
    );
    let mut rich_old = old_api
        .get("rich")
        .await
        .expect("read v1 object as v1alpha1");
    assert_eq!((rich_old.spec.hours, rich_old.spec.gpu_count), (2, 8));
    rich_old.spec.image = "pytorch:2".into();
    old_api
        .replace("rich", &PostParams::default(), &rich_old)
        .await
        .expect("write through v1alpha1");
    let rich_new = new_api.get("rich").await.unwrap();
    assert_eq!(rich_new.spec.image, "pytorch:2");
    assert_eq!(rich_new.spec.args, ["--epochs", "3"]);
    assert_eq!(
        (rich_new.spec.duration.as_str(), rich_new.spec.priority),
        ("90m", 7)
    );
    assert_eq!(rich_new.spec.resources.cpu.as_deref(), Some("16"));
    assert!(
        rich_new
            .annotations()
            .keys()
            .all(|k| !k.starts_with("conversion.gpu-cloud.io")),
        "{:?}",
        rich_new.annotations()
    );

    // db downgrade: v1alpha1 becomes the storage version again, migrate, trimmed to it.
    // (Flip the storage flags of the live CRD, keeping the conversion settings the webhook
    // wrote into it: what `kubectl edit crd` or a JSON patch does.)
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let mut rollback = crds.get(CRD).await.unwrap();
    for v in &mut rollback.spec.versions {
        v.storage = v.name == "v1alpha1";
    }
    crds.replace(CRD, &PostParams::default(), &rollback)
        .await
        .expect("serve v1alpha1 as storage again");
    harness::eventually(
        Duration::from_secs(30),
        "v1alpha1 is the storage version",
        || async {
            let c = crds.get(CRD).await.unwrap();
            c.spec
                .versions
                .iter()
                .any(|v| v.name == "v1alpha1" && v.storage)
        },
    )
    .await;
    let (ok, _, err) = harness::gpu_cloud(&cp.kubeconfig, &["migrate"]);
    assert!(ok, "migrate back failed: {err}");
    assert_eq!(stored_versions(&client).await, ["v1alpha1"]);
    assert_eq!(
        old_api.get("old-0005").await.unwrap().spec,
        alpha("old-0005", 5).spec
    );
    let rich_new = new_api
        .get("rich")
        .await
        .expect("v1 still served after rollback");
    assert_eq!(
        (rich_new.spec.args.len(), rich_new.spec.duration.as_str()),
        (2, "90m")
    );
}

async fn freeze(client: &Client, name: &str) {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": "freeze"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["gpu-cloud.io"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["gpuinstances"]}]},
            "validations": [{"expression": format!("object.metadata.name != '{name}'"), "message": "frozen for the test"}]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": "freeze"},
        "spec": {"policyName": "freeze", "validationActions": ["Deny"]}
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // Policies take effect asynchronously: wait until the update is refused.
    let api = Api::<v1::GpuInstance>::namespaced(client.clone(), "team");
    harness::eventually(Duration::from_secs(30), "policy in force", || async {
        let obj = api.get(name).await.unwrap();
        api.replace(name, &PostParams::default(), &obj)
            .await
            .is_err()
    })
    .await;
}

async fn unfreeze(client: &Client) {
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete("freeze", &Default::default())
        .await
        .unwrap();
    let api = Api::<v1::GpuInstance>::namespaced(client.clone(), "team");
    harness::eventually(Duration::from_secs(30), "policy lifted", || async {
        let obj = api.get("old-0007").await.unwrap();
        api.replace("old-0007", &PostParams::default(), &obj)
            .await
            .is_ok()
    })
    .await;
}
