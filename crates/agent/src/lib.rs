//! `gpu-cloud agent`: runs on each GPU node (a DaemonSet), samples the GPUs, attributes use
//! to instances, and writes cumulative `status.usage` on each GpuInstance (server-side
//! apply, field manager `gpu-cloud-agent`), and serves the same figures on `/metrics`.
//!
//! Restart-safe: totals resume from what is stored (with the energy counters), so nothing is
//! lost and nothing counted twice.

pub mod accumulate;
pub mod attribution;
pub mod cgroup;
pub mod gang;
mod metrics;
pub mod nvml;
pub mod podresources;
pub mod simulated;
pub mod simulated_devices;
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use accumulate::{Sample, advance};
use gpu_cloud_api::v1::{GpuInstance, IdleClock, Usage, UsageSource};
use gpu_cloud_api::{INSTANCE_LABEL, RANK_LABEL};
use gpu_cloud_core::policy::idle;
use nvml::NvmlSource;

/// Field manager of the agent's writes (it owns `status.usage` and nothing else).
pub const FIELD_MANAGER: &str = "gpu-cloud-agent";

/// Field manager of the writes of a gang member's figures (`status.memberUsage`, and for
/// rank 0 the gang's `status.usage`): one per rank, so that each member's entry is owned
/// by its own writer and no agent's apply removes another's.
pub fn member_field_manager(rank: u32) -> String {
    format!("{FIELD_MANAGER}-rank-{rank}")
}

