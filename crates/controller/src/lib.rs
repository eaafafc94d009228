//! `gpu-cloud controller`: the user and instance reconcilers and the placement loop.
//!
//! The I/O layer around the core's decisions: watch caches ([`cache`]), the pure
//! per-object decisions that stay close to their reconciler ([`lifecycle`], [`enforce`],
//! [`conditions`]), and the thin parts that write ([`placement`], [`instance`], [`user`],
//! [`publish_calendar`]). Every rule it applies comes from `gpu-cloud-core`.
//!
//! Each reconciler reads the world, asks a pure function what should be ([`lifecycle`],
//! [`gpu_cloud_core::scheduler`]), and writes the difference. Nothing is kept in memory that the
//! cluster does not also hold: a restarted controller picks up where the last one stopped.

pub mod cache;
pub mod cached_pod;
pub mod conditions;
pub mod enforce;
mod error;
pub mod events;
pub mod gang;
pub mod instance;
pub mod lifecycle;
pub mod metrics;
pub mod placement;
pub mod pod;
pub mod program;
pub mod publish_calendar;
pub mod user;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::warn;

pub use error::ReconcileError;

use crate::metrics::ControllerMetrics;

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "gpu-cloud-controller";

/// Settings of the controller.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// How often the placement loop runs even when nothing asked it to (catches node
    /// changes such as a node becoming Ready).
    #[arg(long, default_value = "5s", value_parser = gpu_cloud_api::time::parse_duration)]
    pub resync: Duration,
    /// Reconciles in flight at once, per controller (each waits on one or two API writes,
    /// so this bounds how many bookings a second a burst gets through).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u16,
    /// Writes in flight at once within a placement pass (pod creations, queue statuses).
    /// A pod create takes a busy apiserver about half a second, so this bounds placements
    /// a second under a burst (README "Performance" has the measurements).
    #[arg(long, default_value_t = 128)]
    pub write_concurrency: usize,
    /// Placements one pass makes at most (the oldest first); the next pass starts at once
    /// for the rest. Short passes under a burst let what arrives meanwhile wait for a short
    /// pass rather than a long one; `0` places all in one pass.
    #[arg(long, default_value_t = 256)]
    pub placements_per_pass: usize,
    /// Node labels naming a node's topology domain, most specific first (repeat the flag;
    /// a node's domain is the first it carries). Gangs are packed into the fewest domains
    /// (`spec.gpu.topology: Required` keeps one in a single domain), single-node bookings
    /// go to the fullest domain that fits them.
    #[arg(
        long = "topology-label",
        value_delimiter = ',',
        default_values_t = gpu_cloud_api::DEFAULT_TOPOLOGY_LABELS.map(String::from),
        env = "GPU_CLOUD_TOPOLOGY_LABELS"
    )]
    pub topology_labels: Vec<String>,
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
    /// Waiting bookings may preempt others (spot instances, borrowed GPUs, lower priority
    /// of the same user); `--preemption=false` turns it off: nothing is preempted, and
    /// quotas still allow borrowing.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "GPU_CLOUD_PREEMPTION")]
    pub preemption: bool,
    /// How long a node may be not Ready before the instances on it count as lost (their
    /// billing stops at the moment it stopped being Ready; they go back to the queue or
    /// fail, as `spec.onNodeLost` says). A deleted node's instances are lost at once.
    #[arg(long, default_value = "60s", value_parser = gpu_cloud_api::time::parse_duration, env = "GPU_CLOUD_NODE_LOST_AFTER")]
    pub node_lost_after: Duration,
    /// How long the kubelet may fail to pull an instance's image (retrying with back-off)
    /// before the instance fails with reason ImagePullFailed and its GPUs are freed. An
    /// invalid reference fails at once.
    #[arg(long, default_value = "2m", value_parser = gpu_cloud_api::time::parse_duration, env = "GPU_CLOUD_IMAGE_PULL_TIMEOUT")]
    pub image_pull_timeout: Duration,
    /// Client-side rate limit of API requests.
    #[command(flatten)]
    pub api: gpu_cloud_runtime::client::ApiArgs,
    /// How many Normal Events a second may be published.
    #[command(flatten)]
    pub events: events::EventArgs,
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Run only while holding the Lease `gpu-cloud-controller` (several replicas, one
    /// active). Without it, never run two controllers against one cluster: they would place
    /// instances without seeing each other's decisions.
    #[arg(long)]
    pub leader_elect: bool,
    /// The controller's own namespace: where the Lease and the published GPU calendar
    /// (ConfigMap `gpu-cloud-calendar`) live (a Deployment passes its own, from the
    /// downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpu-cloud")]
    pub lease_namespace: String,
    /// How long a Lease held by a vanished leader blocks the others, seconds.
    #[arg(long, default_value_t = 10)]
    pub lease_duration: u64,
}

