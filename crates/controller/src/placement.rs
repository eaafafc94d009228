//! The placement loop: one pass at a time, it reads the whole cluster (nodes, pods, users,
//! instances) from the watch caches, asks [`gpu_cloud_core::scheduler::plan`] what to place, creates
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
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, DeleteParams, PartialObjectMeta, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::cached_pod::CachedPod;
use super::conditions::{Health, with_health};
use super::error::ignore_not_found;
use super::gang::{self, Member, Members};
use super::lifecycle::PodView;
use super::{Context, ReconcileError, pod, write_instance_status};
use crate::metrics::CacheLabels;
use gpu_cloud_api::USER_LABEL;
use gpu_cloud_api::time;
use gpu_cloud_api::v1::{
    GpuInstance, GpuInstanceStatus, GpuUsageRecord, GpuUser, Phase, PreemptionNotice, StartPolicy,
    TopologyPolicy,
};
use gpu_cloud_core::policy::cost::PriceList;
use gpu_cloud_core::policy::objects;
use gpu_cloud_core::policy::records::Recorded;
use gpu_cloud_core::scheduler::preemption::{self, Preemption};
use gpu_cloud_core::scheduler::{
    self, Booking, InstanceKey, NodeGpus, Snapshot, UserPolicy, Waiting,
};

