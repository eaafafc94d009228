//! A user's usage from the usage of their instances (pure).
//!
//! Live instances are summed as they are; a deleted one counts from its GpuUsageRecord
//! once its finalizer recorded it ([`super::records`]), and not before: an instance counts
//! once, before and after its deletion. Its finalizer records it once its last figures are
//! in ([`ready_to_fold`]).

use jiff::Timestamp;
use kube::ResourceExt;

use super::records::Recorded;
use gpu_cloud_api::time::month_of;
use gpu_cloud_api::v1::{GpuInstance, UsageTotals, UserUsage};

/// How long a deleted instance waits for the agent's final figures before what is there
/// is recorded anyway (an agent that is down must not block deletions for ever).
pub const FOLD_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// How many months of retired usage the user's status shows by month (the records keep
/// everything).
pub const RETIRED_MONTHS_SHOWN: usize = 12;

/// Adds one run's figures; `new_instance` counts the instance (its first run).
pub(super) fn add(
    totals: &mut UsageTotals,
    gpu_seconds: f64,
    energy_joules: f64,
    new_instance: bool,
) {
    totals.gpu_hours += gpu_seconds / 3600.0;
    totals.energy_kwh += energy_joules / 3.6e6;
    totals.instances += u32::from(new_instance);
}

fn plus(a: &UsageTotals, b: &UsageTotals) -> UsageTotals {
    UsageTotals {
        gpu_hours: a.gpu_hours + b.gpu_hours,
        energy_kwh: a.energy_kwh + b.energy_kwh,
        instances: a.instances + b.instances,
    }
}

/// The deleted instance's last figures may be recorded now.
pub fn ready_to_fold(inst: &GpuInstance, now: Timestamp) -> bool {
    let Some(deleted) = inst.metadata.deletion_timestamp.as_ref() else {
        return false;
    };
    let usage = inst.status.as_ref().and_then(|s| s.usage.as_ref());
    let waited = now.duration_since(deleted.0).as_secs() >= FOLD_GRACE.as_secs() as i64;
    usage.is_none_or(|u| u.final_) || waited
}