/// What every reconciler shares.
pub struct Context {
    /// The client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub reporter: Reporter,
    /// Drops Normal Events over `--event-qps`.
    pub event_limit: events::Limiter,
    /// Wakes the placement loop (GPUs freed, an instance waits, a quota changed).
    pub wake: Notify,
    /// Settings.
    pub args: ControllerArgs,
    /// Prometheus metrics.
    pub metrics: Arc<ControllerMetrics>,
    /// What the watches say of the cluster.
    pub caches: cache::Caches,
    /// Pods created that the pod cache may not show yet.
    pub assumed: cache::Assumed,
    /// Users whose namespace, RoleBinding and ResourceQuota are in place.
    pub provisioned: user::Provisioned,
    /// What was last published of the GPU calendar, and when ([`publish_calendar::publish`]).
    pub calendar: publish_calendar::Publisher,
}

impl Context {
    /// Publishes an event on `obj`; a failure is logged, never fatal. A Normal event over
    /// the event rate is dropped and counted ([`events`]).
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: kube::runtime::events::EventType,
        reason: &str,
        note: String,
    ) where
        K: kube::Resource<DynamicType = ()>,
    {
        if !self.event_limit.admit(type_) {
            self.metrics.events_dropped.inc();
            tracing::debug!(reason, "event dropped: over --event-qps");
            return;
        }
        let regarding = obj.object_ref(&());
        let ev = events::new_event(
            &self.reporter,
            &regarding,
            type_,
            reason,
            note,
            Timestamp::now(),
        );
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api = Api::<K8sEvent>::namespaced(self.client.clone(), ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// Writes `status` on `name` with server-side apply, as [`FIELD_MANAGER`]: fields the
/// controller set before and leaves out now are removed, fields other managers own (the
/// agent's usage) are left alone.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
}

/// Drains a controller's stream of outcomes: counts them, and logs failures (a deletion
/// that only waits for something is not one).
pub(crate) async fn report<K>(
    results: impl futures::Stream<
        Item = Result<
            (
                kube::runtime::reflector::ObjectRef<K>,
                kube::runtime::controller::Action,
            ),
            kube::runtime::controller::Error<ReconcileError, kube::runtime::watcher::Error>,
        >,
    >,
    metrics: Arc<ControllerMetrics>,
    controller: &'static str,
) where
    K: kube::Resource,
    K::DynamicType: std::fmt::Debug + Eq + std::hash::Hash + Clone,
{
    use futures::StreamExt;
    results
        .for_each(|res| {
            metrics.reconciled(controller, res.is_ok());
            match res {
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, _)) if e.is_waiting() => {
                }
                // A change of a child whose owner is already gone: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(controller, %obj, "owner gone");
                }
                Err(e) => warn!(controller, error = %e, "reconcile failed"),
                Ok(_) => {}
            }
            futures::future::ready(())
        })
        .await;
}

/// Writes an instance's status as the controller: a JSON merge patch of what changed since
/// `old` (what the cache holds), never touching `usage`, which the node agent owns and the
/// controller must never write back stale.
///
/// A merge patch rather than server-side apply: the apiserver spends markedly less CPU on
/// it, and this is the one write every booking needs. A field set since `old` was cached is
/// not removed by this patch; the write's own watch event brings a newer `old`, and the
/// next reconcile removes it.
pub async fn write_instance_status(
    api: &Api<gpu_cloud_api::v1::GpuInstance>,
    name: &str,
    old: Option<&gpu_cloud_api::v1::GpuInstanceStatus>,
    new: &gpu_cloud_api::v1::GpuInstanceStatus,
) -> Result<(), kube::Error> {
    // The agents own `usage` and `memberUsage`: never written here, so never overwritten
    // with an older copy.
    // A status that cannot be serialized fails the write (and the reconcile is retried):
    // sending `null` instead would wipe the status, usage included.
    let strip = |s: &gpu_cloud_api::v1::GpuInstanceStatus| {
        let mut s = s.clone();
        s.usage = None;
        s.member_usage.clear();
        serde_json::to_value(s).map_err(kube::Error::SerdeError)
    };
    let before = match old {
        Some(old) => strip(old)?,
        None => serde_json::json!({}),
    };
    let patch = merge_patch(&before, &strip(new)?);
    if patch.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(());
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(
        name,
        &params,
        &Patch::Merge(serde_json::json!({ "status": patch })),
    )
    .await
    .map(|_| ())
}

