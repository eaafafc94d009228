//! Simulated GPUs on a real node (`--simulate-devices`): everything but the numbers is
//! real. The devices are the kubelet's (PodResources `GetAllocatableResources`, as a device
//! plugin such as `gpu-cloud-fake-gpus` advertised them); the processes on a device are the
//! host's processes whose environment names it in `NVIDIA_VISIBLE_DEVICES` (what the
//! device plugin gave their container, and what the NVIDIA runtime would expose); the
//! readings then go through the same attribution as NVML's (real `/proc/<pid>/cgroup`, real
//! PodResources). Only utilization, memory and power are invented: a process's
//! `GPU_CLOUD_SIMULATED_UTILIZATION` (percent, default 50), memory 8 GiB × utilization and
//! power as in [`super::simulated`]. Usage is marked `source: simulated`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::nvml::DeviceReading;
use super::simulated::power_per_gpu;

/// The variable a process reads its simulated utilization from.
pub const UTILIZATION_ENV: &str = "GPU_CLOUD_SIMULATED_UTILIZATION";

/// Memory of one simulated GPU, bytes.
const MEMORY_TOTAL: u64 = 80 << 30;

/// A process that was given GPUs: its devices (as `NVIDIA_VISIBLE_DEVICES` lists them) and
/// its simulated utilization.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProcess {
    /// Process id (in the host's PID namespace).
    pub pid: u32,
    /// The UUIDs (or indices) it was given.
    pub visible: Vec<String>,
    /// Percent, 0–100.
    pub utilization: f64,
}

/// Reads a process's environment (`/proc/<pid>/environ`: `NAME=value` separated by NUL):
/// a GPU process if its `NVIDIA_VISIBLE_DEVICES` names devices (pure). `all` is what
/// monitoring containers ask for (the agent itself does): they see every GPU and use none,
/// so they are not counted; `none`, `void` and empty mean no GPU.
pub fn gpu_process(pid: u32, environ: &[u8]) -> Option<GpuProcess> {
    let mut visible = None;
    let mut utilization = 50.0;
    for var in environ.split(|b| *b == 0) {
        let Ok(var) = std::str::from_utf8(var) else {
            continue;
        };
        let Some((name, value)) = var.split_once('=') else {
            continue;
        };
        match name {
            "NVIDIA_VISIBLE_DEVICES" => {
                visible = match value.trim() {
                    "" | "none" | "void" | "all" => None,
                    list => Some(
                        list.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    ),
                }
            }
            UTILIZATION_ENV => {
                if let Ok(u) = value.trim().parse::<f64>()
                    && (0.0..=100.0).contains(&u)
                {
                    utilization = u;
                }
            }
            _ => {}
        }
    }
    Some(GpuProcess {
        pid,
        visible: visible?,
        utilization,
    })
}

/// The readings of `devices` (the node's GPU UUIDs, in index order) with `processes` on
/// them, given each device's energy so far (pure). A device's utilization is the sum of its
/// processes' (at most 100).
pub fn readings(
    devices: &[String],
    processes: &[GpuProcess],
    energy_millijoules: &BTreeMap<String, u64>,
) -> Vec<DeviceReading> {
    devices
        .iter()
        .enumerate()
        .map(|(index, uuid)| {
            let on: Vec<&GpuProcess> = processes
                .iter()
                .filter(|p| {
                    p.visible
                        .iter()
                        .any(|id| id == uuid || id.parse::<usize>() == Ok(index))
                })
                .collect();
            let utilization = on.iter().map(|p| p.utilization).sum::<f64>().min(100.0);
            let memory = |u: f64| (8.0 * f64::from(1u32 << 30) * u / 100.0) as u64;
            DeviceReading {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                uuid: uuid.clone(),
                name: "Simulated GPU".to_owned(),
                utilization,
                memory_used: on.iter().map(|p| memory(p.utilization)).sum(),
                memory_total: MEMORY_TOTAL,
                power_watts: if on.is_empty() {
                    power_per_gpu(0.0)
                } else {
                    power_per_gpu(utilization)
                },
                energy_millijoules: energy_millijoules.get(uuid).copied().unwrap_or(0),
                processes: on
                    .iter()
                    .map(|p| (p.pid, (memory(p.utilization), Some(p.utilization))))
                    .collect(),
                mig_parent: None,
            }
        })
        .collect()
}

