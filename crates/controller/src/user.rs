//! The GpuUser reconciler: a namespace per user, a RoleBinding of the user's subjects to
//! the `gpu-cloud-user` ClusterRole there, a ResourceQuota matching the user's quota, and a
//! status with what the user holds. On deletion it stops the user's instances first, then
//! removes the namespace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{instrument, warn};

use super::conditions::{Health, with_health};
use super::error::ignore_not_found;
use super::{Context, FIELD_MANAGER, ReconcileError, apply_status};
use crate::metrics::{UserCostLabels, UserLabels};
use gpu_cloud_api::GPU_RESOURCE;
use gpu_cloud_api::USER_LABEL;
use gpu_cloud_api::v1::{GpuInstance, GpuUsageRecord, GpuUser, GpuUserStatus, Phase, SubjectKind};
use gpu_cloud_api::{MANAGED_BY, namespace_of, user_of_namespace};
use gpu_cloud_core::policy::chargeback;
use gpu_cloud_core::policy::cost::CostError;
use gpu_cloud_core::policy::records::{self, Recorded};
use gpu_cloud_core::policy::rollup;
use gpu_cloud_core::policy::{budget, figures, objects};

/// Finalizer on every GpuUser: instances stopped and namespace removed before it goes.
pub const FINALIZER: &str = "gpu-cloud.io/user";
/// The ClusterRole a user's subjects are bound to in the user's namespace.
pub const USER_CLUSTER_ROLE: &str = "gpu-cloud-user";
/// Name of the RoleBinding and ResourceQuota the operator keeps in each user namespace.
pub const OBJECT_NAME: &str = "gpu-cloud-user";

/// How often a converged user's namespace, RoleBinding and ResourceQuota are applied again
/// anyway (repairs hand edits; the cheap path skips them).
const REAPPLY: Duration = Duration::from_secs(300);

/// When each user's objects were last applied, and at which generation: lets a converged
/// user's reconcile (one per instance change) skip three writes. Memory only: after a
/// restart everything is applied once again.
#[derive(Default)]
pub struct Provisioned {
    applied: Mutex<HashMap<String, (Option<i64>, Instant)>>,
    figures: Mutex<HashMap<String, Instant>>,
    /// Per user, why their cost could not be worked out, as last told in an Event.
    cost_errors: Mutex<HashMap<String, String>>,
}

/// Least time between two status writes of a user that only change its figures.
const FIGURES_EVERY: Duration = Duration::from_secs(5);

impl Provisioned {
    /// How long until `name`'s figures may be written again, if not yet.
    fn figures_due_in(&self, name: &str, every: Duration) -> Option<Duration> {
        let m = self.figures.lock().ok()?;
        let since = m.get(name)?.elapsed();
        (since < every).then(|| every - since)
    }

    fn figures_written(&self, name: &str) {
        if let Ok(mut m) = self.figures.lock() {
            m.insert(name.to_owned(), Instant::now());
        }
    }

    /// `name` was applied at `generation` less than `within` ago.
    fn fresh(&self, name: &str, generation: Option<i64>, within: Duration) -> bool {
        self.applied.lock().is_ok_and(|m| {
            m.get(name)
                .is_some_and(|(g, at)| *g == generation && at.elapsed() < within)
        })
    }

    fn record(&self, name: &str, generation: Option<i64>) {
        if let Ok(mut m) = self.applied.lock() {
            m.insert(name.to_owned(), (generation, Instant::now()));
        }
    }

    /// Records why `name`'s cost is unknown now (`None`: it is known); true when that is
    /// news, so that it is told once per change, not on every reconcile. A restarted
    /// controller tells it once more.
    fn cost_error_is_news(&self, name: &str, error: Option<String>) -> bool {
        let Ok(mut m) = self.cost_errors.lock() else {
            return false;
        };
        match error {
            Some(e) => m.insert(name.to_owned(), e.clone()).as_ref() != Some(&e),
            None => {
                m.remove(name);
                false
            }
        }
    }
}

