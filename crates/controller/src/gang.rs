//! A gang's pods as one (pure): the instance reconciler reads every member's pod, this
//! module reduces them to the one [`PodView`] the lifecycle decides on, so that a gang
//! starts, runs, fails and ends as one booking; and it decides what to do with a gang
//! whose pods are not all there.
//!
//! The rule: a gang lives whole or not at all. A member that fails fails the gang, a
//! member whose node is lost loses the gang (the instance reconciler watches every
//! member's node), and a member pod that is gone ends it; each of these ends every pod.
//! A gang found with only some of its pods (a placement cut short by a crash, or a pod
//! deleted by hand) never holds GPUs for long: once [`ASSEMBLY_GRACE`] has passed, its
//! pods are deleted; one that never ran whole goes back to the queue.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::conditions::{Health, with_health};
use super::lifecycle::{Note, Outcome, PodAction, PodView};
use gpu_cloud_api::v1::{GpuInstance, Phase};

/// How long a gang may be seen with only some of its pods before they are deleted: the
/// pods of one placement are created together, and the pod cache may show them a moment
/// apart.
pub const ASSEMBLY_GRACE: Duration = Duration::from_secs(30);

/// How soon a gang whose missing pods are still being created is looked at again.
pub const CREATING_RECHECK: Duration = Duration::from_secs(2);

/// One member of a gang as the pod cache shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// Its pod, ours.
    Ours(Box<PodView>),
    /// A pod of its name that belongs to someone else.
    Taken,
    /// No pod of its name.
    Missing,
}

/// What a gang's members add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Every member's pod is there: the gang as one pod.
    Whole(Box<PodView>),
    /// No member's pod is there.
    None,
    /// Some are there, not all (or a name is taken).
    Partial {
        /// The members' pods that are there.
        present: Vec<PodView>,
        /// Ranks whose pod name belongs to someone else's pod.
        taken: Vec<usize>,
    },
}