/// The simulated devices' state between samples: each device's energy counter, which
/// grows with its simulated power as a real one does.
#[derive(Debug, Default)]
pub struct SimulatedDevices {
    energy: BTreeMap<String, u64>,
    last: Option<Instant>,
    last_power: BTreeMap<String, f64>,
}

impl SimulatedDevices {
    /// Reads `devices` now: the processes from `proc_root`, the energy advanced by the last
    /// power over the time since the last read.
    pub fn read(&mut self, proc_root: &Path, devices: &[String]) -> Vec<DeviceReading> {
        let now = Instant::now();
        if let Some(last) = self.last {
            let seconds = now.duration_since(last).as_secs_f64();
            for (uuid, watts) in &self.last_power {
                *self.energy.entry(uuid.clone()).or_default() += (watts * seconds * 1000.0) as u64;
            }
        }
        self.last = Some(now);
        let processes = scan(proc_root);
        let out = readings(devices, &processes, &self.energy);
        self.last_power = out
            .iter()
            .map(|r| (r.uuid.clone(), r.power_watts))
            .collect();
        out
    }
}

/// Every process under `proc_root` that sees GPUs. Processes that end while being read,
/// or whose environment may not be read, are skipped.
fn scan(proc_root: &Path) -> Vec<GpuProcess> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            gpu_process(pid, &environ)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&str]) -> Vec<u8> {
        vars.join("\0").into_bytes()
    }

    #[test]
    fn a_process_with_devices_is_a_gpu_process() {
        let p = gpu_process(
            7,
            &env(&[
                "PATH=/bin",
                "NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b",
                "GPU_CLOUD_SIMULATED_UTILIZATION=80",
            ]),
        )
        .unwrap();
        assert_eq!(p.visible, ["GPU-a", "GPU-b"]);
        assert_eq!(p.utilization, 80.0);
        assert_eq!(gpu_process(8, &env(&["PATH=/bin"])), None);
        assert_eq!(gpu_process(9, &env(&["NVIDIA_VISIBLE_DEVICES=none"])), None);
        assert_eq!(gpu_process(10, &env(&["NVIDIA_VISIBLE_DEVICES=all"])), None);
        let bad = gpu_process(
            11,
            &env(&[
                "NVIDIA_VISIBLE_DEVICES=GPU-a",
                "GPU_CLOUD_SIMULATED_UTILIZATION=900",
            ]),
        )
        .unwrap();
        assert_eq!(bad.utilization, 50.0);
    }

    #[test]
    fn readings_put_each_process_on_its_devices() {
        let devices = vec!["GPU-a".to_owned(), "GPU-b".to_owned(), "GPU-c".to_owned()];
        let procs = vec![
            GpuProcess {
                pid: 1,
                visible: vec!["GPU-a".into(), "GPU-b".into()],
                utilization: 30.0,
            },
            GpuProcess {
                pid: 2,
                visible: vec!["2".into()],
                utilization: 90.0,
            },
        ];
        let r = readings(&devices, &procs, &BTreeMap::new());
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].processes.keys().collect::<Vec<_>>(), [&1]);
        assert_eq!(r[1].utilization, 30.0);
        assert_eq!(r[2].processes.keys().collect::<Vec<_>>(), [&2]);
        assert_eq!(r[2].power_watts, power_per_gpu(90.0));
    }

    proptest::proptest! {
        /// Any bytes as an environment: read without panic.
        #[test]
        fn any_environ_reads_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = gpu_process(1, &bytes);
        }
    }
}
