//! `gpu-cloud.io/v1`: the current (and stored) schema of GpuUser and GpuInstance.

use jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A person (or team) of the GPU cloud: who they are, who may act as them, what they may
/// book. The operator gives each user a namespace `gpu-<name>` to book in.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gpu-cloud.io",
    version = "v1",
    kind = "GpuUser",
    shortname = "gu",
    category = "gpu",
    status = "GpuUserStatus",
    printcolumn = r#"{"name":"Display name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.gpusInUse"}"#,
    printcolumn = r#"{"name":"Max GPUs","type":"integer","jsonPath":".spec.quota.maxGpus"}"#,
    printcolumn = r#"{"name":"Instances","type":"integer","jsonPath":".status.instances"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspended"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 59 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("a GpuUser name must be a DNS label (lower-case letters, digits, '-') of at most 59 characters, because it names the user's namespace gpu-<name>")
        .field_path(".metadata.name")
)]
#[serde(rename_all = "camelCase")]
pub struct GpuUserSpec {
    /// Name shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// Contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 320))]
    pub email: Option<String>,
    /// The Kubernetes users, groups or service accounts who act as this user: they may
    /// manage GpuInstances (and read their pods and logs) in the user's namespace only.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub subjects: Vec<UserSubject>,
    /// What this user may book.
    #[serde(default)]
    pub quota: Quota,
    /// No new instance of this user starts while set; running instances run to their end.
    #[serde(default)]
    pub suspended: bool,
    /// Idle shutdown for this user's instances that do not set their own: stop an
    /// instance whose GPUs stay under a utilization threshold for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleDefaults>,
}

/// A user's default idle shutdown (each GpuInstance may override every field).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdleDefaults {
    /// Stop an instance whose GPUs stay idle this long, e.g. `2h`; `0s` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,6}[hms])+$')").message("spec.idle.timeout must look like 30m, 2h or 1h30m (units h, m, s)"))]
    #[schemars(length(max = 32))]
    pub timeout: Option<String>,
    /// GPU utilization (percent) under which the GPUs count as idle (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub threshold_percent: Option<f64>,
    /// Only warn (condition and Event), never stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_only: Option<bool>,
}

/// An identity that acts as a GpuUser (an RBAC subject).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.kind != 'ServiceAccount' || has(self.__namespace__)")
    .message("a ServiceAccount subject needs its namespace"))]
#[serde(rename_all = "camelCase")]
pub struct UserSubject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: SubjectKind,
    /// The user, group or service account name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

impl GpuUser {
    /// Its `subjects` name the identity `username` with `groups` (as a TokenReview or a
    /// SelfSubjectReview gives it): the one rule for "this person acts as this user".
    pub fn names(&self, username: &str, groups: &[String]) -> bool {
        self.spec.subjects.iter().any(|s| match s.kind {
            SubjectKind::User => s.name == username,
            SubjectKind::Group => groups.contains(&s.name),
            SubjectKind::ServiceAccount => {
                let ns = s.namespace.as_deref().unwrap_or("default");
                username == format!("system:serviceaccount:{ns}:{}", s.name)
            }
        })
    }
}

/// Kinds of RBAC subject.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    /// An authenticated user name.
    User,
    /// A group of users.
    Group,
    /// A service account (give its namespace).
    ServiceAccount,
}

/// Limits on what a user may hold at once. Absent limits do not limit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Most GPUs the user's placed instances may hold together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u32>,
    /// Most instances the user may have placed (Scheduled or Running) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
    /// GPU models (`nvidia.com/gpu.product` values) the user may book; empty means any.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub allowed_models: Vec<String>,
    /// A budget of GPU-hours per week or month, on top of the limits above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_hours: Option<GpuHourBudget>,
    /// GPUs the user may hold beyond `maxGpus` (their guarantee) while others leave theirs
    /// idle: borrowed, and preempted when their owners book within their own guarantee
    /// (default 0: nothing borrowed). Needs `maxGpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100000))]
    pub borrow_gpus: Option<u32>,
    /// Most GPUs the user may hold in spot (`preemptible`) instances, which use idle GPUs
    /// apart from `maxGpus` and are the first to be preempted (default: no bound; `0`
    /// allows no spot instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100000))]
    pub max_spot_gpus: Option<u32>,
}

impl Quota {
    /// The most GPUs the user's pods may request at once, on demand (guarantee and what
    /// may be borrowed) and spot together: the bound of the namespace's ResourceQuota,
    /// `None` when either kind is unbounded.
    pub fn most_gpus(&self) -> Option<u32> {
        let on_demand = self.max_gpus?.saturating_add(self.borrow_gpus.unwrap_or(0));
        Some(on_demand.saturating_add(self.max_spot_gpus?))
    }
}

