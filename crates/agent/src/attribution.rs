//! Which pod used how much of which GPU (pure).
//!
//! A GPU the device plugin gave to one pod (known from the kubelet's PodResources) is all
//! that pod's. Otherwise the GPU's processes decide: each process belongs to a pod (its
//! cgroup), and a GPU shared by several pods is split by the processes' SM utilization
//! (or, where the driver does not report it, by their memory).

use std::collections::BTreeMap;

use gpu_cloud_api::v1::DeviceCounter;

use super::nvml::DeviceReading;

/// What one pod used across its GPUs in one reading.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodShare {
    /// Sum over its GPUs of utilization × its share of that GPU, percent.
    pub utilization_sum: f64,
    /// GPU memory, bytes.
    pub memory_bytes: u64,
    /// Power, watts (its share).
    pub power_watts: f64,
    /// Energy counters of the GPUs it holds alone (empty if it shares any).
    pub counters: Vec<DeviceCounter>,
    /// It shares at least one GPU with another pod.
    pub shared: bool,
}

/// Splits `devices` among pods. `device_pods`: GPU UUID → pod UID (PodResources);
/// `pid_pods`: process id → pod UID (cgroups).
pub fn attribute(
    devices: &[DeviceReading],
    device_pods: &BTreeMap<String, String>,
    pid_pods: &BTreeMap<u32, String>,
) -> BTreeMap<String, PodShare> {
    let mut out: BTreeMap<String, PodShare> = BTreeMap::new();
    for d in devices {
        if let Some(pod) = device_pods.get(&d.uuid) {
            let share = out.entry(pod.clone()).or_default();
            share.utilization_sum += d.utilization;
            share.memory_bytes += d.memory_used;
            share.power_watts += d.power_watts;
            share.counters.push(d.counter());
            continue;
        }
        // By process: weight of each pod on this GPU.
        let mut weights: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for (pid, (memory, sm)) in &d.processes {
            if let Some(pod) = pid_pods.get(pid) {
                let w = weights.entry(pod.as_str()).or_default();
                w.0 += sm.unwrap_or(0.0);
                w.1 += memory;
            }
        }
        let by_sm: f64 = weights.values().map(|w| w.0).sum();
        let by_memory: u64 = weights.values().map(|w| w.1).sum();
        let alone = weights.len() == 1;
        for (pod, (sm, memory)) in &weights {
            let fraction = if alone {
                1.0
            } else if by_sm > 0.0 {
                sm / by_sm
            } else if by_memory > 0 {
                *memory as f64 / by_memory as f64
            } else {
                1.0 / weights.len() as f64
            };
            let share = out.entry((*pod).to_owned()).or_default();
            share.utilization_sum += if alone { d.utilization } else { *sm };
            share.memory_bytes += memory;
            share.power_watts += d.power_watts * fraction;
            if alone {
                share.counters.push(d.counter());
            } else {
                share.shared = true;
            }
        }
    }
    for share in out.values_mut().filter(|s| s.shared) {
        share.counters.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(uuid: &str, util: f64, power: f64, procs: &[(u32, u64, Option<f64>)]) -> DeviceReading {
        DeviceReading {
            index: 0,
            uuid: uuid.into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            utilization: util,
            memory_used: procs.iter().map(|p| p.1).sum(),
            memory_total: 80 << 30,
            power_watts: power,
            energy_millijoules: 5_000,
            processes: procs.iter().map(|&(pid, m, s)| (pid, (m, s))).collect(),
            mig_parent: None,
        }
    }

    #[test]
    fn a_gpu_given_to_one_pod_is_all_that_pods() {
        let devices = [gpu("GPU-a", 80.0, 400.0, &[])];
        let device_pods = BTreeMap::from([("GPU-a".to_string(), "pod-1".to_string())]);
        let out = attribute(&devices, &device_pods, &BTreeMap::new());
        let s = &out["pod-1"];
        assert_eq!(
            (s.utilization_sum, s.power_watts, s.counters.len()),
            (80.0, 400.0, 1)
        );
    }

    #[test]
    fn a_shared_gpu_is_split_by_process_utilization() {
        let devices = [gpu(
            "GPU-b",
            90.0,
            300.0,
            &[
                (10, 1 << 30, Some(60.0)),
                (20, 3 << 30, Some(30.0)),
                (30, 1, None),
            ],
        )];
        let pids = BTreeMap::from([(10, "pod-1".to_string()), (20, "pod-2".to_string())]);
        let out = attribute(&devices, &BTreeMap::new(), &pids);
        assert_eq!(out["pod-1"].utilization_sum, 60.0);
        assert!((out["pod-1"].power_watts - 200.0).abs() < 1e-9);
        assert!((out["pod-2"].power_watts - 100.0).abs() < 1e-9);
        assert_eq!(out["pod-2"].memory_bytes, 3 << 30);
        assert!(out["pod-1"].shared && out["pod-1"].counters.is_empty());
        assert_eq!(out.len(), 2, "pid 30 belongs to no pod");
    }

    #[test]
    fn without_utilization_figures_memory_decides() {
        let devices = [gpu(
            "GPU-c",
            50.0,
            100.0,
            &[(1, 3 << 30, None), (2, 1 << 30, None)],
        )];
        let pids = BTreeMap::from([(1, "a".to_string()), (2, "b".to_string())]);
        let out = attribute(&devices, &BTreeMap::new(), &pids);
        assert!((out["a"].power_watts - 75.0).abs() < 1e-9);
    }
}
