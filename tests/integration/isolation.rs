//! Tenant isolation, proven by impersonating a user's subject: a user manages instances in
//! their own namespace only, reads their pods, and never writes status.

use gpu_cloud_api::v1::GpuInstance;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness;

fn is_forbidden(r: Result<impl Sized, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
}

/// May the caller of `client` `create` pods/`subresource` in `namespace`?
async fn may_connect(client: &Client, namespace: &str, subresource: &str) -> bool {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"verb": "create", "resource": "pods",
                                        "subresource": subresource, "namespace": namespace}}
    }))
    .expect("review");
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn a_user_sees_and_touches_only_their_own_instances() {
    let admin = harness::operator().await;
    let (alice, bob) = (harness::unique("alice"), harness::unique("bob"));
    let alice_ns = harness::user(
        &admin,
        &alice,
        json!({"subjects": [{"kind": "User", "name": alice}]}),
    )
    .await;
    let bob_ns = harness::user(
        &admin,
        &bob,
        json!({"subjects": [{"kind": "User", "name": bob}]}),
    )
    .await;
    let spec = json!({"gpu": {"model": "NVIDIA-NONE", "count": 1}, "image": "x", "duration": "1h"});
    harness::book(&admin, &bob_ns, "bobs", spec.clone()).await;

    let as_alice = harness::client_as(&alice).await;
    let mine = Api::<GpuInstance>::namespaced(as_alice.clone(), &alice_ns);
    let theirs = Api::<GpuInstance>::namespaced(as_alice.clone(), &bob_ns);

    // Allowed: book, view, list, delete in her namespace; read its pods.
    harness::book(&as_alice, &alice_ns, "mine", spec).await;
    assert_eq!(
        mine.list(&ListParams::default())
            .await
            .expect("alice lists hers")
            .items
            .len(),
        1
    );
    mine.get("mine").await.expect("alice reads hers");
    Api::<Pod>::namespaced(as_alice.clone(), &alice_ns)
        .list(&ListParams::default())
        .await
        .expect("alice lists her pods");

    // Connecting to her instances' pods (shell, attach, port-forward) only in her namespace:
    // tests/integration/realnode.rs does it on a real kubelet.
    for sub in ["exec", "attach", "portforward"] {
        assert!(
            may_connect(&as_alice, &alice_ns, sub).await,
            "alice pods/{sub}"
        );
        for ns in [bob_ns.as_str(), "kube-system", "default"] {
            assert!(
                !may_connect(&as_alice, ns, sub).await,
                "alice may pods/{sub} in {ns}"
            );
        }
    }

    // Refused: anything in bob's namespace, anything cluster-wide, any status write.
    assert!(
        is_forbidden(theirs.list(&ListParams::default()).await),
        "alice listed bob's instances"
    );
    assert!(
        is_forbidden(theirs.get("bobs").await),
        "alice read bob's instance"
    );
    assert!(
        is_forbidden(theirs.delete("bobs", &Default::default()).await),
        "alice deleted bob's instance"
    );
    assert!(is_forbidden(
        Api::<GpuInstance>::all(as_alice.clone())
            .list(&ListParams::default())
            .await
    ));
    assert!(is_forbidden(
        Api::<Pod>::namespaced(as_alice.clone(), &bob_ns)
            .list(&ListParams::default())
            .await
    ));
    let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
    assert!(
        is_forbidden(
            mine.patch_status("mine", &PatchParams::default(), &status)
                .await
        ),
        "alice wrote status"
    );

    // Her own GpuUser (budget, usage, cost in its status) she may read; not bob's, and
    // not the list of users, and she may not change hers.
    let users = Api::<gpu_cloud_api::v1::GpuUser>::all(as_alice.clone());
    let own = harness::poll(
        std::time::Duration::from_secs(30),
        "alice reads her own GpuUser",
        || async { users.get(&alice).await.map_err(|e| e.to_string()) },
    )
    .await;
    assert_eq!(own.status.and_then(|s| s.namespace), Some(alice_ns.clone()));
    assert!(is_forbidden(users.get(&bob).await), "alice read bob's user");
    assert!(is_forbidden(users.list(&ListParams::default()).await));
    assert!(
        is_forbidden(
            users
                .patch(
                    &alice,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"suspended": false}}))
                )
                .await
        ),
        "alice edited her user"
    );

    mine.delete("mine", &Default::default())
        .await
        .expect("alice deletes hers");
}
