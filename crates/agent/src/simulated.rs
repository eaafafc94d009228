//! Invented GPU figures for nodes without GPUs (kwok nodes in tests and the demo), always
//! reported as `source: simulated`. Deterministic, so tests can compute the truth.
//!
//! Per instance: utilization from the annotation `gpu-cloud.io/simulated-utilization`
//! (percent, default 50), power 60 W + 3 W per percent per GPU, memory 8 GiB × utilization
//! per GPU.

use jiff::Timestamp;
use kube::ResourceExt;

use super::accumulate::Sample;
use gpu_cloud_api::v1::GpuInstance;

/// Annotation that sets an instance's simulated utilization, percent.
pub const UTILIZATION_ANNOTATION: &str = "gpu-cloud.io/simulated-utilization";

/// Power of one simulated GPU at `utilization` percent, watts.
pub fn power_per_gpu(utilization: f64) -> f64 {
    60.0 + 3.0 * utilization
}

/// The simulated reading at `at` of `gpus` GPUs of `inst` (all it booked, or one gang
/// member's).
pub fn sample(inst: &GpuInstance, at: Timestamp, gpus: f64) -> Sample {
    let utilization = inst
        .annotations()
        .get(UTILIZATION_ANNOTATION)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|u| (0.0..=100.0).contains(u))
        .unwrap_or(50.0);
    let per_gpu_memory = (8.0 * f64::from(1u32 << 30) * utilization / 100.0) as u64;
    Sample {
        at,
        gpus,
        utilization,
        memory_bytes: (per_gpu_memory as f64 * gpus) as u64,
        power_watts: power_per_gpu(utilization) * gpus,
        devices: vec![],
    }
}
