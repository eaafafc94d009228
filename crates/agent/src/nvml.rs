//! Real GPU figures from the NVIDIA driver through NVML (nvml-wrapper loads
//! `libnvidia-ml.so` at run time, so the agent builds and runs without a driver; it then
//! says so and stops unless told to simulate).
//!
//! A GPU in MIG mode is read as its MIG devices (`MIG-…` UUIDs, what the device plugin's
//! mixed strategy hands to pods as `nvidia.com/mig-<profile>`): each with its own memory
//! and processes, and its share of the GPU's power and energy by its memory (NVML reads
//! neither, nor utilization, per MIG device).

use std::collections::BTreeMap;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

use gpu_cloud_api::v1::DeviceCounter;

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceReading {
    /// Index on the node.
    pub index: u32,
    /// `GPU-…` UUID (what the device plugin hands to pods).
    pub uuid: String,
    /// Model name.
    pub name: String,
    /// Utilization, percent.
    pub utilization: f64,
    /// Memory in use and in all, bytes.
    pub memory_used: u64,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Power draw, watts.
    pub power_watts: f64,
    /// Energy since the driver loaded, millijoules.
    pub energy_millijoules: u64,
    /// Compute processes: pid → (GPU memory bytes, SM utilization percent if known).
    pub processes: BTreeMap<u32, (u64, Option<f64>)>,
    /// A MIG device: the UUID of its GPU. Its utilization is then not read (0), and its
    /// power and energy are its share of the GPU's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig_parent: Option<String>,
}

/// One MIG device as NVML reports it: memory and processes of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct MigReading {
    /// `MIG-…` UUID.
    pub uuid: String,
    /// Memory in use, bytes.
    pub memory_used: u64,
    /// Its memory, bytes.
    pub memory_total: u64,
    /// Compute processes: pid → GPU memory bytes.
    pub processes: BTreeMap<u32, u64>,
}

/// A MIG-mode GPU's readings: one per MIG device, each with its share of the GPU's power
/// and energy counter by its memory (a `1g.10gb` of an 80 GB GPU: 1/8). The shares of MIG
/// devices that do not exist are no one's. The energy counter is the GPU's scaled by the
/// share, so that its differences are the share's energy (pure).
pub fn mig_readings(gpu: &DeviceReading, migs: Vec<MigReading>) -> Vec<DeviceReading> {
    migs.into_iter()
        .map(|m| {
            let share = if gpu.memory_total > 0 {
                (m.memory_total as f64 / gpu.memory_total as f64).min(1.0)
            } else {
                0.0
            };
            DeviceReading {
                index: gpu.index,
                uuid: m.uuid,
                name: gpu.name.clone(),
                utilization: 0.0,
                memory_used: m.memory_used,
                memory_total: m.memory_total,
                power_watts: gpu.power_watts * share,
                energy_millijoules: (gpu.energy_millijoules as f64 * share) as u64,
                processes: m
                    .processes
                    .into_iter()
                    .map(|(pid, mem)| (pid, (mem, None)))
                    .collect(),
                mig_parent: Some(gpu.uuid.clone()),
            }
        })
        .collect()
}

impl DeviceReading {
    /// The energy counter of this device, as stored with an instance's usage.
    pub fn counter(&self) -> DeviceCounter {
        DeviceCounter {
            uuid: self.uuid.clone(),
            energy_millijoules: self.energy_millijoules,
        }
    }
}

/// NVML, opened once.
pub struct NvmlSource {
    nvml: Nvml,
    /// Per device, the newest process-utilization timestamp seen, so that samples do not
    /// overlap.
    last_seen: BTreeMap<u32, u64>,
}

/// NVML is not usable here.
#[derive(Debug, thiserror::Error)]
#[error(
    "NVML is not available ({0}): no NVIDIA driver or GPU on this node. \
     Run the agent on GPU nodes only, or pass --simulate to invent figures (tests, demos)"
)]
pub struct NoNvml(pub String);

impl NvmlSource {
    /// Opens NVML.
    pub fn open() -> Result<Self, NoNvml> {
        let nvml = Nvml::init().map_err(|e| NoNvml(e.to_string()))?;
        let count = nvml.device_count().map_err(|e| NoNvml(e.to_string()))?;
        if count == 0 {
            return Err(NoNvml("the driver sees no GPU".into()));
        }
        Ok(NvmlSource {
            nvml,
            last_seen: BTreeMap::new(),
        })
    }

    /// Reads every device. A device that fails to answer is skipped (and logged), not fatal.
    pub fn read(&mut self) -> Vec<DeviceReading> {
        let count = self.nvml.device_count().unwrap_or(0);
        let mut out = Vec::new();
        for index in 0..count {
            match self.read_one(index) {
                Ok(r) => out.extend(r),
                Err(e) => tracing::warn!(index, error = %e, "cannot read GPU"),
            }
        }
        out
    }