/// Runs the user controller until shutdown, triggered by the user, instance and namespace
/// caches.
pub async fn run(
    ctx: Arc<Context>,
    users: super::cache::Feed<GpuUser>,
    instances: super::cache::Feed<GpuInstance>,
    namespaces: super::cache::Feed<PartialObjectMeta<Namespace>>,
    records: super::cache::Feed<GpuUsageRecord>,
) {
    let config = kube::runtime::controller::Config::default()
        .concurrency(ctx.args.concurrency)
        // A burst of bookings changes a user many times a second: one status write for the
        // lot, a moment later.
        .debounce(Duration::from_millis(500));
    let results = Controller::for_shared_stream(users, ctx.caches.users.clone())
        .owns_shared_stream(namespaces)
        // Instances change what a user holds: refresh the user's status.
        .watches_shared_stream(instances, |inst| {
            inst.namespace()
                .and_then(|ns| user_of_namespace(&ns).map(str::to_owned))
                .map(|user| ObjectRef::<GpuUser>::new(&user))
        })
        // A deleted instance's usage recorded: its user's totals count it from the record.
        .watches_shared_stream(records, |r| Some(ObjectRef::<GpuUser>::new(&r.spec.user)))
        .with_config(config)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone());
    super::report(results, ctx.metrics.clone(), "user").await;
}

#[instrument(skip_all, fields(user = %user.name_any()))]
async fn reconcile(user: Arc<GpuUser>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let api = Api::<GpuUser>::all(ctx.client.clone());
    super::error::finalized(
        finalizer(&api, FINALIZER, user, |event| async {
            match event {
                Event::Apply(user) => apply(&user, &ctx).await,
                Event::Cleanup(user) => cleanup(&user, &ctx).await,
            }
        })
        .await,
    )
}

async fn apply(user: &GpuUser, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = user.name_any();
    let ns = namespace_of(&name);
    let client = &ctx.client;
    let old = user.status.clone().unwrap_or_default();
    let generation = user.metadata.generation;
    let now = Timestamp::now();

    let namespaces = Api::<Namespace>::all(client.clone());
    let ours = ctx.caches.user_of_namespace(&ns).as_deref() == Some(name.as_str());
    // Not ours in the cache (which holds only user namespaces): absent, or someone else's.
    let taken = if ours {
        None
    } else {
        namespaces
            .get_opt(&ns)
            .await
            .map_err(ReconcileError::kube("get namespace"))?
            .filter(|n| n.labels().get(USER_LABEL) != Some(&name))
    };
    if let Some(taken) = taken {
        let msg = format!(
            "namespace {} exists and does not belong to GpuUser {name}",
            taken.name_any()
        );
        let status = GpuUserStatus {
            conditions: with_health(
                &old.conditions,
                Health::Stalled {
                    reason: "NamespaceTaken",
                    message: &msg,
                },
                generation,
                now,
            ),
            observed_generation: generation,
            ..old.clone()
        };
        if status != old {
            apply_status(&Api::<GpuUser>::all(client.clone()), &name, &status)
                .await
                .map_err(ReconcileError::kube("write user status"))?;
            ctx.event(user, EventType::Warning, "NamespaceTaken", msg)
                .await;
        }
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let converged = ours
        && old.observed_generation == generation
        && ctx.provisioned.fresh(&name, generation, REAPPLY);
    if !converged {
        provision(user, &ns, ctx).await?;
        ctx.provisioned.record(&name, generation);
    }

    let instances = instances_in(ctx, &ns);
    let (gpus_in_use, active) = holdings(&instances);
    // The usage of its deleted instances: its records (carried over from the status once,
    // where an older controller kept them).
    if let Some(legacy) = old
        .usage
        .as_ref()
        .and_then(|u| records::import_legacy(&name, u, now))
    {
        match Api::<GpuUsageRecord>::all(client.clone())
            .create(&PostParams::default(), &legacy)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(ReconcileError::kube("import retired usage into a record")(
                    e,
                ));
            }
        }
    }
    close_records(ctx, now).await?;
    let my_records = ctx.caches.records_of(&name);
    let recorded = Recorded::of(my_records.iter().map(|r| r.as_ref()));
    let message = if user.spec.suspended {
        format!("suspended: no new instance starts; namespace {ns}")
    } else {
        format!("books in namespace {ns}")
    };
    let status = GpuUserStatus {
        conditions: with_health(
            &old.conditions,
            Health::Ready {
                reason: "Provisioned",
                message: &message,
            },
            generation,
            now,
        ),
        observed_generation: generation,
        namespace: Some(ns.clone()),
        gpus_in_use,
        instances: active,
        usage: Some(rollup::user_usage(&instances, &recorded, now)),
        budget: None,
        cost: None,
    };
    let prices = ctx.caches.price_list();
    let books = budget_and_cost(user, &instances, &recorded, prices.as_ref(), now);
    let mut status = status;
    status.budget = books.budget.as_ref().map(objects::budget_view);
    status.cost = books.cost.as_ref().ok().cloned().flatten();
    record_budget_and_cost(ctx, &name, &books);
    // Deleted instances whose last figures are not in yet: look again shortly.
    let folding = instances
        .iter()
        .any(|i| i.metadata.deletion_timestamp.is_some());
    // Only the figures moved (a burst of bookings moves them many times a second): write
    // them at most every FIGURES_EVERY; a person reads totals, not every step.
    let exhausted = |s: &GpuUserStatus| s.budget.as_ref().map(|b| b.exhausted);
    let figures_only = status.conditions == old.conditions
        && exhausted(&status) == exhausted(&old)
        && status.observed_generation == old.observed_generation
        && status.namespace == old.namespace
        && old
            .usage
            .as_ref()
            .is_none_or(|u| u.retired_instances.is_empty());
    if status != old
        && figures_only
        && let Some(wait) = ctx.provisioned.figures_due_in(&name, FIGURES_EVERY)
    {
        return Ok(Action::requeue(wait));
    }
    if status != old {
        apply_status(&Api::<GpuUser>::all(client.clone()), &name, &status)
            .await
            .map_err(ReconcileError::kube("write user status"))?;
        ctx.provisioned.figures_written(&name);
        if old.namespace.is_none() {
            ctx.event(
                user,
                EventType::Normal,
                "Provisioned",
                format!("namespace {ns} ready"),
            )
            .await;
        }
        if old.observed_generation != generation {
            // Quota or suspension may have changed what can be placed.
            ctx.wake.notify_one();
        }
        if let Some(b) = books.budget.as_ref()
            && b.exhausted()
            && exhausted(&old) != Some(true)
        {
            let policy = user
                .spec
                .quota
                .gpu_hours
                .as_ref()
                .map(|s| objects::budget(s).on_exhausted)
                .unwrap_or_default();
            let message = budget::exhausted_message(policy, b, books.running);
            ctx.event(user, EventType::Warning, budget::REASON_EXHAUSTED, message)
                .await;
        }
        if exhausted(&old) == Some(true) && exhausted(&status) == Some(false) {
            // A new period: what the budget held back may start now.
            ctx.wake.notify_one();
        }
    }
    let cost_error = books.cost.as_ref().err().map(ToString::to_string);
    if ctx
        .provisioned
        .cost_error_is_news(&name, cost_error.clone())
        && let Some(e) = cost_error
    {
        warn!(user = %name, error = %e, "cannot price the user's usage");
        let message = format!("cost of this month unknown: {e}");
        ctx.event(user, EventType::Warning, "CostUnavailable", message)
            .await;
    }
    let mut next = Duration::from_secs(if folding { 2 } else { 300 });
    if let Some(at) = books.revisit {
        let until = Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO);
        next = next.min(until + Duration::from_millis(200));
    }
    Ok(Action::requeue(next))
}