/// GPU-hours a user may use per period. A booking is refused when its planned GPU-hours
/// (GPUs x duration) exceed what is left; when the budget runs out during a run,
/// `onExhausted` applies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuHourBudget {
    /// GPU-hours per period.
    #[schemars(range(min = 0.0))]
    pub limit: f64,
    /// `Month` (default) or `Week`, in UTC.
    #[serde(default)]
    pub period: BudgetPeriod,
    /// Day of the month the budget renews, 1 to 28 (default 1). Monthly budgets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 28))]
    pub reset_day: Option<u8>,
    /// Day of the week the budget renews (default Monday). Weekly budgets only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_weekday: Option<Weekday>,
    /// When it runs out during a run: `FinishRunning` (default: running instances run to
    /// their end, nothing new starts) or `Stop` (running instances are stopped too).
    #[serde(default)]
    pub on_exhausted: OnExhausted,
}

/// How a GPU-hour budget recurs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BudgetPeriod {
    /// Seven days from `resetWeekday`, 00:00 UTC.
    Week,
    /// From `resetDay` of one month to the same day of the next, 00:00 UTC.
    #[default]
    Month,
}

/// A day of the week.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

/// What happens when a GPU-hour budget runs out while instances run.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnExhausted {
    /// Running instances run to their booked end; nothing new starts.
    #[default]
    FinishRunning,
    /// Running instances are stopped (phase `Stopped`, reason `BudgetExhausted`).
    Stop,
}

/// What the operator observed and did for a GpuUser.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuUserStatus {
    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The namespace the user books in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// GPUs held by the user's placed instances.
    #[serde(default)]
    pub gpus_in_use: u32,
    /// The user's instances that are placed or waiting (not finished).
    #[serde(default)]
    pub instances: u32,
    /// GPU use of all the user's instances, deleted ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UserUsage>,
    /// The GPU-hour budget of the period in progress (with `spec.quota.gpuHours`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetView>,
    /// What the user's use costs (with a GpuPriceList).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<UserCost>,
}

/// A GPU-hour budget as it stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    /// GPU-hours per period.
    pub limit_gpu_hours: f64,
    /// GPU-hours held in this period so far (GPUs x time placed).
    pub used_gpu_hours: f64,
    /// What is left of this period's budget.
    pub remaining_gpu_hours: f64,
    /// The period's first instant.
    pub period_start: Timestamp,
    /// When the budget renews.
    pub period_end: Timestamp,
    /// Nothing is left: no new instance starts until `periodEnd`.
    pub exhausted: bool,
}

/// A user's cost, from the cluster's GpuPriceList.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UserCost {
    /// The calendar month (UTC) of `currentPeriod`, e.g. `2026-11`.
    pub period: String,
    /// The month so far.
    pub current_period: f64,
    /// Currency of both amounts.
    pub currency: String,
}

/// A user's usage: lifetime and the current calendar month (UTC).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UserUsage {
    /// Everything so far.
    pub lifetime: UsageTotals,
    /// The month in progress (`2026-11`), by when each instance was last sampled.
    pub current_period: UsageTotals,
    /// Which month `currentPeriod` is.
    pub period: String,
    /// Usage of deleted instances, from the user's GpuUsageRecords.
    #[serde(default)]
    pub retired: UsageTotals,
    /// Of `retired`, the same by month of their end (`2026-11`; the last 12 shown).
    #[serde(default)]
    pub retired_by_period: std::collections::BTreeMap<String, UsageTotals>,
    /// No longer written (deleted instances are in GpuUsageRecords); kept for readers of
    /// older objects.
    #[serde(default)]
    pub retired_uids: Vec<String>,
    /// Written by controllers before GpuUsageRecords: the figures of deleted instances.
    /// The controller moves them into a record `<user>-imported` and no longer writes
    /// this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_instances: Vec<RetiredInstance>,
}

/// What a deleted instance held and used.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetiredInstance {
    /// GPU model.
    pub model: String,
    /// GPUs held.
    pub gpus: u32,
    /// When it was placed.
    pub started_at: Timestamp,
    /// When it stopped holding its GPUs (or was last sampled).
    pub ended_at: Timestamp,
    /// Measured GPU-seconds (GPUs x seconds held when no agent measured it).
    pub gpu_seconds: f64,
    /// Measured energy, joules.
    #[serde(default)]
    pub energy_joules: f64,
    /// A spot (`preemptible`) instance, priced at the spot factor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
}

/// Sums of usage.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotals {
    /// GPU-hours.
    pub gpu_hours: f64,
    /// Energy, kWh.
    pub energy_kwh: f64,
    /// Instances counted.
    pub instances: u32,
}

