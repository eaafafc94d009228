//! The GpuInstance reconciler: follows each placed instance's pod, ends bookings at expiry,
//! and on deletion removes the pod before letting the instance go.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{field, info, instrument, warn};

use super::enforce;
use super::error::ignore_not_found;
use super::gang::{self, Member, Members};
use super::lifecycle::{self, NodeState, NodeWatch, PodAction, PodView};
use super::{Context, ReconcileError, write_instance_status};
use gpu_cloud_api::v1::{GpuInstance, GpuUsageRecord, GpuUser, OnExhausted};
use gpu_cloud_core::policy::{records, rollup};

/// Finalizer on every GpuInstance: its pod is removed and its usage recorded (a
/// GpuUsageRecord of its user) before it disappears.
pub const FINALIZER: &str = "gpu-cloud.io/instance";

/// Runs the instance controller until shutdown, triggered by the instance and pod caches.
pub async fn run(
    ctx: Arc<Context>,
    instances: super::cache::Feed<GpuInstance>,
    pods: super::cache::Feed<super::cached_pod::CachedPod>,
    users: super::cache::Feed<GpuUser>,
    nodes: super::cache::Feed<Node>,
) {
    let store = ctx.caches.instances.clone();
    let (node_store, pod_store, inst_store) = (
        ctx.caches.nodes.clone(),
        ctx.caches.pods.clone(),
        ctx.caches.instances.clone(),
    );
    let results = Controller::for_shared_stream(instances, ctx.caches.instances.clone())
        .owns_shared_stream(pods)
        // A user whose budget is used up under `onExhausted: Stop`: its running instances
        // stop now, not at their next look. Any other user change concerns no instance.
        .watches_shared_stream(users, move |user| {
            let stop = user
                .spec
                .quota
                .gpu_hours
                .as_ref()
                .is_some_and(|b| b.on_exhausted == OnExhausted::Stop)
                && user
                    .status
                    .as_ref()
                    .and_then(|s| s.budget.as_ref())
                    .is_some_and(|b| b.exhausted);
            let ns = gpu_cloud_api::namespace_of(&user.name_any());
            let refs: Vec<ObjectRef<GpuInstance>> = if stop {
                store
                    .state_filter(|i| i.namespace().as_deref() == Some(ns.as_str()))
                    .iter()
                    .map(|i| ObjectRef::from_obj(i.as_ref()))
                    .collect()
            } else {
                vec![]
            };
            refs
        })
        // A node that is not Ready, or gone, concerns the instances on it (their loss is
        // decided in `lifecycle`); the heartbeats of Ready nodes cost nothing.
        .watches_shared_stream(nodes, move |node| {
            let name = node.name_any();
            let now = node_store.get(&ObjectRef::new(&name));
            if now.is_some() && NodeState::of(now.as_deref()) == NodeState::Ready {
                return vec![];
            }
            instances_on(&name, &pod_store, &inst_store)
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.args.concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone());
    super::report(results, ctx.metrics.clone(), "instance").await;
}

/// The instances whose pod runs on `node`, or whose status says they were placed there
/// (their pod may be gone with the node).
fn instances_on(
    node: &str,
    pods: &kube::runtime::reflector::Store<super::cached_pod::CachedPod>,
    instances: &kube::runtime::reflector::Store<GpuInstance>,
) -> Vec<ObjectRef<GpuInstance>> {
    let mut refs: Vec<ObjectRef<GpuInstance>> = pods
        .state()
        .iter()
        .filter(|p| p.node_name.as_deref() == Some(node))
        .filter_map(|p| {
            let owner = p
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "GpuInstance")?;
            Some(ObjectRef::new(&owner.name).within(&p.namespace()?))
        })
        .collect();
    refs.extend(
        instances
            .state()
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| s.placed_nodes().iter().any(|n| n == node))
            })
            .map(|i| ObjectRef::from_obj(i.as_ref())),
    );
    refs
}

