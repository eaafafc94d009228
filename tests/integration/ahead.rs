//! Booking ahead, idle shutdown and GPU-hour budgets on the real control plane, with
//! durations of seconds. Each test has fake nodes of a GPU model of its own.

use std::time::Duration;

use gpu_cloud_agent::simulated::UTILIZATION_ANNOTATION;
use gpu_cloud_api::v1::{GpuInstance, GpuUser, Phase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::{self, phase, poll};

fn spec(model: &str, count: u32, duration: &str) -> serde_json::Value {
    json!({"gpu": {"model": model, "count": count}, "image": "x", "duration": duration})
}

fn condition(inst: &GpuInstance, type_: &str) -> Option<(String, String)> {
    let c = inst
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

fn message(inst: &GpuInstance) -> String {
    inst.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

/// Event reasons recorded on objects named `name` in `ns`.
async fn event_reasons(client: &kube::Client, ns: &str, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn a_reserved_window_is_held_backfilled_and_started_on_time() {
    let client = harness::operator().await;
    let model = "TEST-AHEAD-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-ahead"), model, 1, 2).await;
    let name = harness::unique("rita");
    let ns = harness::user(&client, &name, json!({})).await;
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);

    // The window: both GPUs, from 25 s from now, for 20 s.
    let start = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(25))
        .unwrap();
    let start_s = start.round(jiff::Unit::Second).unwrap();
    let mut w = spec(model, 2, "20s");
    w["startTime"] = json!(start_s.to_string());
    harness::book(&client, &ns, "window", w).await;
    let held = harness::wait_instance(&client, &ns, "window", "Reserved", |i| {
        phase(i) == Some(Phase::Reserved)
    })
    .await;
    let st = held.status.clone().unwrap();
    assert_eq!(st.reserved_node.as_deref(), Some(nodes[0].as_str()));
    assert_eq!(st.starts_at, Some(start_s));
    assert_eq!(
        condition(&held, "Ready"),
        Some(("False".into(), "Reserved".into()))
    );
    assert!(message(&held).contains("reserved on"), "{}", message(&held));

    // Backfill: a short booking that ends before the window runs now.
    harness::book(&client, &ns, "short", spec(model, 1, "10s")).await;
    harness::wait_instance(&client, &ns, "short", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    // A long one would run into the window: it waits, and does not take its GPUs.
    harness::book(&client, &ns, "long", spec(model, 2, "1h")).await;
    harness::wait_instance(&client, &ns, "long", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    // The same window asked for exactly: refused, naming the next free slot (the window's
    // end, when the node is free again for its whole length)...
    let mut exact = spec(model, 1, "20s");
    exact["startTime"] = json!(start_s.to_string());
    harness::book(&client, &ns, "same-time", exact.clone()).await;
    let refused = harness::wait_instance(&client, &ns, "same-time", "refused", |i| {
        condition(i, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(
        message(&refused).contains("next free slot"),
        "{}",
        message(&refused)
    );
    // ...or, asked for the earliest available, booked there.
    exact["startPolicy"] = json!("EarliestAvailable");
    harness::book(&client, &ns, "earliest", exact).await;
    let later = harness::wait_instance(&client, &ns, "earliest", "Reserved", |i| {
        phase(i) == Some(Phase::Reserved)
    })
    .await;
    let later_start = later.status.unwrap().starts_at.unwrap();
    assert!(later_start > start_s, "{later_start} after {start_s}");
    // Edited to another start: asked for again and granted there.
    let moved = start_s
        .checked_add(jiff::SignedDuration::from_mins(10))
        .unwrap();
    api.patch(
        "earliest",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"startTime": moved.to_string(), "startPolicy": "Exact"}})),
    )
    .await
    .unwrap();
    harness::wait_instance(&client, &ns, "earliest", "moved", |i| {
        phase(i) == Some(Phase::Reserved)
            && i.status.as_ref().and_then(|s| s.starts_at) == Some(moved)
    })
    .await;

    // At its start the window's pod runs on the held node, and ends with the window.
    let running = poll(Duration::from_secs(60), "the window running", || async {
        let i = api.get("window").await.map_err(|e| e.to_string())?;
        if phase(&i) == Some(Phase::Running) {
            Ok(i)
        } else {
            Err(format!("{:?}", i.status))
        }
    })
    .await;
    let rs = running.status.unwrap();
    assert!(Timestamp::now() >= start_s, "not before its start");
    assert_eq!(rs.node_name.as_deref(), Some(nodes[0].as_str()));
    // Held from its pod's creation (billing), a moment after the start; it ends with
    // the window.
    let held = rs.started_at.expect("startedAt");
    assert!(
        held >= start_s && held.duration_since(start_s).as_secs() < 5,
        "{held} vs {start_s}"
    );
    assert_eq!(
        rs.expires_at,
        Some(
            start_s
                .checked_add(jiff::SignedDuration::from_secs(20))
                .unwrap()
        )
    );
    // The backfilled booking had ended before; the long one still waits.
    assert_eq!(
        phase(&api.get("short").await.unwrap()),
        Some(Phase::Expired)
    );
    assert_eq!(phase(&api.get("long").await.unwrap()), Some(Phase::Queued));
    harness::wait_instance(&client, &ns, "window", "Expired", |i| {
        phase(i) == Some(Phase::Expired)
    })
    .await;
}

#[tokio::test]
async fn idle_gpus_are_warned_then_stopped_and_warn_only_keeps_running() {
    let client = harness::operator().await;
    let model = "TEST-IDLE-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-idle"), model, 1, 4).await;
    let _agent = harness::simulated_agent(
        &harness::control_plane().kubeconfig,
        &nodes[0],
        harness::free_port(),
    );
    let name = harness::unique("ida");
    // The user's default: 8 s idle under 5 % stops; instances override parts of it.
    let ns = harness::user(&client, &name, json!({"idle": {"timeout": "8s"}})).await;
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    let book = |name: &'static str, util: &'static str, extra: serde_json::Value| {
        let api = api.clone();
        let mut s = spec(model, 1, "1h");
        if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
            s.extend(extra.clone());
        }
        async move {
            let inst: GpuInstance = serde_json::from_value(json!({
                "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
                "metadata": {"name": name, "annotations": {UTILIZATION_ANNOTATION: util}},
                "spec": s
            }))
            .unwrap();
            api.create(&Default::default(), &inst).await.unwrap();
        }
    };
    book("idle", "1", json!({})).await;
    book("watched", "1", json!({"idleWarnOnly": true})).await;
    book("busy", "80", json!({})).await;

    // Warned first (the last quarter of the timeout), with an Event...
    let warned = harness::wait_instance(&client, &ns, "idle", "warned", |i| {
        condition(i, "Idle").is_some_and(|c| c.1 == "IdleWarning")
    })
    .await;
    assert_eq!(phase(&warned), Some(Phase::Running));
    // ...then stopped, its pod deleted, its GPUs freed.
    let stopped = harness::wait_instance(&client, &ns, "idle", "Stopped", |i| {
        phase(i) == Some(Phase::Stopped)
    })
    .await;
    assert_eq!(
        condition(&stopped, "Ready"),
        Some(("False".into(), "Idle".into()))
    );
    assert!(
        message_of_ready(&stopped).contains("under 5%"),
        "{}",
        message_of_ready(&stopped)
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    harness::eventually(Duration::from_secs(30), "the idle pod gone", || async {
        pods.get_opt("idle").await.unwrap().is_none()
    })
    .await;
    let reasons = event_reasons(&client, &ns, "idle").await;
    assert!(
        reasons.iter().any(|r| r == "IdleWarning") && reasons.iter().any(|r| r == "Idle"),
        "{reasons:?}"
    );

    // warnOnly: told it would be stopped, still running.
    let watched = harness::wait_instance(&client, &ns, "watched", "would stop", |i| {
        condition(i, "Idle").is_some_and(|c| c.1 == "IdleWouldStop")
    })
    .await;
    assert_eq!(phase(&watched), Some(Phase::Running));
    // Busy GPUs: never idle.
    let busy = api.get("busy").await.unwrap();
    assert_eq!(phase(&busy), Some(Phase::Running));
    assert_eq!(condition(&busy, "Idle"), None);
    assert!(busy.status.unwrap().idle.unwrap().idle_since.is_none());

    // Used again: the warning goes away.
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {UTILIZATION_ANNOTATION: "90"}}})),
    )
    .await
    .unwrap();
    harness::wait_instance(&client, &ns, "watched", "no longer idle", |i| {
        condition(i, "Idle").is_none()
    })
    .await;
}

