//! What an instance's reconcile applies on top of its lifecycle (pure): idle shutdown, a
//! used-up GPU-hour budget under `onExhausted: Stop`, and its cost.
//!
//! [`before`] decides from the instance, its user and the clock whether to stop it now;
//! [`after`] writes what was decided into the new status (idle state and condition, cost)
//! and says when to look again.

use std::time::Duration;

use jiff::Timestamp;
use kube::runtime::events::EventType;

use super::lifecycle::{Note, Outcome, Stop};
use gpu_cloud_api::v1::IdleState;
use gpu_cloud_api::v1::{Condition, GpuInstance, GpuUser, Phase};
use gpu_cloud_core::policy::budget::{self, Action as BudgetAction, ExhaustedPolicy};
use gpu_cloud_core::policy::cost::PriceList;
use gpu_cloud_core::policy::figures;
use gpu_cloud_core::policy::idle::{self, IdlePolicy, IdleVerdict};
use gpu_cloud_core::policy::objects;
use gpu_cloud_core::policy::records::Recorded;

/// Condition type of the idle warning (`IdleWarning`, `IdleWouldStop`).
pub const IDLE_CONDITION: &str = "Idle";

/// What [`before`] decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdicts {
    /// Stop the instance now.
    pub stop: Option<Stop>,
    /// The idle rule in force, the new idle state and the verdict.
    pub idle: Option<(IdlePolicy, IdleState, IdleVerdict)>,
    /// Look again then even if nothing changes (a warning or stop falls due, the budget
    /// runs out).
    pub revisit: Option<Timestamp>,
    /// Idle settings that cannot be used, in words.
    pub invalid: Option<String>,
}