/// A booking of GPUs: which and how many, what to run on them, for how long.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpu-cloud.io",
    version = "v1",
    kind = "GpuInstance",
    namespaced,
    shortname = "gi",
    selectable = ".status.nodeName",
    category = "gpu",
    status = "GpuInstanceStatus",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".status.user"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.gpu.model"}"#,
    printcolumn = r#"{"name":"Count","type":"integer","jsonPath":".spec.gpu.count"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","priority":1,"jsonPath":".spec.gpu.nodes"}"#,
    printcolumn = r#"{"name":"Slice","type":"string","priority":1,"jsonPath":".spec.gpu.slice"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"GPU util","type":"number","format":"float","jsonPath":".status.usage.avgUtilization"}"#,
    printcolumn = r#"{"name":"Borrowed","type":"boolean","jsonPath":".status.borrowed"}"#,
    printcolumn = r#"{"name":"Preemptible","type":"boolean","jsonPath":".spec.preemptible"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Waiting","type":"string","priority":1,"jsonPath":".status.message"}"#,
    validation = Rule::new("!has(oldSelf.status) || !has(oldSelf.status.nodeName) || (self.spec.gpu == oldSelf.spec.gpu && self.spec.image == oldSelf.spec.image && self.spec.command == oldSelf.spec.command && self.spec.args == oldSelf.spec.args && self.spec.env == oldSelf.spec.env && self.spec.resources == oldSelf.spec.resources)")
        .message("spec.gpu, image, command, args, env and resources cannot change once the instance is placed on a node; delete it and book again"),
    validation = Rule::new("!has(self.spec.gpu.nodes) || self.spec.gpu.nodes == 1 || (size(self.metadata.name) <= 56 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("a gang (spec.gpu.nodes > 1) must be named as a DNS label (lower-case letters, digits, '-') of at most 56 characters: its pods are <name>-<rank>, their host names too")
        .field_path(".metadata.name")
)]
#[serde(rename_all = "camelCase")]
pub struct GpuInstanceSpec {
    /// The GPUs to book.
    pub gpu: GpuRequest,
    /// Container image to run on them: a reference such as `pytorch/pytorch:2.5.1`,
    /// `registry.example.com:5000/team/trainer:v3` or `…@sha256:<64 hex digits>`.
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.image must name a container image"))]
    #[x_kube(validation = Rule::new(IMAGE_REFERENCE_RULE).message("spec.image must be an image reference such as pytorch/pytorch:2.5.1 or registry.example.com:5000/team/trainer@sha256:<64 hex digits> (lower-case repository path; tag of letters, digits, '_', '.', '-')"))]
    #[schemars(length(max = 512))]
    pub image: String,
    /// Entrypoint (replaces the image's ENTRYPOINT).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments (replace the image's CMD).
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Environment variables of the container.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// CPU and memory for the container (requested and limited alike).
    #[serde(default)]
    pub resources: ContainerResources,
    /// How long the booking lasts from placement, e.g. `30m`, `8h`, `1h30m`
    /// (between 10s and 720h). The instance is stopped when it runs out.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,6}[hms])+$')").message("spec.duration must look like 30m, 8h or 1h30m (units h, m, s)"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,6}[hms])+$') || (duration(self) >= duration('10s') && duration(self) <= duration('720h'))").message("spec.duration must be between 10s and 720h"))]
    #[schemars(length(max = 32))]
    pub duration: String,
    /// Higher goes first in the queue; equal priorities are served first come, first served.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Book ahead: when the booking starts (RFC 3339, e.g. `2026-12-01T13:00:00Z`). Its GPUs
    /// are held on one node for `[startTime, startTime + duration)`; absent or past: as soon
    /// as GPUs are free.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::time::lenient_timestamp"
    )]
    pub start_time: Option<Timestamp>,
    /// When the window at `startTime` is taken: `Exact` (default: refused, naming the next
    /// free slot) or `EarliestAvailable` (booked at the next free slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_policy: Option<StartPolicy>,
    /// Stop the instance when its GPUs stay idle this long, e.g. `30m` (overrides the
    /// user's `spec.idle.timeout`; `0s` turns idle shutdown off for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,6}[hms])+$')").message("spec.idleTimeout must look like 30m, 2h or 1h30m (units h, m, s)"))]
    #[schemars(length(max = 32))]
    pub idle_timeout: Option<String>,
    /// GPU utilization (percent) under which the GPUs count as idle (default: the user's,
    /// else 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub idle_threshold_percent: Option<f64>,
    /// Idle shutdown only warns (condition and Event) and never stops (default: the
    /// user's, else false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_warn_only: Option<bool>,
    /// A spot instance: it runs on any idle GPU of its model, apart from the user's
    /// `maxGpus` (within `quota.maxSpotGpus`), is priced at the price list's `spotFactor`,
    /// and is the first to be preempted when others need the GPUs. Changed while it runs,
    /// it counts as what it says from the next scheduling pass on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preemptible: bool,
    /// What happens when the instance is preempted (a spot instance, one on borrowed
    /// GPUs, or one of lower priority than a booking of its user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption: Option<PreemptionPolicy>,
    /// What happens when its node is lost (not Ready for longer than the controller's
    /// `--node-lost-after`, or deleted): `Requeue` (default: back to the queue, keeping its
    /// place by priority and age, its booked time starting again when it is placed) or
    /// `Fail` (phase `Failed`, reason `NodeLost`). Either way billing stops at the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_node_lost: Option<OnNodeLost>,
    /// What happens when its program exits with an error (or is killed for memory):
    /// `Never` (default: the instance fails, with the exit code or `OOMKilled`) or
    /// `OnFailure` (the kubelet starts it again, with back-off; the restarts are counted
    /// in `status.restarts` and the booking runs on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}

