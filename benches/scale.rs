//! The scale benchmark: gpu-cloud against kube-scheduler and against the raw API ceiling,
//! on one local control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok) with N fake GPU nodes, with the same client settings for all three:
//!
//! - **ceiling**: the writes every booking needs at the least (create the GpuInstance,
//!   create its pod already bound to a node, one status write), sent by a client that makes
//!   no decisions, as fast as the apiserver takes them;
//! - **kube-scheduler**: N plain pods asking for `nvidia.com/gpu`, bound by kube-scheduler;
//! - **gpu-cloud**: N GpuInstances applied, until all are Running, with the controller's
//!   latency, peak RSS, CPU time and API requests per booking.
//!
//! - **dashboard**: with every booking of the gpu-cloud run still there, `gpu-cloud
//!   dashboard` serving an operator (who sees every instance): each page's load time over
//!   HTTP and its size.
//!
//! Each run ends with the invariants checked (no node over its GPUs, every instance Running
//! or Queued with a reason, no duplicate or orphan pods); a violation fails the benchmark.
//! Figures go to `<out>/scale.json`, the bound-over-time plot to `<out>/scale.png`.
//!
//!   cargo bench --bench scale -- --nodes 1000 --instances 10000      (or hack/bench-scale)
//!
//! Under `cargo test` (no `--bench` argument) it runs a small size and checks the
//! invariants, so CI keeps it working; its timings then mean nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use gpu_cloud_agent::simulated::UTILIZATION_ANNOTATION;
use gpu_cloud_api::v1::{GpuInstance, GpuUser, Phase};
use gpu_cloud_api::{GPU_PRODUCT_LABEL, GPU_RESOURCE};
use gpu_cloud_core::scheduler::pod_gpu_request;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::json;

// The control plane, install, ports and waits of the integration tests; the benchmark uses
// only a part of it.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MODELS: [&str; 3] = [
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-L40S",
];

/// Sizes and settings.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Fake GPU nodes (models mixed evenly).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// GPUs per node.
    #[arg(long, default_value_t = 16)]
    gpus_per_node: u32,
    /// Bookings (one GPU each) per run.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Users (namespaces) the bookings are spread over.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Requests the benchmark's client keeps in flight (the same in every run).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sequential single bookings on the idle cluster, for the idle latency.
    #[arg(long, default_value_t = 30)]
    idle_samples: usize,
    /// Where scale.json and scale.png go.
    #[arg(long, default_value = "target/bench-scale")]
    out: PathBuf,
    /// Extra arguments for `gpu-cloud controller` (tunables), e.g. `--controller-arg=--write-concurrency=64`.
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
    /// Longest wait for one run to finish, seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Also run Kueue on the same job (issue #19; built by hack/kueue-build, about 5
    /// minutes the first time): per user a ClusterQueue and LocalQueue, pods admitted by
    /// Kueue and bound by kube-scheduler.
    #[arg(long)]
    kueue: bool,
    /// Skip the ceiling and kube-scheduler runs: a run about gpu-cloud's own phases (their
    /// ratios are then absent).
    #[arg(long)]
    skip_peers: bool,
    /// Node agents (`gpu-cloud agent --simulate`) that play the GPU nodes' agents in the
    /// idle-rule phase, each for its share of the nodes.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// How long the idle-rule phase counts writes once every instance has usage, seconds;
    /// 0 skips the phase.
    #[arg(long, default_value_t = 60)]
    idle_window: u64,
    /// Gangs in gpu-cloud's run (issue #16): every N-th booking is a gang of 2 to 4 nodes
    /// with one GPU on each; 0: none (the peers' runs never have gangs, so compare
    /// throughput without them).
    #[arg(long, default_value_t = 0)]
    gang_every: usize,
    /// Set by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn small(out: PathBuf) -> Args {
        Args {
            // Three nodes a model: a gang of two still fits once best fit has filled one.
            nodes: 9,
            gpus_per_node: 16,
            instances: 60,
            users: 3,
            concurrency: 8,
            idle_samples: 3,
            out,
            controller_args: vec![],
            timeout: 120,
            // Kueue too, so that CI keeps its run working (hack/kueue-build: minutes, once).
            kueue: true,
            skip_peers: false,
            agents: 2,
            idle_window: 30,
            // One booking in 5 a gang, so that CI checks gangs under a burst too (not a
            // multiple of the 3 models, or all gangs would be of one model).
            gang_every: 5,
            bench: false,
        }
    }
}

/// One run's figures.
#[derive(Debug, Default, Serialize)]
struct RunFigures {
    name: &'static str,
    count: usize,
    seconds: f64,
    per_second: f64,
    /// Seconds from the run's start at which each booking was done, sorted.
    #[serde(skip)]
    done_at: Vec<f64>,
    latency_p50_s: Option<f64>,
    latency_p99_s: Option<f64>,
    invariants: Vec<String>,
    /// The apiserver's own time (seconds, requests) per "VERB resource", busiest first:
    /// where the run's apiserver CPU went.
    apiserver: Vec<(String, f64, f64)>,
}

/// What the gpu-cloud run adds.
#[derive(Debug, Default, Serialize)]
struct ControllerFigures {
    idle_latency_p50_s: f64,
    idle_latency_p99_s: f64,
    idle_latency_max_s: f64,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    writes_per_booking: f64,
    object_writes_per_booking: f64,
    event_writes_per_booking: f64,
    reads_per_booking: f64,
    watches: f64,
    requests_by_verb_and_resource: BTreeMap<String, f64>,
    /// The controller's writes per booking made one at a time on the quiet cluster (the
    /// steady state), by "verb resource".
    idle_writes_per_booking: BTreeMap<String, f64>,
    /// Seconds from a pod's creation to kwok reporting it Ready, under the burst: longer
    /// than the starting grace (15 s) means a `Scheduled` status before `Running`.
    pod_start_lag_p50_s: f64,
    pod_start_lag_p99_s: f64,
    /// Normal Events dropped over --event-qps during the burst.
    events_dropped: f64,
    /// Placement passes during the burst, and their mean duration.
    placement_passes: f64,
    placement_pass_mean_s: f64,
    /// Apply → Running of a booking within its owner's guarantee on a full model whose
    /// free GPUs were all lent (borrowed, grace period 0s): the reclaim, one at a time.
    reclaim_latency_p50_s: f64,
    reclaim_latency_max_s: f64,
    reclaim_samples: usize,
    /// Every booking running under an idle rule, its usage written by node agents.
    idle_rules: IdleRuleFigures,
}

/// The idle-rule phase: every running instance under its user's idle rule (timeout 1h,
/// half of them idle at 1 %, half busy at 80 %), simulated node agents writing their usage
/// as on real nodes. Counted once every instance's usage has been written at least twice.
#[derive(Debug, Default, Serialize)]
struct IdleRuleFigures {
    instances: usize,
    agents: usize,
    /// The agents' write interval, seconds.
    agent_write_interval_s: u64,
    /// From the agents' start until every instance's usage was written twice (the rule
    /// published, the idle stretches begun).
    warmup_s: f64,
    /// The controller's status writes of instances during the warm-up.
    warmup_controller_status_writes: f64,
    /// The counted window, seconds.
    window_s: f64,
    /// The agents' status writes per second in the window (what the apiserver took).
    agent_status_writes_per_s: f64,
    /// The controller's status writes of instances per second in the window.
    controller_status_writes_per_s: f64,
    /// The same per agent write: 1 means a controller write for every sample written.
    controller_writes_per_agent_write: f64,
    /// Everything the controller wrote in the window, by "verb resource".
    controller_writes_by_verb_and_resource: BTreeMap<String, f64>,
    /// The agents sampled every instance within the idle rule's 60 s maxGap. When they do
    /// not (an apiserver that takes fewer writes a second than instances / 60), every
    /// sample comes after a gap and restarts an idle instance's clock: each is then a
    /// transition, and the window's controller writes are those.
    agents_keep_up: bool,
}

/// What the benchmark reads of the controller's metrics.
struct Scrape {
    /// `gpu_cloud_api_requests_total` by "verb resource".
    requests: BTreeMap<String, f64>,
    /// `gpu_cloud_events_dropped_total`.
    events_dropped: f64,
    /// Sum and count of `gpu_cloud_placement_pass_seconds`.
    pass_seconds_sum: f64,
    passes: f64,
}

