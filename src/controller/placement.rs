//! The placement loop: one pass at a time, it reads the whole cluster (nodes, pods, users,
//! instances) from the watch caches, asks [`crate::scheduler::plan`] what to place, creates
//! the pods, and writes each waiting instance's queue position and reason when it changed.
//!
//! Passes never overlap. The caches may lag the apiserver by a moment: pods this process
//! created count as placed until the pod cache shows them ([`super::cache::Assumed`]), and
//! a restarted controller starts from fresh lists. A placement is committed by creating a
//! pod whose name is the instance's: a second attempt (after a crash, or by a second
//! controller) collides with `AlreadyExists` instead of booking the GPUs twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::conditions::{Health, with_health};
use super::error::ignore_not_found;
use super::lifecycle::PodView;
use super::{Context, Error, pod, write_instance_status};
use crate::api::USER_LABEL;
use crate::api::v1::{GpuInstance, GpuInstanceStatus, GpuUser, Phase};
use crate::metrics::CacheLabels;
use crate::scheduler::{self, Booking, InstanceKey, NodeGpus, Snapshot, UserPolicy, Waiting};

/// Runs passes until the task is aborted: on every wake-up, and every `resync` anyway.
pub async fn run(ctx: Arc<Context>) {
    loop {
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(ctx.args.resync) => {}
        }
        // Let a burst of changes (a batch of bookings applied at once) land in one pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let result = pass(&ctx).await;
        ctx.metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            warn!(error = %e, "placement pass failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.wake.notify_one();
        }
    }
}

/// Everything one pass reads.
struct World {
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<Pod>>,
    namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    users: Vec<Arc<GpuUser>>,
    instances: Vec<Arc<GpuInstance>>,
}

#[instrument(skip_all, fields(placed, waiting))]
async fn pass(ctx: &Context) -> Result<(), Error> {
    let world = read_world(ctx);
    let snapshot = snapshot(&world);
    let plan = scheduler::plan(&snapshot);
    tracing::Span::current().record("placed", plan.placements.len());
    tracing::Span::current().record("waiting", plan.waiting.len());
    let stalled = plan.waiting.iter().filter(|w| w.wait.stalled()).count();
    ctx.metrics
        .waiting
        .set(i64::try_from(plan.waiting.len()).unwrap_or(i64::MAX));
    ctx.metrics
        .stalled
        .set(i64::try_from(stalled).unwrap_or(i64::MAX));

    let by_key: BTreeMap<InstanceKey, &Arc<GpuInstance>> =
        world.instances.iter().map(|i| (key_of(i), i)).collect();
    let user_of: BTreeMap<&InstanceKey, Option<&str>> = snapshot
        .bookings
        .iter()
        .map(|b| (&b.key, b.user.as_deref()))
        .collect();

    // Owned inputs: the futures below must not borrow from a closure's argument.
    let to_place: Vec<(Arc<GpuInstance>, String, String)> = plan
        .placements
        .iter()
        .filter_map(|(key, node)| {
            let user = user_of.get(key).copied().flatten()?;
            Some(((*by_key.get(key)?).clone(), user.to_owned(), node.clone()))
        })
        .collect();
    let placed = to_place.len();
    let writes = ctx.args.write_concurrency.max(1);
    // Every create runs to its end even when one fails: a create dropped in flight could
    // still land, and a pod this process does not know of is a double booking.
    let results: Vec<Result<(), Error>> = stream::iter(to_place)
        .map(|(inst, user, node)| async move {
            bounded("create pod", place(ctx, &inst, &user, &node)).await
        })
        .buffer_unordered(writes)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    if placed > 0 {
        info!(count = placed, "placed instances");
    }

    let now = Timestamp::now();
    let to_mark: Vec<(Arc<GpuInstance>, Option<String>, Waiting)> = plan
        .waiting
        .into_iter()
        .filter_map(|w| {
            let user = user_of.get(&w.key).copied().flatten().map(str::to_owned);
            Some(((*by_key.get(&w.key)?).clone(), user, w))
        })
        .collect();
    stream::iter(to_mark)
        .map(|(inst, user, w)| async move {
            bounded(
                "write queue status",
                mark_waiting(ctx, &inst, user.as_deref(), &w, now),
            )
            .await
        })
        .buffer_unordered(writes)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Longest a single write of a pass may take. A pass waits for all its writes, so one
/// request that hangs (the client's own read timeout is minutes long, for the sake of
/// watches) would stop every placement behind it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `write`, or an error once it took longer than [`WRITE_TIMEOUT`]. A create cut off this way
/// may still land: `place` records the pod as assumed before it is sent.
async fn bounded(
    what: &'static str,
    write: impl std::future::Future<Output = Result<(), Error>>,
) -> Result<(), Error> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(Error::Timeout(what, WRITE_TIMEOUT)))
}