/// The CEL rule of `spec.image`: the grammar of an image reference (the one of
/// distribution/reference, as container runtimes parse it): an optional registry host
/// (with port), a lower-case path of components, an optional tag, an optional digest.
pub const IMAGE_REFERENCE_RULE: &str = "self.matches('^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])([.]([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$')";

/// What the kubelet does when an instance's program exits with an error.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// The instance fails (its GPUs are freed); its status says how the program ended.
    #[default]
    Never,
    /// The program is started again in the same pod (the GPUs stay held); restarts are
    /// counted in `status.restarts`.
    OnFailure,
}

/// What an instance whose node was lost does once its pod is gone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnNodeLost {
    /// Back to the queue, in its place by priority and age: a single-node booking loses
    /// only what its program had not saved, and runs again on another node.
    #[default]
    Requeue,
    /// Ends: phase `Failed`, reason `NodeLost`.
    Fail,
}

/// How an instance is preempted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreemptionPolicy {
    /// How long its pod has to stop (SIGTERM, then SIGKILL) so that the job can save a
    /// checkpoint, e.g. `2m` (default 30s, at most 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,6}[hms])+$')").message("spec.preemption.gracePeriod must look like 30s, 2m or 1m30s (units h, m, s)"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,6}[hms])+$') || duration(self) <= duration('10m')").message("spec.preemption.gracePeriod must be at most 10m"))]
    #[schemars(length(max = 32))]
    pub grace_period: Option<String>,
    /// Once its pod is gone: `Requeue` (default: back to the queue, keeping its place by
    /// priority and age, its booked time starting again when it is placed) or `Stop`
    /// (phase `Stopped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_preempted: Option<OnPreempted>,
}

/// What a preempted instance does once its pod is gone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnPreempted {
    /// Back to the queue, in its place by priority and age.
    #[default]
    Requeue,
    /// Ends: phase `Stopped`.
    Stop,
}

/// Default of `spec.preemption.gracePeriod`.
pub const DEFAULT_PREEMPTION_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Most `spec.preemption.gracePeriod` may be.
pub const MAX_PREEMPTION_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

impl GpuInstanceStatus {
    /// The nodes it was placed on, rank 0 first: a gang's `nodeNames`, else `nodeName`.
    pub fn placed_nodes(&self) -> Vec<String> {
        if self.node_names.is_empty() {
            self.node_name.clone().into_iter().collect()
        } else {
            self.node_names.clone()
        }
    }
}

impl GpuInstance {
    /// The names of its pods: its own for one node; `<name>-<rank>` for each node of a
    /// gang, rank 0 first.
    pub fn pod_names(&self) -> Vec<String> {
        let name = self.metadata.name.clone().unwrap_or_default();
        match self.spec.gpu.nodes() {
            1 => vec![name],
            n => (0..n).map(|rank| format!("{name}-{rank}")).collect(),
        }
    }
}

impl GpuInstanceSpec {
    /// The grace period its pod gets when preempted: the spec's, bounded, else the default.
    pub fn preemption_grace(&self) -> std::time::Duration {
        self.preemption
            .as_ref()
            .and_then(|p| p.grace_period.as_deref())
            .and_then(|g| crate::time::parse_duration(g).ok())
            .map_or(DEFAULT_PREEMPTION_GRACE, |g| g.min(MAX_PREEMPTION_GRACE))
    }

    /// What it does once preempted.
    pub fn on_preempted(&self) -> OnPreempted {
        self.preemption
            .as_ref()
            .and_then(|p| p.on_preempted)
            .unwrap_or_default()
    }

    /// What it does once its node is lost.
    pub fn on_node_lost(&self) -> OnNodeLost {
        self.on_node_lost.unwrap_or_default()
    }

    /// What the kubelet does when its program fails.
    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart_policy.unwrap_or_default()
    }
}