/// The Kueue run and what it cost its deciding process.
#[derive(Debug, Serialize)]
struct KueueFigures {
    run: RunFigures,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    ratio_gpu_cloud_to_kueue: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: BTreeMap<&'static str, String>,
    nodes: usize,
    gpus: u64,
    instances: usize,
    users: usize,
    client_concurrency: usize,
    /// Every N-th booking of gpu-cloud's run a gang of 2 to 4 nodes (0: none).
    gang_every: usize,
    ceiling: RunFigures,
    kube_scheduler: RunFigures,
    /// With --kueue: Kueue admitting, kube-scheduler binding.
    kueue: Option<KueueFigures>,
    gpu_cloud: RunFigures,
    controller: ControllerFigures,
    /// Each dashboard page with every booking there, as an operator sees it.
    dashboard: Vec<PageFigures>,
    ratio_gpu_cloud_to_kube_scheduler: f64,
    ratio_gpu_cloud_to_ceiling: f64,
}

impl Report {
    /// The runs made, in the order they ran.
    fn runs(&self) -> impl Iterator<Item = &RunFigures> {
        [
            Some(&self.ceiling),
            Some(&self.kube_scheduler),
            self.kueue.as_ref().map(|k| &k.run),
            Some(&self.gpu_cloud),
        ]
        .into_iter()
        .flatten()
    }
}

fn main() {
    let cli = Args::parse();
    let args = if cli.bench {
        cli
    } else {
        Args::small(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-scale-small"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("scale benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> R<()> {
    std::fs::create_dir_all(&args.out)?;
    // Every model's bookings must fit its nodes, or "until all bound" never comes.
    let per_model = (args.instances + args.idle_samples).div_ceil(MODELS.len());
    let nodes_per_model = args.nodes / MODELS.len();
    if args.nodes < MODELS.len() || per_model > nodes_per_model * args.gpus_per_node as usize {
        return Err(format!(
            "{} bookings do not fit {} nodes of {} GPUs in {} models: raise --nodes or --gpus-per-node",
            args.instances + args.idle_samples,
            args.nodes,
            args.gpus_per_node,
            MODELS.len()
        )
        .into());
    }
    let cp = support::PrivateControlPlane::start("bench");
    let client = cp.client().await;
    let t = Instant::now();
    make_nodes(&client, &args).await?;
    support::install(&cp.kubeconfig)?;
    eprintln!(
        "{} nodes ready, CRDs installed in {:.1}s",
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    let (ceiling, sched) = if args.skip_peers {
        let skipped = |name| RunFigures {
            name,
            per_second: f64::NAN,
            ..Default::default()
        };
        (skipped("ceiling"), skipped("kube-scheduler"))
    } else {
        let m0 = apiserver_time(&client).await?;
        let mut ceiling = ceiling(&client, &args).await?;
        ceiling.apiserver = busiest(&m0, &apiserver_time(&client).await?);
        report_run(&ceiling);
        cleanup(&client, "ceil").await?;
        let m0 = apiserver_time(&client).await?;
        let mut sched = kube_scheduler(&client, &args).await?;
        sched.apiserver = busiest(&m0, &apiserver_time(&client).await?);
        report_run(&sched);
        cleanup(&client, "sched").await?;
        (ceiling, sched)
    };
    let kueue = if args.kueue {
        let m0 = apiserver_time(&client).await?;
        let (mut run, peak_rss_mib, cpu_seconds) =
            kueue_run(&client, &cp.kubeconfig, &args).await?;
        run.apiserver = busiest(&m0, &apiserver_time(&client).await?);
        report_run(&run);
        eprintln!("kueue: peak RSS {peak_rss_mib:.0} MiB, CPU {cpu_seconds:.1} s");
        Some(KueueFigures {
            run,
            peak_rss_mib,
            cpu_seconds,
            ratio_gpu_cloud_to_kueue: f64::NAN,
        })
    } else {
        None
    };
    let m0 = apiserver_time(&client).await?;
    let (mut ours, controller) = gpu_cloud_run(&client, &cp.kubeconfig, &args).await?;
    ours.apiserver = busiest(&m0, &apiserver_time(&client).await?);
    report_run(&ours);
    let dashboard = dashboard_pages(&client, &cp.kubeconfig).await?;

    let report = Report {
        machine: machine(),
        nodes: args.nodes,
        gpus: args.nodes as u64 * u64::from(args.gpus_per_node),
        instances: args.instances,
        users: args.users,
        client_concurrency: args.concurrency,
        gang_every: args.gang_every,
        ratio_gpu_cloud_to_kube_scheduler: ours.per_second / sched.per_second,
        ratio_gpu_cloud_to_ceiling: ours.per_second / ceiling.per_second,
        kueue: kueue.map(|k| KueueFigures {
            ratio_gpu_cloud_to_kueue: ours.per_second / k.run.per_second,
            ..k
        }),
        ceiling,
        kube_scheduler: sched,
        gpu_cloud: ours,
        controller,
        dashboard,
    };
    let json_path = args.out.join("scale.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let png_path = args.out.join("scale.png");
    plot(&report, &png_path)?;
    print_summary(&report);
    eprintln!("wrote {} and {}", json_path.display(), png_path.display());
    let broken: Vec<&String> = report.runs().flat_map(|r| r.invariants.iter()).collect();
    if !broken.is_empty() {
        return Err(format!("invariants violated: {broken:?}").into());
    }
    Ok(())
}

// ---- the three runs -----------------------------------------------------------------

/// The node each booking goes to in the runs that do not decide (ceiling): round-robin over
/// the nodes of its model.
fn model_of(i: usize) -> &'static str {
    MODELS[i % MODELS.len()]
}

fn node_name(i: usize) -> String {
    format!("bench-{}-{:04}", short(model_of(i)), i / MODELS.len())
}

fn short(model: &str) -> &'static str {
    match model {
        "NVIDIA-H100-80GB-HBM3" => "h100",
        "NVIDIA-A100-SXM4-80GB" => "a100",
        _ => "l40s",
    }
}

/// Nodes of gpu-cloud's booking `i`: a gang of 2 to 4 nodes for every `gang_every`-th, one
/// otherwise; at most one node fewer than a model has (best fit fills one node at a time,
/// and a gang wanting a GPU on every node of its model would wait for one to come free).
fn gang_of(i: usize, args: &Args) -> u32 {
    let per_model = u32::try_from(args.nodes / MODELS.len()).unwrap_or(u32::MAX);
    match args.gang_every {
        0 => 1,
        n if i % n == n - 1 => (2 + (i / n % 3) as u32)
            .min(per_model.saturating_sub(1))
            .max(1),
        _ => 1,
    }
}

fn instance_body(name: &str, model: &str) -> serde_json::Value {
    // What the simulated agents of the idle-rule phase report: every other booking idle.
    let util = if name.bytes().last().is_some_and(|b| b % 2 == 0) {
        "1"
    } else {
        "80"
    };
    json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
        "metadata": {"name": name, "annotations": {UTILIZATION_ANNOTATION: util}},
        "spec": {"gpu": {"model": model, "count": 1}, "image": "registry.k8s.io/pause:3.10",
                 "duration": "2h"},
    })
}

async fn ceiling(client: &Client, args: &Args) -> R<RunFigures> {
    let nss = namespaces(client, "ceil", args.users).await?;
    // Booking i goes round-robin over the nodes of its model (node j has model j % 3).
    let m = MODELS.len();
    let nodes_of = |model: usize| (args.nodes - model.min(args.nodes)).div_ceil(m).max(1);
    let start = Instant::now();
    let done = Arc::new(Mutex::new(Vec::with_capacity(args.instances)));
    stream::iter(0..args.instances)
        .map(|i| {
            let client = client.clone();
            let ns = nss[i % nss.len()].clone();
            let done = done.clone();
            let node_index = (i / m % nodes_of(i % m)) * m + i % m;
            async move {
                let name = format!("b{i:05}");
                let model = model_of(i);
                let node = node_name(node_index);
                let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
                let inst: GpuInstance = serde_json::from_value(instance_body(&name, model))?;
                let inst = api.create(&PostParams::default(), &inst).await?;
                let pod =
                    gpu_cloud_controller::pod::build(&inst, &ns, std::slice::from_ref(&node), 0)?;
                Api::<Pod>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &pod)
                    .await?;
                let status =
                    json!({"status": {"phase": "Running", "nodeName": node, "podName": name}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                lock(&done).push(start.elapsed().as_secs_f64());
                R::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let mut run = finish("ceiling", start, take(&done));
    run.invariants = node_capacity_violations(client, &list_pods(client).await?).await?;
    Ok(run)
}

async fn kube_scheduler(client: &Client, args: &Args) -> R<RunFigures> {
    let nss = namespaces(client, "sched", args.users).await?;
    bound_pods(client, args, "kube-scheduler", "sched", &nss, |_| {}).await
}

/// `args.instances` pods asking for one GPU each, labelled `bench=<label>` and spread over
/// `nss`, until kube-scheduler has bound every one; `shape` adds what the run's admission
/// needs (Kueue's labels, finalizer and scheduling gate).
async fn bound_pods(
    client: &Client,
    args: &Args,
    name: &'static str,
    label: &str,
    nss: &[String],
    shape: impl Fn(&mut serde_json::Value) + Clone,
) -> R<RunFigures> {
    let bound = Arc::new(Mutex::new(HashMap::<String, f64>::new()));
    let start = Instant::now();
    // Watch first, so that no binding is missed.
    let watch = {
        let bound = bound.clone();
        let api = Api::<Pod>::all(client.clone());
        let cfg = watcher::Config::default().labels(&format!("bench={label}"));
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Some(Ok(p)) = s.next().await {
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    lock(&bound)
                        .entry(p.name_any())
                        .or_insert_with(|| start.elapsed().as_secs_f64());
                }
            }
        })
    };
    stream::iter(0..args.instances)
        .map(|i| {
            let client = client.clone();
            let ns = nss[i % nss.len()].clone();
            let shape = shape.clone();
            async move {
                let name = format!("b{i:05}");
                let mut body = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"bench": label}},
                    "spec": {
                        "nodeSelector": {GPU_PRODUCT_LABEL: model_of(i)},
                        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists"}],
                        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"limits": {GPU_RESOURCE: "1"}, "requests": {GPU_RESOURCE: "1"}}}],
                    },
                });
                shape(&mut body);
                let pod: Pod = serde_json::from_value(body)?;
                Api::<Pod>::namespaced(client, &ns)
                    .create(&PostParams::default(), &pod)
                    .await?;
                R::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    wait_until(args.timeout, &format!("{name}: every pod bound"), || {
        lock(&bound).len() >= args.instances
    })
    .await?;
    watch.abort();
    let times = lock(&bound).values().copied().collect();
    let mut run = finish(name, start, times);
    run.invariants = node_capacity_violations(client, &list_pods(client).await?).await?;
    Ok(run)
}

