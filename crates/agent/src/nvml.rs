//! Real GPU figures from the NVIDIA driver through NVML (nvml-wrapper loads
//! `libnvidia-ml.so` at run time, so the agent builds and runs without a driver; it then
//! says so and stops unless told to simulate).

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
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(index, error = %e, "cannot read GPU"),
            }
        }
        out
    }

    fn read_one(&mut self, index: u32) -> Result<DeviceReading, nvml_wrapper::error::NvmlError> {
        let device = self.nvml.device_by_index(index)?;
        let memory = device.memory_info()?;
        let mut processes: BTreeMap<u32, (u64, Option<f64>)> = device
            .running_compute_processes()?
            .into_iter()
            .map(|p| {
                let used = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                };
                (p.pid, (used, None))
            })
            .collect();
        let since = self.last_seen.get(&index).copied();
        // Not every GPU supports per-process utilization; the device total still counts.
        if let Ok(samples) = device.process_utilization_stats(since) {
            for s in samples {
                let newest = self.last_seen.entry(index).or_default();
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
        })
    }
}