/// Runs passes until the task is aborted: on every wake-up, and every `resync` anyway.
pub async fn run(ctx: Arc<Context>) {
    let mut next = ctx.args.resync;
    loop {
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
        // Let a burst of changes (a batch of bookings applied at once) land in one pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let result = pass(&ctx).await;
        ctx.metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        next = ctx.args.resync;
        if let Ok(Pass { more: true, .. }) = result {
            // Capped: the rest of the queue goes in the next pass, now.
            ctx.wake.notify_one();
        }
        if let Ok(Pass {
            next_window: Some(window),
            ..
        }) = result
        {
            // A window opens before the next resync: be there when it does.
            let until = Timestamp::now().duration_until(window);
            let until = Duration::try_from(until).unwrap_or(Duration::ZERO);
            next = next.min(until + Duration::from_millis(100));
        }
        if let Err(e) = result {
            warn!(error = %e, "placement pass failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.wake.notify_one();
        }
    }
}

/// A window to record: the instance, its user, its nodes (rank 0 first), its start.
type Reservation = (Arc<GpuInstance>, Option<String>, Vec<String>, Timestamp);

/// Everything one pass reads.
struct World {
    nodes: Vec<Arc<Node>>,
    pods: Vec<Arc<CachedPod>>,
    namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    users: Vec<Arc<GpuUser>>,
    instances: Vec<Arc<GpuInstance>>,
    records: Vec<Arc<GpuUsageRecord>>,
}

/// What a pass leaves for the next.
struct Pass {
    /// When the next granted window opens, if any does.
    next_window: Option<Timestamp>,
    /// Placements were left for the next pass (`--placements-per-pass`).
    more: bool,
}

/// One pass.
#[instrument(skip_all, fields(placed, waiting, reserved))]
async fn pass(ctx: &Context) -> Result<Pass, ReconcileError> {
    let now = Timestamp::now();
    let world = read_world(ctx);
    let mut snapshot = snapshot(&world, now, ctx.args.preemption, &ctx.args.topology_labels);
    let (gates, planned) = budget_inputs(&world, now);
    let refused = objects::budget_gate(&mut snapshot, &gates, &planned);
    let mut plan = scheduler::plan(&snapshot);
    plan.waiting.extend(refused);
    let more = plan.limit_placements(ctx.args.placements_per_pass);
    tracing::Span::current().record("reserved", plan.reservations.len());
    let next_window = snapshot
        .bookings
        .iter()
        .filter(|b| b.reserved_on.is_some() && b.placed_on.is_none())
        .filter_map(|b| b.start)
        .chain(plan.reservations.iter().map(|(_, _, t)| *t))
        .filter(|t| *t > now)
        .min();
    let prices = ctx.caches.price_list();
    tracing::Span::current().record("placed", plan.placements.len());
    tracing::Span::current().record("waiting", plan.waiting.len());
    let stalled = plan.waiting.iter().filter(|w| w.wait.stalled()).count();
    ctx.metrics
        .waiting
        .set(i64::try_from(plan.waiting.len()).unwrap_or(i64::MAX));
    ctx.metrics
        .stalled
        .set(i64::try_from(stalled).unwrap_or(i64::MAX));
    ctx.metrics
        .set_waiting_reasons(plan.waiting.iter().map(|w| w.wait.reason()));

    let by_key: BTreeMap<InstanceKey, &Arc<GpuInstance>> =
        world.instances.iter().map(|i| (key_of(i), i)).collect();
    let user_of: BTreeMap<&InstanceKey, Option<&str>> = snapshot
        .bookings
        .iter()
        .map(|b| (&b.key, b.user.as_deref()))
        .collect();

    // Owned inputs: the futures below must not borrow from a closure's argument.
    let to_place: Vec<(Arc<GpuInstance>, String, Vec<String>)> = plan
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
    let results: Vec<Result<(), ReconcileError>> = stream::iter(to_place)
        .map(|(inst, user, nodes)| async move {
            bounded("create pod", place(ctx, &inst, &user, &nodes)).await
        })
        .buffer_unordered(writes)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, ReconcileError>>()?;
    if placed > 0 {
        info!(count = placed, "placed instances");
    }

    // Preemptions: each victim's notice is written first, the commit point (the instance
    // reconciler then deletes its pod with its grace period, again after a restart); its
    // preemptor is nominated from it even if its own status write below is lost.
    let to_preempt: Vec<(Arc<GpuInstance>, Option<Arc<GpuInstance>>, Preemption)> = plan
        .preemptions
        .iter()
        .filter_map(|p| {
            let victim = (*by_key.get(&p.victim)?).clone();
            let by = by_key.get(&p.by).map(|i| (*i).clone());
            Some((victim, by, p.clone()))
        })
        .collect();
    stream::iter(to_preempt)
        .map(|(victim, by, p)| async move {
            bounded(
                "write preemption",
                mark_preempted(ctx, &victim, by.as_deref(), &p, now),
            )
            .await
        })
        .buffer_unordered(writes)
        .try_collect::<Vec<()>>()
        .await?;

    // Which placed instances run on borrowed GPUs, as their status and the metrics say.
    let borrowed = preemption::borrowed(&snapshot);
    let mut borrowed_per_user: BTreeMap<&str, i64> =
        snapshot.users.keys().map(|u| (u.as_str(), 0)).collect();
    for b in snapshot
        .bookings
        .iter()
        .filter(|b| borrowed.contains(&b.key))
    {
        if let Some(n) = b.user.as_deref().and_then(|u| borrowed_per_user.get_mut(u)) {
            *n += i64::from(b.count);
        }
    }
    ctx.metrics.set_borrowed(&borrowed_per_user);
    let to_flag: Vec<(Arc<GpuInstance>, bool)> = snapshot
        .bookings
        .iter()
        .filter(|b| b.placed_on.is_some())
        .filter_map(|b| {
            let inst = *by_key.get(&b.key)?;
            let now_borrowed = borrowed.contains(&b.key);
            let shown = inst.status.as_ref().is_some_and(|s| s.borrowed);
            (shown != now_borrowed).then(|| (inst.clone(), now_borrowed))
        })
        .collect();
    stream::iter(to_flag)
        .map(|(inst, flag)| async move {
            bounded("write borrowed", mark_borrowed(ctx, &inst, flag)).await
        })
        .buffer_unordered(writes)
        .try_collect::<Vec<()>>()
        .await?;

    let to_reserve: Vec<Reservation> = plan
        .reservations
        .iter()
        .filter_map(|(key, node, start)| {
            let user = user_of.get(key).copied().flatten().map(str::to_owned);
            Some(((*by_key.get(key)?).clone(), user, node.clone(), *start))
        })
        .collect();
    let prices = &prices;
    stream::iter(to_reserve)
        .map(|(inst, user, nodes, start)| async move {
            bounded(
                "write reservation",
                mark_reserved(
                    ctx,
                    &inst,
                    user.as_deref(),
                    &nodes,
                    start,
                    prices.as_ref(),
                    now,
                ),
            )
            .await
        })
        .buffer_unordered(writes)
        .try_collect::<Vec<()>>()
        .await?;

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
                mark_waiting(ctx, &inst, user.as_deref(), &w, prices.as_ref(), now),
            )
            .await
        })
        .buffer_unordered(writes)
        .try_collect::<Vec<()>>()
        .await?;
    super::publish_calendar::publish(ctx, &snapshot).await;
    Ok(Pass { next_window, more })
}