/// Kueue (issue #19; docs/perf/kueue.md): per user a ClusterQueue with a GPU quota in each
/// model's ResourceFlavor and a LocalQueue in its namespace; the same pods as the
/// kube-scheduler run, in the form Kueue's pod webhook gives them (queue-name and managed
/// labels, its finalizer, the admission scheduling gate), admitted by Kueue and bound by
/// kube-scheduler. Returns the run and Kueue's peak RSS (MiB) and CPU seconds.
async fn kueue_run(client: &Client, kubeconfig: &Path, args: &Args) -> R<(RunFigures, f64, f64)> {
    let kueue = Kueue::start(kubeconfig, &args.out.join("kueue"))?;
    wait_until(120, "kueue ready", || {
        support::http_get(kueue.health_port, "/readyz").is_ok_and(|(s, _)| s.contains(" 200 "))
    })
    .await?;
    let flavors = MODELS.map(|m| {
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
               "metadata": {"name": short(m)}, "spec": {"nodeLabels": {GPU_PRODUCT_LABEL: m}}})
    });
    let nss = namespaces(client, "kueue", args.users).await?;
    let mut objects: Vec<serde_json::Value> = flavors.to_vec();
    for ns in &nss {
        let quota = |m: &str| json!({"name": short(m), "resources": [{"name": GPU_RESOURCE, "nominalQuota": 100_000}]});
        objects.push(
            json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": ns},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                     "resourceGroups": [{"coveredResources": [GPU_RESOURCE],
                                         "flavors": MODELS.map(quota)}]}}),
        );
        objects.push(
            json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": "q", "namespace": ns}, "spec": {"clusterQueue": ns}}),
        );
    }
    let manifest = args.out.join("kueue/queues.json");
    std::fs::write(
        &manifest,
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))?,
    )?;
    kubectl(kubeconfig, &["apply", "-f", &manifest.to_string_lossy()])?;
    let cqs = kube::api::ApiResource {
        group: "kueue.x-k8s.io".into(),
        version: "v1beta2".into(),
        api_version: "kueue.x-k8s.io/v1beta2".into(),
        kind: "ClusterQueue".into(),
        plural: "clusterqueues".into(),
    };
    let cq_api = Api::<kube::api::DynamicObject>::all_with(client.clone(), &cqs);
    wait_until_async(120, "every ClusterQueue active", || async {
        let list = cq_api.list(&ListParams::default()).await.ok()?;
        let active = list
            .items
            .iter()
            .filter(|q| {
                q.data["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Active" && c["status"] == "True")
                })
            })
            .count();
        (active >= nss.len()).then_some(())
    })
    .await?;
    let cpu_before = kueue.cpu_seconds()?;
    let run = bound_pods(client, args, "kueue", "kueue", &nss, |pod| {
        pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = json!("q");
        pod["metadata"]["labels"]["kueue.x-k8s.io/managed"] = json!("true");
        pod["metadata"]["finalizers"] = json!(["kueue.x-k8s.io/managed"]);
        pod["spec"]["schedulingGates"] = json!([{"name": "kueue.x-k8s.io/admission"}]);
    })
    .await?;
    let cpu = kueue.cpu_seconds()? - cpu_before;
    let rss = kueue.peak_rss_mib()?;
    // Its pods go while it runs: it takes its finalizer off the deleted ones.
    cleanup(client, "kueue").await?;
    drop(kueue);
    Ok((run, rss, cpu))
}

/// `kubectl args` against `kubeconfig`.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> R<()> {
    let out = Command::new(support::kubectl())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into())
    }
}

