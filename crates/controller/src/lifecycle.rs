//! The life of a placed GpuInstance, decided from its pod and the clock (pure).
//!
//! Waiting instances (no pod yet) belong to the placement loop, which writes their queue
//! status; this module takes over once a pod exists, and keeps finished instances quiet.

use std::time::Duration;

use super::cached_pod::CachedPod;
use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::conditions::{Health, with_health};
use gpu_cloud_api::USER_LABEL;
use gpu_cloud_api::time;
use gpu_cloud_api::v1::{GpuInstance, GpuInstanceStatus, Phase};
use gpu_cloud_core::policy::figures;

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
        })
    }
}

/// What to do besides writing the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodAction {
    /// Nothing.
    Keep,
    /// Delete the pod (the booking ended); the status is written first.
    Delete,
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

/// Decides the status of `inst` given its pod (if it has one) at `now`, and `stop`, an
/// order to end it now.
pub fn decide(
    inst: &GpuInstance,
    pod: Option<&PodView>,
    now: Timestamp,
    stop: Option<&Stop>,
) -> Outcome {
    let old = inst.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = inst.metadata.generation;
    status.observed_generation = generation;
    let mut out = Outcome {
        status: old.clone(),
        pod: PodAction::Keep,
        events: vec![],
        requeue_after: None,
        wake_scheduler: false,
    };
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
    status.pod_name = Some(pod.name.clone());
    status.user = pod.user.clone().or(old.user.clone());
    status.queue_position = None;

    // A pod that starts within moments is reported once, as Running: a `Scheduled` status
    // first would be one more write per booking. One slow to start (pulling its image) is
    // reported as Scheduled once the grace has passed.
    let starting = pod.phase.as_deref().is_none_or(|p| p == "Pending");
    if starting && stop.is_none() && phase != Some(Phase::Scheduled) && now < expires {
        let age = now.duration_since(started);
        let grace = SignedDuration::try_from(STARTING_GRACE).unwrap_or(SignedDuration::ZERO);
        if age < grace {
            out.requeue_after = Some(Duration::try_from(grace - age).unwrap_or(STARTING_GRACE));
            return out;
        }
    }

    let node = status.node_name.clone().unwrap_or_default();
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
            Some("Failed") => (
                Phase::Failed,
                "its program failed (see the pod's logs)".into(),
                Some(EventType::Warning),
            ),
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
        None => new_phase.as_str(),
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
        decide(inst, pod, now, None)
    }

    #[test]
    fn a_stop_order_ends_a_running_instance_and_a_window_sets_its_end() {
        let inst = instance(json!({"phase": "Running", "nodeName": "gpu-l4-0",
                                   "reservedNode": "gpu-l4-0", "startsAt": "1970-01-01T00:15:00Z"}));
        let order = Stop {
            reason: "Idle",
            message: "idle".into(),
        };
        let out = decide(&inst, Some(&pod("Running")), ts(1100), Some(&order));
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
            name: "a".into(),
            node: Some("gpu-l4-0".into()),
            phase: Some(phase.into()),
            created: Some(ts(1000)),
            terminating: false,
            user: Some("u".into()),
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
}