/// Decides for `inst` (placed and running when `placed`), of `user` whose instances are
/// `theirs`, at `now`.
pub fn before(
    inst: &GpuInstance,
    user: Option<&GpuUser>,
    theirs: &[&GpuInstance],
    recorded: &Recorded<'_>,
    placed: bool,
    now: Timestamp,
) -> Verdicts {
    let mut out = Verdicts {
        stop: None,
        idle: None,
        revisit: None,
        invalid: None,
    };
    let status = inst.status.clone().unwrap_or_default();
    let running = placed && !status.phase.is_some_and(Phase::is_finished);
    if !running {
        return out;
    }
    let started = status.started_at.unwrap_or(now);
    match objects::idle_policy(inst, user) {
        Ok(Some(policy)) => {
            let state = status.idle.clone().unwrap_or_default();
            let usage = status.usage.as_ref();
            let (next, verdict) = idle::decide(
                &policy,
                &state,
                usage.and_then(|u| u.idle.as_ref()),
                usage.map(|u| u.sampled_at),
                started,
                now,
            );
            if let IdleVerdict::Stop { .. } = verdict {
                out.stop = verdict
                    .condition(&policy)
                    .map(|(reason, message)| Stop { reason, message });
            }
            out.revisit = verdict.revisit_at();
            out.idle = Some((policy, next, verdict));
        }
        Ok(None) => {}
        Err(e) => out.invalid = Some(e.to_string()),
    }
    let Some(user) = user else {
        return out;
    };
    let Some(spec) = user.spec.quota.gpu_hours.as_ref() else {
        return out;
    };
    let b = objects::budget(spec);
    // Only a budget that stops instances concerns a running one (the instance controller
    // follows only such users).
    if b.on_exhausted != ExhaustedPolicy::Stop || out.stop.is_some() {
        return out;
    }
    let Some(Ok(bs)) = objects::budget_status(user, theirs, recorded, now) else {
        return out;
    };
    let stop_this = budget::on_exhausted(b.on_exhausted, &bs, &[()])
        .iter()
        .any(|a| matches!(a, BudgetAction::Stop(())));
    if stop_this {
        out.stop = Some(Stop {
            reason: budget::REASON_EXHAUSTED,
            message: format!(
                "GPU-hour budget used up ({} of {} GPU-hours until {}): stopped (onExhausted: Stop)",
                gpu_cloud_api::time::hours_text(objects::round3(bs.used)),
                gpu_cloud_api::time::hours_text(bs.limit),
                gpu_cloud_api::time::short_utc(bs.period.end)
            ),
        });
    } else if !bs.exhausted() {
        // The budget runs out at the rate the user's GPUs burn it: look again then. This
        // instance holds GPUs even if the cache has not seen it placed yet.
        let held = figures::held_gpus(theirs.iter().copied()).max(inst.spec.gpu.total());
        let at = objects::exhausted_at(&bs, held, now);
        out.revisit = match (out.revisit, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    out
}

/// Writes `verdicts` and the cost into `out` (the lifecycle's decision for `inst`).
pub fn after(
    out: &mut Outcome,
    inst: &GpuInstance,
    verdicts: &Verdicts,
    prices: Option<&PriceList>,
    placed: bool,
    now: Timestamp,
) {
    let generation = inst.metadata.generation;
    // Only on a Running instance (or the one stopped for idling): a pod that starts within
    // moments is reported once, as Running, and the idle state goes in that same write
    // rather than one of its own while the pod starts.
    let shown_now = |v: &IdleVerdict| {
        out.status.phase == Some(Phase::Running) || matches!(v, IdleVerdict::Stop { .. })
    };
    if let Some((policy, state, verdict)) = verdicts.idle.as_ref().filter(|(_, _, v)| shown_now(v))
    {
        out.status.idle = Some(state.clone());
        let shown = verdict.condition(policy);
        match (&shown, verdict) {
            // The stop itself is the lifecycle's Stopped condition and Event.
            (_, IdleVerdict::Stop { .. }) => {}
            (Some((reason, message)), _) => {
                set_condition(&mut out.status.conditions, reason, message, generation, now)
            }
            (None, _) => out.status.conditions.retain(|c| c.type_ != IDLE_CONDITION),
        }
        if !matches!(verdict, IdleVerdict::Stop { .. })
            && let Some((reason, message)) = verdict.event(policy)
        {
            out.events.push(Note {
                type_: EventType::Warning,
                reason,
                message,
            });
        }
    }
    if let Some(at) = verdicts.revisit.filter(|_| verdicts.stop.is_none()) {
        let wait = Duration::try_from(now.duration_until(at)).unwrap_or(Duration::ZERO);
        out.requeue_after = Some(out.requeue_after.map_or(wait, |r| r.min(wait)));
    }
    let finished = out.status.phase.is_some_and(Phase::is_finished);
    if let Some(p) = prices.filter(|_| placed || finished) {
        let mut seen = inst.clone();
        seen.status = Some(out.status.clone());
        if let Some(cost) = objects::instance_cost(&seen, p) {
            out.status.cost = Some(cost);
        }
    }
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let old = conditions.iter().find(|c| c.type_ == IDLE_CONDITION);
    let last_transition_time = old
        .filter(|c| c.status == "True")
        .map_or(now, |c| c.last_transition_time);
    let c = Condition {
        type_: IDLE_CONDITION.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    conditions.retain(|c| c.type_ != IDLE_CONDITION);
    conditions.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A running instance with a 10-minute idle rule whose agent wrote `usage`, and whose
    /// status still carries what an older controller wrote on every sample.
    fn running(usage: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "u1", "generation": 1},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 2}, "image": "x", "duration": "4h",
                     "idleTimeout": "10m"},
            "status": {"phase": "Running", "nodeName": "n", "startedAt": "2026-12-01T10:00:00Z",
                       "usage": usage,
                       "idle": {"lastSampleAt": "2026-12-01T10:29:00Z",
                                "lastReading": {"at": "2026-12-01T10:29:00Z", "gpuSeconds": 3480.0, "avgUtilization": 1.0}}}
        }))
        .unwrap()
    }

    fn usage(at: &str, idle: serde_json::Value) -> serde_json::Value {
        json!({"gpuSeconds": 3600.0, "avgUtilization": 1.0, "peakMemoryBytes": 0,
               "energyJoules": 0.0, "sampledAt": at, "source": "simulated", "idle": idle})
    }

    /// The reconcile reads the agent's idle clock from `status.usage.idle` and nothing
    /// else: idle since 10:20 under the 5 % default is a stop at 10:30, and the rule the
    /// agent needs is published.
    #[test]
    fn the_decision_comes_from_the_agents_clock() {
        let inst = running(usage(
            "2026-12-01T10:30:15Z",
            json!({"thresholdPercent": 5.0, "since": "2026-12-01T10:20:00Z"}),
        ));
        let (_, state, verdict) = before_at(&inst, "2026-12-01T10:30:15Z").idle.unwrap();
        assert!(matches!(verdict, IdleVerdict::Stop { .. }), "{verdict:?}");
        assert_eq!(state.idle_since, Some(ts("2026-12-01T10:20:00Z")));
        let rule = state.rule.expect("the rule for the agent");
        assert_eq!((rule.threshold_percent, rule.max_gap.as_str()), (5.0, "1m"));
        assert_eq!((state.last_sample_at, state.last_reading), (None, None));
        // Busy by the clock: active, no stretch.
        let busy = running(usage(
            "2026-12-01T10:30:15Z",
            json!({"thresholdPercent": 5.0}),
        ));
        let (_, state, verdict) = before_at(&busy, "2026-12-01T10:30:15Z").idle.unwrap();
        assert_eq!(verdict, IdleVerdict::Active);
        assert_eq!(state.idle_since, None);
        // An agent that keeps no clock (older, or the rule not seen yet): no data.
        let old = running(usage("2026-12-01T10:30:15Z", json!(null)));
        let (_, _, verdict) = before_at(&old, "2026-12-01T10:30:15Z").idle.unwrap();
        assert_eq!(verdict, IdleVerdict::NoData);
    }

    /// While its pod starts (the lifecycle keeps the status as it was), the idle state is
    /// not written on its own: it goes with the Running write.
    #[test]
    fn the_idle_state_waits_for_the_running_write() {
        let mut inst = running(usage("2026-12-01T10:30:15Z", json!(null)));
        let status = inst.status.as_mut().unwrap();
        status.phase = Some(Phase::Queued);
        status.idle = None;
        let v = before_at(&inst, "2026-12-01T10:30:15Z");
        assert!(v.idle.is_some(), "the rule applies once the pod is there");
        let mut out = Outcome {
            status: inst.status.clone().unwrap(),
            pod: crate::lifecycle::PodAction::Keep,
            events: vec![],
            requeue_after: None,
            wake_scheduler: false,
            clear_usage: false,
        };
        after(&mut out, &inst, &v, None, true, ts("2026-12-01T10:30:15Z"));
        assert_eq!(
            out.status.idle, None,
            "nothing to write while the pod starts"
        );
        out.status.phase = Some(Phase::Running);
        after(&mut out, &inst, &v, None, true, ts("2026-12-01T10:30:15Z"));
        assert!(out.status.idle.is_some_and(|i| i.rule.is_some()));
    }

    fn before_at(inst: &GpuInstance, now: &str) -> Verdicts {
        before(inst, None, &[inst], &Recorded::default(), true, ts(now))
    }
}