/// What to do when a requested window is taken.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartPolicy {
    /// Only the requested start: refused, naming the next free slot.
    #[default]
    Exact,
    /// The earliest start at or after the requested one where the window fits.
    EarliestAvailable,
}

/// Which GPUs and how many.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.slice) || !has(self.nodes) || self.nodes == 1").message("a gang (spec.gpu.nodes > 1) books whole GPUs: spec.gpu.slice is for one node"))]
pub struct GpuRequest {
    /// GPU model, as nodes label it in `nvidia.com/gpu.product` (e.g. `NVIDIA-H100-80GB-HBM3`).
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.gpu.model must name a GPU model, e.g. NVIDIA-H100-80GB-HBM3"))]
    #[schemars(length(max = 128))]
    pub model: String,
    /// Number of GPUs, all on one node (per node for a gang of `nodes`).
    #[schemars(range(min = 1, max = 64))]
    pub count: u32,
    /// A multi-node gang: this many nodes with `count` GPUs each, placed all at once or
    /// not at all, one pod per node, and ended together (default 1: one pod on one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub nodes: Option<u32>,
    /// How a gang's nodes may spread over topology domains (the controller's
    /// `--topology-label`s, e.g. an NVLink clique or a zone): `Preferred` (default: the
    /// fewest domains) or `Required` (one domain, or wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyPolicy>,
    /// A slice of a GPU instead of whole GPUs: a MIG profile the node advertises
    /// (`1g.10gb`, `3g.40gb`: resource `nvidia.com/mig-<profile>`) or `shared`, a
    /// time-sliced share (`nvidia.com/gpu.shared`). `count` is then the number of slices;
    /// quotas, budgets and cost count each as its fraction of a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'shared' || self.matches('^[1-7]g[.][0-9]{1,3}gb(([+]me)|([-]me))?$')").message("spec.gpu.slice must be a MIG profile such as 1g.10gb or 3g.40gb, or shared"))]
    #[schemars(length(max = 32))]
    pub slice: Option<String>,
}

impl GpuRequest {
    /// The extended resource its pods ask for: `nvidia.com/gpu`, or its slice's.
    pub fn resource(&self) -> String {
        self.slice
            .as_deref()
            .map_or_else(|| crate::GPU_RESOURCE.to_owned(), crate::slice_resource)
    }

    /// Thousandths of a GPU one unit of `count` is: 1000, or a slice's fraction.
    pub fn unit_milli(&self) -> u32 {
        self.slice.as_deref().map_or(1000, crate::slice_milli)
    }

    /// The whole booking in GPUs, slices as their fraction: what GPU-hours, budgets and
    /// cost count.
    pub fn gpu_equivalent(&self) -> f64 {
        f64::from(self.total()) * f64::from(self.unit_milli()) / 1000.0
    }

    /// Nodes of the booking: 1 unless it is a gang.
    pub fn nodes(&self) -> u32 {
        self.nodes.unwrap_or(1).max(1)
    }

    /// GPUs of the whole booking: `count` on each of its nodes.
    pub fn total(&self) -> u32 {
        self.count.saturating_mul(self.nodes())
    }
}

/// How a gang's nodes may spread over topology domains.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TopologyPolicy {
    /// As few domains as fit it now.
    #[default]
    Preferred,
    /// One domain only: the gang waits until one has room.
    Required,
}

/// One environment variable.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    /// Variable name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Value (empty if absent).
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// CPU and memory of the instance's container. The GPUs come from `spec.gpu`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerResources {
    /// CPU, as a Kubernetes quantity (`4`, `500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("spec.resources.cpu must be a quantity such as 4 or 500m"))]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Memory, as a Kubernetes quantity (`16Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isQuantity(self)").message("spec.resources.memory must be a quantity such as 16Gi"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
}

/// Where a GpuInstance is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Seen, not yet considered by the scheduler.
    Pending,
    /// Waiting for GPUs or quota; `status.message` says why.
    Queued,
    /// Booked ahead: its GPUs are held on `status.reservedNode` from `status.startsAt`.
    Reserved,
    /// Placed on a node; its pod is starting.
    Scheduled,
    /// Its pod runs.
    Running,
    /// Its program exited successfully.
    Succeeded,
    /// Its program failed, or its pod was lost.
    Failed,
    /// The booking ran out (`spec.duration`) and the pod was stopped.
    Expired,
    /// Stopped by the operator for another reason (see the Ready condition).
    Stopped,
}

impl Phase {
    /// The name as written in `status.phase` (also used as a condition and event reason).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Reserved => "Reserved",
            Phase::Scheduled => "Scheduled",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Expired => "Expired",
            Phase::Stopped => "Stopped",
        }
    }

    /// The instance has ended and holds no GPUs.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::Expired | Phase::Stopped
        )
    }
}