/// Each budgeted user's gates (the current period, and each later period a booking ahead
/// falls in) and the planned GPU-hours of their bookings with the period they fall in.
type BudgetInputs = (
    BTreeMap<objects::GateKey, objects::Gate>,
    BTreeMap<InstanceKey, (f64, Timestamp)>,
);

fn budget_inputs(world: &World, now: Timestamp) -> BudgetInputs {
    let mut gates = BTreeMap::new();
    let mut planned = BTreeMap::new();
    let budgeted: Vec<&Arc<GpuUser>> = world
        .users
        .iter()
        .filter(|u| u.spec.quota.gpu_hours.is_some())
        .collect();
    if budgeted.is_empty() {
        return (gates, planned);
    }
    let mut by_ns: BTreeMap<String, Vec<&GpuInstance>> = BTreeMap::new();
    for inst in &world.instances {
        by_ns
            .entry(inst.namespace().unwrap_or_default())
            .or_default()
            .push(inst);
    }
    // Each user's records, grouped once per pass (not one scan of every record per user).
    let mut records_of: BTreeMap<&str, Vec<&GpuUsageRecord>> = BTreeMap::new();
    for r in &world.records {
        records_of.entry(r.spec.user.as_str()).or_default().push(r);
    }
    for user in budgeted {
        let Some(spec) = user.spec.quota.gpu_hours.as_ref() else {
            continue;
        };
        let name = user.name_any();
        let ns = gpu_cloud_api::namespace_of(&name);
        let theirs = by_ns.get(&ns).cloned().unwrap_or_default();
        let recorded = Recorded::of(records_of.get(name.as_str()).into_iter().flatten().copied());
        let Some(Ok(status)) = objects::budget_status(user, &theirs, &recorded, now) else {
            continue;
        };
        let period = objects::budget(spec).period;
        for inst in &theirs {
            let start = inst.spec.start_time.filter(|t| *t > now).unwrap_or(now);
            let bounds = if status.period.contains(start) {
                status.period
            } else {
                match gpu_cloud_core::policy::budget::period_bounds(period, start) {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            let key = (name.clone(), bounds.start);
            if let std::collections::btree_map::Entry::Vacant(slot) = gates.entry(key) {
                // A later period: nothing used yet, what windows there commit counts.
                let in_period = if bounds == status.period {
                    status
                } else {
                    gpu_cloud_core::policy::budget::BudgetStatus {
                        used: 0.0,
                        remaining: status.limit,
                        period: bounds,
                        ..status
                    }
                };
                let committed = objects::committed_gpu_hours(&theirs, &in_period, now);
                slot.insert(objects::Gate {
                    status: in_period,
                    committed,
                });
            }
            planned.insert(
                key_of(inst),
                (objects::planned_gpu_hours(inst), bounds.start),
            );
        }
    }
    (gates, planned)
}

/// Longest a single write of a pass may take. A pass waits for all its writes, so one
/// request that hangs (the client's own read timeout is minutes long, for the sake of
/// watches) would stop every placement behind it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// `write`, or an error once it took longer than [`WRITE_TIMEOUT`]. A create cut off this way
/// may still land: `place` records the pod as assumed before it is sent.
async fn bounded(
    what: &'static str,
    write: impl std::future::Future<Output = Result<(), ReconcileError>>,
) -> Result<(), ReconcileError> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(ReconcileError::Timeout(what, WRITE_TIMEOUT)))
}

