//! Sharing the cluster on the real control plane: idle quota lent and reclaimed, priority
//! preemption inside one user, spot instances preempted by on-demand ones, back to the
//! queue or stopped, the grace period honoured, an impossible booking that preempts
//! nothing, and the controller SIGKILLed in the middle of a preemption. Each test books a
//! model of its own on nodes of its own; a watcher checks that no node is ever over its
//! GPUs while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::harness::{self, eventually, phase};

fn spec(model: &str, count: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut s = json!({"gpu": {"model": model, "count": count}, "image": "busybox",
                       "duration": "1h"});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    s
}

fn preempted(inst: &GpuInstance) -> Option<(String, String)> {
    let n = inst.status.as_ref()?.preempted.as_ref()?;
    Some((n.by.clone(), n.reason.clone()))
}

fn running(inst: &GpuInstance) -> bool {
    phase(inst) == Some(Phase::Running)
}

/// Watches the pods on `nodes` until finished, recording the most GPUs that pods not yet
/// finished (terminating ones included: they still hold their GPUs) held on one node at
/// once. (One pod per instance needs no watching: a pod is named after its instance.)
struct Overbooking {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicU32>,
}

impl Overbooking {
    fn watch(client: &Client, nodes: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicU32::new(0));
        let (s, m) = (stop.clone(), most.clone());
        let pods = Api::<Pod>::all(client.clone());
        let nodes = nodes.to_vec();
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                for node in &nodes {
                    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
                    let Ok(list) = pods.list(&lp).await else {
                        continue;
                    };
                    let held = harness::gpus_held_per_node(&list.items)
                        .values()
                        .copied()
                        .max()
                        .unwrap_or(0);
                    m.fetch_max(held, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Overbooking { stop, most }
    }

    /// Stops watching; the most GPUs held on one node seen.
    fn finish(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.most.load(Ordering::Relaxed)
    }
}

/// The reasons and messages of the Warning Events on `name` in `ns`.
async fn warnings(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    harness::events_of(client, ns, name)
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "Warning")
        .map(|(_, reason, message)| (reason, message))
        .collect()
}