/// What the operator observed and did for a GpuInstance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GpuInstanceStatus {
    /// Where the instance is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The GpuUser the instance belongs to (from its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node it was placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// A gang's nodes by rank (`nodeName` is rank 0's); empty for one node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_names: Vec<String>,
    /// Its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When it was placed (its GPUs have been held since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the booking runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// While queued: 1 for the next in line for its GPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// While waiting or stalled: why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// GPU use measured by the node agent (field manager `gpu-cloud-agent`), cumulative.
    /// A gang's is the sum over its members (`memberUsage`), written by rank 0's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// A gang's use per member, each written by the agent of that member's node (field
    /// manager `gpu-cloud-agent-rank-<rank>`, so that no agent's write removes another's);
    /// empty for one node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["rank"]))]
    pub member_usage: Vec<MemberUsage>,
    /// Booked ahead: the node holding its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_node: Option<String>,
    /// A gang's reserved nodes by rank (`reservedNode` is rank 0's); empty for one node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_nodes: Vec<String>,
    /// Booked ahead: when its window starts (it ends `spec.duration` later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Timestamp>,
    /// Idle shutdown: what the controller has seen of its GPUs' utilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleState>,
    /// What it costs (with a GpuPriceList).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<InstanceCost>,
    /// It runs on borrowed GPUs (beyond its user's `maxGpus`): their owner may take them
    /// back by preempting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// While it waits for instances it preempted to stop: the node their GPUs are kept on
    /// for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominated_node: Option<String>,
    /// While it is being preempted: by whom and why (its pod is stopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted: Option<PreemptionNotice>,
    /// Its node was lost: which, when (billing stopped then) and how. While set, its pod
    /// is being removed; then it goes back to the queue or fails (`spec.onNodeLost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lost: Option<NodeLoss>,
    /// Its runs that ended by preemption or the loss of their node, oldest first
    /// (bounded): what they held and used, for budgets and cost, and why they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub previous_runs: Vec<PreviousRun>,
    /// How often the kubelet started its program again (`spec.restartPolicy: OnFailure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// How its program last ended, once it has: exit code and the kubelet's reason
    /// (`Completed`, `Error`, `OOMKilled`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ProgramExit>,
}

/// What one member of a gang used: the pod of `rank` on `nodeName`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberUsage {
    /// The member's rank (its pod is `<name>-<rank>`).
    pub rank: u32,
    /// The node it runs on.
    pub node_name: String,
    /// Its figures, cumulative since placement, as for one node.
    pub usage: Usage,
}

/// How a program ended, as the kubelet reports its container's termination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProgramExit {
    /// Its exit code (128 + the signal number when killed).
    pub exit_code: i32,
    /// The kubelet's reason: `Completed`, `Error`, `OOMKilled`, `ContainerCannotRun`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reason: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

impl GpuInstanceStatus {
    /// The agent's figures of the current run: `usage` when it was taken during this run.
    /// A preempted instance back in the queue (no `startedAt`) or placed again (a later
    /// `startedAt`) may still show its previous run's figures until the agent writes new
    /// ones; those are in `previousRuns` already and must not count twice (nor be resumed
    /// from by the agent).
    pub fn current_usage(&self) -> Option<&Usage> {
        let started = self.started_at?;
        self.usage.as_ref().filter(|u| u.sampled_at >= started)
    }

    /// A gang member's figures of the current run (as [`Self::current_usage`]).
    pub fn current_member_usage(&self, rank: u32) -> Option<&Usage> {
        let started = self.started_at?;
        self.member_usage
            .iter()
            .find(|m| m.rank == rank)
            .map(|m| &m.usage)
            .filter(|u| u.sampled_at >= started)
    }
}

/// A preemption of an instance: who took its GPUs, where and why.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreemptionNotice {
    /// The instance that gets its GPUs, `namespace/name`.
    pub by: String,
    /// `PreemptedSpot`, `PreemptedReclaim` or `PreemptedPriority`.
    pub reason: String,
    /// The node.
    pub node: String,
    /// When it was decided.
    pub at: Timestamp,
}

/// The loss of an instance's node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoss {
    /// The node.
    pub node: String,
    /// How it was lost.
    pub reason: NodeLossReason,
    /// When: the moment it stopped being Ready, or when its deletion was seen. Its GPUs
    /// count as held (and billed) until then.
    pub at: Timestamp,
}

/// How a node was lost.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeLossReason {
    /// Its `Ready` condition was not `True` for longer than the controller allows.
    NodeNotReady,
    /// It was removed from the cluster.
    NodeDeleted,
}

