//! The life of a placed GpuInstance, decided from its pod and the clock (pure).
//!
//! Waiting instances (no pod yet) belong to the placement loop, which writes their queue
//! status; this module takes over once a pod exists, and keeps finished instances quiet.

use std::time::Duration;

use super::cached_pod::{CachedPod, ProgramState};
use super::program;
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::conditions::{Health, with_condition, with_health};
use gpu_cloud_api::USER_LABEL;
use gpu_cloud_api::time;
use gpu_cloud_api::v1::{
    GpuInstance, GpuInstanceStatus, NodeLoss, NodeLossReason, OnNodeLost, OnPreempted, Phase,
    PreemptionNotice, PreviousRun,
};
use gpu_cloud_core::policy::figures;
use gpu_cloud_core::scheduler::preemption::Reason;
use k8s_openapi::api::core::v1::Node;

/// How long a new pod may start before the instance's status says `Scheduled`.
pub const STARTING_GRACE: Duration = Duration::from_secs(15);

/// What the instance's pod looks like, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// The pod's name.
    pub name: String,
    /// The node it is bound to.
    pub node: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// When it was created: the moment the instance was placed.
    pub created: Option<Timestamp>,
    /// It has a deletion timestamp.
    pub terminating: bool,
    /// The GpuUser named by its label.
    pub user: Option<String>,
    /// What the kubelet reports of its program (none from kwok).
    pub program: Option<ProgramState>,
    /// A gang's nodes by rank, when this view stands for all its pods
    /// ([`super::gang::reduce`]); empty for one pod.
    pub gang_nodes: Vec<String>,
}

impl PodView {
    /// Reads a pod; `None` unless it is controlled by the instance with `uid`.
    pub fn of(pod: &CachedPod, uid: &str) -> Option<Self> {
        let ours = pod
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true));
        ours.then(|| PodView {
            name: pod.name_any(),
            node: pod.node_name.clone(),
            phase: pod.phase.clone(),
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            user: pod.labels().get(USER_LABEL).cloned(),
            program: pod.program.clone(),
            gang_nodes: vec![],
        })
    }
}

/// The instance's node, reduced to what the lifecycle needs to tell it lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Ready (or the instance is on no node).
    Ready,
    /// Its `Ready` condition has not been `True` since this moment.
    NotReady {
        /// The condition's last transition (the node's creation if it has none).
        since: Timestamp,
    },
    /// Not in the cluster.
    Gone,
}