fn message_of_ready(inst: &GpuInstance) -> String {
    inst.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Books `x` (1 GPU for 1 h) for a user with a budget of 1 GPU-hour under `on_exhausted`,
/// then cuts the budget to 10 GPU-seconds so that it runs out mid-run.
async fn spend_the_budget(on_exhausted: &str) -> (kube::Client, String, String) {
    let client = harness::operator().await;
    let model = format!("TEST-BUDGET-{}-GPU", on_exhausted.to_uppercase());
    harness::gpu_nodes(&client, &harness::unique("t-budget"), &model, 1, 4).await;
    let name = harness::unique("bea");
    let quota = json!({"gpuHours": {"limit": 1.0, "onExhausted": on_exhausted}});
    let ns = harness::user(&client, &name, json!({"quota": quota})).await;

    // More than the whole budget: refused, never to fit.
    harness::book(&client, &ns, "huge", spec(&model, 2, "1h")).await;
    let huge = harness::wait_instance(&client, &ns, "huge", "refused", |i| {
        condition(i, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "BudgetExceeded")
    })
    .await;
    assert!(
        message(&huge).contains("needs 2.0 GPU-hours, 1.0 of 1 left until"),
        "{}",
        message(&huge)
    );
    harness::book(&client, &ns, "x", spec(&model, 1, "1h")).await;
    harness::wait_instance(&client, &ns, "x", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    // The whole budget is committed to x: another hour does not fit now.
    harness::book(&client, &ns, "y", spec(&model, 1, "1h")).await;
    let y = harness::wait_instance(&client, &ns, "y", "refused", |i| {
        condition(i, "Reconciling").is_some_and(|c| c.1 == "BudgetExceeded")
    })
    .await;
    assert_eq!(phase(&y), Some(Phase::Queued));

    let users = Api::<GpuUser>::all(client.clone());
    users
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {"gpuHours": {"limit": 10.0 / 3600.0}}}})),
        )
        .await
        .unwrap();
    let spent = poll(Duration::from_secs(60), "the budget used up", || async {
        let u = users.get(&name).await.map_err(|e| e.to_string())?;
        match u.status.and_then(|s| s.budget) {
            Some(b) if b.exhausted => Ok(b),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(spent.used_gpu_hours >= spent.limit_gpu_hours);
    assert_eq!(spent.remaining_gpu_hours, 0.0);
    // The Event follows the status write.
    poll(
        Duration::from_secs(10),
        "the BudgetExhausted Event",
        || async {
            let reasons = event_reasons(&client, "default", &name).await;
            if reasons.iter().any(|r| r == "BudgetExhausted") {
                Ok(())
            } else {
                Err(format!("{reasons:?}"))
            }
        },
    )
    .await;
    (client, ns, name)
}

#[tokio::test]
async fn a_budget_used_up_mid_run_stops_running_instances_under_stop() {
    let (client, ns, _) = spend_the_budget("Stop").await;
    let x = harness::wait_instance(&client, &ns, "x", "Stopped", |i| {
        phase(i) == Some(Phase::Stopped)
    })
    .await;
    assert_eq!(
        condition(&x, "Ready"),
        Some(("False".into(), "BudgetExhausted".into()))
    );
    assert_eq!(
        phase(
            &Api::<GpuInstance>::namespaced(client.clone(), &ns)
                .get("y")
                .await
                .unwrap()
        ),
        Some(Phase::Queued)
    );
}

#[tokio::test]
async fn a_budget_used_up_mid_run_lets_running_instances_finish_under_finish_running() {
    let (client, ns, user) = spend_the_budget("FinishRunning").await;
    // Still running a while after the budget ran out; y still may not start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    assert_eq!(phase(&api.get("x").await.unwrap()), Some(Phase::Running));
    let y = api.get("y").await.unwrap();
    assert_eq!(phase(&y), Some(Phase::Queued));
    assert!(message(&y).contains("GPU-hour budget"), "{}", message(&y));
    // Booking ahead into the next period spends that period's budget (10 GPU-seconds):
    // one booking of 10 s fits there, a second one does not.
    let users = Api::<GpuUser>::all(client.clone());
    let u = users.get(&user).await.unwrap();
    let next = u.status.and_then(|s| s.budget).unwrap().period_end;
    let model = api.get("x").await.unwrap().spec.gpu.model;
    for name in ["next", "next-too"] {
        let mut s = spec(&model, 1, "10s");
        s["startTime"] = json!(
            next.checked_add(jiff::SignedDuration::from_hours(1))
                .unwrap()
                .to_string()
        );
        harness::book(&client, &ns, name, s).await;
    }
    harness::wait_instance(&client, &ns, "next", "Reserved", |i| {
        phase(i) == Some(Phase::Reserved)
    })
    .await;
    harness::wait_instance(&client, &ns, "next-too", "refused", |i| {
        condition(i, "Reconciling").is_some_and(|c| c.1 == "BudgetExceeded")
    })
    .await;
}