/// Arguments of `gpu-cloud agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The node(s) this agent reports for (a DaemonSet passes its own node, from the
    /// downward API). Several only make sense with --simulate.
    #[arg(
        long = "node",
        env = "NODE_NAME",
        value_delimiter = ',',
        required_unless_present = "once"
    )]
    pub nodes: Vec<String>,
    /// Invent figures instead of reading NVML (nodes without GPUs: tests, demos). Usage is
    /// then marked `source: simulated`.
    #[arg(long)]
    pub simulate: bool,
    /// Simulated GPUs on a real node: the devices are the kubelet's (from a device plugin
    /// such as gpu-cloud-fake-gpus), the processes on them the host's processes whose
    /// NVIDIA_VISIBLE_DEVICES names them, attributed through the real PodResources and
    /// cgroups; only the figures are invented (`source: simulated`).
    #[arg(long, conflicts_with_all = ["simulate", "once"])]
    pub simulate_devices: bool,
    /// How often to sample.
    #[arg(long, default_value = "1s", value_parser = gpu_cloud_api::time::parse_duration)]
    pub sample_interval: Duration,
    /// At most how often to write each instance's status (sampling goes on in between).
    #[arg(long, default_value = "15s", value_parser = gpu_cloud_api::time::parse_duration)]
    pub write_interval: Duration,
    /// Where to serve /metrics, /healthz and /readyz (9400 is dcgm-exporter's port).
    #[arg(long, default_value = "0.0.0.0:9400")]
    pub metrics_addr: std::net::SocketAddr,
    /// Where the host's /proc is mounted (process → pod attribution).
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Read the GPUs once, print the readings as JSON and exit (no cluster needed): a quick
    /// check of NVML on a node.
    #[arg(long, conflicts_with = "simulate")]
    pub once: bool,
    /// What a GPU slice counts for in quotas, budgets, cost and usage, as a fraction of a
    /// GPU: `SLICE=FRACTION` (repeat the flag or separate by commas; e.g. `1g.10gb=0.15`,
    /// `shared=0.5`). Slices not named count as in the default table (README "GPU
    /// slices"). The controller and the agents must be given the same (the chart's
    /// `sliceFractions` is passed to both).
    #[arg(
        long = "slice-fraction",
        value_delimiter = ',',
        value_parser = gpu_cloud_api::parse_slice_fraction,
        env = "GPU_CLOUD_SLICE_FRACTIONS"
    )]
    pub slice_fractions: Vec<(String, u32)>,
    /// The kubelet's PodResources socket (device → pod attribution).
    #[arg(long, default_value = "/var/lib/kubelet/pod-resources/kubelet.sock")]
    pub pod_resources_socket: PathBuf,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No NVML and not told to simulate.
    #[error(transparent)]
    NoNvml(#[from] nvml::NoNvml),
    /// No API client could be made.
    #[error(transparent)]
    Client(#[from] gpu_cloud_runtime::client::ClientError),
    /// The watches of the node's instances and pods stopped before they listed.
    #[error("the watches of this node's GpuInstances and pods stopped before they listed once")]
    WatchStopped,
    /// `--slice-fraction` could not be installed.
    #[error(transparent)]
    SliceFractions(#[from] gpu_cloud_api::SliceFractionError),
    /// `--once` could not print its readings (a bug: please report it).
    #[error("cannot render the readings as JSON: {0}")]
    Render(#[source] serde_json::Error),
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// what we tried
        action: &'static str,
        /// the client error
        #[source]
        source: kube::Error,
    },
}

/// Where readings come from.
enum Source {
    Nvml(Box<NvmlSource>),
    Simulated,
    SimulatedDevices(simulated_devices::SimulatedDevices),
}

/// What the agent remembers between samples (rebuilt from status after a restart).
struct Tracked {
    usage: Usage,
    written: Option<Instant>,
    /// Of a gang member (rank 1 and up): its instance, looked up by name once its pod is
    /// gone, until its last figures are written.
    instance: Option<(String, String)>,
}

/// What the agent measures: an instance on one of its nodes (rank `None`), or one member
/// of a gang (rank 0 is on `status.nodeName`, the others on `status.nodeNames`).
type Key = (String, Option<u32>);

/// Runs the agent until SIGINT/SIGTERM. Without NVML (and without --simulate) it stops at
/// once with an error saying so.
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    gpu_cloud_api::install_slice_fractions(&args.slice_fractions)?;
    let mut source = if args.simulate {
        Source::Simulated
    } else if args.simulate_devices {
        Source::SimulatedDevices(Default::default())
    } else {
        Source::Nvml(Box::new(NvmlSource::open()?))
    };
    if let (true, Source::Nvml(nvml)) = (args.once, &mut source) {
        let readings = nvml.read();
        let json = serde_json::to_string_pretty(&readings).map_err(AgentError::Render)?;
        println!("{json}");
        return Ok(());
    }
    let client = gpu_cloud_runtime::client::plain().await?;
    let metrics = Arc::new(metrics::AgentMetrics::default());
    let server = tokio::spawn(gpu_cloud_runtime::metrics::serve(
        args.metrics_addr,
        metrics.clone(),
    ));
    info!(nodes = ?args.nodes, simulate = args.simulate, simulate_devices = args.simulate_devices, "gpu-cloud agent starting");
    let watched = watch::Watched::start(&client, &args.nodes);
    let mut tracked: HashMap<Key, Tracked> = HashMap::new();
    let mut known: HashMap<MemberPod, GpuInstance> = HashMap::new();
    let mut tick = tokio::time::interval(args.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = gpu_cloud_runtime::shutdown_signal();
    tokio::pin!(shutdown);
    tokio::select! {
        r = watched.ready() => r.map_err(|_| AgentError::WatchStopped)?,
        _ = &mut shutdown => return Ok(()),
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => break,
        }
        match cycle(
            &client,
            &watched,
            &args,
            &mut source,
            &mut tracked,
            &mut known,
            &metrics,
        )
        .await
        {
            Ok(()) => metrics.mark_ready(),
            Err(e) => warn!(error = %e, "sampling cycle failed; retrying"),
        }
    }
    server.abort();
    info!("gpu-cloud agent stopped");
    Ok(())
}

/// One sampling cycle: read, attribute, accumulate, write what is due.
async fn cycle(
    client: &Client,
    watched: &watch::Watched,
    args: &AgentArgs,
    source: &mut Source,
    tracked: &mut HashMap<Key, Tracked>,
    known: &mut HashMap<MemberPod, GpuInstance>,
    metrics: &metrics::AgentMetrics,
) -> Result<(), AgentError> {
    let now = Timestamp::now();
    // Only this node's instances (a selectable field of the CRD), not the whole cluster's.
    let items = watched.instances();
    let mine: Vec<&GpuInstance> = items
        .iter()
        .map(Arc::as_ref)
        .filter(|i| i.status.as_ref().is_some_and(|s| s.started_at.is_some()))
        .collect();

    let (kind, readings) = match source {
        Source::Simulated => (UsageSource::Simulated, None),
        Source::Nvml(nvml) => (UsageSource::Nvml, Some(nvml.read())),
        Source::SimulatedDevices(devices) => {
            let ids = match podresources::allocatable_gpus(&args.pod_resources_socket).await {
                Ok(ids) => ids,
                Err(e) => {
                    warn!(socket = %args.pod_resources_socket.display(), error = %e, "the kubelet lists no GPUs; simulating none");
                    vec![]
                }
            };
            (
                UsageSource::Simulated,
                Some(devices.read(&args.proc_root, &ids)),
            )
        }
    };
    // Our pods on these nodes: to attribute readings to (all of them), and to find the
    // gang members here (those with a rank; a gang's instance lists only rank 0's node).
    let pods = our_pods(&watched.pods());
    let members = gang_members(client, &pods, tracked, known).await?;
    let shares = match readings {
        None => None,
        Some(readings) => {
            let pod_uid_of: BTreeMap<(String, String), String> = pods
                .iter()
                .map(|p| ((p.namespace.clone(), p.name.clone()), p.uid.clone()))
                .collect();
            let pid_pods = pid_pods(&args.proc_root, &readings);
            let holders = gpu_holders(&args.pod_resources_socket).await;
            let device_pods = holders
                .iter()
                .filter_map(|(gpu, h)| {
                    Some((
                        gpu.clone(),
                        pod_uid_of
                            .get(&(h.namespace.clone(), h.pod.clone()))?
                            .clone(),
                    ))
                })
                .collect();
            let shares = attribution::attribute(&readings, &device_pods, &pid_pods);
            metrics.devices(&readings, &args.nodes, &holders);
            Some((shares, pod_uid_of))
        }
    };

    // Gang members first: where this agent measures a gang's other members too (several
    // nodes under --simulate), rank 0's sum then has their figures of this very cycle.
    let work = members.iter().map(|(i, rank)| (i, Some(*rank))).chain(
        mine.iter()
            .map(|i| (*i, (i.spec.gpu.nodes() > 1).then_some(0))),
    );
    let mut seen = Vec::new();
    for (inst, rank) in work {
        let uid = inst.uid().unwrap_or_default();
        let key = (uid.clone(), rank);
        seen.push(key.clone());
        let status = inst.status.clone().unwrap_or_default();
        let Some(started) = status.started_at else {
            continue;
        };
        // Figures of an earlier run (the instance was preempted and placed again) are
        // in its `previousRuns` already: this run starts from nothing.
        let stored = match rank {
            None => status.current_usage(),
            Some(r) => status.current_member_usage(r),
        }
        .cloned();
        let fresh = Usage {
            sampled_at: started,
            source: kind,
            ..Default::default()
        };
        let entry = tracked.entry(key.clone()).or_insert_with(|| Tracked {
            usage: stored.clone().unwrap_or(fresh.clone()),
            written: None,
            instance: rank
                .filter(|r| *r > 0)
                .map(|_| (inst.namespace().unwrap_or_default(), inst.name_any())),
        });
        if entry.usage.sampled_at < started {
            entry.usage = fresh;
        }
        // Another writer (an earlier agent) may be ahead of what we remember.
        if let Some(s) = stored
            .as_ref()
            .filter(|s| s.sampled_at > entry.usage.sampled_at)
        {
            entry.usage = s.clone();
        }
        // Rank 0 of a gang goes on after its own last figures until the gang's are final.
        let gang_final = status.current_usage().is_some_and(|u| u.final_);
        if entry.usage.final_ && (rank != Some(0) || gang_final) {
            continue;
        }
        let ended_at = status
            .finished_at
            .or(inst.metadata.deletion_timestamp.as_ref().map(|t| t.0))
            .filter(|_| {
                inst.metadata.deletion_timestamp.is_some()
                    || status.phase.is_some_and(|p| p.is_finished())
            });
        let at = ended_at.map_or(now, |end| end.min(now));
        // A gang member holds its node's GPUs; anything else all it booked.
        let gpus = match rank {
            None => inst.spec.gpu.gpu_equivalent(),
            Some(_) => f64::from(inst.spec.gpu.count),
        };
        let sample = match (&shares, ended_at) {
            (None, _) => simulated::sample(inst, at, gpus),
            // The pod is gone: carry the last readings to the end.
            (Some(_), Some(_)) => Sample {
                at,
                gpus,
                utilization: entry.usage.avg_utilization,
                memory_bytes: 0,
                power_watts: entry.usage.power_watts,
                devices: vec![],
            },
            (Some((shares, pod_uid_of)), None) => {
                // Its pod on this node: the instance's own, or the gang member's.
                let pod = inst
                    .pod_names()
                    .into_iter()
                    .nth(rank.unwrap_or(0) as usize)
                    .unwrap_or_default();
                let key = (inst.namespace().unwrap_or_default(), pod);
                let share = pod_uid_of
                    .get(&key)
                    .and_then(|uid| shares.get(uid))
                    .cloned()
                    .unwrap_or_default();
                let per_node = inst.spec.gpu.count.max(1);
                Sample {
                    at,
                    gpus,
                    utilization: share.utilization_sum / f64::from(per_node),
                    memory_bytes: share.memory_bytes,
                    power_watts: share.power_watts,
                    devices: share.counters,
                }
            }
        };
        let was_final = entry.usage.final_;
        let usage = if was_final {
            entry.usage.clone()
        } else {
            let mut usage = advance(Some(&entry.usage), started, &sample, kind);
            usage.final_ = ended_at.is_some();
            // A gang's idle clock follows rank 0 (its members run one program in step).
            if rank.is_none_or(|r| r == 0) {
                usage.idle = idle_clock(inst, &entry.usage, &sample);
            }
            usage
        };
        let due = entry
            .written
            .is_none_or(|w| w.elapsed() >= args.write_interval);
        match rank {
            None => {
                if due || usage.final_ {
                    write_usage(client, inst, &usage).await?;
                    entry.written = Some(Instant::now());
                }
                metrics.instance(inst, &usage, &sample);
                entry.usage = usage;
            }
            Some(r) => {
                // Rank 0 sums the members: the others' as written, or as this agent has
                // them when it measures them too (several nodes under --simulate).
                let total = (r == 0).then(|| {
                    let others: Vec<Option<&Usage>> = (1..inst.spec.gpu.nodes())
                        .map(|o| {
                            let written = status.current_member_usage(o);
                            let here = tracked
                                .get(&(uid.clone(), Some(o)))
                                .map(|t| &t.usage)
                                .filter(|t| t.sampled_at >= started);
                            match (written, here) {
                                (Some(w), Some(h)) if h.sampled_at > w.sampled_at => Some(h),
                                (Some(w), _) => Some(w),
                                (None, h) => h,
                            }
                        })
                        .collect();
                    let members: Vec<&Usage> = std::iter::once(&usage)
                        .chain(others.iter().flatten().copied())
                        .collect();
                    let mut total = gang::total(&members);
                    total.final_ = gang::is_final(usage.final_, &others, ended_at, now);
                    total.idle = usage.idle.clone();
                    total
                });
                let finishing =
                    (usage.final_ && !was_final) || total.as_ref().is_some_and(|t| t.final_);
                if due || finishing {
                    let node = status
                        .node_names
                        .get(r as usize)
                        .cloned()
                        .unwrap_or_default();
                    write_member_usage(client, inst, r, &node, &usage, total.as_ref()).await?;
                    if let Some(e) = tracked.get_mut(&key) {
                        e.written = Some(Instant::now());
                    }
                }
                if let Some(total) = &total {
                    metrics.instance(inst, total, &sample);
                }
                if let Some(e) = tracked.get_mut(&key) {
                    e.usage = usage;
                }
            }
        }
    }
    tracked.retain(|key, _| seen.contains(key));
    metrics.forget_except(&mine);
    Ok(())
}

/// The gang members (rank 1 and up) on these nodes: those whose pods are here, and those
/// this agent measured whose pods are gone, until their last figures are written.
///
/// A member's instance is read once per pod of it (`known`, by namespace, name and pod
/// uid): while its pod runs nothing this agent reads of it changes (the end deletes the
/// pod). Once its pod is being deleted or gone it is read on every cycle, to see when
/// and how the gang ended.
async fn gang_members(
    client: &Client,
    pods: &[OurPod],
    tracked: &HashMap<Key, Tracked>,
    known: &mut HashMap<MemberPod, GpuInstance>,
) -> Result<Vec<(GpuInstance, u32)>, AgentError> {
    // (namespace, name) → rank, and the uid of its pod while there is one.
    let mut wanted: BTreeMap<(String, String), (u32, Option<String>)> = BTreeMap::new();
    for p in pods {
        if let (Some(inst), Some(rank)) = (&p.instance, p.rank.filter(|r| *r > 0)) {
            // A pod being deleted: the gang is ending, its instance says when.
            let running = (!p.terminating).then(|| p.uid.clone());
            wanted.insert((p.namespace.clone(), inst.clone()), (rank, running));
        }
    }
    for ((_, rank), t) in tracked {
        if let (Some(at), Some(rank)) = (&t.instance, rank)
            && !t.usage.final_
        {
            wanted.entry(at.clone()).or_insert((*rank, None));
        }
    }
    known.retain(|(ns, name, pod), _| {
        wanted
            .get(&(ns.clone(), name.clone()))
            .is_some_and(|(_, p)| p.as_ref() == Some(pod))
    });
    let mut out = Vec::new();
    for ((ns, name), (rank, pod)) in wanted {
        let key = pod.map(|pod| (ns.clone(), name.clone(), pod));
        let inst = match key.as_ref().and_then(|k| known.get(k)) {
            Some(inst) => Some(inst.clone()),
            None => Api::<GpuInstance>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .map_err(|source| AgentError::Kube {
                    action: "get a gang member's GpuInstance",
                    source,
                })?,
        };
        let Some(inst) = inst else { continue };
        let placed = inst
            .status
            .as_ref()
            .is_some_and(|s| s.started_at.is_some() && s.node_names.len() > rank as usize);
        if !placed {
            continue;
        }
        if let Some(k) = key {
            known.insert(k, inst.clone());
        }
        out.push((inst, rank));
    }
    Ok(out)
}

/// A gang member's pod: namespace, instance name, pod uid.
type MemberPod = (String, String, String);

/// The idle clock after `sample`, from the one kept in `before` (the usage before it), when
/// the controller published an idle rule for `inst` (`status.idle.rule`).
fn idle_clock(inst: &GpuInstance, before: &Usage, sample: &Sample) -> Option<IdleClock> {
    let published = inst.status.as_ref()?.idle.as_ref()?.rule.as_ref()?;
    let rule = match idle::ClockRule::try_from(published) {
        Ok(rule) => rule,
        Err(e) => {
            warn!(instance = %inst.name_any(), error = %e, "idle rule ignored");
            return None;
        }
    };
    let sample = idle::Sample {
        at: sample.at,
        utilization_percent: sample.utilization,
    };
    Some(idle::tick(
        &rule,
        before.idle.as_ref(),
        Some(before.sampled_at),
        sample,
    ))
}

/// Writes a gang member's figures, and rank 0's the gang's `total`, under the rank's own
/// field manager.
async fn write_member_usage(
    client: &Client,
    inst: &GpuInstance,
    rank: u32,
    node: &str,
    usage: &Usage,
    total: Option<&Usage>,
) -> Result<(), AgentError> {
    let mut status = serde_json::json!({
        "memberUsage": [{"rank": rank, "nodeName": node, "usage": usage}],
    });
    if let Some(total) = total {
        status["usage"] = serde_json::to_value(total).map_err(AgentError::Render)?;
    }
    let manager = member_field_manager(rank);
    apply_status(client, inst, &manager, status, "write status.memberUsage").await
}

async fn write_usage(client: &Client, inst: &GpuInstance, usage: &Usage) -> Result<(), AgentError> {
    let status = serde_json::json!({"usage": usage});
    apply_status(client, inst, FIELD_MANAGER, status, "write status.usage").await
}

/// Server-side applies `status` (the fields this agent owns) on `inst` as `manager`.
async fn apply_status(
    client: &Client,
    inst: &GpuInstance,
    manager: &str,
    status: serde_json::Value,
    action: &'static str,
) -> Result<(), AgentError> {
    let api = Api::<GpuInstance>::namespaced(client.clone(), &inst.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "status": status,
    });
    api.patch_status(
        &inst.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|source| AgentError::Kube { action, source })?;
    Ok(())
}