/// Reads the caches, adding the pods created that the pod cache does not show yet.
fn read_world(ctx: &Context) -> World {
    let c = &ctx.caches;
    let mut pods = c.pods.state();
    let instances = c.instances.state();
    pods.extend(ctx.assumed.pending(&pods, &instances));
    let world = World {
        nodes: c.nodes.state(),
        pods,
        namespaces: c.namespaces.state(),
        users: c.users.state(),
        instances,
        records: c.records.state(),
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
fn snapshot(
    world: &World,
    now: Timestamp,
    preemption: bool,
    topology_labels: &[String],
) -> Snapshot {
    let nodes = world
        .nodes
        .iter()
        .flat_map(|n| NodeGpus::pools(n, topology_labels))
        .collect();
    let used = scheduler::gpus_in_use(world.pods.iter().map(|p| p.as_ref()));
    let used_slices = scheduler::capacity::slices_in_use(world.pods.iter().map(|p| p.as_ref()));
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
                borrow_gpus: q.borrow_gpus.unwrap_or(0),
                max_spot_gpus: q.max_spot_gpus.unwrap_or(u32::MAX),
            };
            (u.name_any(), policy)
        })
        .collect();
    let pod_of: BTreeMap<(String, String), &CachedPod> = world
        .pods
        .iter()
        .map(|p| {
            (
                (p.namespace().unwrap_or_default(), p.name_any()),
                p.as_ref(),
            )
        })
        .collect();
    // Who is nominated where, from the victims' notices (written first, so they stand even
    // when the preemptor's own status was not written before a crash).
    let nominated: BTreeMap<InstanceKey, String> = world
        .instances
        .iter()
        .filter_map(|inst| {
            let n = inst.status.as_ref()?.preempted.as_ref()?;
            Some((parse_key(&n.by)?, n.node.clone()))
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
            let members: Vec<Member> =
                inst.pod_names()
                    .into_iter()
                    .map(|n| match pod_of.get(&(key.namespace.clone(), n)) {
                        None => Member::Missing,
                        Some(p) => PodView::of(p, &uid)
                            .map_or(Member::Taken, |v| Member::Ours(Box::new(v))),
                    })
                    .collect();
            let pod = match gang::reduce(&members) {
                Members::Whole(v) => Some(*v),
                Members::None => None,
                // A gang with only some of its pods is the instance reconciler's to end or
                // take down; placed again only once none is left (its pods' GPUs count as
                // used meanwhile, as any pod's).
                Members::Partial { .. } => return None,
            };
            let pod_created = pod.as_ref().and_then(|p| p.created);
            let pod_terminating = pod.as_ref().is_some_and(|p| p.terminating);
            let gang_nodes = pod
                .as_ref()
                .map(|p| p.gang_nodes.clone())
                .unwrap_or_default();
            let nominated_on = nominated
                .get(&key)
                .cloned()
                .or(status.nominated_node.clone());
            let placed_on = match (pod, &status.node_name) {
                (Some(p), _) => Some(p.node.unwrap_or_default()),
                // Placed once, pod gone: the instance reconciler ends it; never re-place.
                (None, Some(_)) => return None,
                (None, None) => None,
            };
            // A granted window holds while the spec it was granted for stands, also while
            // it waits for its node after it opened (phase Queued, WaitingForHeldNode);
            // an edited booking (a new startTime, say) asks again, its old window freed.
            let reserved = status.reserved_node.is_some()
                && status.starts_at.is_some()
                && placed_on.is_none()
                && status.observed_generation == inst.metadata.generation;
            let gang = if placed_on.is_some() {
                gang_nodes.get(1..).unwrap_or_default().to_vec()
            } else if reserved {
                status.reserved_nodes.get(1..).unwrap_or_default().to_vec()
            } else {
                vec![]
            };
            Some(Booking {
                user: ns_user.get(&key.namespace).cloned(),
                model: inst.spec.gpu.model.clone(),
                count: inst.spec.gpu.count,
                nodes: inst.spec.gpu.nodes(),
                topology: match inst.spec.gpu.topology.unwrap_or_default() {
                    TopologyPolicy::Preferred => scheduler::Topology::Preferred,
                    TopologyPolicy::Required => scheduler::Topology::Required,
                },
                slice: inst.spec.gpu.slice.clone(),
                unit_milli: inst.spec.gpu.unit_milli(),
                gang,
                priority: inst.spec.priority,
                created: inst
                    .meta()
                    .creation_timestamp
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                started: placed_on
                    .is_some()
                    .then(|| {
                        let held = pod_created.or(status.started_at)?;
                        Some(gpu_cloud_core::policy::figures::booking_start(
                            &status, held,
                        ))
                    })
                    .flatten(),
                placed_on,
                key,
                duration: time::parse_duration(&inst.spec.duration).ok(),
                start: if reserved {
                    status.starts_at
                } else {
                    inst.spec.start_time
                },
                start_policy: match inst.spec.start_policy.unwrap_or_default() {
                    StartPolicy::Exact => scheduler::StartPolicy::Exact,
                    StartPolicy::EarliestAvailable => scheduler::StartPolicy::EarliestAvailable,
                },
                reserved_on: if reserved {
                    status.reserved_node.clone()
                } else {
                    None
                },
                preemptible: inst.spec.preemptible,
                // Being preempted or on a lost node: its GPUs are about to be free.
                terminating: pod_terminating
                    || status.preempted.is_some()
                    || status.node_lost.is_some(),
                nominated_on,
                preempted_by: status
                    .previous_runs
                    .iter()
                    .filter_map(|r| r.preempted.as_ref())
                    .chain(status.preempted.as_ref())
                    .filter_map(|n| parse_key(&n.by))
                    .collect(),
            })
        })
        .collect();
    Snapshot {
        nodes,
        used,
        used_slices,
        users,
        bookings,
        now,
        preemption,
    }
}

