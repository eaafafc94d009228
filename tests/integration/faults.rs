//! The fault matrix, on a control plane of the test's own: each fault strikes during a
//! burst of bookings while a watcher checks, all along, that no node holds more GPUs than
//! it has, that no instance has two pods and that measured usage never goes down; after
//! each, every instance runs or waits with a reason, and a probe booking made the moment
//! the fault ends runs (its time to Running is the fault's recovery time, printed as a
//! table). Two controller replicas with leader election, each through a TCP proxy of the
//! test's own, are started again when they exit, as their Deployment would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpu_cloud_api::v1::{GpuInstance, Phase};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::harness::proxy::{self, Mode, Proxy};
use crate::harness::{self, Background, PrivateControlPlane, phase, poll};

const MODEL: &str = "TEST-FAULT-GPU";
const PROBE_MODEL: &str = "TEST-FAULT-PROBE";
const GPUS_PER_NODE: u32 = 4;

/// The invariants, checked every 250 ms until finished; what broke them.
struct Invariants {
    stop: Arc<AtomicBool>,
    broken: Arc<Mutex<Vec<String>>>,
}

impl Invariants {
    fn watch(client: &Client, ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(Mutex::new(vec![]));
        let (s, b) = (stop.clone(), broken.clone());
        let pods = Api::<Pod>::namespaced(client.clone(), ns);
        let instances = Api::<GpuInstance>::namespaced(client.clone(), ns);
        tokio::spawn(async move {
            let mut usage: BTreeMap<(String, String), f64> = BTreeMap::new();
            let say = |what: String| b.lock().unwrap().push(what);
            while !s.load(Ordering::Relaxed) {
                // The apiserver may be down: a failed read checks nothing.
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    let per_node = harness::gpus_held_per_node(&list.items);
                    let mut per_owner: BTreeMap<String, u32> = BTreeMap::new();
                    for p in &list.items {
                        for o in p.owner_references() {
                            *per_owner.entry(o.uid.clone()).or_default() += 1;
                        }
                    }
                    for (node, used) in per_node {
                        if used > GPUS_PER_NODE * 2
                            || (used > GPUS_PER_NODE && !node.contains("probe"))
                        {
                            say(format!("node {node} holds {used} GPUs"));
                        }
                    }
                    for (owner, n) in per_owner {
                        if n > 1 {
                            say(format!("instance {owner} has {n} pods"));
                        }
                    }
                }
                if let Ok(list) = instances.list(&ListParams::default()).await {
                    for i in list.items {
                        let Some(s) = i.status else { continue };
                        let (Some(u), Some(started)) = (s.usage, s.started_at) else {
                            continue;
                        };
                        let key = (i.metadata.uid.unwrap_or_default(), started.to_string());
                        let last = usage.entry(key.clone()).or_insert(0.0);
                        if u.gpu_seconds + 1e-9 < *last {
                            say(format!(
                                "usage of {key:?} went down: {} -> {}",
                                last, u.gpu_seconds
                            ));
                        }
                        *last = last.max(u.gpu_seconds);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Invariants { stop, broken }
    }

    fn broken(&self) -> Vec<String> {
        self.broken.lock().unwrap().clone()
    }
}

impl Drop for Invariants {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The controller replicas `a` and `b`, each through its own proxy; one that exits is
/// started again (and its exit recorded), as its Deployment would.
struct Replicas {
    proxies: Vec<Proxy>,
    exits: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
}

const IDS: [&str; 2] = ["a", "b"];

impl Replicas {
    async fn start(cp: &PrivateControlPlane) -> Self {
        let api_port = proxy::apiserver_port(&cp.kubeconfig);
        let mut proxies = vec![];
        let mut kubeconfigs = vec![];
        for id in IDS {
            let p = Proxy::start(api_port).await;
            let kc: PathBuf = cp.dir.join(format!("controller-{id}.kubeconfig"));
            proxy::kubeconfig_through(&cp.kubeconfig, p.port, &kc);
            proxies.push(p);
            kubeconfigs.push(kc);
        }
        let exits = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (exits.clone(), stop.clone());
        tokio::spawn(async move {
            let run = |i: usize| {
                harness::leader_replica(&kubeconfigs[i], IDS[i], &["--node-lost-after", "20s"])
            };
            let mut procs: Vec<Background> = (0..IDS.len()).map(run).collect();
            while !s.load(Ordering::Relaxed) {
                for (i, p) in procs.iter_mut().enumerate() {
                    if p.exited() {
                        e.lock().unwrap().push((IDS[i].to_owned(), Instant::now()));
                        *p = run(i);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Replicas {
            proxies,
            exits,
            stop,
        }
    }

    fn proxy(&self, id: &str) -> &Proxy {
        &self.proxies[IDS.iter().position(|i| *i == id).expect("a replica")]
    }

    fn exits_of(&self, id: &str) -> Vec<Instant> {
        self.exits
            .lock()
            .unwrap()
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, t)| *t)
            .collect()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn holder(client: &Client) -> Option<String> {
    harness::lease_holder(client).await
}

fn spec(model: &str, duration: &str) -> serde_json::Value {
    json!({"gpu": {"model": model, "count": 1}, "image": "busybox", "duration": duration})
}

/// Books `n` instances named `<prefix>-<i>` (30 s each: GPUs keep freeing up), one every
/// 100 ms, in the background.
fn burst(client: &Client, ns: &str, prefix: &str, n: usize) -> tokio::task::JoinHandle<()> {
    let (client, ns, prefix) = (client.clone(), ns.to_owned(), prefix.to_owned());
    tokio::spawn(async move {
        let api = Api::<GpuInstance>::namespaced(client, &ns);
        for i in 0..n {
            let inst: GpuInstance = serde_json::from_value(json!({
                "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
                "metadata": {"name": format!("{prefix}-{i}"), "namespace": ns},
                "spec": spec(MODEL, "30s")}))
            .unwrap();
            // The apiserver may be down: retry until it takes it.
            for _ in 0..200 {
                match api.create(&Default::default(), &inst).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(e)) if e.code == 409 => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Books probe `name` (retrying while the apiserver is away) and returns how long after
/// `since` it ran.
async fn probe(client: &Client, ns: &str, name: &str, since: Instant) -> Duration {
    let api = Api::<GpuInstance>::namespaced(client.clone(), ns);
    let inst: GpuInstance = serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
        "metadata": {"name": name, "namespace": ns}, "spec": spec(PROBE_MODEL, "1h")}))
    .unwrap();
    poll(
        Duration::from_secs(120),
        &format!("probe {name} booked"),
        || async {
            match api.create(&Default::default(), &inst).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    poll(
        Duration::from_secs(120),
        &format!("probe {name} Running"),
        || async {
            match api.get(name).await {
                Ok(i) if phase(&i) == Some(Phase::Running) => Ok(()),
                other => Err(format!("{:?}", other.map(|i| i.status))),
            }
        },
    )
    .await;
    let took = since.elapsed();
    // It has done its job: its GPU goes back for the next probe.
    let _ = api.delete(name, &DeleteParams::default()).await;
    took
}

/// Waits until every instance runs, has finished, or waits with a reason.
async fn settled(client: &Client, ns: &str) {
    let api = Api::<GpuInstance>::namespaced(client.clone(), ns);
    harness::eventually(
        Duration::from_secs(120),
        "every instance Running, finished or waiting with a reason",
        || async {
            let Ok(list) = api.list(&ListParams::default()).await else {
                return false;
            };
            list.items.iter().all(|i| {
                let s = i.status.clone().unwrap_or_default();
                i.metadata.deletion_timestamp.is_some()
                    || matches!(s.phase, Some(p) if p.is_finished() || p == Phase::Running)
                    || (s.phase == Some(Phase::Queued) && s.message.is_some())
            })
        },
    )
    .await;
}

/// Waits until the apiserver answers again.
async fn apiserver_back(client: &Client) {
    let api = Api::<GpuInstance>::all(client.clone());
    harness::eventually(
        Duration::from_secs(90),
        "the apiserver answering",
        || async { api.list(&ListParams::default().limit(1)).await.is_ok() },
    )
    .await;
}

/// etcd's current revision, and a compaction up to it (what the apiserver does every
/// five minutes), through etcd's JSON gateway.
fn compact_etcd(port: u16) -> i64 {
    use std::io::{Read, Write};
    let post = |path: &str, body: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("etcd");
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    };
    let range: serde_json::Value =
        serde_json::from_str(&post("/v3/kv/range", r#"{"key":"AA=="}"#)).expect("etcd range");
    let rev: i64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("etcd revision");
    let out = post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{rev}","physical":true}}"#),
    );
    assert!(out.contains("header"), "etcd compaction: {out}");
    rev
}

#[tokio::test]
async fn the_fault_matrix_recovers_without_breaking_an_invariant() {
    let started = Instant::now();
    // Without the watch cache, watches read etcd and expire with its compaction (fault 8).
    let cp = PrivateControlPlane::start_with("faults", &["--watch-cache=false"]);
    let client = cp.client().await;
    harness::install(&cp.kubeconfig).expect("install CRDs");
    let nodes = harness::gpu_nodes(&client, "t-fault", MODEL, 3, GPUS_PER_NODE).await;
    let probe_node = harness::gpu_nodes(&client, "t-fault-probe", PROBE_MODEL, 1, 8).await;
    let replicas = Replicas::start(&cp).await;
    let ns = harness::user(&client, "faulty", json!({"quota": {"maxGpus": 64}})).await;
    poll(Duration::from_secs(60), "a leader", || async {
        holder(&client).await.ok_or("no holder".to_string())
    })
    .await;
    let invariants = Invariants::watch(&client, &ns);
    let mut table: Vec<(&str, String)> = vec![];

    // 1. kube-apiserver killed and started again.
    let b = burst(&client, &ns, "api", 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.component("kill", "kube-apiserver");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.component("revive", "kube-apiserver");
    let back = Instant::now();
    apiserver_back(&client).await;
    let t = probe(&client, &ns, "p-api", back).await;
    b.await.unwrap();
    settled(&client, &ns).await;
    table.push((
        "kube-apiserver killed 2 s, restarted",
        format!("{:.1} s", t.as_secs_f64()),
    ));

    // 2. etcd killed and started again on the same data.
    let b = burst(&client, &ns, "etcd", 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.component("kill", "etcd");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.component("revive", "etcd");
    let back = Instant::now();
    apiserver_back(&client).await;
    let t = probe(&client, &ns, "p-etcd", back).await;
    b.await.unwrap();
    settled(&client, &ns).await;
    table.push((
        "etcd killed 2 s, restarted on its data",
        format!("{:.1} s", t.as_secs_f64()),
    ));

    // 3. The leader cut off from the apiserver for 30 s, the standby not.
    let leader = poll(Duration::from_secs(60), "a leader", || async {
        holder(&client).await.ok_or("no holder".to_string())
    })
    .await;
    let standby = IDS.iter().find(|i| **i != leader).unwrap().to_string();
    let b = burst(&client, &ns, "cut", 8);
    let exits_before = replicas.exits_of(&leader).len();
    let cut = Instant::now();
    replicas.proxy(&leader).set(Mode::Cut);
    let placing = tokio::spawn({
        let (client, ns) = (client.clone(), ns.clone());
        async move { probe(&client, &ns, "p-cut", cut).await }
    });
    let took_over = poll(Duration::from_secs(60), "the standby leading", || async {
        match holder(&client).await {
            Some(h) if h == standby => Ok(Instant::now()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let stepped_down = replicas.exits_of(&leader).get(exits_before).copied();
    let stepped_down = stepped_down.expect("the cut leader stopped");
    assert!(
        stepped_down < took_over,
        "the cut leader stopped {:?} after the standby took over",
        stepped_down - took_over
    );
    let gap = placing.await.unwrap();
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed())).await;
    replicas.proxy(&leader).set(Mode::Pass);
    b.await.unwrap();
    settled(&client, &ns).await;
    table.push((
        "leader cut off 30 s (standby not)",
        format!(
            "stopped after {:.1} s, standby led after {:.1} s, placed after {:.1} s",
            (stepped_down - cut).as_secs_f64(),
            (took_over - cut).as_secs_f64(),
            gap.as_secs_f64()
        ),
    ));

    // 4. The apiserver slowed: every chunk to and from both replicas 1 s late, for 20 s.
    let b = burst(&client, &ns, "slow", 8);
    for id in IDS {
        replicas.proxy(id).set(Mode::Delay(Duration::from_secs(1)));
    }
    let slow = Instant::now();
    let mut holders = std::collections::BTreeSet::new();
    while slow.elapsed() < Duration::from_secs(20) {
        if let Some(h) = holder(&client).await {
            holders.insert(h);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in IDS {
        replicas.proxy(id).set(Mode::Pass);
    }
    let back = Instant::now();
    let t = probe(&client, &ns, "p-slow", back).await;
    b.await.unwrap();
    settled(&client, &ns).await;
    table.push((
        "apiserver 1 s slower each way for 20 s",
        format!("{:.1} s; leaders meanwhile {holders:?}", t.as_secs_f64()),
    ));

    // 5. The conversion webhook down: v1 keeps working, v1alpha1 reads fail clearly.
    let port = harness::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let webhook_args = [
        "webhook",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--url",
        &url,
    ];
    let webhook = Background::start(&cp.kubeconfig, &webhook_args);
    let old = Api::<gpu_cloud_api::v1alpha1::GpuInstance>::namespaced(client.clone(), &ns);
    let new = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    harness::eventually(
        Duration::from_secs(30),
        "v1alpha1 read through the webhook",
        || async { old.list(&ListParams::default()).await.is_ok() },
    )
    .await;
    drop(webhook);
    let b = burst(&client, &ns, "hook", 4);
    let err = poll(
        Duration::from_secs(30),
        "a v1alpha1 read failing",
        || async {
            match old.list(&ListParams::default()).await {
                Err(e) => Ok(e.to_string()),
                Ok(_) => Err("still read".to_string()),
            }
        },
    )
    .await;
    assert!(err.contains("conversion webhook"), "{err}");
    new.list(&ListParams::default())
        .await
        .expect("v1 reads without the webhook");
    let t_v1 = probe(&client, &ns, "p-hook", Instant::now()).await;
    let _webhook = Background::start(&cp.kubeconfig, &webhook_args);
    let back = Instant::now();
    harness::eventually(Duration::from_secs(30), "v1alpha1 read again", || async {
        old.list(&ListParams::default()).await.is_ok()
    })
    .await;
    let t_alpha = back.elapsed();
    b.await.unwrap();
    table.push((
        "conversion webhook down",
        format!(
            "v1 unaffected (a booking ran in {:.1} s); v1alpha1 back {:.1} s after it returned",
            t_v1.as_secs_f64(),
            t_alpha.as_secs_f64()
        ),
    ));

    // 6. `gpu-cloud migrate` killed mid-run, then run again to the end.
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let status = json!({"status": {"storedVersions": ["v1alpha1", "v1"]}});
    crds.patch_status(
        "gpuinstances.gpu-cloud.io",
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await
    .expect("mark v1alpha1 as stored");
    let many = harness::namespace(&client, "migrate").await;
    futures::future::join_all((0..400).map(|i| {
        let client = client.clone();
        let many = many.clone();
        async move {
            harness::book(
                &client,
                &many,
                &format!("m{i}"),
                spec("TEST-NO-SUCH-GPU", "1h"),
            )
            .await;
        }
    }))
    .await;
    let mut migrating = Background::start(&cp.kubeconfig, &["migrate"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed_mid_run = !migrating.exited();
    drop(migrating);
    let stored = |c: CustomResourceDefinition| c.status.and_then(|s| s.stored_versions);
    let crd = crds.get("gpuinstances.gpu-cloud.io").await.unwrap();
    assert_eq!(
        stored(crd),
        Some(vec!["v1alpha1".into(), "v1".into()]),
        "trimmed by a migrate killed mid-run"
    );
    let rerun = Instant::now();
    let (ok, _, err) = harness::gpu_cloud(&cp.kubeconfig, &["migrate"]);
    assert!(ok, "migrate run again: {err}");
    let crd = crds.get("gpuinstances.gpu-cloud.io").await.unwrap();
    assert_eq!(stored(crd), Some(vec!["v1".to_string()]));
    table.push((
        "gpu-cloud migrate killed after 0.4 s, run again",
        format!(
            "{}completed in {:.1} s",
            if killed_mid_run {
                ""
            } else {
                "(it had finished) "
            },
            rerun.elapsed().as_secs_f64()
        ),
    ));
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&many, &DeleteParams::default())
        .await;

    // 7. The agent cut off for a minute: its usage then catches up exactly.
    let agent_proxy = Proxy::start(proxy::apiserver_port(&cp.kubeconfig)).await;
    let agent_kc = cp.dir.join("agent.kubeconfig");
    proxy::kubeconfig_through(&cp.kubeconfig, agent_proxy.port, &agent_kc);
    let _agent = harness::simulated_agent(&agent_kc, &probe_node[0], harness::free_port());
    harness::book(&client, &ns, "measured", spec(PROBE_MODEL, "1h")).await;
    let exact = |i: &GpuInstance| -> Option<(jiff::Timestamp, f64, f64)> {
        let s = i.status.as_ref()?;
        let u = s.usage.as_ref()?;
        let secs = u.sampled_at.duration_since(s.started_at?).as_secs_f64();
        Some((u.sampled_at, u.gpu_seconds, secs))
    };
    let first = poll(Duration::from_secs(60), "measured usage", || async {
        new.get("measured")
            .await
            .ok()
            .as_ref()
            .and_then(exact)
            .ok_or("not yet".to_string())
    })
    .await;
    agent_proxy.set(Mode::Cut);
    tokio::time::sleep(Duration::from_secs(60)).await;
    agent_proxy.set(Mode::Pass);
    let back = Instant::now();
    let caught_up = poll(Duration::from_secs(60), "usage after the cut", || async {
        match new.get("measured").await.ok().as_ref().and_then(exact) {
            Some(u) if u.0.duration_since(first.0).as_secs_f64() > 60.0 => Ok(u),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let t = back.elapsed();
    let (_, gpu_seconds, secs) = caught_up;
    assert!(
        (gpu_seconds - secs).abs() <= 1e-6 * secs,
        "after the cut {gpu_seconds} GPU-seconds for {secs} s held"
    );
    table.push((
        "agent cut off 60 s",
        format!("usage exact again after {:.1} s", t.as_secs_f64()),
    ));

    // 8. A watch expired by etcd compaction (this apiserver runs without its watch cache,
    // so watches read etcd): the leader is cut off for 2 s (less than the Lease) while a
    // booking comes and one goes, etcd is compacted, and its watches resume from
    // revisions that no longer exist; they relist and miss nothing.
    let leader = poll(Duration::from_secs(60), "a leader", || async {
        holder(&client).await.ok_or("no holder".to_string())
    })
    .await;
    let exits_before = replicas.exits_of(&leader).len();
    let seen_rv = new
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap_or_default();
    // Cut right after a renewal, so that the whole Lease (10 s) covers the work below
    // however slow the machine is: the leader must not step down, its watches must resume.
    let renewed = || async {
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "default")
            .get("gpu-cloud-controller")
            .await
            .ok()
            .and_then(|l| l.spec?.renew_time)
    };
    let last = renewed().await;
    harness::eventually(
        Duration::from_secs(15),
        "a fresh renewal of the Lease",
        || async { renewed().await != last },
    )
    .await;
    replicas.proxy(&leader).set(Mode::Cut);
    let cut = Instant::now();
    new.delete("measured", &DeleteParams::default())
        .await
        .unwrap();
    harness::book(&client, &ns, "while-away", spec(PROBE_MODEL, "1h")).await;
    // A write elsewhere, so that the compaction passes every revision the leader saw.
    harness::namespace(&client, "compaction").await;
    let rev = compact_etcd(cp.etcd_port());
    // The revision the leader last saw is gone: a watch from it expires.
    let expired = {
        use futures::StreamExt;
        let lp = kube::api::WatchParams::default();
        let events = new
            .watch(&lp, &seen_rv)
            .await
            .expect("watch from an old revision");
        let mut events = std::pin::pin!(events);
        match events.next().await {
            Some(Ok(kube::api::WatchEvent::Error(e))) => e.code == 410,
            Some(Err(kube::Error::Api(e))) => e.code == 410,
            other => panic!("a watch from compacted revision {seen_rv}: {other:?}"),
        }
    };
    assert!(expired, "a watch from revision {seen_rv} did not expire");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut.elapsed())).await;
    replicas.proxy(&leader).set(Mode::Pass);
    let back = Instant::now();
    harness::wait_instance(&client, &ns, "while-away", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    harness::eventually(
        Duration::from_secs(60),
        "the deleted instance gone",
        || async { new.get_opt("measured").await.ok().flatten().is_none() },
    )
    .await;
    assert_eq!(
        replicas.exits_of(&leader).len(),
        exits_before,
        "the leader stopped: its watches were not resumed but started afresh"
    );
    table.push((
        "watches expired by etcd compaction",
        format!(
            "compacted at revision {rev}; the booking made meanwhile placed {:.1} s after reconnecting",
            back.elapsed().as_secs_f64()
        ),
    ));
    settled(&client, &ns).await;

    let broken = invariants.broken();
    println!(
        "fault matrix ({:.0} s in all):",
        started.elapsed().as_secs_f64()
    );
    for (fault, recovery) in &table {
        println!("  {fault:<55} {recovery}");
    }
    assert!(broken.is_empty(), "invariants broken: {broken:#?}");
    let _ = nodes;
}