impl NodeState {
    /// Reads a node as the cache holds it (`None`: it is not there).
    pub fn of(node: Option<&Node>) -> Self {
        let Some(node) = node else {
            return NodeState::Gone;
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        if ready.is_some_and(|c| c.status == "True") {
            return NodeState::Ready;
        }
        let since = ready
            .and_then(|c| c.last_transition_time.as_ref())
            .or(node.metadata.creation_timestamp.as_ref())
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        NodeState::NotReady { since }
    }
}

/// The default of `--node-lost-after`: how long a node may be not Ready before its
/// instances count as lost. Longer than a kubelet restart; well within the 300 s after
/// which Kubernetes evicts the pods of an unreachable node itself.
pub const DEFAULT_NODE_LOST_AFTER: Duration = Duration::from_secs(60);

/// Whether the node `name` the instance holds GPUs on is lost at `now`, and if it is not
/// (yet), when to look again. Not Ready counts from its transition, so a node that came
/// back in time loses nothing; the loss is dated when it stopped being Ready (or, for a
/// deleted node, when that was seen), never before the instance was placed.
fn loss_of(
    name: &str,
    state: NodeState,
    lost_after: Duration,
    held_since: Option<Timestamp>,
    now: Timestamp,
) -> (Option<NodeLoss>, Option<Duration>) {
    let lost = |reason, at: Timestamp| NodeLoss {
        node: name.to_owned(),
        reason,
        at: held_since.map_or(at, |h| at.max(h)).min(now),
    };
    match state {
        NodeState::Ready => (None, None),
        NodeState::Gone => (Some(lost(NodeLossReason::NodeDeleted, now)), None),
        NodeState::NotReady { since } => {
            let after = SignedDuration::try_from(lost_after).unwrap_or(SignedDuration::MAX);
            let deadline = since.checked_add(after).unwrap_or(Timestamp::MAX);
            if now >= deadline {
                (Some(lost(NodeLossReason::NodeNotReady, since)), None)
            } else {
                let left = Duration::try_from(deadline.duration_since(now)).unwrap_or(lost_after);
                (None, Some(left))
            }
        }
    }
}

/// A moment as people read it (the status keeps the exact one).
fn whole_seconds(t: Timestamp) -> Timestamp {
    t.round(jiff::Unit::Second).unwrap_or(t)
}

/// What the instance is told of its node's loss, in words.
fn node_loss_words(inst: &GpuInstance, loss: &NodeLoss) -> String {
    let how = match loss.reason {
        NodeLossReason::NodeNotReady => "not Ready",
        NodeLossReason::NodeDeleted => "deleted",
    };
    let then = match inst.spec.on_node_lost() {
        OnNodeLost::Requeue => "then it goes back to the queue",
        OnNodeLost::Fail => "then it fails (spec.onNodeLost: Fail)",
    };
    format!(
        "its node {} was lost ({how}) at {}: its GPUs are billed until then; its pod is being removed, {then}",
        loss.node,
        whole_seconds(loss.at)
    )
}

/// An instance on a lost node: its pod is removed at once (no kubelet will confirm a
/// graceful stop), then it goes back to the queue or fails, as its spec says. The loss is
/// written first (the commit point: a restart keeps its date).
fn on_lost_node(
    inst: &GpuInstance,
    pod: Option<&PodView>,
    loss: NodeLoss,
    now: Timestamp,
    mut out: Outcome,
) -> Outcome {
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let reason = loss.reason.word();
    let message = node_loss_words(inst, &loss);
    if old.node_lost.is_none() {
        out.events.push(Note {
            type_: EventType::Warning,
            reason: "NodeLost",
            message: message.clone(),
        });
    }
    let conditions = with_condition(
        &old.conditions,
        "NodeLost",
        true,
        reason,
        &message,
        generation,
        now,
    );
    if let Some(p) = pod {
        out.status = GpuInstanceStatus {
            conditions: with_health(
                &conditions,
                Health::Progressing {
                    reason: "NodeLost",
                    message: &message,
                },
                generation,
                now,
            ),
            observed_generation: generation,
            message: Some(message),
            started_at: old.started_at.or(p.created),
            node_name: old.node_name.clone().or(p.node.clone()),
            node_names: if old.node_names.is_empty() {
                p.gang_nodes.clone()
            } else {
                old.node_names.clone()
            },
            pod_name: old.pod_name.clone().or(Some(p.name.clone())),
            node_lost: Some(loss),
            ..old
        };
        out.pod = PodAction::ForceDelete;
        return out;
    }
    out.wake_scheduler = true;
    match inst.spec.on_node_lost() {
        OnNodeLost::Requeue => {
            let message = format!(
                "its node {} was lost ({reason}): back in the queue, in its place by priority and age",
                loss.node
            );
            let conditions =
                with_condition(&conditions, "NodeLost", false, reason, "", generation, now);
            let record = (old.preempted.clone(), Some(loss.clone()));
            requeue(inst, &conditions, loss.at, record, message, now, &mut out);
        }
        OnNodeLost::Fail => {
            let message = format!(
                "its node {} was lost ({reason}) at {}; it failed (spec.onNodeLost: Fail)",
                loss.node,
                whole_seconds(loss.at)
            );
            out.status = GpuInstanceStatus {
                phase: Some(Phase::Failed),
                finished_at: Some(old.started_at.map_or(loss.at, |s| loss.at.max(s))),
                conditions: with_health(
                    &conditions,
                    Health::Stalled {
                        reason: "NodeLost",
                        message: &message,
                    },
                    generation,
                    now,
                ),
                observed_generation: generation,
                borrowed: false,
                preempted: None,
                node_lost: Some(loss),
                message: Some(message.clone()),
                ..old
            };
            out.events.push(Note {
                type_: EventType::Warning,
                reason: "Failed",
                message,
            });
        }
    }
    out
}

/// Back to the queue: the current run, ended at `ended`, recorded in `previousRuns` with
/// why it ended (`why`: the preemption, the node loss), every trace of its placement
/// cleared, its measured usage too (it is in the record).
fn requeue(
    inst: &GpuInstance,
    conditions: &[gpu_cloud_api::v1::Condition],
    ended: Timestamp,
    why: (Option<PreemptionNotice>, Option<NodeLoss>),
    message: String,
    now: Timestamp,
    out: &mut Outcome,
) {
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let mut status = old.clone();
    if let Some(mut run) = figures::current_run(inst, now) {
        run.ended_at = ended.max(run.started_at);
        let (preempted, node_lost) = why;
        figures::push_run(
            &mut status.previous_runs,
            PreviousRun {
                figures: run,
                node: old.node_name.clone().unwrap_or_default(),
                preempted,
                node_lost,
            },
        );
    }
    out.status = GpuInstanceStatus {
        phase: Some(Phase::Queued),
        conditions: with_health(
            conditions,
            Health::Progressing {
                reason: "Requeued",
                message: &message,
            },
            generation,
            now,
        ),
        observed_generation: generation,
        node_name: None,
        node_names: vec![],
        pod_name: None,
        started_at: None,
        expires_at: None,
        finished_at: None,
        queue_position: None,
        reserved_node: None,
        reserved_nodes: vec![],
        starts_at: None,
        idle: None,
        borrowed: false,
        nominated_node: None,
        preempted: None,
        node_lost: None,
        message: Some(message.clone()),
        ..status
    };
    out.events.push(Note {
        type_: EventType::Normal,
        reason: "Requeued",
        message,
    });
    out.clear_usage = old.usage.is_some();
    out.wake_scheduler = true;
}

/// What to do besides writing the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodAction {
    /// Nothing.
    Keep,
    /// Delete the pod (the booking ended); the status is written first.
    Delete,
    /// Delete the pod with this grace period (preempted): marked first, so that people
    /// (and a simulated kubelet) can tell why it stops.
    Preempt {
        /// Seconds the container has between SIGTERM and SIGKILL.
        grace_seconds: i64,
    },
    /// Delete the pod at once, even if it is already stopping (its node is lost: no
    /// kubelet will confirm its end).
    ForceDelete,
}

