//! A gang's usage from its members' (pure).
//!
//! Each member's figures are measured by the agent of its node and kept in
//! `status.memberUsage`; rank 0's agent sums them into `status.usage`, the figures budgets,
//! cost, the idle rule and the printer columns read as for any instance.

use std::time::Duration;

use jiff::Timestamp;

use gpu_cloud_api::v1::Usage;

/// How long after a gang ended its total waits for a member's last figures before it is
/// final without them (that member's agent is gone, or its node). A member's agent writes
/// its last figures on its first sample after the end (a second or so); this must stay
/// under the roll-up's `FOLD_GRACE` (30 s), which folds a deleted instance's figures
/// final or not.
pub const MEMBER_GRACE: Duration = Duration::from_secs(20);

/// The gang's figures from its members': GPU-seconds, energy, power and peak memory add
/// up (the peak is the sum of each member's peak, an upper bound: members peak at
/// different times); utilization is the GPU-second-weighted mean; the counters are all
/// members' devices. `sampledAt` is the newest member's. The caller sets `final` and
/// `idle`.
pub fn total(members: &[&Usage]) -> Usage {
    let gpu_seconds: f64 = members.iter().map(|u| u.gpu_seconds).sum();
    let weighted: f64 = members
        .iter()
        .map(|u| u.avg_utilization * u.gpu_seconds)
        .sum();
    Usage {
        gpu_seconds,
        avg_utilization: if gpu_seconds > 0.0 {
            weighted / gpu_seconds
        } else {
            0.0
        },
        peak_memory_bytes: members.iter().map(|u| u.peak_memory_bytes).sum(),
        energy_joules: members.iter().map(|u| u.energy_joules).sum(),
        sampled_at: members
            .iter()
            .map(|u| u.sampled_at)
            .max()
            .unwrap_or_default(),
        source: members.first().map(|u| u.source).unwrap_or_default(),
        power_watts: members.iter().map(|u| u.power_watts).sum(),
        devices: members.iter().flat_map(|u| u.devices.clone()).collect(),
        final_: false,
        idle: None,
    }
}

/// The total is final: rank 0's figures are, and every other member's are too, or the
/// gang ended (`ended_at`) more than [`MEMBER_GRACE`] before `now`. `others`: ranks 1 and
/// up, `None` for a member with no figures of this run.
pub fn is_final(
    own_final: bool,
    others: &[Option<&Usage>],
    ended_at: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    let all = others.iter().all(|u| u.is_some_and(|u| u.final_));
    let waited = ended_at
        .is_some_and(|end| now.duration_since(end).as_secs_f64() >= MEMBER_GRACE.as_secs_f64());
    own_final && (all || waited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_cloud_api::v1::{DeviceCounter, UsageSource};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn member(gpu_seconds: f64, util: f64, energy: f64, sampled: i64, final_: bool) -> Usage {
        Usage {
            gpu_seconds,
            avg_utilization: util,
            peak_memory_bytes: 1 << 30,
            energy_joules: energy,
            sampled_at: at(sampled),
            source: UsageSource::Simulated,
            power_watts: 100.0,
            devices: vec![DeviceCounter {
                uuid: format!("GPU-{sampled}"),
                energy_millijoules: 1,
            }],
            final_,
            idle: None,
        }
    }

    #[test]
    fn members_add_up_and_utilization_is_weighted_by_gpu_seconds() {
        let (a, b) = (
            member(800.0, 90.0, 1e5, 100, false),
            member(200.0, 40.0, 2e4, 95, false),
        );
        let t = total(&[&a, &b]);
        assert_eq!(
            (t.gpu_seconds, t.energy_joules, t.power_watts),
            (1000.0, 1.2e5, 200.0)
        );
        assert!((t.avg_utilization - 80.0).abs() < 1e-9);
        assert_eq!(
            (t.peak_memory_bytes, t.sampled_at, t.devices.len()),
            (2 << 30, at(100), 2)
        );
        assert_eq!(total(&[]).avg_utilization, 0.0);
    }

    #[test]
    fn the_total_waits_for_every_member_or_the_grace() {
        let (done, going) = (
            member(1.0, 1.0, 1.0, 0, true),
            member(1.0, 1.0, 1.0, 0, false),
        );
        let end = Some(at(0));
        assert!(is_final(true, &[Some(&done), Some(&done)], end, at(1)));
        assert!(
            !is_final(false, &[Some(&done)], end, at(1)),
            "rank 0 not done"
        );
        assert!(!is_final(true, &[Some(&done), Some(&going)], end, at(1)));
        assert!(!is_final(true, &[None], end, at(19)), "a member never seen");
        assert!(
            is_final(true, &[None, Some(&going)], end, at(20)),
            "grace over"
        );
        assert!(!is_final(true, &[None], None, at(1000)), "not ended");
    }
}