    /// The GPU at `index`, or its MIG devices when it is in MIG mode.
    fn read_one(
        &mut self,
        index: u32,
    ) -> Result<Vec<DeviceReading>, nvml_wrapper::error::NvmlError> {
        let device = self.nvml.device_by_index(index)?;
        let mig = device.mig_mode().is_ok_and(|m| m.current == 1);
        if !mig {
            return Ok(vec![read_gpu(&mut self.last_seen, index, &device)?]);
        }
        // In MIG mode the GPU itself is no one's: its processes are its MIG devices'.
        let memory = device.memory_info()?;
        let gpu = DeviceReading {
            index,
            uuid: device.uuid()?,
            name: device.name()?,
            utilization: 0.0,
            memory_used: memory.used,
            memory_total: memory.total,
            power_watts: f64::from(device.power_usage()?) / 1000.0,
            energy_millijoules: device.total_energy_consumption()?,
            processes: BTreeMap::new(),
            mig_parent: None,
        };
        let mut migs = Vec::new();
        for slot in 0..device.mig_device_count()? {
            // An empty slot answers NotFound.
            let Ok(m) = device.mig_device_by_index(slot) else {
                continue;
            };
            let memory = m.memory_info()?;
            migs.push(MigReading {
                uuid: m.uuid()?,
                memory_used: memory.used,
                memory_total: memory.total,
                processes: processes(&m)?
                    .into_iter()
                    .map(|(pid, (mem, _))| (pid, mem))
                    .collect(),
            });
        }
        Ok(mig_readings(&gpu, migs))
    }
}

/// A GPU not in MIG mode. `last_seen`: per device, the newest process-utilization
/// timestamp seen.
fn read_gpu(
    last_seen: &mut BTreeMap<u32, u64>,
    index: u32,
    device: &nvml_wrapper::Device<'_>,
) -> Result<DeviceReading, nvml_wrapper::error::NvmlError> {
    let memory = device.memory_info()?;
    let mut processes = processes(device)?;
    let since = last_seen.get(&index).copied();
    // Not every GPU supports per-process utilization; the device total still counts.
    if let Ok(samples) = device.process_utilization_stats(since) {
        for s in samples {
            let newest = last_seen.entry(index).or_default();
            *newest = (*newest).max(s.timestamp);
            processes.entry(s.pid).or_insert((0, None)).1 = Some(f64::from(s.sm_util));
        }
    }
    Ok(DeviceReading {
        index,
        uuid: device.uuid()?,
        name: device.name()?,
        utilization: f64::from(device.utilization_rates()?.gpu),
        memory_used: memory.used,
        memory_total: memory.total,
        power_watts: f64::from(device.power_usage()?) / 1000.0,
        energy_millijoules: device.total_energy_consumption()?,
        processes,
        mig_parent: None,
    })
}

/// A device's compute processes: pid → (GPU memory bytes, no SM utilization yet).
fn processes(
    device: &nvml_wrapper::Device<'_>,
) -> Result<BTreeMap<u32, (u64, Option<f64>)>, nvml_wrapper::error::NvmlError> {
    Ok(device
        .running_compute_processes()?
        .into_iter()
        .map(|p| {
            let used = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => b,
                UsedGpuMemory::Unavailable => 0,
            };
            (p.pid, (used, None))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_devices_get_their_memory_share_of_the_gpus_power_and_energy() {
        let gpu = DeviceReading {
            index: 3,
            uuid: "GPU-p".into(),
            name: "NVIDIA A100-SXM4-80GB".into(),
            utilization: 0.0,
            memory_used: 30 << 30,
            memory_total: 80 << 30,
            power_watts: 320.0,
            energy_millijoules: 8_000_000,
            processes: BTreeMap::new(),
            mig_parent: None,
        };
        let mig = |uuid: &str, gib: u64, pid: u32| MigReading {
            uuid: uuid.into(),
            memory_used: 1 << 30,
            memory_total: gib << 30,
            processes: BTreeMap::from([(pid, 1 << 30)]),
        };
        let r = mig_readings(&gpu, vec![mig("MIG-a", 10, 7), mig("MIG-b", 40, 9)]);
        let got: Vec<(&str, f64, u64, Option<&str>)> = r
            .iter()
            .map(|d| {
                (
                    d.uuid.as_str(),
                    d.power_watts,
                    d.energy_millijoules,
                    d.mig_parent.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("MIG-a", 40.0, 1_000_000, Some("GPU-p")),
                ("MIG-b", 160.0, 4_000_000, Some("GPU-p"))
            ]
        );
        assert_eq!(r[1].processes[&9], (1 << 30, None));
        assert_eq!((r[0].index, r[0].utilization), (3, 0.0));
    }
}