/// Label (and in [`PREEMPTED_BY_ANNOTATION`], by whom) on a pod being preempted.
pub const PREEMPTED_LABEL: &str = "gpu-cloud.io/preempted";
/// Annotation naming the instance a preempted pod's GPUs go to, and why.
pub const PREEMPTED_BY_ANNOTATION: &str = "gpu-cloud.io/preempted-by";

/// What the victim is told, in words.
fn preemption_words(inst: &GpuInstance, n: &PreemptionNotice) -> String {
    let why = match Reason::of_word(&n.reason) {
        Reason::Spot => format!("spot instance preempted by {} on {}", n.by, n.node),
        Reason::Reclaim => format!(
            "its GPUs on {} were borrowed; {} reclaims them within its user's guarantee",
            n.node, n.by
        ),
        Reason::Priority => format!(
            "preempted on {} by {}, a booking of higher priority",
            n.node, n.by
        ),
    };
    let then = match inst.spec.on_preempted() {
        OnPreempted::Requeue => "then it goes back to the queue",
        OnPreempted::Stop => "then it stops (spec.preemption.onPreempted: Stop)",
    };
    format!(
        "{why}: its pod has {}s to stop, {then}",
        inst.spec.preemption_grace().as_secs()
    )
}

/// The status of an instance being preempted (its pod stopping): the notice, and the
/// reason in its conditions (pure; the placement loop writes it, this module keeps it).
pub fn preempting_status(
    inst: &GpuInstance,
    notice: &PreemptionNotice,
    now: Timestamp,
) -> GpuInstanceStatus {
    let old = inst.status.clone().unwrap_or_default();
    let message = preemption_words(inst, notice);
    GpuInstanceStatus {
        conditions: with_health(
            &old.conditions,
            Health::Progressing {
                reason: reason_word(&notice.reason),
                message: &message,
            },
            inst.metadata.generation,
            now,
        ),
        observed_generation: inst.metadata.generation,
        message: Some(message),
        preempted: Some(notice.clone()),
        ..old
    }
}

/// A preemption reason, as read back from the notice, in the `&'static str` conditions take.
fn reason_word(reason: &str) -> &'static str {
    Reason::of_word(reason).word()
}

/// A preempted instance whose pod is gone: back to the queue (its run recorded for
/// budgets and cost, its booked time to start again) or stopped, as its spec says.
fn after_preemption(
    inst: &GpuInstance,
    notice: &PreemptionNotice,
    now: Timestamp,
    mut out: Outcome,
) -> Outcome {
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let reason = reason_word(&notice.reason);
    out.wake_scheduler = true;
    match inst.spec.on_preempted() {
        OnPreempted::Requeue => {
            let message = format!(
                "preempted by {} on {} ({reason}): back in the queue, in its place by priority and age",
                notice.by, notice.node
            );
            let why = (Some(notice.clone()), None);
            requeue(inst, &old.conditions, now, why, message, now, &mut out);
        }
        OnPreempted::Stop => {
            let message = format!(
                "preempted by {} on {} ({reason}) and stopped (spec.preemption.onPreempted: Stop)",
                notice.by, notice.node
            );
            out.status = GpuInstanceStatus {
                phase: Some(Phase::Stopped),
                finished_at: Some(now),
                conditions: with_health(
                    &old.conditions,
                    Health::Stalled {
                        reason,
                        message: &message,
                    },
                    generation,
                    now,
                ),
                observed_generation: generation,
                borrowed: false,
                message: Some(message.clone()),
                ..old
            };
            out.events.push(Note {
                type_: EventType::Warning,
                reason,
                message,
            });
        }
    }
    out
}

/// An event to publish on the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The decision for one reconcile of an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The status the instance should have (written only if it differs).
    pub status: GpuInstanceStatus,
    /// What to do with the pod.
    pub pod: PodAction,
    /// Events for the transitions made.
    pub events: Vec<Note>,
    /// When to look again at the latest (expiry).
    pub requeue_after: Option<Duration>,
    /// The placement loop should run: GPUs were freed or a new instance waits.
    pub wake_scheduler: bool,
    /// Remove `status.usage` (the agent's field): the run it measured ended by preemption
    /// and is recorded in `previousRuns`; a queued instance must not show its figures.
    pub clear_usage: bool,
}

/// An order to stop a running instance before its booking ends (idle GPUs, a used-up
/// budget): phase `Stopped`, its pod deleted, its GPUs freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// CamelCase reason (condition and Event).
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// How the node an instance runs on, and its kubelet, are watched: the node's state, how
/// long it may be not Ready before the instance counts as lost (`--node-lost-after`), and
/// how long the kubelet may fail to pull the instance's image (`--image-pull-timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWatch {
    /// The node's state now.
    pub state: NodeState,
    /// How long not Ready counts as lost.
    pub lost_after: Duration,
    /// How long a failing image pull is retried before the instance fails.
    pub image_pull_timeout: Duration,
    /// The node `state` is of, when not the pod's: the member of a gang whose node is
    /// not Ready (a gang is lost with any of its nodes).
    pub node: Option<String>,
}

impl NodeWatch {
    /// A Ready node (what an instance on no node sees too).
    pub const READY: NodeWatch = NodeWatch {
        state: NodeState::Ready,
        lost_after: DEFAULT_NODE_LOST_AFTER,
        image_pull_timeout: program::DEFAULT_IMAGE_PULL_TIMEOUT,
        node: None,
    };
}