#[instrument(skip_all, fields(instance = %inst.namespace().unwrap_or_default(), name = %inst.name_any(), phase = field::Empty))]
async fn reconcile(inst: Arc<GpuInstance>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = inst
        .namespace()
        .ok_or(ReconcileError::Missing("metadata.namespace"))?;
    let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &ns);
    super::error::finalized(
        finalizer(&api, FINALIZER, inst, |event| async {
            match event {
                Event::Apply(inst) => apply(&inst, &ctx).await,
                Event::Cleanup(inst) => cleanup(&inst, &ctx).await,
            }
        })
        .await,
    )
}

async fn apply(inst: &GpuInstance, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = inst.namespace().unwrap_or_default();
    let uid = inst.uid().ok_or(ReconcileError::Missing("metadata.uid"))?;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let names = inst.pod_names();
    let members: Vec<Member> = names
        .iter()
        .map(|n| match ctx.caches.pod(&ns, n) {
            None => Member::Missing,
            Some(p) => PodView::of(&p, &uid).map_or(Member::Taken, |v| Member::Ours(Box::new(v))),
        })
        .collect();
    let now = Timestamp::now();
    let view = match gang::reduce(&members) {
        Members::Whole(v) => Some(*v),
        Members::None => None,
        Members::Partial { present, taken } => {
            let creating = names
                .iter()
                .zip(&members)
                .any(|(n, m)| *m == Member::Missing && ctx.assumed.contains(&ns, n));
            let out = gang::incomplete(inst, &present, &taken, creating, now);
            return act(inst, ctx, &pods, &names, out).await;
        }
    };
    let user = ctx
        .caches
        .user_of_namespace(&ns)
        .and_then(|u| ctx.caches.users.get(&ObjectRef::new(&u)));
    // Only a budget that stops running instances needs the user's other instances: at
    // 10,000 instances a scan per reconcile would be the controller's main cost.
    let stops_on_budget = user.as_ref().is_some_and(|u| {
        u.spec
            .quota
            .gpu_hours
            .as_ref()
            .is_some_and(|b| b.on_exhausted == OnExhausted::Stop)
    });
    let all = if stops_on_budget {
        ctx.caches.instances.state()
    } else {
        vec![]
    };
    let theirs: Vec<&GpuInstance> = all
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(ns.as_str()))
        .map(|i| i.as_ref())
        .collect();
    let placed = view.as_ref().is_some_and(|p| !p.terminating);
    let records = match (&user, stops_on_budget) {
        (Some(u), true) => ctx.caches.records_of(&u.name_any()),
        _ => vec![],
    };
    let recorded = records::Recorded::of(records.iter().map(|r| r.as_ref()));
    let verdicts = enforce::before(inst, user.as_deref(), &theirs, &recorded, placed, now);
    if let Some(why) = &verdicts.invalid {
        warn!(error = %why, "idle settings ignored");
    }
    // The nodes it is on (its pods', else the ones its status names: a pod removed with
    // its node still tells where the instance was); a gang is watched on all of them, and
    // the first that is not Ready is the one that counts.
    let status = inst.status.clone().unwrap_or_default();
    let on: Vec<String> = match &view {
        Some(p) if !p.gang_nodes.is_empty() => p.gang_nodes.clone(),
        Some(p) => p.node.clone().into_iter().collect(),
        None => status.placed_nodes(),
    };
    let states = on.iter().map(|n| {
        let state = NodeState::of(ctx.caches.nodes.get(&ObjectRef::new(n)).as_deref());
        (n, state)
    });
    let (watched, state) = states
        .clone()
        .find(|(_, s)| *s != NodeState::Ready)
        .map_or((None, NodeState::Ready), |(n, s)| (Some(n.clone()), s));
    let node = NodeWatch {
        state,
        lost_after: ctx.args.node_lost_after,
        image_pull_timeout: ctx.args.image_pull_timeout,
        node: watched.filter(|_| on.len() > 1),
    };
    let mut out = lifecycle::decide(inst, view.as_ref(), node, now, verdicts.stop.as_ref());
    let prices = ctx.caches.price_list();
    enforce::after(&mut out, inst, &verdicts, prices.as_ref(), placed, now);
    act(inst, ctx, &pods, &names, out).await
}