async fn gpu_cloud_run(
    client: &Client,
    kubeconfig: &Path,
    args: &Args,
) -> R<(RunFigures, ControllerFigures)> {
    let port = support::free_port();
    let controller = Controller::start(kubeconfig, port, &args.controller_args)?;
    let users: Vec<String> = (0..args.users).map(|u| format!("bench{u:03}")).collect();
    let user_api = Api::<GpuUser>::all(client.clone());
    stream::iter(users.iter())
        .map(|u| {
            let api = user_api.clone();
            async move {
                let user: GpuUser = serde_json::from_value(json!({
                    "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser",
                    "metadata": {"name": u},
                    "spec": {"subjects": [{"kind": "User", "name": u}],
                             "quota": {"maxGpus": 100_000, "maxInstances": 100_000},
                             // For the idle-rule phase; an hour is never reached here.
                             "idle": {"timeout": "1h"}},
                }))?;
                api.create(&PostParams::default(), &user).await?;
                R::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    wait_until_async(args.timeout, "every GpuUser provisioned", || async {
        let list = user_api.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|u| u.status.as_ref().is_some_and(|s| s.namespace.is_some()))
            .count();
        (ready >= users.len()).then_some(())
    })
    .await?;
    // The quota controller must have counted each namespace's quota before pods are admitted.
    quotas_counted(client, "gpu-bench").await?;

    // Running times by instance, from one watch.
    let running = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let watch = {
        let running = running.clone();
        let api = Api::<GpuInstance>::all(client.clone());
        tokio::spawn(async move {
            let mut s = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(Ok(i)) = s.next().await {
                let ns = i.namespace().unwrap_or_default();
                if ns.starts_with("gpu-bench")
                    && i.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running)
                {
                    let key = format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any());
                    lock(&running).entry(key).or_insert_with(Instant::now);
                }
            }
        })
    };

    // Idle latency: one booking at a time on a quiet cluster.
    let idle_before = controller.scrape().await?.requests;
    let mut idle = Vec::new();
    for k in 0..args.idle_samples {
        let ns = format!("gpu-{}", users[k % users.len()]);
        let name = format!("idle{k:03}");
        let key = format!("{ns}/{name}");
        let inst: GpuInstance = serde_json::from_value(instance_body(&name, model_of(k)))?;
        let t0 = Instant::now();
        Api::<GpuInstance>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &inst)
            .await?;
        wait_until(30, "an idle booking runs", || {
            lock(&running).contains_key(&key)
        })
        .await?;
        let at = lock(&running).get(&key).copied().unwrap_or(t0);
        idle.push(at.duration_since(t0).as_secs_f64());
    }
    idle.sort_by(f64::total_cmp);
    // Trailing writes of the last idle bookings (their users' figures) land first.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let scrape_before = controller.scrape().await?;
    let before = &scrape_before.requests;
    let idle_writes_per_booking: BTreeMap<String, f64> = before
        .iter()
        .filter(|(k, _)| is_write(k.split_once(' ').map_or(k.as_str(), |(v, _)| v)))
        .map(|(k, v)| {
            let d = v - idle_before.get(k).copied().unwrap_or(0.0);
            (k.clone(), d / args.idle_samples.max(1) as f64)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let cpu_before = controller.cpu_seconds()?;
    // GPU_CLOUD_BENCH_APISERVER_PROFILE=<file>: the apiserver's CPU profile over the first
    // 60 s of the burst (Go pprof; `go tool pprof -top <file>`), where its time goes.
    let profile = std::env::var("GPU_CLOUD_BENCH_APISERVER_PROFILE")
        .ok()
        .map(|path| {
            let client = client.clone();
            tokio::spawn(async move {
                let req = http::Request::get("/debug/pprof/profile?seconds=60").body(Vec::new())?;
                let mut body = Vec::new();
                let stream = client.request_stream(req).await?;
                futures::AsyncReadExt::read_to_end(&mut std::pin::pin!(stream), &mut body).await?;
                std::fs::write(&path, body)?;
                eprintln!("apiserver CPU profile of the burst: {path}");
                R::Ok(())
            })
        });
    let applied = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let start = Instant::now();
    stream::iter(0..args.instances)
        .map(|i| {
            let client = client.clone();
            let ns = format!("gpu-{}", users[i % users.len()]);
            let applied = applied.clone();
            async move {
                let name = format!("b{i:05}");
                let mut body = instance_body(&name, model_of(i));
                let nodes = gang_of(i, args);
                if nodes > 1 {
                    body["spec"]["gpu"]["nodes"] = json!(nodes);
                }
                let inst: GpuInstance = serde_json::from_value(body)?;
                let t0 = Instant::now();
                Api::<GpuInstance>::namespaced(client, &ns)
                    .create(&PostParams::default(), &inst)
                    .await?;
                lock(&applied).insert(format!("{ns}/{name}"), t0);
                R::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let total = args.instances + args.idle_samples;
    if let Err(e) = wait_until(args.timeout, "every instance Running", || {
        lock(&running).len() >= total
    })
    .await
    {
        // Say why: the first few that are not Running, as their status has it.
        let all = Api::<GpuInstance>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        for i in all
            .items
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.phase) != Some(Phase::Running))
            .take(5)
        {
            let s = i.status.clone().unwrap_or_default();
            eprintln!(
                "not running: {}/{} ({} node(s)): {:?} {:?}",
                i.namespace().unwrap_or_default(),
                i.name_any(),
                i.spec.gpu.nodes(),
                s.phase,
                s.message
            );
        }
        return Err(e);
    }
    // Let trailing writes (user statuses) land before counting requests.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scrape_after = controller.scrape().await?;
    let after = &scrape_after.requests;
    let cpu = controller.cpu_seconds()? - cpu_before;
    let rss = controller.peak_rss_mib()?;
    if let Some(p) = profile {
        p.await??;
    }
    let reclaim = reclaim_latencies(client, args, &running).await?;
    watch.abort();

    let (done_at, mut latencies): (Vec<f64>, Vec<f64>) = {
        let applied = lock(&applied);
        let running = lock(&running);
        applied
            .iter()
            .filter_map(|(k, t0)| {
                let t = running.get(k)?;
                Some((
                    t.duration_since(start).as_secs_f64(),
                    t.duration_since(*t0).as_secs_f64(),
                ))
            })
            .unzip()
    };
    latencies.sort_by(f64::total_cmp);
    let mut run = finish("gpu-cloud", start, done_at);
    run.latency_p50_s = Some(quantile(&latencies, 0.5));
    run.latency_p99_s = Some(quantile(&latencies, 0.99));
    // One list of the pods serves every check.
    let pods = list_pods(client).await?;
    run.invariants = node_capacity_violations(client, &pods).await?;
    run.invariants
        .extend(instance_violations(client, &pods).await?);
    let mut lag = pod_start_lags(&pods, "gpu-bench");
    lag.sort_by(f64::total_cmp);

    let n = args.instances as f64;
    let delta: BTreeMap<String, f64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let sum = |f: &dyn Fn(&str, &str) -> bool| -> f64 {
        delta
            .iter()
            .filter(|(k, _)| {
                let (verb, res) = k.split_once(' ').unwrap_or((k.as_str(), ""));
                f(verb, res)
            })
            .map(|(_, v)| v)
            .sum::<f64>()
            // An empty sum is -0.0, which prints as "-0.00".
            + 0.0
    };
    let events = sum(&|v, r| is_write(v) && r == "events");
    let writes = sum(&|v, _| is_write(v));
    let figures = ControllerFigures {
        idle_latency_p50_s: quantile(&idle, 0.5),
        idle_latency_p99_s: quantile(&idle, 0.99),
        idle_latency_max_s: idle.last().copied().unwrap_or(0.0),
        peak_rss_mib: rss,
        cpu_seconds: cpu,
        writes_per_booking: writes / n,
        object_writes_per_booking: (writes - events) / n,
        event_writes_per_booking: events / n,
        reads_per_booking: sum(&|v, _| matches!(v, "get" | "list")) / n,
        watches: sum(&|v, _| v == "watch"),
        events_dropped: scrape_after.events_dropped - scrape_before.events_dropped,
        placement_passes: scrape_after.passes - scrape_before.passes,
        placement_pass_mean_s: (scrape_after.pass_seconds_sum - scrape_before.pass_seconds_sum)
            / (scrape_after.passes - scrape_before.passes).max(1.0),
        requests_by_verb_and_resource: delta,
        idle_writes_per_booking,
        pod_start_lag_p50_s: quantile(&lag, 0.5),
        pod_start_lag_p99_s: quantile(&lag, 0.99),
        reclaim_latency_p50_s: quantile(&reclaim, 0.5),
        reclaim_latency_max_s: reclaim.last().copied().unwrap_or(0.0),
        reclaim_samples: reclaim.len(),
        idle_rules: idle_rule_writes(kubeconfig, client, args, &controller).await?,
    };
    // Utilization constant, the hour far: no transition in the window, so no write.
    let i = &figures.idle_rules;
    if i.agents_keep_up && i.controller_status_writes_per_s > 0.0 {
        run.invariants.push(format!(
            "idle rules: the controller wrote {:.0} instance statuses in a window without \
             transitions ({:.0} agent writes)",
            i.controller_status_writes_per_s * i.window_s,
            i.agent_status_writes_per_s * i.window_s
        ));
    }
    if args.idle_window > 0 && i.agent_status_writes_per_s <= 0.0 {
        run.invariants
            .push("idle rules: the agents wrote no usage in the window".into());
    }
    drop(controller);
    Ok((run, figures))
}

/// The idle-rule phase (see [`IdleRuleFigures`]): simulated node agents, each for its
/// share of the nodes, write every running instance's usage every 15 s, with the
/// controller still running.
async fn idle_rule_writes(
    kubeconfig: &Path,
    client: &Client,
    args: &Args,
    controller: &Controller,
) -> R<IdleRuleFigures> {
    const WRITE_INTERVAL: u64 = 15;
    if args.idle_window == 0 {
        return Ok(IdleRuleFigures::default());
    }
    let agents = args.agents.clamp(1, args.nodes);
    let nodes: Vec<String> = (0..args.nodes).map(node_name).collect();
    let start = Instant::now();
    let s0 = controller.scrape().await?;
    let _agents: Vec<Agent> = nodes
        .chunks(nodes.len().div_ceil(agents))
        .map(|share| {
            // One list per node and sample: sampling as often as writing keeps the
            // agents' lists from crowding the apiserver here.
            Agent::start(
                kubeconfig,
                &[
                    "agent",
                    "--simulate",
                    "--node",
                    &share.join(","),
                    "--sample-interval",
                    &format!("{WRITE_INTERVAL}s"),
                    "--write-interval",
                    &format!("{WRITE_INTERVAL}s"),
                    "--metrics-addr",
                    &format!("127.0.0.1:{}", support::free_port()),
                ],
            )
        })
        .collect::<R<_>>()?;
    // Every instance written twice since the start (the agents write all theirs in turn),
    // then two more write intervals: every transition (an idle stretch begun) is behind.
    let instances = Api::<GpuInstance>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    let a0 = apiserver_time(client).await?;
    wait_until_async(
        args.timeout,
        "every instance's usage written twice",
        || async {
            let a = apiserver_time(client).await.ok()?;
            let written = status_writes_seen(&a, &a0);
            (written >= 2.0 * instances as f64).then_some(())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2 * WRITE_INTERVAL)).await;
    let warmup = start.elapsed().as_secs_f64();
    let s1 = controller.scrape().await?;
    let a1 = apiserver_time(client).await?;
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_window)).await;
    let s2 = controller.scrape().await?;
    let a2 = apiserver_time(client).await?;
    let window = t1.elapsed().as_secs_f64();
    let status_writes = |r: &BTreeMap<String, f64>, from: &BTreeMap<String, f64>| -> f64 {
        r.iter()
            .filter(|(k, _)| is_instance_status_write(k))
            .map(|(k, v)| v - from.get(k).copied().unwrap_or(0.0))
            .sum::<f64>()
            + 0.0
    };
    let controller_window = status_writes(&s2.requests, &s1.requests);
    let all_window = status_writes_seen(&a2, &a1);
    let agent_window = (all_window - controller_window).max(0.0);
    let by_resource = s2
        .requests
        .iter()
        .filter(|(k, _)| is_write(k.split_once(' ').map_or(k.as_str(), |(v, _)| v)))
        .map(|(k, v)| (k.clone(), v - s1.requests.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let f = IdleRuleFigures {
        instances,
        agents,
        agent_write_interval_s: WRITE_INTERVAL,
        warmup_s: warmup,
        warmup_controller_status_writes: status_writes(&s1.requests, &s0.requests),
        window_s: window,
        agent_status_writes_per_s: agent_window / window,
        controller_status_writes_per_s: controller_window / window,
        controller_writes_per_agent_write: controller_window / agent_window.max(1.0),
        controller_writes_by_verb_and_resource: by_resource,
        agents_keep_up: agent_window / window * 60.0 >= instances as f64,
    };
    eprintln!(
        "idle rules: {} instances, {} agents; warm-up {:.0} s ({:.0} controller status writes); \
         then {:.1} agent writes/s, {:.2} controller status writes/s ({:.3} per agent write)",
        f.instances,
        f.agents,
        f.warmup_s,
        f.warmup_controller_status_writes,
        f.agent_status_writes_per_s,
        f.controller_status_writes_per_s,
        f.controller_writes_per_agent_write
    );
    Ok(f)
}

/// A "verb resource" key (ours or the apiserver's) that counts writes of instance statuses.
fn is_instance_status_write(key: &str) -> bool {
    let (verb, res) = key.split_once(' ').unwrap_or((key, ""));
    is_write(verb) && res == "gpuinstances/status"
}

/// Status writes of GpuInstances the apiserver served between two readings (anyone's).
fn status_writes_seen(
    now: &BTreeMap<String, (f64, f64)>,
    before: &BTreeMap<String, (f64, f64)>,
) -> f64 {
    now.iter()
        .filter(|(k, _)| is_instance_status_write(k))
        .map(|(k, (_, n))| n - before.get(k).map_or(0.0, |(_, n)| *n))
        .sum::<f64>()
        + 0.0
}

/// One dashboard page's figures.
#[derive(Debug, Default, Serialize)]
struct PageFigures {
    page: String,
    /// GET over HTTP to the last byte, the viewer's TokenReview cached: median and worst of
    /// [`PAGE_LOADS`].
    load_p50_ms: f64,
    load_max_ms: f64,
    bytes: usize,
    /// Instances the viewer sees.
    instances: usize,
}

/// Loads of each page measured.
const PAGE_LOADS: usize = 10;

/// `gpu-cloud dashboard` over the cluster as the gpu-cloud run left it, as an operator:
/// every page's load time and size.
async fn dashboard_pages(client: &Client, kubeconfig: &Path) -> R<Vec<PageFigures>> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let ns = "gpu-bench-operators";
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "ops"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await?;
    let token = support::sa_token(client, ns, "ops").await;
    let instances = Api::<GpuInstance>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let some = instances.first().ok_or("no instance left to show")?;
    let port = support::free_port();
    let mut dashboard = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"))
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--operators-group", &format!("system:serviceaccounts:{ns}")])
        .args(["--calendar-namespace", support::CONTROLLER_NAMESPACE])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let figures = async {
        let t = Instant::now();
        wait_until(120, "the dashboard serving", || {
            support::http_get(port, "/healthz").is_ok_and(|(s, _)| s.contains(" 200 "))
        })
        .await?;
        eprintln!(
            "dashboard: caches of {} instances filled in {:.1}s",
            instances.len(),
            t.elapsed().as_secs_f64()
        );
        let auth = format!("Bearer {token}");
        let pages = [
            "/".to_owned(),
            "/queue".to_owned(),
            "/reservations".to_owned(),
            "/users".to_owned(),
            format!(
                "/users/{}",
                some.namespace()
                    .unwrap_or_default()
                    .trim_start_matches("gpu-")
            ),
            format!(
                "/instances/{}/{}",
                some.namespace().unwrap_or_default(),
                some.name_any()
            ),
        ];
        let mut out = Vec::new();
        for page in pages {
            let mut times = Vec::new();
            let mut body = String::new();
            // The first load reviews the token; the rest find it cached, as a viewer's do.
            for k in 0..=PAGE_LOADS {
                let t = Instant::now();
                let (head, b) = support::http_get_with(port, &page, &[("Authorization", &auth)])?;
                if !head.contains(" 200 ") {
                    return Err(format!("GET {page}: {head}").into());
                }
                if k > 0 {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                body = b;
            }
            times.sort_by(f64::total_cmp);
            out.push(PageFigures {
                page,
                load_p50_ms: quantile(&times, 0.5),
                load_max_ms: times.last().copied().unwrap_or(0.0),
                bytes: body.len(),
                instances: instances.len(),
            });
        }
        R::Ok(out)
    }
    .await;
    let _ = dashboard.kill();
    let _ = dashboard.wait();
    figures
}

/// Bookings that reclaim lent GPUs, one at a time.
const RECLAIM_SAMPLES: usize = 5;

/// Fills every free GPU of the first model with bookings of a user who borrows them (no
/// guarantee of its own, grace period 0s), then books [`RECLAIM_SAMPLES`] bookings of a
/// user within its guarantee one at a time: each preempts borrowed GPUs. Returns their
/// apply → Running latencies, sorted.
async fn reclaim_latencies(
    client: &Client,
    args: &Args,
    running: &Arc<Mutex<HashMap<String, Instant>>>,
) -> R<Vec<f64>> {
    let model = MODELS[0];
    let user_api = Api::<GpuUser>::all(client.clone());
    for (name, quota) in [
        (
            "bench-borrower",
            json!({"maxGpus": 0, "borrowGpus": 100_000, "maxSpotGpus": 0}),
        ),
        ("bench-lender", json!({"maxGpus": 1000, "maxSpotGpus": 0})),
    ] {
        let user: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": name},
            "spec": {"quota": quota},
        }))?;
        user_api.create(&PostParams::default(), &user).await?;
    }
    wait_until_async(args.timeout, "reclaim users provisioned", || async {
        let list = user_api.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|u| {
                u.name_any().starts_with("bench-")
                    && u.status.as_ref().is_some_and(|s| s.namespace.is_some())
            })
            .count();
        (ready >= 2).then_some(())
    })
    .await?;
    quotas_counted(client, "gpu-bench-").await?;
    // One borrowed booking per node of the model, as large as what is free there.
    let pods = list_pods(client).await?;
    let mut used: HashMap<String, u32> = HashMap::new();
    for p in &pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *used.entry(n).or_default() += gpu_cloud_core::scheduler::pod_gpu_request(p);
        }
    }
    let free: Vec<u32> = (0..args.nodes)
        .filter(|&i| model_of(i) == model)
        .map(|i| {
            args.gpus_per_node
                .saturating_sub(used.get(&node_name(i)).copied().unwrap_or(0))
        })
        .filter(|&f| f > 0)
        .collect();
    let borrower_ns = "gpu-bench-borrower";
    let fills = free.len();
    stream::iter(free.into_iter().enumerate())
        .map(|(k, count)| {
            let client = client.clone();
            async move {
                let name = format!("lent{k:04}");
                let mut body = instance_body(&name, model);
                body["spec"]["gpu"]["count"] = json!(count);
                body["spec"]["preemption"] = json!({"gracePeriod": "0s"});
                let inst: GpuInstance = serde_json::from_value(body)?;
                Api::<GpuInstance>::namespaced(client, borrower_ns)
                    .create(&PostParams::default(), &inst)
                    .await?;
                R::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    wait_until(args.timeout, "every free GPU of the model lent", || {
        lock(running)
            .keys()
            .filter(|k| k.starts_with(borrower_ns))
            .count()
            >= fills
    })
    .await?;
    let mut out = vec![];
    for k in 0..RECLAIM_SAMPLES {
        let ns = "gpu-bench-lender";
        let name = format!("reclaim{k}");
        let key = format!("{ns}/{name}");
        let inst: GpuInstance = serde_json::from_value(instance_body(&name, model))?;
        let t0 = Instant::now();
        Api::<GpuInstance>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &inst)
            .await?;
        wait_until(60, "a reclaiming booking runs", || {
            lock(running).contains_key(&key)
        })
        .await?;
        let at = lock(running).get(&key).copied().unwrap_or(t0);
        out.push(at.duration_since(t0).as_secs_f64());
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

// ---- where the apiserver's time went --------------------------------------------------

/// `apiserver_request_duration_seconds` sum and count by "VERB resource[/subresource]".
async fn apiserver_time(client: &Client) -> R<BTreeMap<String, (f64, f64)>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let (is_sum, rest) =
            if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_sum{") {
                (true, r)
            } else if let Some(r) = line.strip_prefix("apiserver_request_duration_seconds_count{") {
                (false, r)
            } else {
                continue;
            };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.trim_start_matches(',').strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        if get("verb") == "WATCH" {
            continue; // long-lived: their duration is how long they stayed open
        }
        let sub = get("subresource");
        let key = if sub.is_empty() {
            format!("{} {}", get("verb"), get("resource"))
        } else {
            format!("{} {}/{sub}", get("verb"), get("resource"))
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        let e = out.entry(key).or_default();
        if is_sum {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    Ok(out)
}

/// The requests that took the apiserver most time between two readings.
fn busiest(
    before: &BTreeMap<String, (f64, f64)>,
    after: &BTreeMap<String, (f64, f64)>,
) -> Vec<(String, f64, f64)> {
    let mut v: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(k, (s, c))| {
            let (s0, c0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), s - s0, c - c0)
        })
        .filter(|(_, s, _)| *s > 0.0)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.truncate(10);
    v
}

// ---- invariants ---------------------------------------------------------------------

/// Nodes holding more GPUs (by unfinished pods) than they have.
async fn node_capacity_violations(client: &Client, pods: &[Pod]) -> R<Vec<String>> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let used = gpu_cloud_core::scheduler::gpus_in_use(pods);
    let mut out = vec![];
    for n in &nodes.items {
        let have = gpu_cloud_core::scheduler::NodeGpus::from_node(n).allocatable;
        let held = used.get(&n.name_any()).copied().unwrap_or(0);
        if held > have {
            out.push(format!("node {} holds {held} GPUs of {have}", n.name_any()));
        }
    }
    let unbound = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
        .filter(|p| pod_gpu_request(p) > 0)
        .count();
    if unbound > 0 {
        out.push(format!("{unbound} GPU pods are not bound to a node"));
    }
    Ok(out)
}

/// Instances neither Running nor Queued with a reason; duplicate and orphan pods.
async fn instance_violations(client: &Client, pods: &[Pod]) -> R<Vec<String>> {
    let instances = Api::<GpuInstance>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut out = vec![];
    let mut bad: BTreeMap<String, usize> = BTreeMap::new();
    let mut example = None;
    for i in &instances.items {
        let s = i.status.clone().unwrap_or_default();
        let ok = match s.phase {
            Some(Phase::Running) => s.node_name.is_some(),
            Some(Phase::Queued) => s.message.is_some() && !s.conditions.is_empty(),
            _ => false,
        };
        if !ok {
            *bad.entry(format!("{:?}", s.phase)).or_default() += 1;
            example.get_or_insert_with(|| {
                format!(
                    "{}/{} is {:?} ({:?})",
                    i.namespace().unwrap_or_default(),
                    i.name_any(),
                    s.phase,
                    s.message
                )
            });
        }
    }
    for (phase, n) in &bad {
        out.push(format!(
            "{n} instances in phase {phase}, neither Running nor Queued with a reason"
        ));
    }
    out.extend(example.map(|e| format!("for example {e}")));
    // Pods per instance (by uid), and the nodes they are on: one pod for a single booking,
    // one per node of a gang, on distinct nodes.
    let wanted: HashMap<String, u32> = instances
        .items
        .iter()
        .filter_map(|i| Some((i.uid()?, i.spec.gpu.nodes())))
        .collect();
    let mut per_owner: HashMap<String, usize> = wanted.keys().map(|u| (u.clone(), 0)).collect();
    let mut nodes_of: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
    let mut orphans = 0;
    for p in pods.iter().filter(|p| {
        p.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some(gpu_cloud_api::MANAGED_BY)
    }) {
        let owner = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        match owner.as_ref().and_then(|o| per_owner.get_mut(o)) {
            Some(n) => {
                *n += 1;
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                if let (Some(o), Some(node)) = (owner, node) {
                    nodes_of.entry(o).or_default().insert(node);
                }
            }
            None => orphans += 1,
        }
    }
    if orphans > 0 {
        out.push(format!("{orphans} orphan pods (no GpuInstance owns them)"));
    }
    let wants = |uid: &str| wanted.get(uid).copied().unwrap_or(1) as usize;
    let dup = per_owner.iter().filter(|(u, n)| **n > wants(u)).count();
    if dup > 0 {
        out.push(format!("{dup} instances have more pods than nodes"));
    }
    // A gang is whole or has no pod: never some of its pods without the others.
    let partial = per_owner
        .iter()
        .filter(|(u, n)| **n > 0 && **n < wants(u))
        .count();
    if partial > 0 {
        out.push(format!("{partial} gangs have only some of their pods"));
    }
    let shared = nodes_of
        .iter()
        .filter(|(u, nodes)| nodes.len() < per_owner.get(*u).copied().unwrap_or(0))
        .count();
    if shared > 0 {
        out.push(format!("{shared} gangs have two pods on one node"));
    }
    Ok(out)
}

/// Seconds from each pod's creation to its Ready condition, in namespaces starting with
/// `prefix` (whole seconds: the API's timestamps).
fn pod_start_lags(pods: &[Pod], prefix: &str) -> Vec<f64> {
    pods.iter()
        .filter(|p| p.namespace().is_some_and(|ns| ns.starts_with(prefix)))
        .filter_map(|p| {
            let created = p.metadata.creation_timestamp.as_ref()?.0;
            let ready = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()?
                .0;
            Some(created.duration_until(ready).as_secs_f64())
        })
        .collect()
}

/// A writing verb, as our clients count it (`patch`) or as the apiserver does (`PATCH`,
/// `APPLY` for server-side apply, `PUT`, `POST`).
fn is_write(verb: &str) -> bool {
    matches!(
        verb.to_ascii_lowercase().as_str(),
        "create" | "update" | "patch" | "delete" | "apply" | "put" | "post"
    )
}

async fn list_pods(client: &Client) -> R<Vec<Pod>> {
    let lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    Ok(Api::<Pod>::all(client.clone()).list(&lp).await?.items)
}

// ---- cluster set-up -----------------------------------------------------------------

async fn make_nodes(client: &Client, args: &Args) -> R<()> {
    let api = Api::<Node>::all(client.clone());
    let gpus = args.gpus_per_node.to_string();
    stream::iter(0..args.nodes)
        .map(|i| {
            let api = api.clone();
            let gpus = gpus.clone();
            async move {
                let name = node_name(i);
                let model = model_of(i);
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name,
                        "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                        "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                            "type": "kwok", "nvidia.com/gpu.present": "true",
                            GPU_PRODUCT_LABEL: model, "nvidia.com/gpu.count": gpus}},
                    "status": {
                        "capacity": {"cpu": "256", "memory": "2Ti", "pods": "250", GPU_RESOURCE: gpus},
                        "allocatable": {"cpu": "256", "memory": "2Ti", "pods": "250", GPU_RESOURCE: gpus}},
                }))?;
                api.create(&PostParams::default(), &node).await?;
                R::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let want = args.nodes;
    wait_until_async(600, "every node Ready and untainted", || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                let g = gpu_cloud_core::scheduler::NodeGpus::from_node(n);
                g.ready
                    && n.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_none_or(Vec::is_empty)
            })
            .count();
        (ready >= want).then_some(())
    })
    .await
}