/// Reads the caches, adding the pods created that the pod cache does not show yet.
fn read_world(ctx: &Context) -> World {
    let c = &ctx.caches;
    let mut pods = c.pods.state();
    let instances = c.instances.state();
    pods.extend(
        ctx.assumed
            .pending(&pods, &instances)
            .into_iter()
            .map(Arc::new),
    );
    let world = World {
        nodes: c.nodes.state(),
        pods,
        namespaces: c.namespaces.state(),
        users: c.users.state(),
        instances,
    };
    for (resource, n) in [
        ("nodes", world.nodes.len()),
        ("pods", world.pods.len()),
        ("namespaces", world.namespaces.len()),
        ("gpuusers", world.users.len()),
        ("gpuinstances", world.instances.len()),
    ] {
        ctx.metrics
            .cached
            .get_or_create(&CacheLabels { resource })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    world
}

fn key_of(inst: &GpuInstance) -> InstanceKey {
    InstanceKey {
        namespace: inst.namespace().unwrap_or_default(),
        name: inst.name_any(),
    }
}

/// The pure scheduler's view of the world.
fn snapshot(world: &World) -> Snapshot {
    let nodes = world.nodes.iter().map(|n| NodeGpus::from_node(n)).collect();
    let used = scheduler::gpus_in_use(world.pods.iter().map(|p| p.as_ref()));
    let ns_user: BTreeMap<String, String> = world
        .namespaces
        .iter()
        .filter_map(|ns| Some((ns.name_any(), ns.labels().get(USER_LABEL)?.clone())))
        .collect();
    let users = world
        .users
        .iter()
        .map(|u| {
            let q = &u.spec.quota;
            let policy = UserPolicy {
                max_gpus: q.max_gpus,
                max_instances: q.max_instances,
                allowed_models: q.allowed_models.clone(),
                suspended: u.spec.suspended,
            };
            (u.name_any(), policy)
        })
        .collect();
    let pod_of: BTreeMap<(String, String), &Pod> = world
        .pods
        .iter()
        .map(|p| {
            (
                (p.namespace().unwrap_or_default(), p.name_any()),
                p.as_ref(),
            )
        })
        .collect();
    let bookings = world
        .instances
        .iter()
        .filter_map(|inst| {
            let status = inst.status.clone().unwrap_or_default();
            if inst.meta().deletion_timestamp.is_some()
                || status.phase.is_some_and(Phase::is_finished)
            {
                return None;
            }
            let key = key_of(inst);
            let uid = inst.uid().unwrap_or_default();
            let pod = pod_of
                .get(&(key.namespace.clone(), key.name.clone()))
                .and_then(|p| PodView::of(p, &uid));
            let placed_on = match (pod, status.node_name) {
                (Some(p), _) => Some(p.node.unwrap_or_default()),
                // Placed once, pod gone: the instance reconciler ends it; never re-place.
                (None, Some(_)) => return None,
                (None, None) => None,
            };
            Some(Booking {
                user: ns_user.get(&key.namespace).cloned(),
                model: inst.spec.gpu.model.clone(),
                count: inst.spec.gpu.count,
                priority: inst.spec.priority,
                created: inst
                    .meta()
                    .creation_timestamp
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                placed_on,
                key,
                // Booking ahead is not wired yet: every booking is "now, for good".
                duration: None,
                start: None,
                start_policy: scheduler::StartPolicy::default(),
                reserved_on: None,
                started: None,
            })
        })
        .collect();
    Snapshot {
        nodes,
        used,
        users,
        bookings,
        now: Timestamp::now(),
    }
}

/// Creates the pod: the commit point. The instance reconciler reports the placement in the
/// instance's status once the pod runs (one write instead of two).
async fn place(ctx: &Context, inst: &GpuInstance, user: &str, node: &str) -> Result<(), Error> {
    let (ns, name) = (inst.namespace().unwrap_or_default(), inst.name_any());
    let pod = pod::build(inst, user, node).map_err(|e| Error::Build("pod", e))?;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    // Assumed before it is sent: a create cut off by a timeout may still land.
    ctx.assumed.insert_unsure(pod.clone());
    match pods.create(&PostParams::default(), &pod).await {
        Ok(mut created) => {
            super::cache::slim_pod(&mut created);
            ctx.assumed.insert(created);
            ctx.metrics.placed.inc();
            debug!(instance = %name, %node, "placed");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // A pod of that name exists: ours from an earlier attempt (the next pass sees
            // it as placed), or a leftover still terminating. Either way, not twice.
            debug!(instance = %name, "pod already exists");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            ctx.assumed.forget(&ns, &name);
            // The namespace's ResourceQuota refused it: our view of the quota was stale.
            warn!(instance = %name, reason = %e.message, "pod refused");
            ctx.event(inst, EventType::Warning, "PodRefused", e.message.clone())
                .await;
            Ok(())
        }
        // Its namespace is going away, or the instance with it.
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.assumed.forget(&ns, &name);
            Ok(())
        }
        // Refused: nothing was created.
        Err(e @ kube::Error::Api(_)) => {
            ctx.assumed.forget(&ns, &name);
            Err(Error::kube("create pod")(e))
        }
        // Lost in transit: it may have been created; it stays assumed for a while.
        Err(e) => Err(Error::kube("create pod")(e)),
    }
}