/// One of our pods on this agent's nodes.
struct OurPod {
    namespace: String,
    name: String,
    uid: String,
    /// Its GpuInstance (label `gpu-cloud.io/instance`).
    instance: Option<String>,
    /// Its rank in a gang (label `gpu-cloud.io/rank`).
    rank: Option<u32>,
    /// It is being deleted.
    terminating: bool,
}

/// Our pods on these nodes, as the pod watches have them.
fn our_pods(pods: &[Arc<Pod>]) -> Vec<OurPod> {
    pods.iter()
        .map(|p| {
            let label = |k: &str| p.labels().get(k).cloned();
            OurPod {
                namespace: p.namespace().unwrap_or_default(),
                name: p.name_any(),
                uid: p.uid().unwrap_or_default(),
                instance: label(INSTANCE_LABEL),
                rank: label(RANK_LABEL).and_then(|r| r.parse().ok()),
                terminating: p.metadata.deletion_timestamp.is_some(),
            }
        })
        .collect()
}

/// GPU UUID → the container the kubelet gave it to. Without the socket (or on error) the
/// processes alone attribute use; that is logged, not fatal.
async fn gpu_holders(socket: &std::path::Path) -> BTreeMap<String, podresources::Holder> {
    match podresources::list(socket).await {
        Ok(resp) => podresources::gpu_holders(&resp),
        Err(e) => {
            warn!(socket = %socket.display(), error = %e, "no PodResources; attributing by process only");
            BTreeMap::new()
        }
    }
}