/// A user's budget and cost as they stand.
struct BudgetAndCost {
    budget: Option<gpu_cloud_core::policy::budget::BudgetStatus>,
    /// The cost of this month; `Err` when the price list cannot price it (a model without a
    /// price): shown as no cost, with a Warning Event that names what is missing.
    cost: Result<Option<gpu_cloud_api::v1::UserCost>, CostError>,
    gpu_hours_this_month: f64,
    running: usize,
    /// Look again then: the budget runs out or renews.
    revisit: Option<Timestamp>,
}

/// Works out the budget and cost of `user` from its `instances` and `recorded` usage (pure).
fn budget_and_cost(
    user: &GpuUser,
    instances: &[GpuInstance],
    recorded: &Recorded<'_>,
    prices: Option<&gpu_cloud_core::policy::cost::PriceList>,
    now: Timestamp,
) -> BudgetAndCost {
    let seen = user;
    let refs: Vec<&GpuInstance> = instances.iter().collect();
    let running = instances.iter().filter(|i| figures::holds_gpus(i)).count();
    let held = figures::held_gpus(instances);
    let budget = match objects::budget_status(seen, &refs, recorded, now) {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            warn!(user = %user.name_any(), error = %e, "budget period");
            None
        }
        None => None,
    };
    let revisit = budget.as_ref().map(|b| {
        objects::exhausted_at(b, held, now)
            .unwrap_or(b.period.end)
            .min(b.period.end)
    });
    let figures = objects::user_figures(seen, &refs, recorded, now);
    let month = gpu_cloud_core::policy::chargeback::ReportPeriod::month_of(now).ok();
    let gpu_hours_this_month = month
        .as_ref()
        .map_or(0.0, |m| objects::gpu_hours_in(&figures, m.bounds));
    let cost = match (prices, month) {
        (Some(p), Some(m)) => chargeback::report(p, &figures, &m).map(|r| {
            Some(gpu_cloud_api::v1::UserCost {
                period: m.label.clone(),
                current_period: (r.totals.cost.total * 100.0).round() / 100.0,
                currency: r.currency,
            })
        }),
        _ => Ok(None),
    };
    BudgetAndCost {
        budget,
        cost,
        gpu_hours_this_month,
        running,
        revisit,
    }
}