#[tokio::test]
async fn idle_quota_is_lent_and_reclaimed_with_the_grace_period() {
    let client = harness::operator().await;
    let model = "TEST-RECLAIM-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-reclaim"), model, 1, 4).await;
    let watch = Overbooking::watch(&client, &nodes);
    let alice = harness::unique("alice");
    let bob = harness::unique("bob");
    let a_ns = harness::user(&client, &alice, json!({"quota": {"maxGpus": 2}})).await;
    let b_ns = harness::user(
        &client,
        &bob,
        json!({"quota": {"maxGpus": 2, "borrowGpus": 2}}),
    )
    .await;

    // Bob holds his guarantee and borrows Alice's idle two GPUs.
    harness::book(&client, &b_ns, "own", spec(model, 2, json!({}))).await;
    harness::wait_instance(&client, &b_ns, "own", "Running", running).await;
    // Start times are whole seconds: a second apart, which of the two is borrowed is
    // clear (the younger).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let grace = json!({"preemption": {"gracePeriod": "6s"}});
    harness::book(&client, &b_ns, "lent", spec(model, 2, grace)).await;
    harness::wait_instance(&client, &b_ns, "lent", "Running on borrowed GPUs", |i| {
        running(i) && i.status.as_ref().is_some_and(|s| s.borrowed)
    })
    .await;
    let own = harness::wait_instance(&client, &b_ns, "own", "Running", running).await;
    assert!(
        !own.status.unwrap().borrowed,
        "the guarantee is not borrowed"
    );
    let table = harness::kubectl_out(&["get", "gi", "-n", &b_ns]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        header.contains(&"BORROWED") && header.contains(&"PREEMPTIBLE"),
        "{table}"
    );
    let lent_row = table.lines().find(|l| l.starts_with("lent ")).unwrap_or("");
    assert!(lent_row.contains("true"), "{table}");

    // Alice books within her guarantee: Bob's borrowed instance, and only it, goes.
    harness::book(&client, &a_ns, "mine", spec(model, 2, json!({}))).await;
    let lent = harness::wait_instance(&client, &b_ns, "lent", "preempted", |i| {
        preempted(i).is_some()
    })
    .await;
    let notice = lent.status.clone().unwrap().preempted.unwrap();
    assert_eq!(notice.by, format!("{a_ns}/mine"));
    assert_eq!(notice.reason, "PreemptedReclaim");
    let mine = harness::wait_instance(&client, &a_ns, "mine", "nominated", |i| {
        i.status
            .as_ref()
            .is_some_and(|s| s.nominated_node.is_some())
    })
    .await;
    assert_eq!(
        mine.status.unwrap().nominated_node.as_deref(),
        Some(nodes[0].as_str())
    );
    // Its pod is marked and stops with its grace period.
    let pods = Api::<Pod>::namespaced(client.clone(), &b_ns);
    let pod = pods
        .get("lent")
        .await
        .expect("the victim's pod, still stopping");
    assert_eq!(pod.metadata.deletion_grace_period_seconds, Some(6));
    let labels = pod.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("gpu-cloud.io/preempted").map(String::as_str),
        Some("true")
    );

    let mine = harness::wait_instance(&client, &a_ns, "mine", "Running", running).await;
    let started = mine.status.unwrap().started_at.unwrap();
    let waited = started.duration_since(notice.at).as_secs_f64();
    assert!(
        waited >= 5.0,
        "Alice got the GPUs {waited:.1}s after the preemption, before the 6s grace ran out"
    );
    // Bob's instance is back in the queue with its run recorded; his own one runs on.
    let lent = harness::wait_instance(&client, &b_ns, "lent", "requeued", |i| {
        phase(i) == Some(Phase::Queued)
            && i.status
                .as_ref()
                .is_some_and(|s| s.previous_runs.len() == 1)
    })
    .await;
    let s = lent.status.unwrap();
    assert!(s.node_name.is_none() && s.started_at.is_none() && s.preempted.is_none());
    let run = &s.previous_runs[0];
    assert_eq!(run.preempted.as_ref().unwrap().by, format!("{a_ns}/mine"));
    assert!(run.figures.gpu_seconds > 0.0 && run.figures.ended_at > run.figures.started_at);
    let own = harness::wait_instance(&client, &b_ns, "own", "Running", running).await;
    assert!(own.status.unwrap().preempted.is_none());

    // Both were told, each naming the other.
    let on_victim = warnings(&client, &b_ns, "lent").await;
    assert!(
        on_victim
            .iter()
            .any(|(r, m)| r == "PreemptedReclaim" && m.contains(&format!("{a_ns}/mine"))),
        "{on_victim:?}"
    );
    let on_preemptor = warnings(&client, &a_ns, "mine").await;
    assert!(
        on_preemptor
            .iter()
            .any(|(r, m)| r == "Preempting" && m.contains(&format!("{b_ns}/lent"))),
        "{on_preemptor:?}"
    );
    let most = watch.finish();
    assert!(most <= 4, "node over its GPUs: {most} of 4 held at once");

    // Counted by reason, and the borrowed GPUs per user shown.
    let (_, body) =
        harness::http_get(harness::controller_metrics_port(), "/metrics").expect("metrics");
    assert!(
        body.lines()
            .any(|l| l.starts_with("gpu_cloud_preemptions_total{reason=\"PreemptedReclaim\"}")),
        "{body}"
    );
    assert!(body.contains("gpu_cloud_user_borrowed_gpus"), "{body}");
}

#[tokio::test]
async fn priority_preempts_inside_one_user_never_anothers_guarantee_and_stop_stops() {
    let client = harness::operator().await;
    let model = "TEST-PRIORITY-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-prio"), model, 1, 4).await;
    let watch = Overbooking::watch(&client, &nodes);
    let carol = harness::unique("carol");
    let dan = harness::unique("dan");
    let c_ns = harness::user(&client, &carol, json!({"quota": {"maxGpus": 4}})).await;
    let d_ns = harness::user(&client, &dan, json!({"quota": {"maxGpus": 2}})).await;
    // Dan's low-priority instance on his guaranteed GPUs, Carol's own low one.
    harness::book(
        &client,
        &d_ns,
        "dans",
        spec(model, 2, json!({"priority": -5})),
    )
    .await;
    harness::wait_instance(&client, &d_ns, "dans", "Running", running).await;
    let stop = json!({"preemption": {"gracePeriod": "1s", "onPreempted": "Stop"}});
    harness::book(&client, &c_ns, "low", spec(model, 2, stop)).await;
    harness::wait_instance(&client, &c_ns, "low", "Running", running).await;

    harness::book(
        &client,
        &c_ns,
        "high",
        spec(model, 2, json!({"priority": 10})),
    )
    .await;
    let low = harness::wait_instance(&client, &c_ns, "low", "Stopped", |i| {
        phase(i) == Some(Phase::Stopped)
    })
    .await;
    assert_eq!(
        preempted(&low),
        Some((format!("{c_ns}/high"), "PreemptedPriority".into()))
    );
    let stalled = low
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .map(|c| (c.status.clone(), c.reason.clone()));
    assert_eq!(stalled, Some(("True".into(), "PreemptedPriority".into())));
    harness::wait_instance(&client, &c_ns, "high", "Running", running).await;
    let dans = harness::wait_instance(&client, &d_ns, "dans", "Running", running).await;
    assert!(preempted(&dans).is_none(), "Dan's guarantee was taken");
    // A stopped instance does not come back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let low = harness::wait_instance(&client, &c_ns, "low", "Stopped", |i| {
        phase(i) == Some(Phase::Stopped)
    })
    .await;
    assert!(low.status.unwrap().node_name.is_some());
    let most = watch.finish();
    assert!(most <= 4, "node over its GPUs: {most} of 4");
}

