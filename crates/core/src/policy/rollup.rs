//! A user's usage from the usage of their instances (pure).
//!
//! Live instances are summed as they are; an instance being deleted is folded into the
//! user's `retired` totals once its last figures are in (the agent marked them `final`, or
//! it has waited [`FOLD_GRACE`] for them), and its uid is remembered so that it is folded
//! once only. Its finalizer lets it go when the uid shows up.

use jiff::Timestamp;
use kube::ResourceExt;

use gpu_cloud_api::time::month_of;
use gpu_cloud_api::v1::{GpuInstance, UsageTotals, UserUsage};

/// How long a deleted instance waits for the agent's final figures before what is there
/// is folded anyway (an agent that is down must not block deletions for ever).
pub const FOLD_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// How many folded uids a user keeps (enough to cover any deletion in flight).
pub const RETIRED_UIDS_KEPT: usize = 1000;
/// How many retired instances' figures a user keeps for budgets and reports.
pub const RETIRED_INSTANCES_KEPT: usize = 2000;
/// How long a retired instance's figures are kept after it ended (reports of the last
/// twelve months, and then some).
pub const RETIRED_INSTANCES_DAYS: i64 = 400;

/// Adds one run's figures; `new_instance` counts the instance (its first run).
fn add(totals: &mut UsageTotals, gpu_seconds: f64, energy_joules: f64, new_instance: bool) {
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

/// The deleted instance's last figures may be folded now.
pub fn ready_to_fold(inst: &GpuInstance, now: Timestamp) -> bool {
    let Some(deleted) = inst.metadata.deletion_timestamp.as_ref() else {
        return false;
    };
    let usage = inst.status.as_ref().and_then(|s| s.usage.as_ref());
    let waited = now.duration_since(deleted.0).as_secs() >= FOLD_GRACE.as_secs() as i64;
    usage.is_none_or(|u| u.final_) || waited
}

/// The user's usage after looking at `instances` (all of the user's) at `now`.
pub fn user_usage(old: Option<&UserUsage>, instances: &[GpuInstance], now: Timestamp) -> UserUsage {
    let mut out = old.cloned().unwrap_or_default();
    let period = month_of(now);
    let mut lifetime_live = UsageTotals::default();
    let mut period_live = UsageTotals::default();
    for inst in instances {
        let uid = inst.uid().unwrap_or_default();
        if out.retired_uids.contains(&uid) {
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
        let mut months_seen = std::collections::BTreeSet::new();
        if ready_to_fold(inst, now) {
            for (k, (gpu_seconds, energy, at)) in runs.enumerate() {
                let month = month_of(at);
                add(&mut out.retired, gpu_seconds, energy, k == 0);
                let new_in_month = months_seen.insert(month.clone());
                add(
                    out.retired_by_period.entry(month).or_default(),
                    gpu_seconds,
                    energy,
                    new_in_month,
                );
            }
            out.retired_instances
                .extend(super::figures::retire(inst, now));
            out.retired_uids.push(uid);
            continue;
        }
        for (k, (gpu_seconds, energy, at)) in runs.enumerate() {
            add(&mut lifetime_live, gpu_seconds, energy, k == 0);
            if month_of(at) == period {
                let new_in_month = months_seen.insert(period.clone());
                add(&mut period_live, gpu_seconds, energy, new_in_month);
            }
        }
    }
    let excess = out.retired_uids.len().saturating_sub(RETIRED_UIDS_KEPT);
    out.retired_uids.drain(..excess);
    let oldest = now
        .checked_sub(jiff::SignedDuration::from_hours(
            24 * RETIRED_INSTANCES_DAYS,
        ))
        .unwrap_or(Timestamp::MIN);
    out.retired_instances.retain(|r| r.ended_at >= oldest);
    let excess = out
        .retired_instances
        .len()
        .saturating_sub(RETIRED_INSTANCES_KEPT);
    out.retired_instances.drain(..excess);
    // Keep the monthly record of retired usage to a year.
    while out.retired_by_period.len() > 12 {
        out.retired_by_period.pop_first();
    }
    out.lifetime = plus(&out.retired, &lifetime_live);
    let retired_now = out
        .retired_by_period
        .get(&period)
        .cloned()
        .unwrap_or_default();
    out.current_period = plus(&retired_now, &period_live);
    out.period = period;
    out
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
    fn live_instances_are_summed_and_deleted_ones_folded_once() {
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
        let waiting = inst(
            "d",
            3600.0,
            "2026-11-25T11:00:00Z",
            Some("2026-11-25T11:59:50Z"),
            false,
        );
        let u = user_usage(
            None,
            &[
                live.clone(),
                old_month.clone(),
                deleting.clone(),
                waiting.clone(),
            ],
            now,
        );
        assert_eq!(u.period, "2026-11");
        assert_eq!(u.retired_uids, ["c"]);
        assert_eq!(u.lifetime.instances, 4);
        assert!((u.lifetime.gpu_hours - 5.0).abs() < 1e-9);
        assert!((u.current_period.gpu_hours - 4.0).abs() < 1e-9, "{u:?}");
        assert!((u.lifetime.energy_kwh - 4.0).abs() < 1e-9);

        // The deleted instance is gone; the waiting one's grace runs out; nothing twice.
        let later: Timestamp = "2026-11-25T12:00:30Z".parse().unwrap();
        let u2 = user_usage(Some(&u), &[live, old_month, waiting], later);
        assert_eq!(u2.retired_uids, ["c", "d"]);
        assert_eq!(u2.lifetime.instances, 4);
        assert!((u2.lifetime.gpu_hours - 5.0).abs() < 1e-9);
        let again = user_usage(Some(&u2), &[], later);
        assert!(
            (again.lifetime.gpu_hours - 2.0).abs() < 1e-9,
            "only retired ones remain: {again:?}"
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
        let u = user_usage(None, &[i], now);
        assert_eq!((u.lifetime.instances, u.lifetime.gpu_hours), (1, 2.0));
        assert_eq!(
            (u.current_period.instances, u.current_period.gpu_hours),
            (1, 1.0)
        );
    }
}
