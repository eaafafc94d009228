//! Prometheus metrics of the controller (served by `gpu_cloud_runtime::metrics::serve`).

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `user` or `instance`.
    pub controller: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a watch cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `nodes`, `pods`, `namespaces`, `gpuusers` or `gpuinstances`.
    pub resource: &'static str,
}

/// Labels of a per-user figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabels {
    /// The GpuUser.
    pub user: String,
}

/// Labels of a per-user amount of money.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserCostLabels {
    /// The GpuUser.
    pub user: String,
    /// The price list's currency.
    pub currency: String,
}

/// Labels of a preemption.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PreemptionLabels {
    /// `PreemptedSpot`, `PreemptedReclaim` or `PreemptedPriority`.
    pub reason: &'static str,
}

/// Labels of waiting instances.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabels {
    /// Why they wait: their condition's reason (`WaitingForGpus`, `GpuQuotaExceeded`, ...).
    pub reason: &'static str,
}

/// Labels of a node loss.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLostLabels {
    /// What the instance does: `Requeue` or `Fail` (`spec.onNodeLost`).
    pub action: &'static str,
}

/// A gauge holding a float.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// What the controller counts.
pub struct ControllerMetrics {
    /// Reconciles by controller and outcome.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Placement passes and how long each took.
    pub pass_seconds: Histogram,
    /// Instances placed on a node.
    pub placed: Counter,
    /// Normal Events not published because they were over `--event-qps`.
    pub events_dropped: Counter,
    /// Instances waiting after the last pass.
    pub waiting: Gauge,
    /// Of those, the ones that cannot run until a person acts (Stalled).
    pub stalled: Gauge,
    /// Instances waiting after the last pass, by why.
    pub waiting_by_reason: Family<WaitLabels, Gauge>,
    /// API requests sent, by verb and resource (the client counts them).
    pub api_requests: gpu_cloud_runtime::client::RequestCounts,
    /// Objects in each watch cache.
    pub cached: Family<CacheLabels, Gauge>,
    /// GPU-hours of each user in the current calendar month (UTC).
    pub user_gpu_hours: Family<UserLabels, FloatGauge>,
    /// Cost of each user in the current calendar month.
    pub user_cost: Family<UserCostLabels, FloatGauge>,
    /// GPU-hours left of each budgeted user's budget period.
    pub user_budget_remaining: Family<UserLabels, FloatGauge>,
    /// Instances preempted, by reason.
    pub preemptions: Family<PreemptionLabels, Counter>,
    /// Instances whose node was lost, by what they did.
    pub node_lost: Family<NodeLostLabels, Counter>,
    /// GPUs each user holds beyond its guarantee (borrowed), after the last pass.
    pub borrowed_gpus: Family<UserLabels, Gauge>,
    /// The process is up and its watches are running.
    pub ready: AtomicBool,
    registry: Registry,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// Creates the metrics, registered under `gpu_cloud_`.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut m = ControllerMetrics {
            reconciles: Family::default(),
            pass_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            placed: Counter::default(),
            events_dropped: Counter::default(),
            waiting: Gauge::default(),
            stalled: Gauge::default(),
            waiting_by_reason: Family::default(),
            api_requests: Family::default(),
            cached: Family::default(),
            user_gpu_hours: Family::default(),
            user_cost: Family::default(),
            user_budget_remaining: Family::default(),
            preemptions: Family::default(),
            node_lost: Family::default(),
            borrowed_gpus: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        let r = registry.sub_registry_with_prefix("gpu_cloud");
        r.register(
            "reconciles",
            "Reconciles by controller and result",
            m.reconciles.clone(),
        );
        r.register(
            "placement_pass_seconds",
            "Duration of a placement pass",
            m.pass_seconds.clone(),
        );
        r.register(
            "events_dropped",
            "Normal Events not published because they were over --event-qps",
            m.events_dropped.clone(),
        );
        r.register(
            "instances_placed",
            "Instances placed on a node",
            m.placed.clone(),
        );
        r.register(
            "instances_waiting",
            "Instances waiting after the last placement pass",
            m.waiting.clone(),
        );
        r.register(
            "instances_stalled",
            "Waiting instances that cannot run until a person acts",
            m.stalled.clone(),
        );
        r.register(
            "instances_waiting_by_reason",
            "Instances waiting after the last placement pass, by the reason of their condition",
            m.waiting_by_reason.clone(),
        );
        r.register(
            "api_requests",
            "API requests sent, by verb and resource",
            m.api_requests.clone(),
        );
        r.register(
            "cached_objects",
            "Objects held in each watch cache after the last placement pass",
            m.cached.clone(),
        );
        r.register(
            "user_gpu_hours",
            "GPU-hours of each user in the current calendar month (UTC)",
            m.user_gpu_hours.clone(),
        );
        r.register(
            "user_cost",
            "Cost of each user in the current calendar month (UTC), from the GpuPriceList",
            m.user_cost.clone(),
        );
        r.register(
            "user_budget_remaining_gpu_hours",
            "GPU-hours left in each budgeted user's current budget period",
            m.user_budget_remaining.clone(),
        );
        r.register(
            "preemptions",
            "Instances preempted, by reason",
            m.preemptions.clone(),
        );
        r.register(
            "instances_node_lost",
            "Instances whose node was lost (not Ready too long, or deleted), by what they did",
            m.node_lost.clone(),
        );
        r.register(
            "user_borrowed_gpus",
            "GPUs each user holds beyond its guarantee (borrowed) after the last placement pass",
            m.borrowed_gpus.clone(),
        );
        // Counters of events that may not have happened yet start at 0, so that their
        // series exist (a `rate()` over them reads 0, not nothing).
        for reason in gpu_cloud_core::scheduler::preemption::Reason::ALL {
            let _ = m.preemptions.get_or_create(&PreemptionLabels {
                reason: reason.word(),
            });
        }
        for action in ["Requeue", "Fail"] {
            let _ = m.node_lost.get_or_create(&NodeLostLabels { action });
        }
        m.registry = registry;
        m
    }

    /// Counts one preemption.
    pub fn preempted(&self, reason: &'static str) {
        self.preemptions
            .get_or_create(&PreemptionLabels { reason })
            .inc();
    }

    /// Sets the waiting instances by reason, forgetting reasons none has now.
    pub fn set_waiting_reasons(&self, reasons: impl IntoIterator<Item = &'static str>) {
        let mut counts: std::collections::BTreeMap<&'static str, i64> = Default::default();
        for r in reasons {
            *counts.entry(r).or_default() += 1;
        }
        self.waiting_by_reason.clear();
        for (reason, n) in counts {
            self.waiting_by_reason
                .get_or_create(&WaitLabels { reason })
                .set(n);
        }
    }

    /// Counts one instance on a lost node.
    pub fn node_lost(&self, action: gpu_cloud_api::v1::OnNodeLost) {
        let action = match action {
            gpu_cloud_api::v1::OnNodeLost::Requeue => "Requeue",
            gpu_cloud_api::v1::OnNodeLost::Fail => "Fail",
        };
        self.node_lost
            .get_or_create(&NodeLostLabels { action })
            .inc();
    }

    /// Sets every user's borrowed GPUs, forgetting users that are gone.
    pub fn set_borrowed(&self, per_user: &std::collections::BTreeMap<&str, i64>) {
        self.borrowed_gpus.clear();
        for (user, n) in per_user {
            self.borrowed_gpus
                .get_or_create(&UserLabels {
                    user: (*user).to_owned(),
                })
                .set(*n);
        }
    }

    /// Counts one reconcile outcome.
    pub fn reconciled(&self, controller: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
    }
}

impl gpu_cloud_runtime::metrics::Exporter for ControllerMetrics {
    fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.registry
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