/// Writes a waiting instance's queue status, if it changed.
async fn mark_waiting(
    ctx: &Context,
    inst: &GpuInstance,
    user: Option<&str>,
    w: &Waiting,
    now: Timestamp,
) -> Result<(), Error> {
    let old = inst.status.clone().unwrap_or_default();
    let status = queued_status(inst, user, w, now);
    if status == old {
        return Ok(());
    }
    let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &w.key.namespace);
    // Deleted since this pass read it: nothing to say about it.
    if ignore_not_found(
        write_instance_status(&api, &w.key.name, inst.status.as_ref(), &status).await,
    )
    .map_err(Error::kube("write queue status"))?
    .is_none()
    {
        return Ok(());
    }
    let reason_changed = old.conditions.iter().all(|c| c.reason != w.wait.reason());
    if old.phase != Some(Phase::Queued) || reason_changed {
        let type_ = if w.wait.stalled() {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(inst, type_, w.wait.reason(), w.message.clone())
            .await;
    }
    Ok(())
}

/// The status of an instance that waits (pure).
pub fn queued_status(
    inst: &GpuInstance,
    user: Option<&str>,
    w: &Waiting,
    now: Timestamp,
) -> GpuInstanceStatus {
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let (reason, message) = (w.wait.reason(), w.message.as_str());
    let health = if w.wait.stalled() {
        Health::Stalled { reason, message }
    } else {
        Health::Progressing { reason, message }
    };
    GpuInstanceStatus {
        phase: Some(Phase::Queued),
        conditions: with_health(&old.conditions, health, generation, now),
        observed_generation: generation,
        user: user.map(str::to_owned),
        queue_position: Some(w.position),
        message: Some(w.message.clone()),
        ..old
    }
}