/// Decides the status of `inst` given its pod (if it has one) and the node it is on at
/// `now`, and `stop`, an order to end it now.
pub fn decide(
    inst: &GpuInstance,
    pod: Option<&PodView>,
    node: NodeWatch,
    now: Timestamp,
    stop: Option<&Stop>,
) -> Outcome {
    let old = inst.status.as_ref();
    if old.and_then(|s| s.phase).is_some_and(Phase::is_finished) {
        return decide_on_node(inst, pod, now, stop, node.image_pull_timeout);
    }
    // Its node lost: ahead of everything else, since a pod on a lost node never finishes
    // stopping (a preempted one included).
    let on_node = node
        .node
        .clone()
        .or(pod.and_then(|p| p.node.clone()))
        .or(old.and_then(|s| s.node_name.clone()));
    let held_since = old
        .and_then(|s| s.started_at)
        .or(pod.and_then(|p| p.created));
    let (loss, recheck) = match (old.and_then(|s| s.node_lost.as_ref()), &on_node) {
        (Some(l), _) => (Some(l.clone()), None),
        (None, Some(n)) => loss_of(n, node.state, node.lost_after, held_since, now),
        (None, None) => (None, None),
    };
    if let Some(loss) = loss {
        return on_lost_node(inst, pod, loss, now, unchanged(inst));
    }
    let mut out = decide_on_node(inst, pod, now, stop, node.image_pull_timeout);
    if let Some(r) = recheck {
        out.requeue_after = Some(out.requeue_after.map_or(r, |a| a.min(r)));
    }
    out
}

/// No change yet: the status as it is, nothing to do.
fn unchanged(inst: &GpuInstance) -> Outcome {
    Outcome {
        status: inst.status.clone().unwrap_or_default(),
        pod: PodAction::Keep,
        events: vec![],
        requeue_after: None,
        wake_scheduler: false,
        clear_usage: false,
    }
}