/// An instance key from its `namespace/name` form (as preemption notices name them).
fn parse_key(s: &str) -> Option<InstanceKey> {
    let (namespace, name) = s.split_once('/')?;
    Some(InstanceKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// Creates the pod (a gang's headless Service and all its pods): the commit point. The
/// instance reconciler reports the placement in the instance's status once the pods run
/// (one write instead of two).
///
/// A gang is placed whole or not at all: its pods are created together, and if one is
/// refused the others are deleted at once (one lost in transit is left to the instance
/// reconciler, which takes down a gang still incomplete after `gang::ASSEMBLY_GRACE`).
async fn place(
    ctx: &Context,
    inst: &GpuInstance,
    user: &str,
    nodes: &[String],
) -> Result<(), ReconcileError> {
    if nodes.len() <= 1 {
        return place_pod(ctx, inst, user, nodes, 0).await.map(|_| ());
    }
    let ns = inst.namespace().unwrap_or_default();
    let svc = pod::service(inst).map_err(|e| ReconcileError::Build("service", e))?;
    match Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await
    {
        Ok(_) => {}
        // Ours from an earlier attempt, or the user's own of that name: the pods'
        // host names resolve only under ours, which the event says.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(ReconcileError::kube("create gang service")(e)),
    }
    let results: Vec<Result<bool, ReconcileError>> = futures::future::join_all(
        (0..nodes.len()).map(|rank| place_pod(ctx, inst, user, nodes, rank)),
    )
    .await;
    if results.iter().all(|r| matches!(r, Ok(true))) {
        return Ok(());
    }
    // Not all of it: take back what was created.
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let names = inst.pod_names();
    for (rank, r) in results.iter().enumerate() {
        if let (Ok(true), Some(name)) = (r, names.get(rank)) {
            ignore_not_found(pods.delete(name, &DeleteParams::default()).await)
                .map_err(ReconcileError::kube("take back a gang's pod"))?;
        }
    }
    warn!(instance = %inst.name_any(), "gang not placed whole: its pods were taken back");
    ctx.event(
        inst,
        EventType::Warning,
        "GangIncomplete",
        format!(
            "not all {} pods of the gang could be created: the others were removed, it is placed again",
            nodes.len()
        ),
    )
    .await;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

/// Creates the pod of rank `rank` of `inst` on `nodes`; `Ok(true)` when it exists now (made
/// here or by an earlier attempt), `Ok(false)` when it was refused for good.
async fn place_pod(
    ctx: &Context,
    inst: &GpuInstance,
    user: &str,
    nodes: &[String],
    rank: usize,
) -> Result<bool, ReconcileError> {
    let ns = inst.namespace().unwrap_or_default();
    let pod = pod::build(inst, user, nodes, rank).map_err(|e| ReconcileError::Build("pod", e))?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node = nodes.get(rank).cloned().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    // Assumed before it is sent: a create cut off by a timeout may still land.
    ctx.assumed.insert_unsure(&pod);
    match pods.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            ctx.assumed.insert(&created);
            if rank == 0 {
                ctx.metrics.placed.inc();
            }
            debug!(pod = %name, %node, "placed");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // A pod of that name exists: ours from an earlier attempt (the next pass sees
            // it as placed), or a leftover still terminating. Either way, not twice.
            debug!(pod = %name, "pod already exists");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            ctx.assumed.forget(&ns, &name);
            // The namespace's ResourceQuota refused it: our view of the quota was stale.
            warn!(pod = %name, reason = %e.message, "pod refused");
            ctx.event(inst, EventType::Warning, "PodRefused", e.message.clone())
                .await;
            Ok(false)
        }
        // Its namespace is going away, or the instance with it.
        Err(kube::Error::Api(e)) if e.code == 404 => {
            ctx.assumed.forget(&ns, &name);
            Ok(false)
        }
        // Refused: nothing was created.
        Err(e @ kube::Error::Api(_)) => {
            ctx.assumed.forget(&ns, &name);
            Err(ReconcileError::kube("create pod")(e))
        }
        // Lost in transit: it may have been created; it stays assumed for a while.
        Err(e) => Err(ReconcileError::kube("create pod")(e)),
    }
}

/// Records a preemption on its victim (the notice and its condition) and tells both.
async fn mark_preempted(
    ctx: &Context,
    victim: &GpuInstance,
    by: Option<&GpuInstance>,
    p: &Preemption,
    now: Timestamp,
) -> Result<(), ReconcileError> {
    if victim
        .status
        .as_ref()
        .is_some_and(|s| s.preempted.is_some())
    {
        return Ok(());
    }
    let notice = PreemptionNotice {
        by: p.by.to_string(),
        reason: p.reason.word().to_owned(),
        node: p.node.clone(),
        at: now,
    };
    let status = super::lifecycle::preempting_status(victim, &notice, now);
    let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &p.victim.namespace);
    if ignore_not_found(
        write_instance_status(&api, &p.victim.name, victim.status.as_ref(), &status).await,
    )
    .map_err(ReconcileError::kube("write preemption"))?
    .is_none()
    {
        return Ok(());
    }
    ctx.metrics.preempted(p.reason.word());
    info!(victim = %p.victim, by = %p.by, node = %p.node, reason = p.reason.word(), "preempting");
    let message = status.message.clone().unwrap_or_default();
    ctx.event(victim, EventType::Warning, p.reason.word(), message)
        .await;
    if let Some(by) = by {
        let message = format!(
            "preempts {} on {} ({}): it starts there once that pod is gone",
            p.victim,
            p.node,
            p.reason.word()
        );
        ctx.event(by, EventType::Warning, "Preempting", message)
            .await;
    }
    Ok(())
}