/// Reduces a booking's members (one for a single-node booking, by rank for a gang).
///
/// The gang as one pod: rank 0's name, node and user; the earliest creation (its GPUs are
/// held from then); terminating if any member is; its phase `Failed` if any member
/// failed (with that member's program state), `Succeeded` once all succeeded, `Running`
/// while all run or have succeeded, else `Pending`; and every member's node by rank.
pub fn reduce(members: &[Member]) -> Members {
    let present: Vec<&PodView> = members
        .iter()
        .filter_map(|m| match m {
            Member::Ours(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect();
    if present.len() == members.len() {
        let Some(first) = present.first() else {
            return Members::None;
        };
        if present.len() == 1 {
            return Members::Whole(Box::new((**first).clone()));
        }
        let phase = |p: &PodView| p.phase.clone().unwrap_or_default();
        let failed = present.iter().find(|p| phase(p) == "Failed");
        let all = |f: &dyn Fn(&str) -> bool| present.iter().all(|p| f(&phase(p)));
        let gang_phase = if failed.is_some() {
            "Failed"
        } else if all(&|p| p == "Succeeded") {
            "Succeeded"
        } else if all(&|p| p == "Running" || p == "Succeeded") {
            "Running"
        } else {
            "Pending"
        };
        return Members::Whole(Box::new(PodView {
            name: first.name.clone(),
            node: first.node.clone(),
            phase: Some(gang_phase.to_owned()),
            created: present.iter().filter_map(|p| p.created).min(),
            terminating: present.iter().any(|p| p.terminating),
            user: first.user.clone(),
            program: failed.map_or(first.program.clone(), |p| p.program.clone()),
            gang_nodes: present
                .iter()
                .map(|p| p.node.clone().unwrap_or_default())
                .collect(),
        }));
    }
    if present.is_empty() && !members.contains(&Member::Taken) {
        return Members::None;
    }
    Members::Partial {
        present: present.into_iter().cloned().collect(),
        taken: members
            .iter()
            .enumerate()
            .filter(|(_, m)| **m == Member::Taken)
            .map(|(rank, _)| rank)
            .collect(),
    }
}

/// What to do with a gang that has only some of its pods at `now`.
///
/// A gang that ran whole (phase `Running`: every pod was seen running) has lost a member:
/// it fails at once (`GangMemberLost`) and its pods are deleted; its usage so far stands.
/// One placed (its status names its nodes) but not yet seen whole may only look partial:
/// the placement writes the status once every pod is created, and under load the pod
/// watch can show that status before the last pods. So it gets [`ASSEMBLY_GRACE`] from
/// its placement and newest pod, then fails the same way. One never placed was cut short
/// while being placed (a controller killed between creates): within the grace of its
/// newest pod nothing happens (look again then); after it its pods are deleted and it
/// stays queued, to be placed again once they are gone. A pod name taken by someone
/// else's pod: it fails (`PodNameTaken`), since every attempt would collide.
///
/// `creating`: a missing member's pod is one this controller is creating or created that
/// the pod cache does not show yet (under load a create can take many seconds to land):
/// nothing happens until it shows or its create fails; look again in [`CREATING_RECHECK`].
pub fn incomplete(
    inst: &GpuInstance,
    present: &[PodView],
    taken: &[usize],
    creating: bool,
    now: Timestamp,
) -> Outcome {
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let mut out = Outcome {
        status: old.clone(),
        pod: PodAction::Keep,
        events: vec![],
        requeue_after: None,
        wake_scheduler: false,
        clear_usage: false,
    };
    if old.phase.is_some_and(Phase::is_finished) {
        out.pod = PodAction::Delete;
        return out;
    }
    let names = inst.pod_names();
    // Already being taken down: nothing more to do or say until the pods are gone.
    if taken.is_empty() && !present.is_empty() && present.iter().all(|p| p.terminating) {
        return out;
    }
    if let Some(&rank) = taken.first() {
        let name = names.get(rank).cloned().unwrap_or_default();
        let msg = format!(
            "the pod name {name} of rank {rank} is taken by a pod that is not this gang's: delete that pod or book under another name"
        );
        return fail(inst, out, "PodNameTaken", msg, now);
    }
    if creating {
        out.requeue_after = Some(CREATING_RECHECK);
        return out;
    }
    let have: Vec<&str> = present.iter().map(|p| p.name.as_str()).collect();
    let placed = old.node_name.is_some();
    let ran_whole = placed && old.phase == Some(Phase::Running);
    let newest = present
        .iter()
        .filter_map(|p| p.created)
        .chain(old.started_at.filter(|_| placed))
        .max();
    let grace = SignedDuration::try_from(ASSEMBLY_GRACE).unwrap_or(SignedDuration::ZERO);
    if let Some(left) = newest
        .map(|t| grace - now.duration_since(t))
        .filter(|left| left.is_positive() && !ran_whole)
    {
        out.requeue_after = Some(Duration::try_from(left).unwrap_or(ASSEMBLY_GRACE));
        return out;
    }
    out.pod = PodAction::Delete;
    out.wake_scheduler = true;
    if placed {
        let missing: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !have.contains(n))
            .collect();
        let when = if ran_whole {
            "while it ran"
        } else {
            "before it ran"
        };
        let msg = format!(
            "gang member pod(s) {} gone {when}: the whole gang ends",
            missing.join(", ")
        );
        return fail(inst, out, "GangMemberLost", msg, now);
    }
    let msg = format!(
        "placement of the gang was cut short ({} of {} pods): removing them, then placing it again",
        have.len(),
        names.len()
    );
    out.status.observed_generation = generation;
    out.events.push(Note {
        type_: EventType::Warning,
        reason: "GangIncomplete",
        message: msg,
    });
    out
}

/// The gang fails now for `reason`: every pod goes.
fn fail(
    inst: &GpuInstance,
    mut out: Outcome,
    reason: &'static str,
    msg: String,
    now: Timestamp,
) -> Outcome {
    let old = inst.status.clone().unwrap_or_default();
    let generation = inst.metadata.generation;
    let status = &mut out.status;
    status.phase = Some(Phase::Failed);
    status.finished_at = Some(now);
    status.observed_generation = generation;
    status.message = Some(msg.clone());
    status.conditions = with_health(
        &old.conditions,
        Health::Stalled {
            reason,
            message: &msg,
        },
        generation,
        now,
    );
    out.pod = PodAction::Delete;
    out.wake_scheduler = true;
    tracing::warn!(instance = %inst.name_any(), reason, "gang ends");
    out.events.push(Note {
        type_: EventType::Warning,
        reason,
        message: msg,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn member(rank: usize, phase: &str, created: i64) -> PodView {
        PodView {
            name: format!("g-{rank}"),
            node: Some(format!("n{rank}")),
            phase: Some(phase.into()),
            created: Some(ts(created)),
            terminating: false,
            user: Some("u".into()),
            program: None,
            gang_nodes: vec![],
        }
    }

    fn gang(status: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "g", "namespace": "gpu-u", "uid": "u1", "generation": 1},
            "spec": {"gpu": {"model": "H100", "count": 8, "nodes": 3}, "image": "x", "duration": "1h"},
            "status": status
        }))
        .unwrap()
    }

    fn whole(members: &[Member]) -> PodView {
        match reduce(members) {
            Members::Whole(v) => *v,
            other => panic!("not whole: {other:?}"),
        }
    }

    #[test]
    fn a_gang_runs_when_all_run_and_fails_when_one_fails() {
        let ours = |phases: [&str; 3]| -> Vec<Member> {
            phases
                .iter()
                .enumerate()
                .map(|(r, p)| Member::Ours(Box::new(member(r, p, 100 + r as i64))))
                .collect()
        };
        let v = whole(&ours(["Running", "Pending", "Running"]));
        assert_eq!(v.phase.as_deref(), Some("Pending"));
        assert_eq!((v.name.as_str(), v.created), ("g-0", Some(ts(100))));
        assert_eq!(v.gang_nodes, vec!["n0", "n1", "n2"]);
        let v = whole(&ours(["Running", "Succeeded", "Running"]));
        assert_eq!(v.phase.as_deref(), Some("Running"));
        let v = whole(&ours(["Succeeded", "Succeeded", "Succeeded"]));
        assert_eq!(v.phase.as_deref(), Some("Succeeded"));
        let v = whole(&ours(["Running", "Failed", "Succeeded"]));
        assert_eq!(v.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn one_pod_is_itself_and_none_is_none() {
        let p = member(0, "Running", 1);
        assert_eq!(whole(&[Member::Ours(Box::new(p.clone()))]), p);
        assert_eq!(reduce(&[Member::Missing, Member::Missing]), Members::None);
        assert_eq!(reduce(&[Member::Missing]), Members::None);
    }

    #[test]
    fn a_partial_gang_waits_out_the_grace_then_goes() {
        let present = vec![member(0, "Pending", 100), member(2, "Pending", 101)];
        let members = [
            Member::Ours(Box::new(present[0].clone())),
            Member::Missing,
            Member::Ours(Box::new(present[1].clone())),
        ];
        assert_eq!(
            reduce(&members),
            Members::Partial {
                present: present.clone(),
                taken: vec![]
            }
        );
        // Being placed: look again when the grace is over.
        let queued = gang(json!({"phase": "Queued"}));
        let out = incomplete(&queued, &present, &[], false, ts(111));
        assert_eq!(
            (out.pod, out.requeue_after),
            (PodAction::Keep, Some(Duration::from_secs(20)))
        );
        // Never ran whole: its pods go, it stays queued.
        let out = incomplete(&queued, &present, &[], false, ts(131));
        assert_eq!(out.pod, PodAction::Delete);
        assert_eq!(out.status.phase, Some(Phase::Queued));
        assert_eq!(out.events[0].reason, "GangIncomplete");
        // A missing pod still being created by this controller: nothing yet.
        let out = incomplete(&queued, &present, &[], true, ts(200));
        assert_eq!(
            (out.pod, out.requeue_after, out.events.len()),
            (PodAction::Keep, Some(CREATING_RECHECK), 0)
        );
        // Its pods stopping: said once, not again on every look.
        let stopping: Vec<PodView> = present
            .iter()
            .cloned()
            .map(|mut p| {
                p.terminating = true;
                p
            })
            .collect();
        let again = incomplete(&queued, &stopping, &[], false, ts(140));
        assert!(again.events.is_empty() && again.pod == PodAction::Keep);
        // Placed, not yet seen whole: the pod watch may show the status before the last
        // pod; the grace from its placement, then it fails.
        let placed =
            gang(json!({"phase": "Scheduled", "nodeName": "n0", "startedAt": ts(105).to_string()}));
        let out = incomplete(&placed, &present, &[], false, ts(110));
        assert_eq!(
            (out.pod, out.requeue_after),
            (PodAction::Keep, Some(Duration::from_secs(25)))
        );
        let out = incomplete(&placed, &present, &[], false, ts(135));
        assert_eq!(out.status.phase, Some(Phase::Failed));
        assert!(
            out.events[0].message.contains("before it ran"),
            "{}",
            out.events[0].message
        );
        // Ran whole: a member lost ends the gang at once.
        let ran = gang(json!({"phase": "Running", "nodeName": "n0"}));
        let out = incomplete(&ran, &present, &[], false, ts(102));
        assert_eq!(out.status.phase, Some(Phase::Failed));
        assert_eq!(out.pod, PodAction::Delete);
        assert_eq!(out.events[0].reason, "GangMemberLost");
        assert!(
            out.events[0].message.contains("g-1"),
            "{}",
            out.events[0].message
        );
    }

    #[test]
    fn a_taken_pod_name_fails_the_gang_at_once() {
        let members = [Member::Missing, Member::Taken, Member::Missing];
        let Members::Partial { present, taken } = reduce(&members) else {
            panic!("partial");
        };
        let out = incomplete(&gang(json!(null)), &present, &taken, false, ts(1));
        assert_eq!(out.status.phase, Some(Phase::Failed));
        assert_eq!(out.events[0].reason, "PodNameTaken");
    }
}