/// [`decide`] for an instance whose node (if it has one) is not lost.
fn decide_on_node(
    inst: &GpuInstance,
    pod: Option<&PodView>,
    now: Timestamp,
    stop: Option<&Stop>,
    pull_timeout: Duration,
) -> Outcome {
    let old = inst.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = inst.metadata.generation;
    status.observed_generation = generation;
    let mut out = unchanged(inst);
    let phase = old.phase;

    if let Some(p) = phase.filter(|p| p.is_finished()) {
        // Finished: only make sure an ended booking's pod is gone.
        if matches!(p, Phase::Expired | Phase::Stopped) && pod.is_some_and(|p| !p.terminating) {
            out.pod = PodAction::Delete;
        }
        // A spec edited afterwards (a GitOps sync) is seen: the finished status stands for
        // the new generation too, or kstatus would read it as InProgress for ever.
        if old.observed_generation != generation {
            status.conditions = old
                .conditions
                .iter()
                .cloned()
                .map(|mut c| {
                    c.observed_generation = generation;
                    c
                })
                .collect();
            out.status = status;
        }
        return out;
    }

    // Being preempted: the placement loop wrote the notice (the commit point); here its
    // pod is deleted with its grace period, and once it is gone the instance requeues or
    // stops. Repeated after a restart until done.
    if let Some(notice) = old.preempted.as_ref() {
        return match pod {
            Some(p) => {
                let mut status = preempting_status(inst, notice, now);
                // Preempted before its first status was written: what it holds still
                // counts from its pod's creation.
                status.started_at = status.started_at.or(p.created);
                status.node_name = status.node_name.or(p.node.clone());
                status.pod_name = status.pod_name.or(Some(p.name.clone()));
                out.status = status;
                if !p.terminating {
                    let grace = inst.spec.preemption_grace().as_secs();
                    out.pod = PodAction::Preempt {
                        grace_seconds: i64::try_from(grace).unwrap_or(i64::MAX),
                    };
                }
                out
            }
            None => after_preemption(inst, notice, now, out),
        };
    }

    let Some(pod) = pod else {
        if old.node_name.is_some() {
            // It was placed, and its pod is gone without the booking ending.
            status.phase = Some(Phase::Failed);
            status.finished_at = Some(now);
            let msg = "its pod was deleted or lost before the booking ended";
            status.message = Some(msg.into());
            status.conditions = with_health(
                &old.conditions,
                Health::Stalled {
                    reason: "PodLost",
                    message: msg,
                },
                generation,
                now,
            );
            out.events.push(Note {
                type_: EventType::Warning,
                reason: "PodLost",
                message: msg.into(),
            });
            out.wake_scheduler = true;
        } else if phase.is_none() {
            // New: the placement loop places it or writes why it waits, within a pass.
            // A `Pending` status first would be one more write per booking that nobody
            // reads.
            out.wake_scheduler = true;
            return out;
        } else {
            // Queued: the placement loop owns this status; make sure it looks again
            // (the spec may have changed, e.g. its priority).
            out.wake_scheduler = old.observed_generation != generation;
            return out;
        }
        out.status = status;
        return out;
    };

    let booked = match time::parse_duration(&inst.spec.duration) {
        Ok(d) => d,
        Err(e) => {
            status.phase = Some(Phase::Failed);
            status.message = Some(e.to_string());
            status.conditions = with_health(
                &old.conditions,
                Health::Stalled {
                    reason: "InvalidDuration",
                    message: &e.to_string(),
                },
                generation,
                now,
            );
            out.status = status;
            out.pod = PodAction::Delete;
            return out;
        }
    };
    let started = pod.created.or(old.started_at).unwrap_or(now);
    let expires = figures::booking_start(&old, started)
        .checked_add(SignedDuration::try_from(booked).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    status.started_at = Some(started);
    status.expires_at = Some(expires);
    status.node_name = pod.node.clone().or(old.node_name.clone());
    if !pod.gang_nodes.is_empty() {
        status.node_names = pod.gang_nodes.clone();
    }
    status.pod_name = Some(pod.name.clone());
    status.user = pod.user.clone().or(old.user.clone());
    status.queue_position = None;
    status.nominated_node = None;

    // Its image cannot be pulled: the kubelet retries with back-off, we wait up to
    // `--image-pull-timeout` from placement (no wait when no retry can succeed), then the
    // instance fails and its pod goes, freeing the GPUs.
    let starting = pod.phase.as_deref().is_none_or(|p| p == "Pending");
    if let Some(f) = program::pull_failure(pod.program.as_ref())
        .filter(|_| starting && stop.is_none() && now < expires)
    {
        let waited = Duration::try_from(now.duration_since(started)).unwrap_or_default();
        if f.hopeless || waited >= pull_timeout {
            let msg = program::pull_failed_message(inst, &f, waited);
            status.phase = Some(Phase::Failed);
            status.finished_at = Some(now);
            status.message = Some(msg.clone());
            status.conditions = with_health(
                &old.conditions,
                Health::Stalled {
                    reason: "ImagePullFailed",
                    message: &msg,
                },
                generation,
                now,
            );
            out.events.push(Note {
                type_: EventType::Warning,
                reason: "ImagePullFailed",
                message: msg,
            });
            out.pod = PodAction::Delete;
            out.wake_scheduler = true;
            out.status = status;
            return out;
        }
        // Said once (the kubelet's message changes with each retry; the status does not).
        let msg = format!(
            "placed on {}; its image {} cannot be pulled yet ({}): retrying until {}",
            status.node_name.as_deref().unwrap_or_default(),
            inst.spec.image,
            f.reason.trim_start_matches("Err"),
            whole_seconds(
                started
                    .checked_add(
                        SignedDuration::try_from(pull_timeout).unwrap_or(SignedDuration::ZERO)
                    )
                    .unwrap_or(Timestamp::MAX)
            ),
        );
        status.phase = Some(Phase::Scheduled);
        status.message = Some(msg.clone());
        status.conditions = with_health(
            &old.conditions,
            Health::Progressing {
                reason: "ImagePullBackOff",
                message: &msg,
            },
            generation,
            now,
        );
        if old.message.as_deref() != Some(msg.as_str()) {
            out.events.push(Note {
                type_: EventType::Warning,
                reason: "ImagePullBackOff",
                message: msg,
            });
        }
        out.requeue_after = Some(
            pull_timeout
                .saturating_sub(waited)
                .max(Duration::from_secs(1)),
        );
        out.status = status;
        return out;
    }

    // A pod that starts within moments is reported once, as Running: a `Scheduled` status
    // first would be one more write per booking. One slow to start (pulling its image) is
    // reported as Scheduled once the grace has passed.
    if starting && stop.is_none() && phase != Some(Phase::Scheduled) && now < expires {
        let age = now.duration_since(started);
        let grace = SignedDuration::try_from(STARTING_GRACE).unwrap_or(SignedDuration::ZERO);
        if age < grace {
            out.requeue_after = Some(Duration::try_from(grace - age).unwrap_or(STARTING_GRACE));
            return out;
        }
    }

    let node = status.node_name.clone().unwrap_or_default();
    let (restarts, restarted) = program::restarts(pod.program.as_ref(), old.restarts.unwrap_or(0));
    status.restarts = (restarts > 0).then_some(restarts);
    if let Some(exit) = program::last_exit(pod.program.as_ref()) {
        status.last_exit = Some(exit);
    }
    if let Some(note) = restarted {
        out.events.push(Note {
            type_: EventType::Warning,
            reason: "Restarted",
            message: note,
        });
    }
    // A reason other than the phase's own (why a program failed).
    let mut failed_reason = None;
    // The new phase, what to tell people, and the event type of the transition (if any).
    let (new_phase, message, event) = if let Some(stop) = stop {
        out.pod = PodAction::Delete;
        (
            Phase::Stopped,
            stop.message.clone(),
            Some(EventType::Warning),
        )
    } else if now >= expires {
        out.pod = PodAction::Delete;
        let msg = format!("the booking of {} ended at {expires}", inst.spec.duration);
        (Phase::Expired, msg, Some(EventType::Normal))
    } else {
        match pod.phase.as_deref() {
            Some("Running") => (
                Phase::Running,
                format!("running on {node} until {expires}"),
                Some(EventType::Normal),
            ),
            Some("Succeeded") => (
                Phase::Succeeded,
                "its program exited successfully".into(),
                Some(EventType::Normal),
            ),
            Some("Failed") => {
                let (reason, message) = program::failure(inst, pod.program.as_ref());
                failed_reason = Some(reason);
                (Phase::Failed, message, Some(EventType::Warning))
            }
            _ => (
                Phase::Scheduled,
                format!("placed on {node}, its pod is starting"),
                None,
            ),
        }
    };
    if new_phase.is_finished() {
        status.finished_at = Some(now);
    }
    status.phase = Some(new_phase);
    status.message = None;
    let reason = match stop {
        Some(s) => s.reason,
        None => failed_reason.unwrap_or(new_phase.as_str()),
    };
    let health = match new_phase {
        Phase::Running => Health::Ready {
            reason,
            message: &message,
        },
        Phase::Scheduled => Health::Progressing {
            reason,
            message: &message,
        },
        // Ended and will not run again: for kstatus (Flux, kpt) Failed, with the reason.
        Phase::Failed | Phase::Stopped => Health::Stalled {
            reason,
            message: &message,
        },
        // Ended as booked: Current.
        _ => Health::Done {
            reason,
            message: &message,
        },
    };
    status.conditions = with_health(&old.conditions, health, generation, now);
    if let Some(type_) = event.filter(|_| phase != Some(new_phase)) {
        out.events.push(Note {
            type_,
            reason,
            message,
        });
    }
    if new_phase.is_finished() {
        out.wake_scheduler = true;
    } else {
        let left = expires.duration_since(now);
        out.requeue_after = Some(Duration::try_from(left).unwrap_or(Duration::ZERO));
    }
    out.status = status;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(status: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "u1", "generation": 2},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "1h"},
            "status": status
        }))
        .unwrap()
    }

    fn decide_at(inst: &GpuInstance, pod: Option<&PodView>, now: Timestamp) -> Outcome {
        decide(inst, pod, NodeWatch::READY, now, None)
    }

    #[test]
    fn a_stop_order_ends_a_running_instance_and_a_window_sets_its_end() {
        let inst = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0",
                                   "reservedNode": "gpu-l4-0", "startsAt": "1970-01-01T00:15:00Z"}));
        let order = Stop {
            reason: "Idle",
            message: "idle".into(),
        };
        let out = decide(
            &inst,
            Some(&pod("Running")),
            NodeWatch::READY,
            ts(1100),
            Some(&order),
        );
        assert_eq!(out.status.phase, Some(Phase::Stopped));
        assert_eq!(out.pod, PodAction::Delete);
        assert_eq!(out.events[0].reason, "Idle");
        assert_eq!(out.events[0].type_, EventType::Warning);
        // Without the order: the booking ends with its window (900 + 1 h) even though its
        // pod came later (1000); its GPUs count as held from the pod's creation.
        let out = decide_at(&inst, Some(&pod("Running")), ts(1100));
        assert_eq!(out.status.expires_at, Some(ts(4500)));
        assert_eq!(out.status.started_at, Some(ts(1000)));
        // A window start after the pod (a stale one: the booking was edited and placed
        // now) does not count.
        let edited = instance(json!({"phase": "Queued", "reservedNode": "gpu-l4-0",
                                     "startsAt": "1970-01-01T02:00:00Z"}));
        let out = decide_at(&edited, Some(&pod("Running")), ts(1100));
        assert_eq!(out.status.expires_at, Some(ts(4600)));
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn pod(phase: &str) -> PodView {
        PodView {
            program: None,
            name: "a".into(),
            node: Some("gpu-l4-0".into()),
            phase: Some(phase.into()),
            created: Some(ts(1000)),
            terminating: false,
            user: Some("u".into()),
            gang_nodes: vec![],
        }
    }

    #[test]
    fn a_new_instance_wakes_the_scheduler_without_a_write() {
        let out = decide_at(&instance(json!(null)), None, ts(10));
        assert_eq!(out.status, GpuInstanceStatus::default());
        assert!(out.wake_scheduler);
    }

    #[test]
    fn a_starting_pod_is_reported_once_running_or_after_the_grace() {
        let inst = instance(json!(null));
        let out = decide_at(&inst, Some(&pod("Pending")), ts(1001));
        assert_eq!(out.status, GpuInstanceStatus::default());
        assert_eq!(out.requeue_after, Some(Duration::from_secs(14)));
        assert_eq!(
            decide_at(&inst, Some(&pod("Running")), ts(1001))
                .status
                .phase,
            Some(Phase::Running)
        );
        let slow = decide_at(&inst, Some(&pod("Pending")), ts(1015));
        assert_eq!(slow.status.phase, Some(Phase::Scheduled));
        assert_eq!(slow.status.node_name.as_deref(), Some("gpu-l4-0"));
    }

    #[test]
    fn queued_instances_are_left_to_the_placement_loop() {
        let inst =
            instance(json!({"phase": "Queued", "observedGeneration": 2, "message": "waiting"}));
        let out = decide_at(&inst, None, ts(10));
        assert_eq!(out.status, inst.status.clone().unwrap());
        assert!(!out.wake_scheduler);
        let edited = instance(json!({"phase": "Queued", "observedGeneration": 1}));
        assert!(decide_at(&edited, None, ts(10)).wake_scheduler);
    }

    #[test]
    fn phase_follows_the_pod_and_expiry_is_placement_plus_duration() {
        let inst = instance(json!({"phase": "Scheduled", "nodeName": "gpu-l4-0"}));
        let out = decide_at(&inst, Some(&pod("Running")), ts(1100));
        assert_eq!(out.status.phase, Some(Phase::Running));
        assert_eq!(out.status.started_at, Some(ts(1000)));
        assert_eq!(out.status.expires_at, Some(ts(4600)));
        assert_eq!(out.requeue_after, Some(Duration::from_secs(3500)));
        assert_eq!(out.events[0].reason, "Running");
        assert_eq!(
            crate::conditions::status_of(&out.status.conditions, "Ready"),
            Some("True")
        );
        // Same state again: no new event.
        let mut again = inst.clone();
        again.status = Some(out.status.clone());
        assert!(
            decide_at(&again, Some(&pod("Running")), ts(1200))
                .events
                .is_empty()
        );
    }

    #[test]
    fn at_expiry_the_pod_is_deleted_and_the_phase_is_expired() {
        let inst = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0"}));
        let out = decide_at(&inst, Some(&pod("Running")), ts(4600));
        assert_eq!(out.status.phase, Some(Phase::Expired));
        assert_eq!(out.pod, PodAction::Delete);
        assert!(out.wake_scheduler);
        // After a restart between the status write and the delete, the delete is repeated.
        let mut done = inst.clone();
        done.status = Some(out.status);
        let again = decide_at(&done, Some(&pod("Running")), ts(4700));
        assert_eq!(again.pod, PodAction::Delete);
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_lost_pod_fails_the_instance_and_program_exit_is_reported() {
        let inst = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0"}));
        let out = decide_at(&inst, None, ts(2000));
        assert_eq!(out.status.phase, Some(Phase::Failed));
        assert_eq!(out.events[0].reason, "PodLost");
        let out = decide_at(&inst, Some(&pod("Succeeded")), ts(2000));
        assert_eq!(
            (out.status.phase, out.pod),
            (Some(Phase::Succeeded), PodAction::Keep)
        );
    }

    #[test]
    fn a_preempted_instance_stops_its_pod_with_grace_then_requeues_with_its_run_recorded() {
        let notice = json!({"by": "gpu-v/big", "reason": "PreemptedReclaim",
                            "node": "gpu-l4-0", "at": "1970-01-01T00:30:00Z"});
        let running = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0",
            "podName": "a", "startedAt": "1970-01-01T00:16:40Z", "borrowed": true,
            "preempted": notice}));
        // The pod is there: deleted with the default grace, the reason in the conditions.
        let out = decide_at(&running, Some(&pod("Running")), ts(1810));
        assert_eq!(out.pod, PodAction::Preempt { grace_seconds: 30 });
        assert_eq!(
            out.status
                .conditions
                .iter()
                .find(|c| c.type_ == "Reconciling")
                .map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("True", "PreemptedReclaim"))
        );
        assert!(out.status.message.as_deref().unwrap().contains("gpu-v/big"));
        // Its pod stopping: nothing more to do.
        let mut stopping = pod("Running");
        stopping.terminating = true;
        assert_eq!(
            decide_at(&running, Some(&stopping), ts(1820)).pod,
            PodAction::Keep
        );
        // Gone: back in the queue, its run (1000 s to 1840 s on 1 GPU) recorded.
        let out = decide_at(&running, None, ts(1840));
        let s = &out.status;
        assert_eq!(s.phase, Some(Phase::Queued));
        assert_eq!(
            (s.node_name.as_ref(), s.started_at, s.preempted.as_ref()),
            (None, None, None)
        );
        assert!(!s.borrowed);
        assert_eq!(s.previous_runs.len(), 1);
        let run = &s.previous_runs[0];
        assert_eq!(
            (run.figures.started_at, run.figures.ended_at),
            (ts(1000), ts(1840))
        );
        assert_eq!(run.figures.gpu_seconds, 840.0);
        assert_eq!(run.preempted.as_ref().unwrap().by, "gpu-v/big");
        assert_eq!(out.events[0].reason, "Requeued");
        assert!(out.wake_scheduler);
        // No usage was measured here; with some, it is cleared (it is in the run).
        assert!(!out.clear_usage);
        let mut measured = running.clone();
        measured.status.as_mut().unwrap().usage = Some(gpu_cloud_api::v1::Usage {
            gpu_seconds: 800.0,
            sampled_at: ts(1800),
            ..Default::default()
        });
        let out = decide_at(&measured, None, ts(1840));
        assert!(out.clear_usage);
        assert_eq!(out.status.previous_runs[0].figures.gpu_seconds, 800.0);
    }

    #[test]
    fn a_preempted_instance_that_asks_to_stop_stops_with_the_reason() {
        let mut inst = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0",
            "startedAt": "1970-01-01T00:16:40Z",
            "preempted": {"by": "gpu-u/b", "reason": "PreemptedPriority",
                          "node": "gpu-l4-0", "at": "1970-01-01T00:30:00Z"}}));
        inst.spec.preemption = Some(gpu_cloud_api::v1::PreemptionPolicy {
            grace_period: Some("2m".into()),
            on_preempted: Some(OnPreempted::Stop),
        });
        assert_eq!(
            decide_at(&inst, Some(&pod("Running")), ts(1810)).pod,
            PodAction::Preempt { grace_seconds: 120 }
        );
        let out = decide_at(&inst, None, ts(1900));
        assert_eq!(out.status.phase, Some(Phase::Stopped));
        assert_eq!(out.status.finished_at, Some(ts(1900)));
        assert_eq!(out.events[0].reason, "PreemptedPriority");
        assert_eq!(out.events[0].type_, EventType::Warning);
        assert_eq!(
            crate::conditions::status_of(&out.status.conditions, "Stalled"),
            Some("True")
        );
    }

    fn on(state: NodeState) -> NodeWatch {
        NodeWatch {
            state,
            lost_after: Duration::from_secs(60),
            ..NodeWatch::READY
        }
    }

    #[test]
    fn a_node_not_ready_for_long_enough_is_lost_at_its_transition_and_the_instance_requeues() {
        let inst = instance(
            json!({"phase": "Running", "nodeName": "gpu-l4-0", "podName": "a",
                                   "startedAt": "1970-01-01T00:16:40Z"}),
        );
        let since = ts(1500);
        // Not Ready for 30 s of the 60 allowed: nothing yet, a look again when it would be.
        let out = decide(
            &inst,
            Some(&pod("Running")),
            on(NodeState::NotReady { since }),
            ts(1530),
            None,
        );
        assert_eq!(out.status.phase, Some(Phase::Running));
        assert!(out.status.node_lost.is_none());
        assert_eq!(out.requeue_after, Some(Duration::from_secs(30)));
        // 60 s: lost, dated at the transition; the pod goes at once; billing stops then.
        let out = decide(
            &inst,
            Some(&pod("Running")),
            on(NodeState::NotReady { since }),
            ts(1560),
            None,
        );
        let loss = out.status.node_lost.clone().expect("lost");
        assert_eq!(
            (loss.at, loss.reason),
            (since, NodeLossReason::NodeNotReady)
        );
        assert_eq!(out.pod, PodAction::ForceDelete);
        assert_eq!(out.events[0].reason, "NodeLost");
        assert_eq!(
            crate::conditions::status_of(&out.status.conditions, "NodeLost"),
            Some("True")
        );
        let mut lost = inst.clone();
        lost.status = Some(out.status.clone());
        assert_eq!(
            figures::current_run(&lost, ts(9000)).unwrap().gpu_seconds,
            500.0
        );
        // Its pod still there (terminating, no kubelet): removed again; no second event.
        let mut stopping = pod("Running");
        stopping.terminating = true;
        let again = decide(
            &lost,
            Some(&stopping),
            on(NodeState::NotReady { since }),
            ts(1600),
            None,
        );
        assert_eq!((again.pod, again.events.len()), (PodAction::ForceDelete, 0));
        // The node back Ready does not undo a loss already decided.
        let back = decide(&lost, None, on(NodeState::Ready), ts(1700), None);
        let s = &back.status;
        assert_eq!(s.phase, Some(Phase::Queued));
        assert_eq!((s.node_name.as_ref(), s.node_lost.as_ref()), (None, None));
        assert_eq!(s.previous_runs.len(), 1);
        let run = &s.previous_runs[0];
        assert_eq!(
            (run.figures.ended_at, run.figures.gpu_seconds),
            (since, 500.0)
        );
        assert_eq!(run.node_lost.as_ref().map(|l| l.at), Some(since));
        assert_eq!(back.events[0].reason, "Requeued");
        assert!(back.wake_scheduler);
        assert_eq!(
            crate::conditions::status_of(&back.status.conditions, "NodeLost"),
            Some("False")
        );
    }

    #[test]
    fn a_deleted_node_fails_an_instance_that_asks_to_and_never_reads_as_a_program_failure() {
        let mut inst = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0",
                                       "startedAt": "1970-01-01T00:16:40Z"}));
        inst.spec.on_node_lost = Some(OnNodeLost::Fail);
        // The node and its pod both gone (the pod garbage collector was first): lost now.
        let out = decide(&inst, None, on(NodeState::Gone), ts(2000), None);
        let s = &out.status;
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.finished_at, Some(ts(2000)));
        assert_eq!(
            s.node_lost.as_ref().map(|l| l.reason),
            Some(NodeLossReason::NodeDeleted)
        );
        assert_eq!(
            out.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["NodeLost", "Failed"]
        );
        assert!(!s.message.as_deref().unwrap().contains("program"));
        // Its pod marked Failed by the garbage collector, the node gone: still NodeLost.
        let out = decide(
            &inst,
            Some(&pod("Failed")),
            on(NodeState::Gone),
            ts(2000),
            None,
        );
        assert_eq!(out.pod, PodAction::ForceDelete);
        assert!(out.status.node_lost.is_some());
        // Finished instances are not looked at again.
        let mut done = inst.clone();
        done.status = Some(s.clone());
        let out = decide(&done, None, on(NodeState::Gone), ts(3000), None);
        assert_eq!(out.status, *s);
        assert!(out.events.is_empty());
    }

    #[test]
    fn a_loss_is_never_dated_before_the_placement() {
        // The node went NotReady before this pod was created on it (a race): the loss counts
        // from the placement, so the run is never negative.
        let inst = instance(json!(null));
        let out = decide(
            &inst,
            Some(&pod("Pending")),
            on(NodeState::NotReady { since: ts(10) }),
            ts(2000),
            None,
        );
        assert_eq!(out.status.node_lost.map(|l| l.at), Some(ts(1000)));
    }
}