/// Closes every record of a month that is over (any user's: a deleted user's too), so
/// that it can no longer change.
async fn close_records(ctx: &Context, now: Timestamp) -> Result<(), ReconcileError> {
    let all = ctx.caches.records.state();
    let api = Api::<GpuUsageRecord>::all(ctx.client.clone());
    for r in records::to_close(all.iter().map(|r| r.as_ref()), now) {
        let close = serde_json::json!({"spec": {"closed": true}});
        ignore_not_found(
            api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(close))
                .await,
        )
        .map_err(ReconcileError::kube("close a usage record"))?;
        tracing::info!(record = %r.name_any(), "usage record closed: its month is over");
    }
    Ok(())
}

/// Drops the gauges of a user being deleted.
fn forget_budget_and_cost(ctx: &Context, user: &GpuUser) {
    let m = &ctx.metrics;
    let labels = UserLabels {
        user: user.name_any(),
    };
    m.user_gpu_hours.remove(&labels);
    m.user_budget_remaining.remove(&labels);
    if let Some(c) = user.status.as_ref().and_then(|s| s.cost.as_ref()) {
        m.user_cost.remove(&UserCostLabels {
            user: user.name_any(),
            currency: c.currency.clone(),
        });
    }
}

/// Sets the user's gauges.
fn record_budget_and_cost(ctx: &Context, name: &str, books: &BudgetAndCost) {
    let m = &ctx.metrics;
    let user = UserLabels {
        user: name.to_owned(),
    };
    m.user_gpu_hours
        .get_or_create(&user)
        .set(books.gpu_hours_this_month);
    if let Some(b) = &books.budget {
        m.user_budget_remaining
            .get_or_create(&user)
            .set(b.remaining);
    } else {
        m.user_budget_remaining.remove(&user);
    }
    if let Ok(Some(c)) = &books.cost {
        m.user_cost
            .get_or_create(&UserCostLabels {
                user: name.to_owned(),
                currency: c.currency.clone(),
            })
            .set(c.current_period);
    }
}

/// Name of the ClusterRole (and its binding) that lets a user's subjects read their own
/// GpuUser.
pub fn self_role_name(user: &str) -> String {
    format!("{USER_CLUSTER_ROLE}:{user}")
}

