//! Cumulative usage from successive samples (pure).
//!
//! Each sample extends the totals from the last `sampledAt` (or from placement, for the
//! first): GPU-seconds by GPUs × elapsed time, utilization as a time-weighted mean, energy
//! from the devices' energy counters when both ends have them (exact across agent restarts,
//! since the counters are stored with the totals) and from power × time otherwise.

use jiff::Timestamp;

use gpu_cloud_api::v1::{DeviceCounter, Usage, UsageSource};

/// One reading of an instance's GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Timestamp,
    /// GPUs the instance holds (a slice as its fraction of a GPU).
    pub gpus: f64,
    /// Mean utilization over its GPUs, percent.
    pub utilization: f64,
    /// GPU memory in use, bytes (all its GPUs).
    pub memory_bytes: u64,
    /// Power draw, watts (all its GPUs).
    pub power_watts: f64,
    /// Energy counters of its GPUs (empty where there are none).
    pub devices: Vec<DeviceCounter>,
}

/// `prev` extended to `sample`. `started` is when the instance was placed (its GPUs are
/// held from then on). A sample older than `prev` changes nothing.
pub fn advance(
    prev: Option<&Usage>,
    started: Timestamp,
    sample: &Sample,
    source: UsageSource,
) -> Usage {
    let base = prev.cloned().unwrap_or_else(|| Usage {
        sampled_at: started,
        source,
        ..Default::default()
    });
    let dt = sample.at.duration_since(base.sampled_at).as_secs_f64();
    if dt <= 0.0 {
        return base;
    }
    let held = sample.gpus * dt;
    let gpu_seconds = base.gpu_seconds + held;
    // Moved toward the new reading by its share of the time: a steady reading stays
    // exactly itself (no rounding drift).
    let avg_utilization = if gpu_seconds > 0.0 {
        base.avg_utilization + (sample.utilization - base.avg_utilization) * (held / gpu_seconds)
    } else {
        0.0
    };
    let energy = counter_delta(&base.devices, &sample.devices).unwrap_or(sample.power_watts * dt);
    Usage {
        gpu_seconds,
        avg_utilization,
        peak_memory_bytes: base.peak_memory_bytes.max(sample.memory_bytes),
        energy_joules: base.energy_joules + energy,
        sampled_at: sample.at,
        source,
        power_watts: sample.power_watts,
        devices: sample.devices.clone(),
        final_: false,
        // The idle clock is kept beside the figures (lib.rs, `idle_clock`).
        idle: base.idle,
    }
}

/// Joules between two readings of the same devices' counters; `None` if the devices
/// differ or a counter went backwards (driver reload).
fn counter_delta(before: &[DeviceCounter], now: &[DeviceCounter]) -> Option<f64> {
    if before.is_empty() || before.len() != now.len() {
        return None;
    }
    let mut millijoules = 0u64;
    for n in now {
        let b = before.iter().find(|b| b.uuid == n.uuid)?;
        millijoules += n.energy_millijoules.checked_sub(b.energy_millijoules)?;
    }
    Some(millijoules as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn sample(t: i64, util: f64, power: f64) -> Sample {
        Sample {
            at: at(t),
            gpus: 2.0,
            utilization: util,
            memory_bytes: 1 << 30,
            power_watts: power,
            devices: vec![],
        }
    }

    #[test]
    fn the_first_sample_counts_from_placement() {
        let u = advance(
            None,
            at(100),
            &sample(160, 50.0, 200.0),
            UsageSource::Simulated,
        );
        assert_eq!(
            (u.gpu_seconds, u.avg_utilization, u.energy_joules),
            (120.0, 50.0, 12_000.0)
        );
        assert_eq!(u.sampled_at, at(160));
    }

    #[test]
    fn utilization_is_time_weighted_and_energy_prefers_counters() {
        let dev = |mj| {
            vec![DeviceCounter {
                uuid: "GPU-1".into(),
                energy_millijoules: mj,
            }]
        };
        let mut s1 = sample(10, 100.0, 300.0);
        s1.devices = dev(1_000_000);
        let u1 = advance(None, at(0), &s1, UsageSource::Nvml);
        let mut s2 = sample(40, 0.0, 300.0);
        s2.devices = dev(1_500_000);
        let u2 = advance(Some(&u1), at(0), &s2, UsageSource::Nvml);
        assert_eq!(u2.avg_utilization, 25.0);
        assert_eq!(u2.energy_joules, 3000.0 + 500.0);
        // A counter that went backwards (driver reloaded) falls back to power × time.
        let mut s3 = sample(50, 0.0, 100.0);
        s3.devices = dev(10);
        assert_eq!(
            advance(Some(&u2), at(0), &s3, UsageSource::Nvml).energy_joules,
            3500.0 + 1000.0
        );
    }

    proptest! {
        /// However the samples are split (and resumed from stored totals), constant figures
        /// integrate to the same totals: nothing lost, nothing counted twice.
        #[test]
        fn totals_do_not_depend_on_how_often_samples_are_taken(cuts in prop::collection::btree_set(1i64..1000, 0..20)) {
            let (util, power) = (40.0, 250.0);
            let mut u: Option<Usage> = None;
            for t in cuts.iter().copied().chain([1000]) {
                u = Some(advance(u.as_ref(), at(0), &sample(t, util, power), UsageSource::Simulated));
            }
            let u = u.unwrap();
            prop_assert!((u.gpu_seconds - 2000.0).abs() < 1e-6);
            prop_assert!((u.energy_joules - 250_000.0).abs() < 1e-6);
            prop_assert!((u.avg_utilization - util).abs() < 1e-9);
        }
    }
}