/// Writes whether a placed instance runs on borrowed GPUs.
async fn mark_borrowed(
    ctx: &Context,
    inst: &GpuInstance,
    borrowed: bool,
) -> Result<(), ReconcileError> {
    let old = inst.status.clone().unwrap_or_default();
    let status = GpuInstanceStatus {
        borrowed,
        ..old.clone()
    };
    let (ns, name) = (inst.namespace().unwrap_or_default(), inst.name_any());
    let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &ns);
    ignore_not_found(write_instance_status(&api, &name, Some(&old), &status).await)
        .map_err(ReconcileError::kube("write borrowed"))?;
    Ok(())
}

/// Writes a waiting instance's queue status, if it changed.
async fn mark_waiting(
    ctx: &Context,
    inst: &GpuInstance,
    user: Option<&str>,
    w: &Waiting,
    prices: Option<&PriceList>,
    now: Timestamp,
) -> Result<(), ReconcileError> {
    let old = inst.status.clone().unwrap_or_default();
    let mut status = queued_status(inst, user, w, now);
    status.cost = prices.and_then(|p| objects::instance_cost(inst, p));
    if status == old {
        return Ok(());
    }
    let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &w.key.namespace);
    // Deleted since this pass read it: nothing to say about it.
    if ignore_not_found(
        write_instance_status(&api, &w.key.name, inst.status.as_ref(), &status).await,
    )
    .map_err(ReconcileError::kube("write queue status"))?
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