/// Applies the user's namespace, RoleBinding, ResourceQuota, and the ClusterRole and
/// ClusterRoleBinding to read their own GpuUser.
async fn provision(user: &GpuUser, ns: &str, ctx: &Context) -> Result<(), ReconcileError> {
    let name = user.name_any();
    let client = &ctx.client;
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let namespaces = Api::<Namespace>::all(client.clone());
    let owner = user
        .controller_owner_ref(&())
        .into_iter()
        .collect::<Vec<_>>();
    let labels = json!({USER_LABEL: name, "app.kubernetes.io/managed-by": MANAGED_BY});
    // Pod Security `baseline` enforced: no privileged pod, host namespace or hostPath in a
    // user's namespace, whoever creates it (instance pods need none of them).
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "ownerReferences": owner, "labels": {
            USER_LABEL: name, "app.kubernetes.io/managed-by": MANAGED_BY,
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "baseline",
        }},
    });
    namespaces
        .patch(ns, &ssa, &Patch::Apply(namespace))
        .await
        .map_err(ReconcileError::kube("apply namespace"))?;

    let subjects = user
        .spec
        .subjects
        .iter()
        .map(|s| match s.kind {
            SubjectKind::ServiceAccount => {
                json!({"kind": "ServiceAccount", "name": s.name, "namespace": s.namespace})
            }
            SubjectKind::User => {
                json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": s.name})
            }
            SubjectKind::Group => {
                json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": s.name})
            }
        })
        .collect::<Vec<_>>();
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": OBJECT_NAME, "namespace": ns, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER_CLUSTER_ROLE},
        "subjects": subjects,
    });
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .patch(OBJECT_NAME, &ssa, &Patch::Apply(binding))
        .await
        .map_err(ReconcileError::kube("apply RoleBinding"))?;

    // The user's own GpuUser, readable by its subjects (and no other): their budget,
    // usage and cost are in its status. A RoleBinding cannot grant a cluster-scoped
    // object, so this is a ClusterRole and ClusterRoleBinding per user, owned by the
    // GpuUser so that they go with it.
    let own = self_role_name(&name);
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": own, "labels": labels, "ownerReferences": owner},
        "rules": [{"apiGroups": [gpu_cloud_api::GROUP], "resources": ["gpuusers"],
                   "resourceNames": [name], "verbs": ["get", "watch"]}],
    });
    Api::<ClusterRole>::all(client.clone())
        .patch(&own, &ssa, &Patch::Apply(role))
        .await
        .map_err(ReconcileError::kube("apply ClusterRole"))?;
    let own_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": own, "labels": labels, "ownerReferences": owner},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": own},
        "subjects": subjects,
    });
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&own, &ssa, &Patch::Apply(own_binding))
        .await
        .map_err(ReconcileError::kube("apply ClusterRoleBinding"))?;

    let mut hard = serde_json::Map::new();
    // The backstop against a stale view of ours: what the user may hold of every kind.
    if let Some(max) = user.spec.quota.most_gpus() {
        hard.insert(format!("requests.{GPU_RESOURCE}"), json!(max.to_string()));
    }
    let quota = json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": OBJECT_NAME, "namespace": ns, "labels": labels},
        "spec": {"hard": hard},
    });
    Api::<ResourceQuota>::namespaced(client.clone(), ns)
        .patch(OBJECT_NAME, &ssa, &Patch::Apply(quota))
        .await
        .map_err(ReconcileError::kube("apply ResourceQuota"))?;

    Ok(())
}

/// The instances in a user's namespace, from the cache.
fn instances_in(ctx: &Context, ns: &str) -> Vec<GpuInstance> {
    ctx.caches
        .instances
        .state_filter(|i| i.namespace().as_deref() == Some(ns))
        .iter()
        .map(|i| (**i).clone())
        .collect()
}

/// GPUs held by placed instances, and instances not finished (pure).
pub fn holdings(instances: &[GpuInstance]) -> (u32, u32) {
    let active = instances
        .iter()
        .filter(|i| {
            !i.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_finished)
        })
        .count();
    (
        figures::held_gpus(instances),
        u32::try_from(active).unwrap_or(u32::MAX),
    )
}

async fn cleanup(user: &GpuUser, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = namespace_of(&user.name_any());
    forget_budget_and_cost(ctx, user);
    ctx.provisioned.cost_error_is_news(&user.name_any(), None);
    if ctx.caches.user_of_namespace(&ns).as_deref() != Some(user.name_any().as_str()) {
        return Ok(Action::await_change());
    }
    let instances = Api::<GpuInstance>::namespaced(ctx.client.clone(), &ns);
    let list = instances_in(ctx, &ns);
    if !list.is_empty() {
        // Each instance's own finalizer stops its pod (and folds in its usage) first.
        for inst in list
            .iter()
            .filter(|i| i.meta().deletion_timestamp.is_none())
        {
            ignore_not_found(
                instances
                    .delete(&inst.name_any(), &DeleteParams::default())
                    .await,
            )
            .map_err(ReconcileError::kube("delete instance"))?;
        }
        ctx.event(
            user,
            EventType::Normal,
            "Stopping",
            format!("stopping {} instances", list.len()),
        )
        .await;
        return Err(ReconcileError::Waiting(format!(
            "{} instances of {} still stopping",
            list.len(),
            user.name_any()
        )));
    }
    ignore_not_found(
        Api::<Namespace>::all(ctx.client.clone())
            .delete(&ns, &DeleteParams::default())
            .await,
    )
    .map_err(ReconcileError::kube("delete namespace"))?;
    ctx.event(
        user,
        EventType::Normal,
        "Deleted",
        format!("instances stopped, namespace {ns} deleted"),
    )
    .await;
    Ok(Action::await_change())
}

fn error_policy(user: Arc<GpuUser>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    if !err.is_waiting() {
        warn!(user = %user.name_any(), error = %err, "retrying");
    }
    Action::requeue(Duration::from_secs(1))
}