/// The user's usage at `now` from `instances` (all of the user's still in the cluster)
/// and `recorded` (what its GpuUsageRecords say).
pub fn user_usage(instances: &[GpuInstance], recorded: &Recorded<'_>, now: Timestamp) -> UserUsage {
    let period = month_of(now);
    let mut lifetime_live = UsageTotals::default();
    let mut period_live = UsageTotals::default();
    for inst in instances {
        if recorded.contains(&inst.uid().unwrap_or_default()) {
            continue;
        }
        // Each run's figures: runs ended by preemption as recorded, the current one as
        // the agent measured it (nothing while it has not measured this run).
        let previous = inst
            .status
            .as_ref()
            .map_or(&[][..], |s| &s.previous_runs[..]);
        let current = inst.status.as_ref().and_then(super::figures::current_usage);
        let runs = previous
            .iter()
            .map(|r| {
                (
                    r.figures.gpu_seconds,
                    r.figures.energy_joules,
                    r.figures.ended_at,
                )
            })
            .chain(current.map(|u| (u.gpu_seconds, u.energy_joules, u.sampled_at)));
        // An instance counts once in each total, however many runs it had there.
        let mut in_period = false;
        for (k, (gpu_seconds, energy, at)) in runs.enumerate() {
            add(&mut lifetime_live, gpu_seconds, energy, k == 0);
            if month_of(at) == period {
                add(&mut period_live, gpu_seconds, energy, !in_period);
                in_period = true;
            }
        }
    }
    let (retired, mut by_period) = recorded.totals();
    while by_period.len() > RETIRED_MONTHS_SHOWN {
        by_period.pop_first();
    }
    let retired_now = by_period.get(&period).cloned().unwrap_or_default();
    UserUsage {
        lifetime: plus(&retired, &lifetime_live),
        current_period: plus(&retired_now, &period_live),
        period,
        retired,
        retired_by_period: by_period,
        retired_uids: vec![],
        retired_instances: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst(
        uid: &str,
        gpu_seconds: f64,
        sampled: &str,
        deleted: Option<&str>,
        final_: bool,
    ) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": uid, "namespace": "gpu-u", "uid": uid, "deletionTimestamp": deleted},
            "spec": {"gpu": {"model": "m", "count": 1}, "image": "x", "duration": "1h"},
            "status": {"startedAt": "2020-01-01T00:00:00Z", "usage": {"gpuSeconds": gpu_seconds, "avgUtilization": 50.0, "peakMemoryBytes": 1,
                                 "energyJoules": 3.6e6, "sampledAt": sampled, "source": "simulated", "final": final_}}
        }))
        .unwrap()
    }

    #[test]
    fn live_instances_are_summed_and_recorded_ones_counted_from_their_record_once() {
        use crate::policy::records::{RecordWrite, record_instance};
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let live = inst("a", 7200.0, "2026-11-25T11:59:00Z", None, false);
        let old_month = inst("b", 3600.0, "2026-10-31T23:00:00Z", None, false);
        let deleting = inst(
            "c",
            3600.0,
            "2026-11-25T11:00:00Z",
            Some("2026-11-25T11:59:50Z"),
            true,
        );
        let all = [live.clone(), old_month.clone(), deleting.clone()];
        let none = Recorded::default();
        let u = user_usage(&all, &none, now);
        assert_eq!(u.period, "2026-11");
        assert_eq!(u.lifetime.instances, 3);
        assert!((u.lifetime.gpu_hours - 4.0).abs() < 1e-9);
        assert!((u.current_period.gpu_hours - 3.0).abs() < 1e-9, "{u:?}");
        assert!((u.lifetime.energy_kwh - 3.0).abs() < 1e-9);

        // Recorded: the same totals whether the instance is still there or gone.
        let RecordWrite::Create(record) = record_instance(&[], "u", &deleting, now) else {
            panic!("a new record");
        };
        let records = [record];
        let recorded = Recorded::of(&records);
        for instances in [&all[..], &all[..2]] {
            let u2 = user_usage(instances, &recorded, now);
            assert_eq!(u2.lifetime.instances, 3);
            assert!((u2.lifetime.gpu_hours - 4.0).abs() < 1e-9);
            assert_eq!(u2.retired.instances, 1);
            assert!((u2.retired.gpu_hours - 1.0).abs() < 1e-9);
            assert!((u2.current_period.gpu_hours - 3.0).abs() < 1e-9);
        }
        let again = user_usage(&[], &recorded, now);
        assert!(
            (again.lifetime.gpu_hours - 1.0).abs() < 1e-9,
            "only recorded ones remain: {again:?}"
        );
    }

    #[test]
    fn an_instance_with_runs_in_two_months_counts_once_in_each() {
        let mut i = inst("u1", 3600.0, "2026-12-02T10:00:00Z", None, false);
        let status = i.status.as_mut().unwrap();
        status.started_at = Some("2026-12-02T09:00:00Z".parse().unwrap());
        status.previous_runs = serde_json::from_value(json!([{"model": "m", "gpus": 1,
            "startedAt": "2026-11-30T22:00:00Z", "endedAt": "2026-11-30T23:00:00Z",
            "gpuSeconds": 3600.0, "node": "n",
            "preempted": {"by": "a/b", "reason": "PreemptedSpot", "node": "n",
                          "at": "2026-11-30T23:00:00Z"}}]))
        .unwrap();
        let now: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let u = user_usage(&[i], &Recorded::default(), now);
        assert_eq!((u.lifetime.instances, u.lifetime.gpu_hours), (1, 2.0));
        assert_eq!(
            (u.current_period.instances, u.current_period.gpu_hours),
            (1, 1.0)
        );
    }
}
