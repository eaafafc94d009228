//! An instance's figures, live or retired, as budgets and cost reports read them (pure).
//!
//! One place decides what an instance "used", so that the user's status, the budget and
//! `gpu-cloud report` always agree: the agent's measured figures (`status.usage`) where it
//! wrote them, else the time its GPUs were held (GPUs x time placed, no energy).

use jiff::Timestamp;

use super::budget::InstanceSpan;
use gpu_cloud_api::v1::{
    GpuInstance, GpuInstanceStatus, PREVIOUS_RUNS_KEPT, Phase, PreviousRun, RetiredInstance, Usage,
};

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
        .map(|i| u64::from(i.spec.gpu.total()) * u64::from(i.spec.gpu.unit_milli()))
        .sum::<u64>()
        .div_ceil(1000)
        .try_into()
        .unwrap_or(u32::MAX)
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
pub fn held_gpu_seconds(gpus: f64, start: Timestamp, end: Timestamp) -> f64 {
    let secs = end.duration_since(start).as_secs_f64();
    gpus * secs.max(0.0)
}

/// When the instance stopped holding GPUs, or `now` while it holds them. A lost node's
/// GPUs count until the loss, however long its pod takes to go.
fn end_of(inst: &GpuInstance, now: Timestamp) -> Timestamp {
    let Some(s) = inst.status.as_ref() else {
        return now;
    };
    let lost = s.node_lost.as_ref().map(|l| l.at);
    match (s.finished_at, lost) {
        (Some(f), Some(l)) => f.min(l),
        (f, l) => f.or(l).unwrap_or(now),
    }
}

/// The agent's figures of the instance's current run (see
/// [`GpuInstanceStatus::current_usage`]).
pub fn current_usage(status: &GpuInstanceStatus) -> Option<&Usage> {
    status.current_usage()
}

/// The instance's current run as a record (what it held and used from `startedAt` to
/// its end, or to `now` while it runs); `None` while it is not placed.
pub fn current_run(inst: &GpuInstance, now: Timestamp) -> Option<RetiredInstance> {
    let status = inst.status.as_ref()?;
    let started = status.started_at?;
    let end = end_of(inst, now).max(started);
    let (sampled_at, gpu_seconds, energy_joules) = match current_usage(status) {
        Some(u) => (u.sampled_at, u.gpu_seconds, u.energy_joules),
        None => (
            end,
            held_gpu_seconds(inst.spec.gpu.gpu_equivalent(), started, end),
            0.0,
        ),
    };
    Some(RetiredInstance {
        model: inst.spec.gpu.model.clone(),
        gpus: inst.spec.gpu.total(),
        started_at: started,
        ended_at: status.finished_at.unwrap_or(sampled_at).max(started),
        gpu_seconds,
        energy_joules,
        spot: inst.spec.preemptible,
    })
}

/// Every run of the instance, preempted ones first, as records: what budgets, cost and
/// reports count. Empty if it never ran.
pub fn runs(inst: &GpuInstance, now: Timestamp) -> Vec<RetiredInstance> {
    let mut out: Vec<RetiredInstance> = inst
        .status
        .as_ref()
        .map(|s| s.previous_runs.iter().map(|r| r.figures.clone()).collect())
        .unwrap_or_default();
    out.extend(current_run(inst, now));
    out
}

/// The figures of a live (not yet retired) instance at `now`, one per run; empty if it
/// never ran.
pub fn instance_figures(user: &str, inst: &GpuInstance, now: Timestamp) -> Vec<InstanceFigures> {
    runs(inst, now)
        .iter()
        .map(|r| retired_instance_figures(user, r))
        .collect()
}

/// What is kept of an instance once it is deleted (folded into its user's status): one
/// record per run; empty if it never ran.
pub fn retire(inst: &GpuInstance, now: Timestamp) -> Vec<RetiredInstance> {
    runs(inst, now)
}

/// The report figures of a retired instance (or run) of `user`.
pub fn retired_instance_figures(user: &str, r: &RetiredInstance) -> InstanceFigures {
    InstanceFigures {
        user: user.to_owned(),
        model: r.model.clone(),
        started: r.started_at,
        sampled_at: r.ended_at,
        gpu_seconds: r.gpu_seconds,
        energy_joules: r.energy_joules,
        spot: r.spot,
    }
}

/// The instance's holds on GPUs for budgets, one per run; empty if it never held any.
pub fn spans(inst: &GpuInstance) -> Vec<InstanceSpan> {
    let Some(status) = inst.status.as_ref() else {
        return vec![];
    };
    let mut out: Vec<InstanceSpan> = status
        .previous_runs
        .iter()
        .map(|r| retired_span(&r.figures))
        .collect();
    if let Some(started) = status.started_at {
        out.push(InstanceSpan {
            gpus: inst.spec.gpu.total(),
            started,
            ended: status.finished_at,
        });
    }
    out
}

