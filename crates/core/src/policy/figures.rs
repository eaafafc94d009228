//! An instance's figures, live or retired, as budgets and cost reports read them (pure).
//!
//! One place decides what an instance "used", so that the user's status, the budget and
//! `gpu-cloud report` always agree: the agent's measured figures (`status.usage`) where it
//! wrote them, else the time its GPUs were held (GPUs x time placed, no energy).

use jiff::Timestamp;

use super::budget::InstanceSpan;
use gpu_cloud_api::v1::{GpuInstance, GpuInstanceStatus, Phase, RetiredInstance};

use super::chargeback::InstanceFigures;

/// The instance holds GPUs now: it is placed (it has a node) and has not finished. The one
/// definition of "GPUs held" that the user's figures, budgets and the idle and budget stops
/// share.
pub fn holds_gpus(inst: &GpuInstance) -> bool {
    inst.status
        .as_ref()
        .is_some_and(|s| s.node_name.is_some() && !s.phase.is_some_and(Phase::is_finished))
}

/// GPUs held now by `instances` (see [`holds_gpus`]).
pub fn held_gpus<'a>(instances: impl IntoIterator<Item = &'a GpuInstance>) -> u32 {
    instances
        .into_iter()
        .filter(|i| holds_gpus(i))
        .fold(0u32, |n, i| n.saturating_add(i.spec.gpu.count))
}

/// Where an instance's booked time starts, given when its GPUs were first held
/// (`held_since`: its pod's creation): the start of its window when it was booked ahead
/// and the pod came for that window (so that it ends when the window does, even if its
/// node was late), else `held_since`. A window start after `held_since` is a stale one (the
/// booking was edited and placed now) and does not count. Billing always counts from
/// `held_since` (`status.startedAt`).
pub fn booking_start(status: &GpuInstanceStatus, held_since: Timestamp) -> Timestamp {
    status
        .starts_at
        .filter(|s| status.reserved_node.is_some() && *s <= held_since)
        .unwrap_or(held_since)
}

/// GPUs x seconds of `[start, end)` (0 when `end` is not after `start`).
pub fn held_gpu_seconds(gpus: u32, start: Timestamp, end: Timestamp) -> f64 {
    let secs = end.duration_since(start).as_secs_f64();
    f64::from(gpus) * secs.max(0.0)
}

/// When the instance stopped holding GPUs, or `now` while it holds them.
fn end_of(inst: &GpuInstance, now: Timestamp) -> Timestamp {
    inst.status
        .as_ref()
        .and_then(|s| s.finished_at)
        .unwrap_or(now)
}

/// The figures of a live (not yet retired) instance at `now`; `None` if it never ran.
pub fn instance_figures(user: &str, inst: &GpuInstance, now: Timestamp) -> Option<InstanceFigures> {
    let status = inst.status.as_ref()?;
    let started = status.started_at?;
    let (sampled_at, gpu_seconds, energy_joules) = match status.usage.as_ref() {
        Some(u) => (u.sampled_at, u.gpu_seconds, u.energy_joules),
        None => {
            let end = end_of(inst, now);
            (
                end,
                held_gpu_seconds(inst.spec.gpu.count, started, end),
                0.0,
            )
        }
    };
    Some(InstanceFigures {
        user: user.to_owned(),
        model: inst.spec.gpu.model.clone(),
        started,
        sampled_at,
        gpu_seconds,
        energy_joules,
    })
}

/// What is kept of an instance once it is deleted (folded into its user's status);
/// `None` if it never ran.
pub fn retire(inst: &GpuInstance, now: Timestamp) -> Option<RetiredInstance> {
    let f = instance_figures("", inst, now)?;
    let ended_at = inst
        .status
        .as_ref()
        .and_then(|s| s.finished_at)
        .unwrap_or(f.sampled_at)
        .max(f.started);
    Some(RetiredInstance {
        model: f.model,
        gpus: inst.spec.gpu.count,
        started_at: f.started,
        ended_at,
        gpu_seconds: f.gpu_seconds,
        energy_joules: f.energy_joules,
    })
}

/// The report figures of a retired instance of `user`.
pub fn retired_instance_figures(user: &str, r: &RetiredInstance) -> InstanceFigures {
    InstanceFigures {
        user: user.to_owned(),
        model: r.model.clone(),
        started: r.started_at,
        sampled_at: r.ended_at,
        gpu_seconds: r.gpu_seconds,
        energy_joules: r.energy_joules,
    }
}

/// The instance's hold on GPUs for budgets; `None` if it never held any.
pub fn span(inst: &GpuInstance) -> Option<InstanceSpan> {
    let status = inst.status.as_ref()?;
    Some(InstanceSpan {
        gpus: inst.spec.gpu.count,
        started: status.started_at?,
        ended: status.finished_at,
    })
}

/// A retired instance's hold on GPUs for budgets.
pub fn retired_span(r: &RetiredInstance) -> InstanceSpan {
    InstanceSpan {
        gpus: r.gpus,
        started: r.started_at,
        ended: Some(r.ended_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst(status: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "u1"},
            "spec": {"gpu": {"model": "M", "count": 2}, "image": "x", "duration": "1h"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn measured_figures_win_and_held_time_stands_in_without_an_agent() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let never = inst(json!({"phase": "Queued"}));
        assert!(instance_figures("u", &never, now).is_none());
        assert!(retire(&never, now).is_none());

        let held = inst(json!({"phase": "Running", "startedAt": "2026-11-25T11:00:00Z"}));
        let f = instance_figures("u", &held, now).unwrap();
        assert_eq!(
            (f.gpu_seconds, f.energy_joules, f.sampled_at),
            (7200.0, 0.0, now)
        );

        let measured = inst(
            json!({"phase": "Expired", "startedAt": "2026-11-25T11:00:00Z",
            "finishedAt": "2026-11-25T11:30:00Z",
            "usage": {"gpuSeconds": 3500.0, "avgUtilization": 50.0, "peakMemoryBytes": 1,
                      "energyJoules": 10.0, "sampledAt": "2026-11-25T11:29:50Z", "source": "simulated"}}),
        );
        let r = retire(&measured, now).unwrap();
        assert_eq!((r.gpu_seconds, r.energy_joules), (3500.0, 10.0));
        assert_eq!(
            r.ended_at,
            "2026-11-25T11:30:00Z".parse::<Timestamp>().unwrap()
        );
        let s = span(&measured).unwrap();
        assert_eq!(retired_span(&r), s);
    }
}