/// Process id → pod UID for the processes on the GPUs.
fn pid_pods(
    proc_root: &std::path::Path,
    readings: &[nvml::DeviceReading],
) -> BTreeMap<u32, String> {
    readings
        .iter()
        .flat_map(|r| r.processes.keys())
        .filter_map(|pid| {
            let text =
                std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
            Some((*pid, cgroup::pod_uid(&text)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_cloud_api::v1::IdleState;
    use gpu_cloud_core::policy::idle::{IdlePolicy, IdleVerdict, decide};
    use std::time::Duration;

    const MIN: u64 = 60;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs as i64).unwrap()
    }

    /// The agent and the controller together, as in the cluster: the agent samples every
    /// second and writes every 15 s, the controller decides on each write and publishes
    /// the rule; an agent restart resumes from what was written.
    #[test]
    fn the_controller_decides_from_the_clock_the_agent_keeps_and_writes_on_transitions() {
        let p = IdlePolicy::with_timeout(Duration::from_secs(600));
        let mut inst: GpuInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u"},
            "spec": {"gpu": {"model": "L4", "count": 2}, "image": "x", "duration": "4h"},
            "status": {"phase": "Running", "startedAt": t(0).to_string()}
        }))
        .unwrap();
        let mut usage = Usage {
            sampled_at: t(0),
            ..Default::default()
        };
        let mut written = usage.clone();
        let mut state = IdleState::default();
        let (mut writes, mut verdicts) = (0, vec![]);
        // Busy for 30 minutes, then idle; the agent restarts at 35:00 (it lost what it
        // had not written).
        for at in 1..=45 * MIN {
            if at == 35 * MIN {
                usage = written.clone();
            }
            let util = if at <= 30 * MIN { 90.0 } else { 0.5 };
            let sample = Sample {
                at: t(at),
                gpus: 2.0,
                utilization: util,
                memory_bytes: 0,
                power_watts: 100.0,
                devices: vec![],
            };
            let mut next = advance(Some(&usage), t(0), &sample, UsageSource::Simulated);
            next.idle = idle_clock(&inst, &usage, &sample);
            usage = next;
            if at % 15 != 0 {
                continue;
            }
            written = usage.clone();
            let (st, v) = decide(
                &p,
                &state,
                written.idle.as_ref(),
                Some(written.sampled_at),
                t(0),
                t(at),
            );
            if st != state {
                writes += 1;
                state = st;
                inst.status.as_mut().unwrap().idle = Some(state.clone());
            }
            verdicts.push((at, v));
        }
        // The first write publishes the rule; the agent keeps the clock from then on.
        assert_eq!(verdicts[0].1, IdleVerdict::NoData);
        assert_eq!(verdicts[1].1, IdleVerdict::Active);
        let first_idle = verdicts
            .iter()
            .find(|(at, v)| *at > 30 && !matches!(v, IdleVerdict::Active))
            .unwrap();
        assert_eq!(first_idle.0, 30 * MIN + 15);
        assert_eq!(state.idle_since, Some(t(30 * MIN + 1)), "to the second");
        let stop = verdicts
            .iter()
            .find(|(_, v)| matches!(v, IdleVerdict::Stop { .. }))
            .unwrap();
        assert_eq!(stop.0, 40 * MIN + 15, "at the first write after 40:01");
        // Written: the rule, the stretch, its warning. Not on the 180 writes in between,
        // and not for the agent's restart.
        assert_eq!(writes, 3);
    }
}