/// Namespaces `<prefix>-uNNN`, each with a GPU ResourceQuota like a GpuUser's.
async fn namespaces(client: &Client, prefix: &str, n: usize) -> R<Vec<String>> {
    let names: Vec<String> = (0..n).map(|u| format!("{prefix}-u{u:03}")).collect();
    for ns in &names {
        let body: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"bench": prefix}}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &body)
            .await?;
        let quota: ResourceQuota = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpu-cloud-user"},
            "spec": {"hard": {format!("requests.{GPU_RESOURCE}"): "100000"}}}))?;
        Api::<ResourceQuota>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &quota)
            .await?;
    }
    quotas_counted(client, prefix).await?;
    // Pods wait in admission for their namespace's default ServiceAccount: let the
    // controller-manager make them first, as it has long done for the users' namespaces.
    for ns in &names {
        let api = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns);
        wait_until_async(60, "default ServiceAccounts", || async {
            api.get_opt("default").await.ok().flatten().map(|_| ())
        })
        .await?;
    }
    Ok(names)
}

/// Waits until the quota controller has filled in every quota of the namespaces starting
/// with `prefix` (pods are refused before that).
async fn quotas_counted(client: &Client, prefix: &str) -> R<()> {
    wait_until_async(120, "ResourceQuotas counted", || async {
        let list = Api::<ResourceQuota>::all(client.clone())
            .list(&ListParams::default())
            .await
            .ok()?;
        list.items
            .iter()
            .filter(|q| q.namespace().unwrap_or_default().starts_with(prefix))
            // A quota without limits (a user without a GPU bound) has nothing to count.
            .all(|q| {
                let limits = q.spec.as_ref().and_then(|s| s.hard.as_ref());
                limits.is_none_or(|h| h.is_empty())
                    || q.status.as_ref().and_then(|s| s.hard.as_ref()).is_some()
            })
            .then_some(())
    })
    .await
}

