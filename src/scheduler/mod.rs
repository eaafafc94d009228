//! Pure GPU placement logic: no Kubernetes client and no I/O in here.
//!
//! The controllers gather nodes and pods from the cluster, hand them to these functions
//! and act on what comes back, so every decision can be tested without a cluster.

pub mod calendar;
pub mod capacity;
pub mod queue;

pub use capacity::{
    GPU_PRESENT_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE, GpuPod, NodeGpus, gpus_in_use,
    pod_gpu_request,
};
pub use queue::{
    Booking, InstanceKey, Plan, Snapshot, StartPolicy, UserPolicy, Wait, Waiting, next_free_slots,
    plan,
};
