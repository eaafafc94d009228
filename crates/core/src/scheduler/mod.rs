//! The GPU scheduler, pure: no Kubernetes client and no I/O. The controller gathers nodes,
//! pods, users and bookings into a [`Snapshot`], asks [`plan`] which waiting bookings go to
//! which node now, which future windows are granted and why the others wait, and applies
//! the result; every decision is tested without a cluster.
//!
//! Split by concern: [`model`] (the snapshot and the plan), [`capacity`] (what a node
//! offers and pods hold), [`timeline`] (time on one node and for one user), `ledger`
//! (free GPUs during one sweep), [`share`] (the order of the queue between users),
//! [`preemption`] (who may displace whom, and the smallest set),
//! [`admission`] (the decision), [`published`] (the anonymized calendar `kubectl gpu
//! slots` reads).
//!
//! Policy:
//! - Order: higher `priority` first; within a priority, fair share between users (the
//!   lowest projected share of its guarantee first, see [`share`]); one user's own
//!   bookings first come, first served (creation time, then namespace/name).
//! - Each GPU model is its own queue. When a booking waits for free GPUs of its model,
//!   every later booking of that model waits behind it, even one that would fit now
//!   (no overtaking: a large booking is never starved by a stream of small ones).
//!   Bookings held back by their own user's quota or that can never run (unknown model,
//!   more GPUs than any node has, not allowed) do not hold up anyone else.
//! - Quota is checked before placement; placement is best fit (the eligible node of the
//!   model left with the fewest free GPUs, then by name).
//!
//! Booking ahead (time):
//! - A booking with a future `start` asks for a window `[start, start + duration)`. Windows
//!   are granted first come, first served regardless of priority, before anything is
//!   placed in the pass, on the best-fit node where the window fits; once granted
//!   (`reserved_on`) a window is fixed: later bookings never move or shorten it.
//! - A window that does not fit is refused with the earliest start that would
//!   ([`Wait::WindowTaken`]), or with [`StartPolicy::EarliestAvailable`] booked there.
//! - A placement made now holds its GPUs for its duration (for good when unknown) and may
//!   use a node only if they stay free of windows for that whole time: short bookings
//!   backfill before a window, long ones do not run into it.
//! - When a window opens its booking is placed on its node ahead of the queue, keeping the
//!   window's end.

pub mod admission;
pub mod capacity;
mod ledger;
pub mod model;
pub mod preemption;
pub mod published;
pub mod share;
pub mod timeline;

#[cfg(test)]
mod tests;

pub use admission::{SlotWant, free_slots, next_free_slots, plan};
pub use capacity::{GpuPod, NodeGpus, gpus_in_use, pod_gpu_request};
pub use model::{
    Booking, InstanceKey, Plan, Snapshot, StartPolicy, Topology, UserPolicy, Wait, Waiting,
};
