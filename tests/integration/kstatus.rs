//! kstatus truth: what `sigs.k8s.io/cli-utils`' kstatus (the status library of Flux and
//! kpt, built by `hack/controlplane-build`) and the Argo CD health check of
//! `examples/gitops/README.md` (run by Lua 5.4) make of a GpuInstance in every phase, as
//! the controller's own status functions write it.

use std::io::Write;
use std::process::{Command, Stdio};

use gpu_cloud_api::v1::{GpuInstance, Phase};
use gpu_cloud_controller::cached_pod::{ProgramState, Termination};
use gpu_cloud_controller::lifecycle::{NodeState, NodeWatch, PodView, Stop, decide};
use gpu_cloud_controller::placement::{queued_status, reserved_status};
use gpu_cloud_core::scheduler::{InstanceKey, Wait, Waiting};
use jiff::Timestamp;
use serde_json::{Value, json};

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn instance(name: &str, generation: i64) -> GpuInstance {
    serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
        "metadata": {"name": name, "namespace": "gpu-u", "uid": "u1", "generation": generation},
        "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "1h"},
    }))
    .unwrap()
}

fn pod(phase: &str) -> PodView {
    PodView {
        name: "a".into(),
        node: Some("gpu-l4-0".into()),
        phase: Some(phase.into()),
        created: Some(ts(0)),
        terminating: false,
        user: Some("u".into()),
        program: None,
        gang_nodes: vec![],
    }
}

/// A pod whose program the kubelet reports as waiting for `reason`.
fn waiting_pod(reason: &str) -> PodView {
    PodView {
        program: Some(ProgramState {
            waiting: Some((reason.into(), Some("connection refused".into()))),
            ..Default::default()
        }),
        ..pod("Pending")
    }
}

