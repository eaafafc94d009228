//! gpu-cloud's decisions, as pure functions over plain data: the GPU scheduler
//! ([`scheduler`]: who is placed where, who waits and why, free windows) and the policies
//! ([`policy`]: idle shutdown, GPU-hour budgets, cost, chargeback, usage roll-up).
//!
//! No Kubernetes client, no async runtime, no clock of its own (time is an argument) and
//! no I/O: the controller, the plugin and `gpu-cloud report` gather their inputs from the
//! cluster, call these functions and act on what they return. So every rule is unit- and
//! property-tested here, and the code the tests prove is the code that runs. The only crate
//! of ours it depends on is `gpu-cloud-api`.

pub mod policy;
pub mod scheduler;