/// A retired instance's hold on GPUs for budgets.
pub fn retired_span(r: &RetiredInstance) -> InstanceSpan {
    InstanceSpan {
        gpus: r.gpus,
        started: r.started_at,
        ended: Some(r.ended_at),
    }
}

/// `runs` with `run` added last, kept to [`PREVIOUS_RUNS_KEPT`]: beyond it the two oldest
/// are merged into one (their figures summed, from the first start to the second end), so
/// that no GPU-second is lost.
pub fn push_run(runs: &mut Vec<PreviousRun>, run: PreviousRun) {
    runs.push(run);
    while runs.len() > PREVIOUS_RUNS_KEPT {
        let second = runs.remove(1);
        let first = &mut runs[0].figures;
        first.gpu_seconds += second.figures.gpu_seconds;
        first.energy_joules += second.figures.energy_joules;
        first.ended_at = first.ended_at.max(second.figures.ended_at);
        first.gpus = first.gpus.max(second.figures.gpus);
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
        assert!(instance_figures("u", &never, now).is_empty());
        assert!(retire(&never, now).is_empty());

        let held = inst(json!({"phase": "Running", "startedAt": "2026-11-25T11:00:00Z"}));
        let f = instance_figures("u", &held, now).pop().unwrap();
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
        let r = retire(&measured, now).pop().unwrap();
        assert_eq!((r.gpu_seconds, r.energy_joules), (3500.0, 10.0));
        assert_eq!(
            r.ended_at,
            "2026-11-25T11:30:00Z".parse::<Timestamp>().unwrap()
        );
        let s = spans(&measured).pop().unwrap();
        assert_eq!(retired_span(&r), s);
    }

    #[test]
    fn preempted_runs_count_once_each_and_stale_usage_not_at_all() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let run = json!({"model": "M", "gpus": 2, "startedAt": "2026-11-25T09:00:00Z",
                         "endedAt": "2026-11-25T10:00:00Z", "gpuSeconds": 7000.0,
                         "energyJoules": 5.0, "node": "n1",
                         "preempted": {"by": "gpu-v/b", "reason": "PreemptedReclaim",
                                       "node": "n1", "at": "2026-11-25T09:59:30Z"}});
        // Back in the queue with its previous run's usage still shown: only the run counts.
        let queued = inst(json!({"phase": "Queued", "previousRuns": [run],
            "usage": {"gpuSeconds": 7000.0, "avgUtilization": 50.0, "peakMemoryBytes": 1,
                      "energyJoules": 5.0, "sampledAt": "2026-11-25T09:59:50Z", "source": "simulated"}}));
        let r = retire(&queued, now);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].gpu_seconds, r[0].energy_joules), (7000.0, 5.0));
        assert_eq!(spans(&queued).len(), 1);
        // Placed again: the stale usage is older than the new start, held time stands in.
        let again = inst(json!({"phase": "Running", "previousRuns": [run],
            "startedAt": "2026-11-25T11:00:00Z",
            "usage": {"gpuSeconds": 7000.0, "avgUtilization": 50.0, "peakMemoryBytes": 1,
                      "energyJoules": 5.0, "sampledAt": "2026-11-25T09:59:50Z", "source": "simulated"}}));
        let f = instance_figures("u", &again, now);
        assert_eq!(
            f.iter().map(|f| f.gpu_seconds).collect::<Vec<_>>(),
            vec![7000.0, 7200.0]
        );
        assert_eq!(spans(&again).len(), 2);
    }

    #[test]
    fn runs_beyond_the_bound_are_merged_without_loss() {
        let run = |i: i64| PreviousRun {
            figures: RetiredInstance {
                model: "M".into(),
                gpus: 1,
                started_at: Timestamp::from_second(i * 100).unwrap(),
                ended_at: Timestamp::from_second(i * 100 + 50).unwrap(),
                gpu_seconds: 50.0,
                energy_joules: 1.0,
                spot: false,
            },
            node: "n".into(),
            preempted: Some(gpu_cloud_api::v1::PreemptionNotice {
                by: "a/b".into(),
                reason: "PreemptedSpot".into(),
                node: "n".into(),
                at: Timestamp::from_second(i * 100 + 40).unwrap(),
            }),
            node_lost: None,
        };
        let mut runs = vec![];
        for i in 0..(PREVIOUS_RUNS_KEPT as i64 + 5) {
            push_run(&mut runs, run(i));
        }
        assert_eq!(runs.len(), PREVIOUS_RUNS_KEPT);
        let total: f64 = runs.iter().map(|r| r.figures.gpu_seconds).sum();
        assert_eq!(total, 50.0 * (PREVIOUS_RUNS_KEPT as f64 + 5.0));
        assert_eq!(
            runs[0].figures.started_at,
            Timestamp::from_second(0).unwrap()
        );
    }
}