/// A failed pod whose program ended with `code` for `reason`.
fn ended_pod(code: i32, reason: &str) -> PodView {
    PodView {
        program: Some(ProgramState {
            terminated: Some(Termination {
                exit_code: code,
                reason: Some(reason.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..pod("Failed")
    }
}

/// `inst` with the status the controller decides for `pod` at `now` (and `stop`).
fn decided(name: &str, pod: Option<&PodView>, now: i64, stop: Option<&Stop>) -> GpuInstance {
    decided_on(name, pod, NodeWatch::READY, now, stop)
}

/// [`decided`] on a node in `node`'s state.
fn decided_on(
    name: &str,
    pod: Option<&PodView>,
    node: NodeWatch,
    now: i64,
    stop: Option<&Stop>,
) -> GpuInstance {
    let mut inst = instance(name, 1);
    // Placed: the status the placement loop and the first reconcile leave.
    inst.status = Some(
        serde_json::from_value(json!({"phase": "Running", "nodeName": "gpu-l4-0",
            "startedAt": ts(0), "expiresAt": ts(3600), "observedGeneration": 1}))
        .unwrap(),
    );
    let out = decide(&inst, pod, node, ts(now), stop);
    inst.status = Some(out.status);
    inst
}

fn waiting(wait: Wait) -> Waiting {
    Waiting {
        key: InstanceKey {
            namespace: "gpu-u".into(),
            name: "x".into(),
        },
        position: 1,
        message: format!("{wait:?}"),
        wait,
    }
}

/// Every phase, with what kstatus and Argo CD must say of it.
fn cases() -> Vec<(&'static str, GpuInstance, &'static str, &'static str)> {
    let mut queued = instance("queued", 1);
    queued.status = Some(queued_status(
        &queued,
        Some("u"),
        &waiting(Wait::Capacity { largest_free: 0 }),
        ts(0),
    ));
    let mut stalled = instance("queued-stalled", 1);
    stalled.status = Some(queued_status(
        &stalled,
        Some("u"),
        &waiting(Wait::UnknownModel),
        ts(0),
    ));
    let mut reserved = instance("reserved", 1);
    reserved.status = Some(reserved_status(
        &reserved,
        Some("u"),
        &["gpu-l4-0".to_owned()],
        ts(600),
        ts(0),
    ));
    let gone = NodeWatch {
        state: NodeState::Gone,
        ..NodeWatch::READY
    };
    let mut lost_fail = instance("node-lost-fail", 1);
    lost_fail.spec.on_node_lost = Some(gpu_cloud_api::v1::OnNodeLost::Fail);
    lost_fail.status = decided("x", Some(&pod("Running")), 60, None).status;
    lost_fail.status = Some(decide(&lost_fail, None, gone.clone(), ts(60), None).status);
    let stop = Stop {
        reason: "Idle",
        message: "idle".into(),
    };
    // A finished booking whose spec a GitOps sync changed afterwards.
    let mut edited = decided("expired-edited", Some(&pod("Running")), 4000, None);
    edited.metadata.generation = Some(2);
    let out = decide(&edited, None, NodeWatch::READY, ts(4100), None);
    edited.status = Some(out.status);
    vec![
        ("Queued", queued, "InProgress", "Progressing"),
        ("Queued", stalled, "Failed", "Degraded"),
        ("Reserved", reserved, "InProgress", "Progressing"),
        (
            "Scheduled",
            decided("scheduled", Some(&pod("Pending")), 60, None),
            "InProgress",
            "Progressing",
        ),
        (
            "Running",
            decided("running", Some(&pod("Running")), 60, None),
            "Current",
            "Healthy",
        ),
        (
            "Succeeded",
            decided("succeeded", Some(&pod("Succeeded")), 60, None),
            "Current",
            "Healthy",
        ),
        (
            "Expired",
            decided("expired", Some(&pod("Running")), 4000, None),
            "Current",
            "Healthy",
        ),
        ("Expired", edited, "Current", "Healthy"),
        (
            "Failed",
            decided("failed", Some(&pod("Failed")), 60, None),
            "Failed",
            "Degraded",
        ),
        (
            "Failed",
            decided("pod-lost", None, 60, None),
            "Failed",
            "Degraded",
        ),
        (
            "Stopped",
            decided("stopped", Some(&pod("Running")), 60, Some(&stop)),
            "Failed",
            "Degraded",
        ),
        // Its node lost: removing the pod, then back in the queue, or failed.
        (
            "Running",
            decided_on("node-lost", Some(&pod("Running")), gone.clone(), 60, None),
            "InProgress",
            "Progressing",
        ),
        (
            "Queued",
            decided_on("node-lost-requeued", None, gone, 60, None),
            "InProgress",
            "Progressing",
        ),
        ("Failed", lost_fail, "Failed", "Degraded"),
        // What only a real kubelet reports: an image being retried, one that failed, an
        // exit code, an OOM kill.
        (
            "Scheduled",
            decided(
                "pull-retrying",
                Some(&waiting_pod("ImagePullBackOff")),
                30,
                None,
            ),
            "InProgress",
            "Progressing",
        ),
        (
            "Failed",
            decided("pull-failed", Some(&waiting_pod("ErrImagePull")), 600, None),
            "Failed",
            "Degraded",
        ),
        (
            "Failed",
            decided(
                "image-invalid",
                Some(&waiting_pod("InvalidImageName")),
                5,
                None,
            ),
            "Failed",
            "Degraded",
        ),
        (
            "Failed",
            decided("exit-code", Some(&ended_pod(3, "Error")), 60, None),
            "Failed",
            "Degraded",
        ),
        (
            "Failed",
            decided("oom", Some(&ended_pod(137, "OOMKilled")), 60, None),
            "Failed",
            "Degraded",
        ),
    ]
}

/// kstatus of each object: name -> status.
fn kstatus(objects: &[Value]) -> Vec<(String, String)> {
    let bin = crate::harness::controlplane_bin("kstatus");
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (hack/controlplane-build builds it): {e}",
                bin.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(objects).unwrap())
        .unwrap();
    let out = child.wait_with_output().expect("kstatus output");
    assert!(out.status.success(), "kstatus failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            (
                f.next().unwrap_or_default().to_owned(),
                f.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The GpuInstance health check as `examples/gitops/README.md` gives it.
fn argo_health_script() -> String {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/gitops/README.md"
    ))
    .expect("examples/gitops/README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.contains("resource.customizations.health.gpu-cloud.io_GpuInstance: |"))
        .skip(1);
    let first = lines.next().expect("the GpuInstance health check");
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(
            lines.take_while(|l| l.len() - l.trim_start().len() >= indent && !l.trim().is_empty()),
        )
        .map(|l| &l[indent..])
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn argo(script: &str, obj: &Value) -> String {
    let program = format!(
        "local function health(obj)\n{script}\nend\nlocal hs = health({})\nio.write(hs.status)\n",
        lua(obj)
    );
    let out = Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .expect("run lua5.4 (hack/prerequisites installs it)");
    assert!(
        out.status.success(),
        "lua: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kstatus_and_argo_cd_read_every_phase_as_the_readme_says() {
    let cases = cases();
    let objects: Vec<Value> = cases
        .iter()
        .map(|(_, i, _, _)| serde_json::to_value(i).unwrap())
        .collect();
    let computed = kstatus(&objects);
    let script = argo_health_script();
    assert_eq!(computed.len(), cases.len());
    for ((phase, inst, want_kstatus, want_argo), (name, got)) in cases.iter().zip(&computed) {
        let status = inst.status.as_ref().unwrap();
        assert_eq!(
            status.phase.map(Phase::as_str),
            Some(*phase),
            "{name}: the case builds the phase it names"
        );
        assert_eq!(got, want_kstatus, "kstatus of {name} ({phase})");
        let health = argo(
            &script,
            &objects[computed.iter().position(|(n, _)| n == name).unwrap()],
        );
        assert_eq!(&health, want_argo, "Argo CD health of {name} ({phase})");
    }
}