/// The RFC 7386 merge patch that turns `old` into `new` (pure): changed keys with their new
/// value, removed keys as null, objects recursively, anything else replaced whole.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Map, Value};
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) if ov == nv => {}
                    Some(ov @ Value::Object(_)) if nv.is_object() => {
                        out.insert(k.clone(), merge_patch(ov, nv));
                    }
                    _ => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

/// Name of the Lease that elects the active controller.
pub const LEASE_NAME: &str = "gpu-cloud-controller";

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The Lease could not be used.
    #[error("leader election on Lease {LEASE_NAME}: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took over; this one stops (its Deployment restarts it as a standby).
    #[error("lost the Lease {LEASE_NAME} to another replica; stopping")]
    LostLease,
    /// The watch caches stopped before they were filled.
    #[error("the watch caches stopped before they were filled: {0}")]
    Caches(#[source] kube::runtime::reflector::store::WriterDropped),
    /// `--slice-fraction` could not be installed.
    #[error(transparent)]
    SliceFractions(#[from] gpu_cloud_api::SliceFractionError),
}

/// Runs both controllers and the placement loop until SIGINT/SIGTERM; with
/// `--leader-elect`, only once this replica holds the Lease, and it stops when it loses it.
pub async fn run(
    client: Client,
    args: ControllerArgs,
    metrics: Arc<ControllerMetrics>,
) -> Result<(), ControllerError> {
    gpu_cloud_api::install_slice_fractions(&args.slice_fractions)?;
    // Health and metrics from the start, standby or not: the liveness probe asks a standby
    // too (a real kubelet restarted one that served nothing until it led).
    let server = tokio::spawn(gpu_cloud_runtime::metrics::serve(
        args.metrics_addr,
        metrics.clone(),
    ));
    let result = if args.leader_elect {
        run_elected(client, args, metrics).await
    } else {
        run_active(client, args, metrics).await
    };
    server.abort();
    result
}

/// [`run`] with leader election: stands by (ready: it can take over) until this replica
/// holds the Lease, then runs the controllers until it loses it.
async fn run_elected(
    client: Client,
    args: ControllerArgs,
    metrics: Arc<ControllerMetrics>,
) -> Result<(), ControllerError> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(args.lease_namespace.clone())
        .with_identity(identity.clone())
        .with_duration(args.lease_duration)
        // Renewed well before it expires, so that the fence (below) sees each renewal
        // with time to spare.
        .with_grace(args.lease_duration.saturating_mul(2) / 5)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    // kube-lease-manager never recreates a Lease deleted by hand (it creates it only when
    // built), and then nobody could lead again: put an empty one back, which the
    // replicas then take as usual.
    let keeper = tokio::spawn(keep_lease(
        client.clone(),
        args.lease_namespace.clone(),
        Duration::from_secs(args.lease_duration.max(1)),
    ));
    tracing::info!(%identity, lease = LEASE_NAME, "waiting to lead");
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    while !*leading.borrow_and_update() {
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { return Err(ControllerError::LostLease); },
            _ = gpu_cloud_runtime::shutdown_signal() => return Ok(()),
        }
    }
    tracing::info!(%identity, "leading: starting the controllers");
    // Not ready again until its caches are filled (run_active says when).
    metrics
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let lost = async move {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                return;
            }
        }
    };
    let fenced = fence(
        client.clone(),
        args.lease_namespace.clone(),
        identity.clone(),
        Duration::from_secs(args.lease_duration.max(1)),
    );
    let mut fenced_out = false;
    let result = tokio::select! {
        r = run_active(client, args, metrics) => r,
        _ = lost => Err(ControllerError::LostLease),
        why = fenced => {
            tracing::error!(%identity, reason = why, "stepping down before the Lease can expire");
            fenced_out = true;
            Err(ControllerError::LostLease)
        }
    };
    keeper.abort();
    if fenced_out {
        // Out of reach (or not the holder): there is nothing to release; stop now.
        lease_task.abort();
    } else {
        // The watch channel is closed now: the Lease task releases the Lease (so a
        // standby takes over at once on a clean stop) and ends.
        let _ = tokio::time::timeout(Duration::from_secs(3), lease_task).await;
    }
    result
}

