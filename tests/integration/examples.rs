//! Every YAML in examples/ is accepted by the real apiserver: users are applied for real
//! (their namespaces must exist for what follows), everything else with a server-side
//! dry-run, so the schema, the CEL rules and admission all see it.

use std::time::Duration;

use crate::harness::{self, eventually};

#[tokio::test]
async fn every_example_is_accepted_by_the_apiserver() {
    harness::operator().await;
    let root = env!("CARGO_MANIFEST_DIR");
    for users in [
        "examples/users.yaml",
        "examples/gitops/tenants/carol/user.yaml",
    ] {
        harness::kubectl_out(&["apply", "--server-side", "-f", &format!("{root}/{users}")]);
    }
    eventually(Duration::from_secs(60), "example users Ready", || async {
        let out = harness::kubectl_out(&[
            "get", "gu", "alice", "bob", "carol", "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ]);
        out.lines().filter(|l| *l == "True").count() == 3
    })
    .await;
    for file in [
        "examples/instances-alice.yaml",
        "examples/instances-bob.yaml",
        "examples/instance-ahead.yaml",
        "examples/prices.yaml",
    ] {
        let out =
            harness::kubectl_out(&["apply", "--dry-run=server", "-f", &format!("{root}/{file}")]);
        assert!(out.contains("(server dry run)"), "{out}");
    }
    let out = harness::kubectl_out(&[
        "apply",
        "--dry-run=server",
        "-k",
        &format!("{root}/examples/gitops"),
    ]);
    assert!(
        out.contains("gpuinstance.gpu-cloud.io/weekly-eval") && out.contains("(server dry run)"),
        "{out}"
    );
}
