//! Pure GPU placement logic: no Kubernetes client and no I/O in here.
//!
//! The controllers gather nodes and pods from the cluster, hand them to these functions
//! and act on what comes back, so every decision can be tested without a cluster.

pub mod capacity;
pub mod published;
pub mod queue;
pub mod timeline;

pub use capacity::{GpuPod, NodeGpus, gpus_in_use, pod_gpu_request};
pub use queue::{
    Booking, InstanceKey, Plan, Snapshot, StartPolicy, UserPolicy, Wait, Waiting, next_free_slots,
    plan,
};
