//! Register, update and delete a GpuUser: namespace, RoleBinding, ResourceQuota, status,
//! and a deletion that stops the user's instances before the namespace goes.

use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, GpuUser, Phase};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::{self, eventually, phase};

#[tokio::test]
async fn register_update_and_delete_a_user() {
    let client = harness::operator().await;
    let model = "TEST-USER-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-user"), model, 1, 2).await;
    let name = harness::unique("carol");
    let ns = harness::user(
        &client,
        &name,
        json!({"displayName": "Carol", "subjects": [{"kind": "User", "name": name}], "quota": {"maxGpus": 4, "maxSpotGpus": 0}}),
    )
    .await;
    assert_eq!(ns, format!("gpu-{name}"));

    // Register: namespace labelled with the user, binding, quota.
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .expect("user namespace");
    assert_eq!(namespace.labels().get("gpu-cloud.io/user"), Some(&name));
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), &ns);
    let rb = bindings.get("gpu-cloud-user").await.expect("RoleBinding");
    assert_eq!(rb.role_ref.name, "gpu-cloud-user");
    assert_eq!(rb.subjects.as_ref().map(Vec::len), Some(1));
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), &ns);
    let hard = |q: ResourceQuota| {
        q.spec
            .and_then(|s| s.hard)
            .and_then(|h| h.get("requests.nvidia.com/gpu").map(|q| q.0.clone()))
    };
    assert_eq!(
        hard(quotas.get("gpu-cloud-user").await.expect("quota")).as_deref(),
        Some("4")
    );

    // Update: subjects and quota follow the spec.
    let users = Api::<GpuUser>::all(client.clone());
    let patch = json!({"spec": {"subjects": [{"kind": "User", "name": name}, {"kind": "Group", "name": "ml-team"}],
                                "quota": {"maxGpus": 8, "borrowGpus": 2, "maxSpotGpus": 1}}});
    users
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("update user");
    eventually(
        Duration::from_secs(30),
        "binding and quota updated",
        || async {
            let rb = bindings.get("gpu-cloud-user").await.expect("RoleBinding");
            let q = quotas.get("gpu-cloud-user").await.expect("quota");
            // Guarantee, what may be borrowed and spot GPUs together.
            rb.subjects.as_ref().map(Vec::len) == Some(2) && hard(q).as_deref() == Some("11")
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "status observes generation 2",
        || async {
            let u = users.get(&name).await.expect("user");
            u.status.and_then(|s| s.observed_generation) == Some(2)
        },
    )
    .await;

    // Its instance shows up in its status.
    harness::book(
        &client,
        &ns,
        "job",
        json!({"gpu": {"model": model, "count": 2}, "image": "x", "duration": "1h"}),
    )
    .await;
    harness::wait_instance(&client, &ns, "job", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "user status counts the instance",
        || async {
            let s = users
                .get(&name)
                .await
                .expect("user")
                .status
                .unwrap_or_default();
            s.gpus_in_use == 2 && s.instances == 1
        },
    )
    .await;

    // Delete: instance stopped, namespace removed, user gone.
    users
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete user");
    let instances = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(60),
        "user, instance and namespace gone",
        || async {
            let user_gone = users.get_opt(&name).await.expect("get user").is_none();
            let inst_gone = instances
                .get_opt("job")
                .await
                .map(|i| i.is_none())
                .unwrap_or(true);
            let ns_obj = Api::<Namespace>::all(client.clone())
                .get_opt(&ns)
                .await
                .expect("get namespace");
            let ns_going = ns_obj.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
            user_gone && inst_gone && ns_going
        },
    )
    .await;
}

#[tokio::test]
async fn a_namespace_that_is_not_ours_is_never_taken_over() {
    let client = harness::operator().await;
    let name = harness::unique("ivan");
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": format!("gpu-{name}")}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    let user: GpuUser = serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": name}, "spec": {}
    }))
    .unwrap();
    let users = Api::<GpuUser>::all(client.clone());
    users.create(&Default::default(), &user).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "Stalled NamespaceTaken",
        || async {
            let u = users.get(&name).await.unwrap();
            u.status.is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Stalled" && c.status == "True" && c.reason == "NamespaceTaken"
                })
            })
        },
    )
    .await;
    let ns = Api::<Namespace>::all(client.clone())
        .get(&format!("gpu-{name}"))
        .await
        .unwrap();
    assert!(
        ns.labels().get("gpu-cloud.io/user").is_none(),
        "the operator labelled a namespace it does not own"
    );
    // Deleting such a user leaves the namespace alone.
    users.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "user gone", || async {
        users.get_opt(&name).await.unwrap().is_none()
    })
    .await;
    let ns = Api::<Namespace>::all(client.clone())
        .get(&format!("gpu-{name}"))
        .await
        .unwrap();
    assert!(
        ns.metadata.deletion_timestamp.is_none(),
        "a foreign namespace was deleted"
    );
}