/// Deletes a run's pods and GpuInstances at once (force: kwok nodes run nothing) and waits
/// until they are gone, so the next run starts on empty nodes.
async fn cleanup(client: &Client, prefix: &str) -> R<()> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    for ns in Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&format!("bench={prefix}")))
        .await?
        .items
    {
        let ns = ns.name_any();
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete_collection(&dp, &ListParams::default())
            .await?;
        // No controller ran: take off the finalizer the admission policy put on.
        let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
        let names: Vec<String> = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|i| i.name_any())
            .collect();
        stream::iter(names)
            .map(|name| {
                let api = api.clone();
                async move {
                    let unfinalize = json!({"metadata": {"finalizers": null}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(unfinalize))
                        .await?;
                    R::Ok(())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        api.delete_collection(&dp, &ListParams::default()).await?;
    }
    wait_until_async(300, "previous run's pods and instances gone", || async {
        let pods = list_pods(client).await.ok()?;
        let instances = Api::<GpuInstance>::all(client.clone())
            .list(&ListParams::default())
            .await
            .ok()?;
        let ours = |ns: Option<String>| ns.unwrap_or_default().starts_with(prefix);
        (!pods.iter().any(|p| ours(p.namespace()))
            && !instances.items.iter().any(|i| ours(i.namespace())))
        .then_some(())
    })
    .await
}

// ---- processes ----------------------------------------------------------------------

/// Kueue's manager as its own process, out of cluster (docs/perf/kueue.md): built by
/// `hack/kueue-build`, its CRDs applied server-side, its certificates made here. It reads
/// its metrics certificate from a fixed path under /etc/kueue, so it runs in a mount
/// namespace of its own whose /etc is a copy holding it: nothing is left in the real /etc.
struct Kueue {
    child: Child,
    health_port: u16,
}

impl Kueue {
    fn start(kubeconfig: &Path, dir: &Path) -> R<Self> {
        let build = |args: &[&str]| -> R<String> {
            let out = Command::new(support::repo_root().join("hack/kueue-build"))
                .args(args)
                .stderr(Stdio::inherit())
                .output()?;
            if !out.status.success() {
                return Err(format!("hack/kueue-build {args:?} failed").into());
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let binary = build(&[])?;
        let crds = build(&["--crds"])?;
        kubectl(kubeconfig, &["apply", "--server-side", "-f", &crds])?;
        // Kueue exits at once if a kind it indexes is not served yet.
        kubectl(
            kubeconfig,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=120s",
                "-f",
                &crds,
            ],
        )?;
        let _ = kubectl(kubeconfig, &["create", "namespace", "kueue-system"]);
        let _ = std::fs::remove_dir_all(dir);
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs)?;
        let openssl = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=kueue",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(certs.join("tls.key"))
            .arg("-out")
            .arg(certs.join("tls.crt"))
            .stderr(Stdio::null())
            .status()?;
        if !openssl.success() {
            return Err("openssl could not make kueue's certificate".into());
        }
        let (webhook, metrics, health) = (
            support::free_port(),
            support::free_port(),
            support::free_port(),
        );
        let config = format!(
            "apiVersion: config.kueue.x-k8s.io/v1beta2\nkind: Configuration\nnamespace: kueue-system\n\
             manageJobsWithoutQueueName: false\ninternalCertManagement: {{enable: false}}\n\
             leaderElection: {{leaderElect: false}}\nclientConnection: {{qps: -1, burst: 500}}\n\
             webhook: {{host: 127.0.0.1, port: {webhook}, certDir: {certs}}}\n\
             metrics: {{bindAddress: \"127.0.0.1:{metrics}\"}}\n\
             health: {{healthProbeBindAddress: \"127.0.0.1:{health}\"}}\n\
             controller: {{groupKindConcurrency: {{Pod: 8, Workload.kueue.x-k8s.io: 8, \
             LocalQueue.kueue.x-k8s.io: 4, ClusterQueue.kueue.x-k8s.io: 4}}}}\n\
             integrations: {{frameworks: [pod]}}\n\
             featureGates: {{VisibilityOnDemand: false, DisableWaitForPodsReady: true}}\n",
            certs = certs.display()
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("kueue.log"))?;
        // unshare execs sh, which execs kueue: the child's pid is kueue's.
        let script = r#"set -e
mount --make-rprivate /
cp -a /etc "$D/etc"
mkdir -p "$D/etc/kueue/metrics/certs"
cp "$D/certs/tls.crt" "$D/certs/tls.key" "$D/etc/kueue/metrics/certs/"
mount --bind "$D/etc" /etc
exec "$@""#;
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", script, "kueue", &binary])
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .env("D", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Kueue {
            child,
            health_port: health,
        })
    }

    fn cpu_seconds(&self) -> R<f64> {
        proc_cpu_seconds(self.child.id())
    }

    fn peak_rss_mib(&self) -> R<f64> {
        proc_peak_rss_mib(self.child.id())
    }
}

impl Drop for Kueue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gpu-cloud controller under test, as its own process (so its RSS and CPU are its own).
struct Controller {
    child: Child,
    port: u16,
}

impl Controller {
    fn start(kubeconfig: &Path, port: u16, extra: &[String]) -> R<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"));
        cmd.args(["controller", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        // Profiling the controller's heap: GPU_CLOUD_BENCH_HEAPTRACK=<prefix> writes
        // <prefix>.gz for heaptrack_print / heaptrack_gui (heaptrack's preload library,
        // its interpreter reading a FIFO; no debugger attach needed).
        if let Ok(prefix) = std::env::var("GPU_CLOUD_BENCH_HEAPTRACK") {
            let fifo = format!("{prefix}.fifo");
            let _ = std::fs::remove_file(&fifo);
            if !Command::new("mkfifo").arg(&fifo).status()?.success() {
                return Err(format!("mkfifo {fifo}").into());
            }
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "/usr/lib/heaptrack/libexec/heaptrack_interpret < '{fifo}' | gzip -c > '{prefix}.gz'"
                ))
                .spawn()?;
            cmd.env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", &fifo);
        }
        die_with_the_benchmark(&mut cmd);
        Ok(Controller {
            child: cmd.spawn()?,
            port,
        })
    }

    /// One read of the controller's /metrics.
    async fn scrape(&self) -> R<Scrape> {
        let port = self.port;
        let body = wait_until_async(30, "controller metrics", || async move {
            support::http_get(port, "/metrics")
                .ok()
                .map(|(_, body)| body)
        })
        .await?;
        let get = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Ok(Scrape {
            requests: parse_requests(&body),
            events_dropped: get("gpu_cloud_events_dropped_total"),
            pass_seconds_sum: get("gpu_cloud_placement_pass_seconds_sum"),
            passes: get("gpu_cloud_placement_pass_seconds_count"),
        })
    }

    fn cpu_seconds(&self) -> R<f64> {
        proc_cpu_seconds(self.child.id())
    }

    fn peak_rss_mib(&self) -> R<f64> {
        proc_peak_rss_mib(self.child.id())
    }
}

/// User and system CPU seconds of process `pid` so far.
fn proc_cpu_seconds(pid: u32) -> R<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state field.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).ok_or("stat utime")?.parse::<f64>()?
        + f.get(12).ok_or("stat stime")?.parse::<f64>()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Peak resident memory of process `pid`, MiB.
