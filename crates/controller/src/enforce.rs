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
use gpu_cloud_api::v1::{Condition, GpuInstance, GpuUser, Phase};
use gpu_cloud_api::v1::{IdleState, UsageReading};
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
            let reading = status.usage.as_ref().map(|u| UsageReading {
                at: u.sampled_at,
                gpu_seconds: u.gpu_seconds,
                avg_utilization: u.avg_utilization,
            });
            let (next, verdict) = idle::observe_usage(&policy, &state, reading, started, now);
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
        let held = figures::held_gpus(theirs.iter().copied()).max(inst.spec.gpu.count);
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
    if let Some((policy, state, verdict)) = &verdicts.idle {
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
    /// last status remembered `last_reading`.
    fn running(usage: serde_json::Value, last_reading: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "u1", "generation": 1},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 2}, "image": "x", "duration": "4h",
                     "idleTimeout": "10m"},
            "status": {"phase": "Running", "nodeName": "n", "startedAt": "2026-12-01T10:00:00Z",
                       "usage": usage, "idle": {"lastReading": last_reading}}
        }))
        .unwrap()
    }

    fn usage(at: &str, gpu_seconds: f64, avg: f64) -> serde_json::Value {
        json!({"gpuSeconds": gpu_seconds, "avgUtilization": avg, "peakMemoryBytes": 0,
               "energyJoules": 0.0, "sampledAt": at, "source": "simulated"})
    }

    /// The agent's counters start again from zero (a counter reset): the reconcile takes
    /// the new reading as its baseline, so the next write is judged as an interval of its
    /// own instead of being swallowed by the old, larger baseline.
    #[test]
    fn a_counter_reset_seen_by_the_reconcile_becomes_the_next_baseline() {
        let before =
            json!({"at": "2026-12-01T10:30:00Z", "gpuSeconds": 3600.0, "avgUtilization": 90.0});
        let reset = running(usage("2026-12-01T10:30:15Z", 30.0, 0.0), before);
        let v = before_at(&reset, "2026-12-01T10:30:15Z");
        let (_, state, verdict) = v.idle.expect("an idle rule applies");
        assert_eq!(verdict, IdleVerdict::NoData);
        let baseline = state.last_reading.expect("the reset reading is kept");
        assert_eq!(baseline.gpu_seconds, 30.0);

        // The next write (idle GPUs) after the reset: a sample, the idle clock starts.
        let next = running(
            usage("2026-12-01T10:30:30Z", 60.0, 0.0),
            serde_json::to_value(baseline).unwrap(),
        );
        let (_, state, verdict) = before_at(&next, "2026-12-01T10:30:30Z").idle.unwrap();
        assert!(matches!(verdict, IdleVerdict::Idle { .. }), "{verdict:?}");
        assert_eq!(state.idle_since, Some(ts("2026-12-01T10:30:30Z")));
    }

    fn before_at(inst: &GpuInstance, now: &str) -> Verdicts {
        before(inst, None, &[inst], &Recorded::default(), true, ts(now))
    }
}
