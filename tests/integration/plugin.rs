//! `kubectl gpu` (the kubectl-gpu plugin) against the real control plane: book (now and
//! ahead), list, usage, free windows, run through kubectl's own plugin discovery.

use std::process::Command;
use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, Phase, StartPolicy};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::harness::{self, phase, poll};

fn kubectl_gpu(args: &[&str]) -> String {
    let out = kubectl_gpu_output(args);
    assert!(
        out.status.success(),
        "kubectl gpu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_gpu_output(args: &[&str]) -> std::process::Output {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-gpu"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(harness::kubectl())
        .arg("gpu")
        .args(args)
        .env("KUBECONFIG", &harness::control_plane().kubeconfig)
        .env("PATH", path)
        .output()
        .expect("run kubectl gpu")
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

/// The chart's calendar reader Role in the shared controller's namespace, as a Helm
/// install has it.
fn calendar_reader() {
    let rendered = harness::render_chart(
        harness::CONTROLLER_NAMESPACE,
        &["--show-only", "templates/calendar-reader.yaml"],
    );
    let path = harness::control_plane()
        .kubeconfig
        .with_file_name(format!("calendar-reader-{}.yaml", std::process::id()));
    std::fs::write(&path, &rendered).expect("write manifest");
    harness::kubectl_out(&["apply", "-f", path.to_str().expect("utf-8 path")]);
}

fn status_of(inst: &GpuInstance) -> gpu_cloud_api::v1::GpuInstanceStatus {
    inst.status.clone().unwrap_or_default()
}

/// Parses a `slots` row: (start, end, node).
fn slot_rows(text: &str) -> Vec<(Timestamp, Timestamp, String)> {
    let parse = |t: &str| -> Option<Timestamp> {
        // show_time writes `2026-12-01T13:00Z` (whole minutes) or with seconds.
        let full = if t.len() == 17 {
            format!("{}:00Z", &t[..16])
        } else {
            t.to_owned()
        };
        full.parse().ok()
    };
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            match cells[..] {
                [start, end, node] => Some((parse(start)?, parse(end)?, node.to_owned())),
                _ => None,
            }
        })
        .collect()
}

fn near(a: Timestamp, b: Timestamp, secs: i64) -> bool {
    a.duration_since(b).as_secs().abs() <= secs
}