/// How long before the Lease it last saw renewed expires a leader steps down when it
/// cannot see a newer renewal.
const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// Resolves, saying why, when this replica must stop leading: it is not the Lease's holder
/// any more, or the last renewal it saw is about to expire. kube-lease-manager goes on
/// reporting "leader" while the apiserver is out of reach (its renewals fail and it
/// retries), and a leader cut off for longer than the Lease would, once reconnected, place
/// from its stale caches beside the standby that took over. Stopping [`FENCE_MARGIN`]
/// before the expiry it saw, it stops before any standby may take the Lease.
async fn fence(
    client: Client,
    namespace: String,
    identity: String,
    duration: Duration,
) -> &'static str {
    use k8s_openapi::api::coordination::v1::Lease;
    let api = Api::<Lease>::namespaced(client, &namespace);
    let mut valid_until = jiff::Timestamp::now()
        .checked_add(duration)
        .unwrap_or(jiff::Timestamp::MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A slow answer still tells of a renewal; only one slower than half the Lease is
        // given up on.
        let read = tokio::time::timeout(duration / 2, api.get_opt(LEASE_NAME)).await;
        match read {
            Ok(Ok(Some(lease))) => {
                let spec = lease.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                    return "another replica holds the Lease";
                }
                let secs = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(duration, Duration::from_secs);
                if let Some(renewed) = spec.renew_time {
                    valid_until = renewed.0.checked_add(secs).unwrap_or(jiff::Timestamp::MAX);
                }
            }
            Ok(Ok(None)) => return "the Lease was deleted",
            // Out of reach: judged by the last renewal seen.
            Ok(Err(_)) | Err(_) => {}
        }
        let left = jiff::Timestamp::now().duration_until(valid_until);
        if left <= jiff::SignedDuration::try_from(FENCE_MARGIN).unwrap_or_default() {
            return "no renewal of the Lease seen in time (the apiserver is out of reach)";
        }
    }
}

/// Every `every`, puts the Lease back (empty, no holder) if it is gone.
async fn keep_lease(client: Client, namespace: String, every: Duration) {
    use k8s_openapi::api::coordination::v1::Lease;
    let api = Api::<Lease>::namespaced(client, &namespace);
    loop {
        tokio::time::sleep(every).await;
        match api.get_opt(LEASE_NAME).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(Default::default()),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        warn!(lease = LEASE_NAME, %namespace, "the Lease was deleted: created it again")
                    }
                    // Another replica was quicker.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        warn!(lease = LEASE_NAME, error = %e, "cannot create the Lease again")
                    }
                }
            }
            Err(e) => warn!(lease = LEASE_NAME, error = %e, "cannot read the Lease"),
        }
    }
}

async fn run_active(
    client: Client,
    args: ControllerArgs,
    metrics: Arc<ControllerMetrics>,
) -> Result<(), ControllerError> {
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let (caches, feeds, watches) = cache::Caches::start(&client);
    tracing::info!("gpu-cloud controller starting: filling the watch caches");
    tokio::select! {
        r = caches.ready() => r.map_err(ControllerError::Caches)?,
        _ = gpu_cloud_runtime::shutdown_signal() => return Ok(()),
    }
    let ctx = Arc::new(Context {
        event_limit: events::Limiter::new(&args.events),
        reporter,
        client,
        wake: Notify::new(),
        args,
        metrics,
        caches,
        assumed: cache::Assumed::default(),
        provisioned: user::Provisioned::default(),
        calendar: publish_calendar::Publisher::default(),
    });
    tracing::info!("gpu-cloud controller started");
    let placement = tokio::spawn(placement::run(ctx.clone()));
    ctx.metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::join!(
        user::run(
            ctx.clone(),
            feeds.users,
            feeds.user_instances,
            feeds.namespaces,
            feeds.records
        ),
        instance::run(
            ctx.clone(),
            feeds.instances,
            feeds.pods,
            feeds.instance_users,
            feeds.nodes
        )
    );
    placement.abort();
    drop(watches);
    tracing::info!("gpu-cloud controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn a_merge_patch_carries_changes_and_removals_only() {
        let old = json!({"phase": "Queued", "queuePosition": 3, "message": "wait",
                         "conditions": [{"type": "Ready"}], "nested": {"a": 1, "b": 2}});
        let new = json!({"phase": "Running", "message": "wait", "nodeName": "n1",
                         "conditions": [{"type": "Ready"}], "nested": {"a": 1}});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"phase": "Running", "nodeName": "n1", "queuePosition": null,
                   "nested": {"b": null}})
        );
        assert_eq!(merge_patch(&new, &new), json!({}));
    }
}