#[tokio::test]
async fn spot_runs_beyond_quota_and_is_preempted_by_on_demand() {
    let client = harness::operator().await;
    let model = "TEST-SPOT-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-spot"), model, 1, 2).await;
    let watch = Overbooking::watch(&client, &nodes);
    let erin = harness::unique("erin");
    let frank = harness::unique("frank");
    // Erin may hold no GPU on demand, but spot ones.
    let e_ns = harness::user(&client, &erin, json!({"quota": {"maxGpus": 0}})).await;
    let f_ns = harness::user(&client, &frank, json!({"quota": {"maxGpus": 2}})).await;
    let spot = json!({"preemptible": true, "preemption": {"gracePeriod": "1s"}});
    harness::book(&client, &e_ns, "cheap", spec(model, 2, spot)).await;
    harness::wait_instance(&client, &e_ns, "cheap", "Running", running).await;

    harness::book(
        &client,
        &f_ns,
        "paid",
        spec(model, 2, json!({"priority": -100})),
    )
    .await;
    harness::wait_instance(&client, &f_ns, "paid", "Running", running).await;
    let cheap = harness::wait_instance(&client, &e_ns, "cheap", "requeued", |i| {
        phase(i) == Some(Phase::Queued)
            && i.status
                .as_ref()
                .is_some_and(|s| !s.previous_runs.is_empty())
    })
    .await;
    let run = &cheap.status.unwrap().previous_runs[0];
    assert_eq!(run.preempted.as_ref().unwrap().reason, "PreemptedSpot");
    assert!(run.figures.spot, "the run is billed as spot");
    // Back in the queue, it does not take the GPUs back from its preemptor.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paid = harness::wait_instance(&client, &f_ns, "paid", "Running", running).await;
    assert!(preempted(&paid).is_none());
    let cheap = harness::wait_instance(&client, &e_ns, "cheap", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    assert_eq!(cheap.status.unwrap().previous_runs.len(), 1);
    let most = watch.finish();
    assert!(most <= 2, "node over its GPUs: {most} of 2");
}

#[tokio::test]
async fn a_booking_that_would_not_fit_even_after_preemption_preempts_nothing() {
    let client = harness::operator().await;
    let model = "TEST-NOFIT-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-nofit"), model, 1, 4).await;
    let gina = harness::unique("gina");
    let hal = harness::unique("hal");
    let g_ns = harness::user(&client, &gina, json!({"quota": {"maxGpus": 2}})).await;
    let h_ns = harness::user(&client, &hal, json!({"quota": {"maxGpus": 4}})).await;
    // Two GPUs on Gina's guarantee, two spot ones of Hal's.
    harness::book(&client, &g_ns, "hers", spec(model, 2, json!({}))).await;
    harness::book(
        &client,
        &h_ns,
        "spot",
        spec(model, 2, json!({"preemptible": true})),
    )
    .await;
    harness::wait_instance(&client, &g_ns, "hers", "Running", running).await;
    harness::wait_instance(&client, &h_ns, "spot", "Running", running).await;
    // Hal wants all four: only his own spot two could go, which is not enough.
    harness::book(
        &client,
        &h_ns,
        "big",
        spec(model, 4, json!({"priority": 100})),
    )
    .await;
    harness::wait_instance(&client, &h_ns, "big", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (ns, name) in [(&g_ns, "hers"), (&h_ns, "spot")] {
        let i = harness::wait_instance(&client, ns, name, "Running", running).await;
        assert!(preempted(&i).is_none(), "{ns}/{name} preempted for nothing");
    }
    let big = harness::wait_instance(&client, &h_ns, "big", "Queued", |i| {
        phase(i) == Some(Phase::Queued)
    })
    .await;
    let s = big.status.unwrap();
    assert!(s.nominated_node.is_none());
    assert!(
        s.message
            .as_deref()
            .unwrap_or("")
            .contains("waiting for 4 x"),
        "{:?}",
        s.message
    );
}