#[tokio::test]
async fn book_ahead_and_find_free_windows_through_kubectl() {
    let client = harness::operator().await;
    calendar_reader();
    let model = "TEST-SLOTS-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-slots"), model, 1, 2).await;
    let name = harness::unique("sara");
    let ns = harness::user(
        &client,
        &name,
        json!({"subjects": [{"kind": "User", "name": name}]}),
    )
    .await;
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);

    // Ahead, exactly at +2h: the window is held on the node (Reserved).
    let asked = Timestamp::now();
    let out = kubectl_gpu(&[
        "book", model, "--count", "2", "--for", "1h", "--at", "+2h", "-n", &ns, "--name", "later",
        "--as", &name,
    ]);
    assert!(
        out.starts_with(&format!("booked {ns}/later: 2 x {model} for 1h from ")),
        "{out}"
    );
    let later = api.get("later").await.unwrap();
    let start = later.spec.start_time.expect("spec.startTime");
    assert!(
        near(start, asked + jiff::SignedDuration::from_hours(2), 5),
        "{start}"
    );
    assert_eq!(start.subsec_nanosecond(), 0, "to the second");
    assert_eq!(later.spec.start_policy, Some(StartPolicy::Exact));
    let later = harness::wait_instance(&client, &ns, "later", "Reserved", |i| {
        phase(i) == Some(Phase::Reserved)
    })
    .await;
    let s = status_of(&later);
    assert_eq!(s.reserved_node.as_deref(), Some(nodes[0].as_str()));
    assert_eq!(s.starts_at, Some(start));

    // Ahead at +2h30m, taking the earliest free window: after `later`'s.
    let out = kubectl_gpu(&[
        "book",
        model,
        "--count",
        "2",
        "--for",
        "1h",
        "--at",
        "+2h30m",
        "--earliest",
        "-n",
        &ns,
        "--name",
        "after",
    ]);
    assert!(
        out.contains("(or the earliest free window after it)"),
        "{out}"
    );
    let after = harness::wait_instance(&client, &ns, "after", "Reserved", |i| {
        phase(i) == Some(Phase::Reserved)
    })
    .await;
    assert_eq!(
        after.spec.start_policy,
        Some(StartPolicy::EarliestAvailable)
    );
    let after_start = status_of(&after).starts_at.expect("startsAt");
    assert_eq!(after_start, start + jiff::SignedDuration::from_hours(1));

    // `ls` shows both with node and start.
    let table = kubectl_gpu(&["ls", "-n", &ns]);
    let row = table
        .lines()
        .find(|l| l.contains(" later "))
        .unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[4..7],
        [
            "Reserved",
            nodes[0].as_str(),
            gpu_cloud_api::time::show_time(start).as_str()
        ],
        "{table}"
    );

    // One GPU now, for 1h: it ends before the window, so it runs at once.
    kubectl_gpu(&[
        "book", model, "--count", "1", "--for", "1h", "-n", &ns, "--name", "now",
    ]);
    let now_inst = harness::wait_instance(&client, &ns, "now", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    let expires = status_of(&now_inst).expires_at.expect("expiresAt");

    // The user, who may not list nodes, pods or anyone's instances, asks for free windows.
    let slots = |count: &str, length: &str| {
        kubectl_gpu(&[
            "slots", model, "--count", count, "--for", length, "--show", "3", "--as", &name,
        ])
    };
    // 1 GPU for 30m: free now, on the node.
    let one = poll(
        Duration::from_secs(60),
        "a window for 1 GPU now",
        || async {
            let out = slots("1", "30m");
            match slot_rows(&out).first() {
                Some((s, _, node)) if node == &nodes[0] && near(*s, Timestamp::now(), 60) => {
                    Ok(out)
                }
                _ => Err(out),
            }
        },
    )
    .await;
    // 2 GPUs for 30m: when `now` ends, before `later`'s window.
    let two = poll(
        Duration::from_secs(60),
        "a window for 2 GPUs after `now`",
        || async {
            let out = slots("2", "30m");
            match slot_rows(&out).first() {
                Some((s, e, node))
                    if node == &nodes[0]
                        && near(*s, expires, 2)
                        && *e == *s + jiff::SignedDuration::from_mins(30) =>
                {
                    Ok(out)
                }
                _ => Err(out),
            }
        },
    )
    .await;
    // 2 GPUs for 2h: only after both windows.
    let long = slots("2", "2h");
    assert_eq!(
        slot_rows(&long).first().map(|r| (r.0, r.2.clone())),
        Some((
            after_start + jiff::SignedDuration::from_hours(1),
            nodes[0].clone()
        )),
        "{long}\n{one}\n{two}"
    );
    let none = slots("3", "1h");
    assert!(
        none.contains(&format!("no {model} node has 3 GPUs")),
        "{none}"
    );

    // What the user may read of the controller's namespace: the calendar, and nothing else;
    // and the calendar names no one.
    let as_user = harness::client_as(&name).await;
    let cms = Api::<ConfigMap>::namespaced(as_user, harness::CONTROLLER_NAMESPACE);
    let cal = cms
        .get(gpu_cloud_api::calendar::CONFIGMAP)
        .await
        .expect("the user reads the calendar");
    let json = cal.data.unwrap_or_default()[gpu_cloud_api::calendar::KEY].clone();
    for secret in [name.as_str(), ns.as_str(), "later", "after"] {
        assert!(!json.contains(secret), "{secret} in the calendar");
    }
    assert!(
        matches!(cms.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403),
        "the user listed the controller's ConfigMaps"
    );

    // The user's own figures, as the user: their GpuUser is readable to them.
    let usage = kubectl_gpu(&["usage", "-n", &ns, "--as", &name]);
    assert!(
        usage.lines().any(|l| l.starts_with(&format!("{name} "))),
        "{usage}"
    );
    assert!(!usage.contains("may not read"), "{usage}");

    // Without -n: the caller's own user namespace (from the GpuUser naming them), not
    // `default`.
    assert_eq!(
        kubectl_gpu(&["ls", "--as", &name]),
        kubectl_gpu(&["ls", "-n", &ns, "--as", &name])
    );
    let out = kubectl_gpu(&[
        "book", model, "--for", "10m", "--name", "no-ns", "--as", &name,
    ]);
    assert!(out.starts_with(&format!("booked {ns}/no-ns:")), "{out}");

    // Speaking like kubectl: a model no node has is warned about at once, with the models
    // there are; a refusal reads as kubectl's, not as the client's Status struct.
    let out = kubectl_gpu_output(&["book", "NO-SUCH-GPU", "-n", &ns, "--as", &name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: no node has GPU model \"NO-SUCH-GPU\"")
            && err.contains("models in the cluster: ")
            && err.contains(model),
        "{err}"
    );
    let out = kubectl_gpu_output(&["ls", "-n", "default", "--as", &name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("Error from server (Forbidden): "), "{err}");
    assert!(!err.contains("Status {"), "{err}");
}