/// Carries out a decision: the status (written if it changed), usage cleared, the pods
/// (all of a gang's), Events, the scheduler woken; and when to look again.
async fn act(
    inst: &GpuInstance,
    ctx: &Context,
    pods: &Api<Pod>,
    names: &[String],
    out: lifecycle::Outcome,
) -> Result<Action, ReconcileError> {
    let (ns, name) = (inst.namespace().unwrap_or_default(), inst.name_any());
    tracing::Span::current().record("phase", field::debug(out.status.phase));

    // No status and nothing to say yet is not a change: never write an empty status.
    if inst.status.clone().unwrap_or_default() != out.status {
        let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &ns);
        write_instance_status(&api, &name, inst.status.as_ref(), &out.status)
            .await
            .map_err(ReconcileError::kube("write instance status"))?;
    }
    if out.clear_usage {
        // The agent owns `usage`; the controller's status writes never touch it, so the
        // ended run's figures are removed on their own (they are in `previousRuns`).
        let api = Api::<GpuInstance>::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": {"usage": null, "memberUsage": null}});
        ignore_not_found(
            api.patch_status(
                &name,
                &PatchParams {
                    field_manager: Some(super::FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(patch),
            )
            .await,
        )
        .map_err(ReconcileError::kube("clear usage of the preempted run"))?;
    }
    match out.pod {
        PodAction::Keep => {}
        PodAction::Delete => {
            info!("booking ended: deleting its pod(s)");
            for pod in ours(ctx, &ns, inst, names) {
                ignore_not_found(pods.delete(&pod, &DeleteParams::default()).await)
                    .map_err(ReconcileError::kube("delete pod"))?;
            }
        }
        PodAction::Preempt { grace_seconds } => {
            info!(grace_seconds, "preempted: deleting its pod(s)");
            for pod in ours(ctx, &ns, inst, names) {
                preempt_pod(pods, &pod, &out.status, grace_seconds).await?;
            }
        }
        PodAction::ForceDelete => {
            info!("node lost: removing its pod(s) at once");
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            for pod in names {
                ignore_not_found(pods.delete(pod, &now).await)
                    .map_err(ReconcileError::kube("remove the pod of a lost node"))?;
                // Gone for sure now: were it still assumed (lost before a pass saw it in
                // the cache), the instance would look placed until the assumption expired.
                ctx.assumed.forget(&ns, pod);
            }
        }
    }
    if out.events.iter().any(|n| n.reason == "NodeLost") {
        ctx.metrics.node_lost(inst.spec.on_node_lost());
    }
    for note in out.events {
        ctx.event(inst, note.type_, note.reason, note.message).await;
    }
    if out.wake_scheduler {
        ctx.wake.notify_one();
    }
    Ok(match out.requeue_after {
        // A little past the deadline, so the clock has moved beyond it when we look.
        Some(after) => Action::requeue(after + Duration::from_millis(200)),
        None => Action::await_change(),
    })
}

/// Marks the pod as preempted (a label, and the annotation naming who gets its GPUs, for
/// `kubectl describe pod`) and deletes it with its grace period.
async fn preempt_pod(
    pods: &Api<Pod>,
    name: &str,
    status: &gpu_cloud_api::v1::GpuInstanceStatus,
    grace_seconds: i64,
) -> Result<(), ReconcileError> {
    let by = status
        .preempted
        .as_ref()
        .map(|n| format!("{} ({})", n.by, n.reason))
        .unwrap_or_default();
    let mark = serde_json::json!({"metadata": {
        "labels": {lifecycle::PREEMPTED_LABEL: "true"},
        "annotations": {lifecycle::PREEMPTED_BY_ANNOTATION: by},
    }});
    ignore_not_found(
        pods.patch(name, &PatchParams::default(), &Patch::Merge(mark))
            .await,
    )
    .map_err(ReconcileError::kube("mark pod preempted"))?;
    let params = DeleteParams {
        grace_period_seconds: Some(u32::try_from(grace_seconds.max(0)).unwrap_or(u32::MAX)),
        ..DeleteParams::default()
    };
    ignore_not_found(pods.delete(name, &params).await)
        .map_err(ReconcileError::kube("delete preempted pod"))?;
    Ok(())
}

async fn cleanup(inst: &GpuInstance, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = inst.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let uid = inst.uid().unwrap_or_default();
    let running: Vec<String> = inst
        .pod_names()
        .into_iter()
        .filter(|n| {
            ctx.caches
                .pod(&ns, n)
                .as_deref()
                .and_then(|p| PodView::of(p, &uid))
                .is_some_and(|p| !p.terminating)
        })
        .collect();
    for pod in &running {
        ignore_not_found(pods.delete(pod, &DeleteParams::default()).await)
            .map_err(ReconcileError::kube("delete pod"))?;
    }
    if !running.is_empty() {
        ctx.event(
            inst,
            EventType::Normal,
            "Stopped",
            "instance deleted: its pod is being stopped".into(),
        )
        .await;
    }
    // Its GPUs count as free once the pod is gone; the placement loop sees that itself.
    ctx.wake.notify_one();
    // Its usage must be recorded before it goes.
    if let Some(wait) = usage_not_recorded(inst, ctx).await? {
        return Err(ReconcileError::Waiting(wait));
    }
    Ok(Action::await_change())
}

/// Records the deleted instance's runs in its user's GpuUsageRecord (the chargeback that
/// outlives it and its user); says why it must wait instead, or `None` once they are in
/// (or it never ran).
async fn usage_not_recorded(
    inst: &GpuInstance,
    ctx: &Context,
) -> Result<Option<String>, ReconcileError> {
    let status = inst.status.clone().unwrap_or_default();
    if status.usage.is_none() && status.node_name.is_none() && status.previous_runs.is_empty() {
        return Ok(None); // never ran
    }
    let now = Timestamp::now();
    if !rollup::ready_to_fold(inst, now) {
        return Ok(Some(format!(
            "waiting up to {}s for the final usage of {}/{}",
            rollup::FOLD_GRACE.as_secs(),
            inst.namespace().unwrap_or_default(),
            inst.name_any()
        )));
    }
    let ns = inst.namespace().unwrap_or_default();
    // Its user: its namespace's (a namespace being deleted keeps its labels), else the one
    // its status names.
    let Some(user) = ctx.caches.user_of_namespace(&ns).or(status.user.clone()) else {
        warn!("an instance that ran has no user: its usage is not recorded");
        return Ok(None);
    };
    let api = Api::<GpuUsageRecord>::all(ctx.client.clone());
    // A fresh read, not the cache: a record written a moment ago must be seen, or the
    // runs would be recorded twice.
    let lp = ListParams::default().labels(&format!("{}={user}", gpu_cloud_api::USER_LABEL));
    let records = api
        .list(&lp)
        .await
        .map_err(ReconcileError::kube("list usage records"))?
        .items;
    let written = match records::record_instance(&records, &user, inst, now) {
        records::RecordWrite::Nothing => return Ok(None),
        records::RecordWrite::Create(r) => api.create(&PostParams::default(), &r).await,
        records::RecordWrite::Replace(r) => {
            api.replace(&r.name_any(), &PostParams::default(), &r).await
        }
    };
    match written {
        Ok(r) => {
            info!(record = %r.name_any(), "usage recorded");
            Ok(None)
        }
        // Another instance of the user was recorded at the same moment: read again.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some(format!(
            "usage record of {user} changed meanwhile: recording again"
        ))),
        Err(e) => Err(ReconcileError::kube("write usage record")(e)),
    }
}

fn error_policy(inst: Arc<GpuInstance>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    if err.is_waiting() {
        return Action::requeue(Duration::from_secs(1));
    }
    warn!(instance = %inst.object_ref(&()).name.unwrap_or_default(), error = %err, "retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Of `names`, the pods in the cache that are `inst`'s and not already stopping: the ones
/// to delete (a name taken by someone else's pod is never touched).
fn ours(ctx: &Context, ns: &str, inst: &GpuInstance, names: &[String]) -> Vec<String> {
    let uid = inst.uid().unwrap_or_default();
    names
        .iter()
        .filter(|n| {
            ctx.caches
                .pod(ns, n)
                .as_deref()
                .and_then(|p| PodView::of(p, &uid))
                .is_some_and(|p| !p.terminating)
        })
        .cloned()
        .collect()
}
