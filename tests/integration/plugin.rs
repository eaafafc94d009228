//! `kubectl gpu` (the kubectl-gpu plugin) against the real control plane: book, list, usage,
//! run through kubectl's own plugin discovery.

use std::process::Command;
use std::time::Duration;

use gpu_cloud::api::v1::Phase;
use serde_json::json;

use crate::harness::{self, phase};

fn kubectl_gpu(args: &[&str]) -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-gpu"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(harness::kubectl())
        .arg("gpu")
        .args(args)
        .env("KUBECONFIG", &harness::control_plane().kubeconfig)
        .env("PATH", path)
        .output()
        .expect("run kubectl gpu");
    assert!(
        out.status.success(),
        "kubectl gpu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn book_list_and_usage_through_kubectl() {
    let client = harness::operator().await;
    let model = "TEST-PLUGIN-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-plugin"), model, 1, 2).await;
    let name = harness::unique("mike");
    let ns = harness::user(&client, &name, json!({})).await;

    let out = kubectl_gpu(&[
        "book", model, "--count", "2", "--for", "2h", "-n", &ns, "--name", "p1", "--", "sleep",
        "infinity",
    ]);
    assert!(
        out.starts_with(&format!("booked {ns}/p1: 2 x {model} for 2h")),
        "{out}"
    );
    let inst = harness::wait_instance(&client, &ns, "p1", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    assert_eq!(inst.spec.command, ["sleep", "infinity"]);
    assert_eq!(inst.spec.duration, "2h");

    let out = kubectl_gpu(&["book", model, "-n", &ns]);
    assert!(out.contains(&format!("1 x {model} for 1h")), "{out}");
    harness::eventually(
        Duration::from_secs(30),
        "the second booking queued",
        || async {
            kubectl_gpu(&["ls", "-n", &ns])
                .contains(&format!("waiting for 1 x {model}: none free, 0 ahead"))
        },
    )
    .await;
    let table = kubectl_gpu(&["ls", "-n", &ns]);
    let row = table
        .lines()
        .find(|l| l.contains(" p1 "))
        .unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        [ns.as_str(), "p1", model, "2", "Running", nodes[0].as_str()],
        "{table}"
    );

    // The user's status follows its instances a moment later (debounced).
    harness::eventually(
        Duration::from_secs(10),
        "usage shows the 2 GPUs held",
        || async {
            let usage = kubectl_gpu(&["usage", "--user", &name]);
            usage
                .lines()
                .nth(1)
                .unwrap_or_default()
                .starts_with(&format!("{name}  2 "))
        },
    )
    .await;
}
