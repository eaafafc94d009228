//! gpu-cloud: a GPU cloud inside Kubernetes.
//!
//! The crate is split the way `DESIGN.md` describes: pure decisions (the [`scheduler`]
//! module never touches a client) and thin I/O layers (the [`cli`] commands) that gather
//! inputs from the cluster and act on the outcome.

pub mod api;
pub mod cli;
pub mod controller;
pub mod error;
pub mod scheduler;
pub mod telemetry;

pub use error::Error;