fn proc_peak_rss_mib(pid: u32) -> R<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gpu-cloud` with `args` (a node agent), killed when dropped or when the benchmark dies.
struct Agent(Child);

impl Agent {
    fn start(kubeconfig: &Path, args: &[&str]) -> R<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"));
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        die_with_the_benchmark(&mut cmd);
        Ok(Agent(cmd.spawn()?))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child gets SIGKILL when the benchmark exits, however it exits.
fn die_with_the_benchmark(cmd: &mut Command) {
    // SAFETY: prctl only sets a flag on the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn parse_requests(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter_map(|l| l.strip_prefix("gpu_cloud_api_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let get = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            Some((
                format!("{} {}", get("verb")?, get("resource")?),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

// ---- helpers ------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn take(m: &Mutex<Vec<f64>>) -> Vec<f64> {
    std::mem::take(&mut *lock(m))
}

fn finish(name: &'static str, start: Instant, mut done_at: Vec<f64>) -> RunFigures {
    done_at.sort_by(f64::total_cmp);
    let seconds = done_at
        .last()
        .copied()
        .unwrap_or(start.elapsed().as_secs_f64());
    RunFigures {
        name,
        count: done_at.len(),
        seconds,
        per_second: done_at.len() as f64 / seconds.max(1e-9),
        done_at,
        ..RunFigures::default()
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) -> R<()> {
    let limit = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > limit {
            return Err(format!("timed out after {secs}s waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// [`support::poll`] for probes that answer `None` until done (a timeout panics there,
/// failing the benchmark loudly).
async fn wait_until_async<T, F, Fut>(secs: u64, what: &str, mut probe: F) -> R<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let limit = Duration::from_secs(secs);
    Ok(support::poll(limit, what, || {
        let next = probe();
        async move { next.await.ok_or_else(|| "not yet".to_owned()) }
    })
    .await)
}

fn machine() -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_default();
    BTreeMap::from([("cpu", model), ("cores", cores), ("memory", mem)])
}

fn report_run(r: &RunFigures) {
    eprintln!(
        "{}: {} in {:.1}s = {:.0}/s{}",
        r.name,
        r.count,
        r.seconds,
        r.per_second,
        if r.invariants.is_empty() {
            String::new()
        } else {
            format!("; INVARIANTS BROKEN: {:?}", r.invariants)
        }
    );
}

fn print_summary(r: &Report) {
    println!(
        "\n{} nodes ({} GPUs), {} bookings, {} users, client concurrency {}",
        r.nodes, r.gpus, r.instances, r.users, r.client_concurrency
    );
    println!("| run | bookings/s | seconds | p50 apply-to-Running | p99 |");
    println!("|---|---|---|---|---|");
    for run in r.runs() {
        let lat = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} s"));
        println!(
            "| {} | {:.0} | {:.1} | {} | {} |",
            run.name,
            run.per_second,
            run.seconds,
            lat(run.latency_p50_s),
            lat(run.latency_p99_s)
        );
    }
    let c = &r.controller;
    println!(
        "gpu-cloud/kube-scheduler = {:.2}, gpu-cloud/ceiling = {:.2}",
        r.ratio_gpu_cloud_to_kube_scheduler, r.ratio_gpu_cloud_to_ceiling
    );
    if let Some(k) = &r.kueue {
        println!(
            "gpu-cloud/kueue = {:.2}; kueue peak RSS {:.0} MiB, CPU {:.1} s",
            k.ratio_gpu_cloud_to_kueue, k.peak_rss_mib, k.cpu_seconds
        );
    }
    println!(
        "idle apply-to-Running p50 {:.2} s, p99 {:.2} s; controller peak RSS {:.0} MiB, CPU {:.1} s",
        c.idle_latency_p50_s, c.idle_latency_p99_s, c.peak_rss_mib, c.cpu_seconds
    );
    println!(
        "reclaim on a full model (borrowed GPUs, grace 0s): apply-to-Running p50 {:.2} s, max {:.2} s ({} bookings)",
        c.reclaim_latency_p50_s, c.reclaim_latency_max_s, c.reclaim_samples
    );
    println!(
        "per booking: {:.2} writes ({:.2} to objects, {:.2} events), {:.2} reads; {} watches",
        c.writes_per_booking,
        c.object_writes_per_booking,
        c.event_writes_per_booking,
        c.reads_per_booking,
        c.watches
    );
    let idle: Vec<String> = c
        .idle_writes_per_booking
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    println!(
        "steady state (one booking at a time): {:.2} writes per booking ({})",
        c.idle_writes_per_booking.values().sum::<f64>(),
        idle.join(", ")
    );
    println!(
        "under the burst: pod creation to Ready p50 {:.0} s, p99 {:.0} s; {:.0} Normal events dropped over --event-qps",
        c.pod_start_lag_p50_s, c.pod_start_lag_p99_s, c.events_dropped
    );
    println!(
        "placement: {:.0} passes during the burst, {:.3} s each on average",
        c.placement_passes, c.placement_pass_mean_s
    );
    let i = &c.idle_rules;
    println!(
        "idle rules on {} running instances, {} agents writing every {} s: {:.1} agent status writes/s, \
         {:.2} controller status writes/s ({:.3} per agent write); {:.0} controller status writes in the {:.0} s warm-up{}",
        i.instances,
        i.agents,
        i.agent_write_interval_s,
        i.agent_status_writes_per_s,
        i.controller_status_writes_per_s,
        i.controller_writes_per_agent_write,
        i.warmup_controller_status_writes,
        i.warmup_s,
        if i.agents_keep_up {
            ""
        } else {
            "; the agents did not sample every instance within 60 s, so idle clocks restarted"
        }
    );
    for p in &r.dashboard {
        println!(
            "dashboard {} with {} instances: {:.1} ms p50, {:.1} ms max, {} KiB",
            p.page,
            p.instances,
            p.load_p50_ms,
            p.load_max_ms,
            p.bytes / 1024
        );
    }
}

// ---- the plot -----------------------------------------------------------------------

fn plot(r: &Report, path: &Path) -> R<()> {
    use plotters::prelude::*;
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let runs: Vec<(&RunFigures, RGBColor)> = [
        Some((&r.ceiling, RGBColor(120, 120, 120))),
        Some((&r.kube_scheduler, RGBColor(30, 100, 200))),
        r.kueue.as_ref().map(|k| (&k.run, RGBColor(40, 160, 70))),
        Some((&r.gpu_cloud, RGBColor(220, 80, 30))),
    ]
    .into_iter()
    .flatten()
    .filter(|(run, _)| !run.done_at.is_empty())
    .collect();
    let x_max = runs
        .iter()
        .map(|(run, _)| run.seconds)
        .fold(1.0_f64, f64::max)
        * 1.05;
    let y_max = r.instances as f64 * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} bookings on {} fake GPU nodes: done over time",
                r.instances, r.nodes
            ),
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first request")
        .y_desc("bookings bound / Running")
        .label_style(("sans-serif", 16))
        .draw()?;
    for (run, color) in runs {
        let label = format!("{} ({:.0}/s)", run.name, run.per_second);
        let points = run
            .done_at
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, (i + 1) as f64));
        chart
            .draw_series(LineSeries::new(
                std::iter::once((0.0, 0.0)).chain(points),
                color.stroke_width(3),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}

/// plotters draws text with a font it is given: DejaVu Sans from the system
/// (`fonts-dejavu-core`, which hack/prerequisites installs).
fn register_font() -> R<()> {
    const FONTS: [&str; 2] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    let bytes = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVuSans.ttf found: install fonts-dejavu-core (hack/prerequisites does)")?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
        .map_err(|_| "DejaVuSans.ttf is not a font plotters can read")?;
    Ok(())
}