impl NodeLossReason {
    /// The CamelCase word (conditions, Events).
    pub fn word(self) -> &'static str {
        match self {
            NodeLossReason::NodeNotReady => "NodeNotReady",
            NodeLossReason::NodeDeleted => "NodeDeleted",
        }
    }
}

/// A run of an instance that ended by preemption or by the loss of its node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreviousRun {
    /// What the run held and used (as a deleted instance's record).
    #[serde(flatten)]
    pub figures: RetiredInstance,
    /// The node it ran on.
    #[serde(default)]
    pub node: String,
    /// Who preempted it and why (a run that ended by preemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted: Option<PreemptionNotice>,
    /// Its node's loss (a run that ended so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lost: Option<NodeLoss>,
}

/// How many of an instance's preempted runs its status keeps (the oldest are dropped;
/// their figures are folded into the first kept one, so nothing is lost).
pub const PREVIOUS_RUNS_KEPT: usize = 20;

/// Cumulative usage as the agent once wrote it, remembered in [`IdleState::last_reading`]
/// by controllers before the agent kept the idle clock itself. No longer written; kept so
/// that the schema stays compatible with objects that still carry it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReading {
    /// `sampledAt`.
    pub at: Timestamp,
    /// `gpuSeconds`.
    pub gpu_seconds: f64,
    /// `avgUtilization`: the mean over all GPU-seconds so far, percent.
    pub avg_utilization: f64,
}

/// The idle rule's state as the controller keeps it (in the instance's status). Written
/// only when it changes: when the rule is first applied or changed, when an idle stretch
/// starts or ends, and when it is warned, never on every usage sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdleState {
    /// Since when every sample has been under the threshold (the agent's [`IdleClock`], as
    /// the controller last acted on it); `None` while busy or without data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Timestamp>,
    /// Deprecated, no longer written: the newest sample an older controller had seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample_at: Option<Timestamp>,
    /// The warning (or in `warn_only` mode the would-stop notice) for the idle stretch
    /// that began at `idleSince` was given; it is not given again for that stretch.
    #[serde(default)]
    pub warned: bool,
    /// Deprecated, no longer written: the last cumulative reading an older controller had
    /// seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reading: Option<UsageReading>,
    /// What the node agent needs of the idle rule in force, to keep the idle clock on
    /// every sample it takes ([`Usage::idle`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<IdleClockRule>,
}

/// The part of an instance's idle rule that the node agent applies to its samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdleClockRule {
    /// Utilization, percent, under which a sample counts as idle (one exactly at it is
    /// busy).
    pub threshold_percent: f64,
    /// Longest time between two samples that still counts as continuous data, as `1m` or
    /// `90s`; after a longer silence the clock starts afresh.
    pub max_gap: String,
}

/// The node agent's idle clock for one instance, kept over every sample it takes and
/// written with the usage figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdleClock {
    /// The threshold it was kept for (`status.idle.rule.thresholdPercent` when sampled).
    pub threshold_percent: f64,
    /// The first sample of the current stretch of samples all under the threshold, with
    /// no gap longer than the rule's `maxGap`; `None` when the last sample was busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

/// An instance's cost.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceCost {
    /// If it runs its whole booking (GPU-hours only: energy is not known ahead).
    pub planned: f64,
    /// From its measured use so far (`status.usage`), refreshed every few minutes while
    /// it runs and once more when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<f64>,
    /// The usage sample `actual` was worked out from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_sampled_at: Option<Timestamp>,
    /// Currency of both.
    pub currency: String,
}

/// What an instance really used, cumulative since placement.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// GPU-seconds held: GPUs × seconds since placement.
    pub gpu_seconds: f64,
    /// Time-weighted mean GPU utilization, percent.
    pub avg_utilization: f64,
    /// Largest GPU memory in use seen, bytes.
    pub peak_memory_bytes: u64,
    /// Energy used by its GPUs, joules.
    pub energy_joules: f64,
    /// When these figures were taken.
    pub sampled_at: Timestamp,
    /// `nvml` (measured) or `simulated` (a node without GPUs: invented figures).
    pub source: UsageSource,
    /// The last power reading, watts (all its GPUs together).
    #[serde(default)]
    pub power_watts: f64,
    /// The GPUs (UUIDs) it ran on.
    #[serde(default)]
    pub devices: Vec<DeviceCounter>,
    /// The agent wrote its last figures: the instance ended.
    #[serde(default, rename = "final")]
    pub final_: bool,
    /// The idle clock, while the instance has an idle rule (`status.idle.rule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleClock>,
}

/// Where usage figures come from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// Read from the NVIDIA driver (NVML).
    #[default]
    Nvml,
    /// Invented by the agent for nodes without GPUs (tests, demos).
    Simulated,
}