/// Records a granted window: phase `Reserved`, its node and start.
async fn mark_reserved(
    ctx: &Context,
    inst: &GpuInstance,
    user: Option<&str>,
    nodes: &[String],
    start: Timestamp,
    prices: Option<&PriceList>,
    now: Timestamp,
) -> Result<(), ReconcileError> {
    let (ns, name) = (inst.namespace().unwrap_or_default(), inst.name_any());
    let mut status = reserved_status(inst, user, nodes, start, now);
    status.cost = prices.and_then(|p| objects::instance_cost(inst, p));
    if inst.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &ns);
    if ignore_not_found(write_instance_status(&api, &name, inst.status.as_ref(), &status).await)
        .map_err(ReconcileError::kube("write reservation"))?
        .is_none()
    {
        return Ok(());
    }
    let message = status.message.clone().unwrap_or_default();
    ctx.event(inst, EventType::Normal, "Reserved", message)
        .await;
    Ok(())
}

/// The status of an instance whose window was granted (pure).
pub fn reserved_status(
    inst: &GpuInstance,
    user: Option<&str>,
    nodes: &[String],
    start: Timestamp,
    now: Timestamp,
) -> GpuInstanceStatus {
    let node = nodes.join(", ");
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let end = time::parse_duration(&inst.spec.duration)
        .ok()
        .and_then(|d| start.checked_add(d).ok());
    let message = format!(
        "{}{} x {} reserved on {node} from {}{}",
        match inst.spec.gpu.nodes() {
            1 => String::new(),
            n => format!("{n} nodes x "),
        },
        inst.spec.gpu.count,
        inst.spec.gpu.model,
        gpu_cloud_api::time::short_utc(start),
        end.map(|e| format!(" to {}", gpu_cloud_api::time::short_utc(e)))
            .unwrap_or_default()
    );
    GpuInstanceStatus {
        phase: Some(Phase::Reserved),
        conditions: with_health(
            &old.conditions,
            Health::Progressing {
                reason: "Reserved",
                message: &message,
            },
            generation,
            now,
        ),
        observed_generation: generation,
        user: user.map(str::to_owned),
        queue_position: None,
        reserved_node: nodes.first().cloned(),
        reserved_nodes: if nodes.len() > 1 {
            nodes.to_vec()
        } else {
            vec![]
        },
        starts_at: Some(start),
        message: Some(message),
        ..old
    }
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
    let keeps_window = matches!(
        w.wait,
        scheduler::Wait::HeldNode { .. } | scheduler::Wait::WindowMissed { .. }
    );
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
        nominated_node: match &w.wait {
            scheduler::Wait::Preempting { node, .. } => Some(node.clone()),
            _ => None,
        },
        // Still its window's while it waits for its node or once it was missed; any
        // other wait means it holds none (it was never granted one, or was edited).
        reserved_node: old.reserved_node.clone().filter(|_| keeps_window),
        reserved_nodes: if keeps_window {
            old.reserved_nodes.clone()
        } else {
            vec![]
        },
        starts_at: old.starts_at.filter(|_| keeps_window),
        ..old
    }
}
