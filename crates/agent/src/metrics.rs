//! The agent's `/metrics`: per-GPU series under dcgm-exporter's names and labels (so its
//! dashboards work), plus gpu-cloud's per-instance and per-user totals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::accumulate::Sample;
use super::nvml::DeviceReading;
use super::podresources::Holder;
use gpu_cloud_api::v1::{GpuInstance, Usage};

type G = Gauge<f64, AtomicU64>;

/// dcgm-exporter's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(non_snake_case)]
pub struct DeviceLabels {
    gpu: String,
    UUID: String,
    modelName: String,
    Hostname: String,
    namespace: String,
    pod: String,
    container: String,
}

/// An instance's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    namespace: String,
    instance: String,
    user: String,
}

/// A user's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabels {
    user: String,
}

/// Everything the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    util: Family<DeviceLabels, G>,
    fb_used: Family<DeviceLabels, G>,
    power: Family<DeviceLabels, G>,
    energy: Family<DeviceLabels, G>,
    gpu_seconds: Family<InstanceLabels, G>,
    energy_joules: Family<InstanceLabels, G>,
    user_gpu_seconds: Family<UserLabels, G>,
    per_user: std::sync::Mutex<BTreeMap<(String, String), f64>>,
    ready: AtomicBool,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = AgentMetrics {
            util: Family::default(),
            fb_used: Family::default(),
            power: Family::default(),
            energy: Family::default(),
            gpu_seconds: Family::default(),
            energy_joules: Family::default(),
            user_gpu_seconds: Family::default(),
            per_user: Default::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "DCGM_FI_DEV_GPU_UTIL",
            "GPU utilization (in %)",
            m.util.clone(),
        );
        registry.register(
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB)",
            m.fb_used.clone(),
        );
        registry.register(
            "DCGM_FI_DEV_POWER_USAGE",
            "Power draw (in W)",
            m.power.clone(),
        );
        registry.register(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "Total energy consumption since boot (in mJ)",
            m.energy.clone(),
        );
        registry.register(
            "gpu_cloud_instance_gpu_seconds",
            "GPU-seconds held by the instance",
            m.gpu_seconds.clone(),
        );
        registry.register(
            "gpu_cloud_instance_energy_joules",
            "Energy used by the instance's GPUs",
            m.energy_joules.clone(),
        );
        registry.register(
            "gpu_cloud_user_gpu_seconds",
            "GPU-seconds of the user's instances on this node",
            m.user_gpu_seconds.clone(),
        );
        AgentMetrics { registry, ..m }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl AgentMetrics {
    pub(super) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Real devices (NVML), labelled with the pod that has them, if any.
    pub(super) fn devices(
        &self,
        readings: &[DeviceReading],
        nodes: &[String],
        holders: &BTreeMap<String, Holder>,
    ) {
        let host = nodes.first().cloned().unwrap_or_default();
        for r in readings {
            let h = holders.get(&r.uuid);
            let labels = DeviceLabels {
                gpu: r.index.to_string(),
                UUID: r.uuid.clone(),
                modelName: r.name.clone(),
                Hostname: host.clone(),
                namespace: h.map(|h| h.namespace.clone()).unwrap_or_default(),
                pod: h.map(|h| h.pod.clone()).unwrap_or_default(),
                container: h.map(|h| h.container.clone()).unwrap_or_default(),
            };
            // NVML reads no utilization per MIG device: none is exported for one.
            if r.mig_parent.is_none() {
                self.util.get_or_create(&labels).set(r.utilization);
            }
            self.fb_used.get_or_create(&labels).set(mib(r.memory_used));
            self.power.get_or_create(&labels).set(r.power_watts);
            self.energy
                .get_or_create(&labels)
                .set(r.energy_millijoules as f64);
        }
    }

    /// An instance's totals (and, when simulated, its invented devices).
    pub(super) fn instance(&self, inst: &GpuInstance, usage: &Usage, sample: &Sample) {
        let status = inst.status.clone().unwrap_or_default();
        let user = status.user.clone().unwrap_or_default();
        let labels = InstanceLabels {
            namespace: inst.namespace().unwrap_or_default(),
            instance: inst.name_any(),
            user: user.clone(),
        };
        self.gpu_seconds
            .get_or_create(&labels)
            .set(usage.gpu_seconds);
        self.energy_joules
            .get_or_create(&labels)
            .set(usage.energy_joules);
        {
            let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
            per_user.insert(
                (user.clone(), inst.uid().unwrap_or_default()),
                usage.gpu_seconds,
            );
            let total: f64 = per_user
                .iter()
                .filter(|((u, _), _)| *u == user)
                .map(|(_, v)| v)
                .sum();
            self.user_gpu_seconds
                .get_or_create(&UserLabels { user })
                .set(total);
        }
        if usage.source == gpu_cloud_api::v1::UsageSource::Simulated {
            // One simulated device per GPU (or slice) the instance holds.
            let gpus = inst.spec.gpu.total().max(1);
            for i in 0..gpus {
                let labels = DeviceLabels {
                    gpu: i.to_string(),
                    UUID: format!("GPU-simulated-{}-{i}", inst.uid().unwrap_or_default()),
                    modelName: inst.spec.gpu.model.clone(),
                    Hostname: status.node_name.clone().unwrap_or_default(),
                    namespace: inst.namespace().unwrap_or_default(),
                    pod: inst.name_any(),
                    container: "main".into(),
                };
                self.util.get_or_create(&labels).set(sample.utilization);
                self.fb_used
                    .get_or_create(&labels)
                    .set(mib(sample.memory_bytes / u64::from(gpus)));
                self.power
                    .get_or_create(&labels)
                    .set(sample.power_watts / f64::from(gpus));
                self.energy
                    .get_or_create(&labels)
                    .set(usage.energy_joules * 1000.0 / f64::from(gpus));
            }
        }
    }

    /// Drops the series of instances no longer on these nodes.
    pub(super) fn forget_except(&self, present: &[&GpuInstance]) {
        let uids: Vec<String> = present.iter().filter_map(|i| i.uid()).collect();
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let before = per_user.len();
        per_user.retain(|(_, uid), _| uids.contains(uid));
        if per_user.len() != before {
            // Simplest correct way to drop stale label sets: start the families afresh;
            // the next cycle fills them in again.
            self.gpu_seconds.clear();
            self.energy_joules.clear();
            self.user_gpu_seconds.clear();
            self.util.clear();
            self.fb_used.clear();
            self.power.clear();
            self.energy.clear();
        }
    }
}

impl gpu_cloud_runtime::metrics::Exporter for AgentMetrics {
    fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.registry
    }

    /// Ready after the first good sampling cycle.
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