/// One GPU and its energy counter when last sampled, so that a restarted agent resumes
/// from it without losing or double counting energy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCounter {
    /// GPU UUID.
    pub uuid: String,
    /// The device's total-energy counter, millijoules.
    pub energy_millijoules: u64,
}

/// A condition in the shape of `metav1.Condition`, as kstatus, `kubectl wait`, Argo CD and
/// Flux read them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// For people.
    #[serde(default)]
    pub message: String,
    /// The generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: Timestamp,
}

/// The cluster's GPU prices: one object, named `default`, that the controller prices every
/// instance and user with and `gpu-cloud report` bills with. Without it nothing is priced.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gpu-cloud.io",
    version = "v1",
    kind = "GpuPriceList",
    shortname = "gpl",
    category = "gpu",
    printcolumn = r#"{"name":"Currency","type":"string","jsonPath":".spec.currency"}"#,
    printcolumn = r#"{"name":"Per kWh","type":"number","jsonPath":".spec.perKwh"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name == 'default'")
        .message("the cluster has one GpuPriceList, named default")
        .field_path(".metadata.name")
)]
#[serde(rename_all = "camelCase")]
pub struct GpuPriceListSpec {
    /// Currency of every price, e.g. `EUR` (printed only; nothing is converted).
    #[schemars(length(min = 1, max = 8))]
    pub currency: String,
    /// Price of one GPU-hour by GPU model (`nvidia.com/gpu.product` value).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub per_gpu_hour: std::collections::BTreeMap<String, f64>,
    /// Price of one GPU-hour of a model not listed; without it such a model has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub default_per_gpu_hour: Option<f64>,
    /// Price of one kWh of measured GPU energy; without it energy costs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub per_kwh: Option<f64>,
    /// What a spot (`preemptible`) GPU-hour costs as a share of the model's price, 0 to 1
    /// (default 0.5). Energy is priced alike for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub spot_factor: Option<f64>,
}

/// Default of `GpuPriceList.spec.spotFactor`.
pub const DEFAULT_SPOT_FACTOR: f64 = 0.5;

/// Name of the one GpuPriceList the controller reads.
pub const PRICE_LIST_NAME: &str = "default";

/// The usage of a user's deleted instances in one calendar month (UTC) of their deletion:
/// the chargeback record that outlives the instances and the user. The controller writes
/// one (or, past [`RECORD_RUNS_MAX`] runs, several shards) per user and month as each
/// instance's finalizer lets it go, and closes it once the month is over; a closed record
/// cannot change. `gpu-cloud report` and budgets read them; deleting the GpuUser keeps
/// them (delete them by hand once they are no longer needed).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gpu-cloud.io",
    version = "v1",
    kind = "GpuUsageRecord",
    shortname = "gur",
    category = "gpu",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.period"}"#,
    printcolumn = r#"{"name":"Closed","type":"boolean","jsonPath":".spec.closed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("!has(oldSelf.spec) || !oldSelf.spec.closed || self.spec == oldSelf.spec")
        .message("a closed GpuUsageRecord cannot change")
        .field_path(".spec"),
    validation = Rule::new("!has(oldSelf.spec) || (self.spec.user == oldSelf.spec.user && self.spec.period == oldSelf.spec.period && self.spec.shard == oldSelf.spec.shard && size(self.spec.runs) >= size(oldSelf.spec.runs))")
        .message("a GpuUsageRecord keeps its user, period and shard, and its runs are only added to")
        .field_path(".spec.runs")
)]
#[serde(rename_all = "camelCase")]
pub struct GpuUsageRecordSpec {
    /// The GpuUser whose instances these were.
    #[schemars(length(min = 1, max = 63))]
    pub user: String,
    /// The calendar month (UTC) in which they were deleted, e.g. `2026-11`.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}$')").message("spec.period must be a month such as 2026-11"))]
    #[schemars(length(max = 7))]
    pub period: String,
    /// Which of the user's records of the period this is (a new one is started when one
    /// is full).
    #[serde(default)]
    pub shard: u32,
    /// The period is over: nothing more is added, and the record cannot change.
    #[serde(default)]
    pub closed: bool,
    /// Every run of every instance recorded, in the order they were recorded.
    #[serde(default)]
    #[schemars(length(max = 2000))]
    pub runs: Vec<RecordedRun>,
}

/// Most runs one GpuUsageRecord holds (well inside an object's size limit).
pub const RECORD_RUNS_MAX: usize = 2000;

/// One run of a deleted instance, as its user is billed for it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRun {
    /// The instance's uid: an instance is recorded once.
    #[schemars(length(max = 64))]
    pub uid: String,
    /// The instance, `namespace/name`.
    #[schemars(length(max = 320))]
    pub instance: String,
    /// What the run held and used.
    #[serde(flatten)]
    pub figures: RetiredInstance,
}