#[tokio::test]
async fn a_controller_killed_mid_preemption_finishes_it_without_overbooking() {
    let client = harness::operator().await;
    let model = "TEST-PREEMPT-KILL-GPU";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-pkill"), model, 1, 2).await;
    let watch = Overbooking::watch(&client, &nodes);
    let ivy = harness::unique("ivy");
    let i_ns = harness::user(&client, &ivy, json!({"quota": {"maxGpus": 2}})).await;
    let grace = json!({"preemption": {"gracePeriod": "8s"}});
    harness::book(&client, &i_ns, "low", spec(model, 2, grace)).await;
    harness::wait_instance(&client, &i_ns, "low", "Running", running).await;
    harness::book(
        &client,
        &i_ns,
        "high",
        spec(model, 2, json!({"priority": 5})),
    )
    .await;
    harness::wait_instance(&client, &i_ns, "low", "preempted", |i| {
        preempted(i).is_some()
    })
    .await;
    // In the middle of the grace period, the controller crashes and comes back.
    harness::kill_and_restart_controller();
    harness::wait_instance(&client, &i_ns, "high", "Running", running).await;
    let low = harness::wait_instance(&client, &i_ns, "low", "requeued", |i| {
        phase(i) == Some(Phase::Queued)
            && i.status
                .as_ref()
                .is_some_and(|s| s.previous_runs.len() == 1)
    })
    .await;
    assert_eq!(
        low.status.unwrap().previous_runs[0]
            .preempted
            .as_ref()
            .unwrap()
            .by,
        format!("{i_ns}/high")
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &i_ns);
    eventually(
        Duration::from_secs(20),
        "one pod, the preemptor's",
        || async {
            let names: Vec<String> = pods
                .list(&ListParams::default())
                .await
                .expect("list pods")
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names == ["high"]
        },
    )
    .await;
    let most = watch.finish();
    assert!(
        most <= 2,
        "node over its GPUs after the restart: {most} of 2"
    );
}

/// A spot gang is preempted whole: an on-demand booking needing one of its nodes takes it,
/// every pod of the gang goes, and the gang goes back to the queue with its run (all its
/// GPUs) recorded; it holds nothing while it waits.
#[tokio::test]
async fn a_spot_gang_is_preempted_whole_and_requeued() {
    let client = harness::operator().await;
    let model = "TEST-SPOT-GANG";
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-sgang"), model, 2, 2).await;
    let watch = Overbooking::watch(&client, &nodes);
    let ivy = harness::user(
        &client,
        &harness::unique("ivy"),
        json!({"quota": {"maxGpus": 0}}),
    )
    .await;
    let jon = harness::user(
        &client,
        &harness::unique("jon"),
        json!({"quota": {"maxGpus": 2}}),
    )
    .await;
    let mut gang = spec(
        model,
        2,
        json!({"preemptible": true, "preemption": {"gracePeriod": "1s"}}),
    );
    gang["gpu"]["nodes"] = json!(2);
    harness::book(&client, &ivy, "sweep", gang).await;
    harness::wait_instance(&client, &ivy, "sweep", "Running on 2 nodes", |i| {
        running(i) && i.status.as_ref().is_some_and(|s| s.node_names.len() == 2)
    })
    .await;

    harness::book(&client, &jon, "paid", spec(model, 2, json!({}))).await;
    harness::wait_instance(&client, &jon, "paid", "Running", running).await;
    let sweep = harness::wait_instance(&client, &ivy, "sweep", "requeued", |i| {
        phase(i) == Some(Phase::Queued)
            && i.status
                .as_ref()
                .is_some_and(|s| !s.previous_runs.is_empty())
    })
    .await;
    let s = sweep.status.unwrap();
    assert!(s.node_names.is_empty() && s.node_name.is_none(), "{s:?}");
    let run = &s.previous_runs[0];
    assert_eq!(run.preempted.as_ref().unwrap().reason, "PreemptedSpot");
    // Every pod of the gang is gone, not only the one on the node taken.
    harness::poll(Duration::from_secs(30), "the gang's pods gone", || async {
        let pods = Api::<Pod>::namespaced(client.clone(), &ivy)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        match pods.items.len() {
            0 => Ok(()),
            n => Err(format!("{n} pods left")),
        }
    })
    .await;
    let most = watch.finish();
    assert!(most <= 2, "node over its GPUs: {most} of 2");
}
