//! The published GPU calendar's wire format: what `kubectl gpu slots` needs to find free
//! windows, and nothing that says whose they are.
//!
//! A user may not list nodes, pods or anyone else's instances, yet "when are 4 H100s free
//! for 8 hours?" depends on all of them. So after each placement pass the controller
//! publishes an anonymized summary of the scheduler's snapshot as the ConfigMap
//! [`CONFIGMAP`] (key [`KEY`]) in its own namespace, which every authenticated identity may
//! `get` (the chart's `gpu-cloud-calendar-reader` Role): per node its name, model, GPUs,
//! GPUs held now, whether it takes new work, when held GPUs come back (summed per node and
//! time) and the granted windows (summed per node, start and end). No user, namespace or
//! instance name is in it.
//!
//! The scheduler core turns a snapshot into a calendar and back
//! (`gpu_cloud_core::scheduler::published`); the controller writes it, the plugin reads it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Name of the ConfigMap the calendar is published in (the controller's namespace).
pub const CONFIGMAP: &str = "gpu-cloud-calendar";
/// Its key holding the JSON.
pub const KEY: &str = "calendar.json";
/// Free and held GPUs over time, per node, without owners.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Calendar {
    /// When the controller took it (its clock).
    pub generated_at: Timestamp,
    /// GPU nodes by model (the `nvidia.com/gpu.product` label), each list by node name.
    pub models: BTreeMap<String, Vec<CalendarNode>>,
}

/// One GPU node's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalendarNode {
    /// Node name.
    pub name: String,
    /// Allocatable `nvidia.com/gpu`.
    pub allocatable: u32,
    /// GPUs held now by pods that have not finished (anyone's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub used: u32,
    /// The slice this entry counts (a MIG profile, `shared`); absent: whole GPUs. A node
    /// with slices has one entry per slice besides its whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Its topology domain (`label=value`), if it has one: where a gang may be packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// It takes new GPU pods (Ready, not cordoned, no taint in the way).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub eligible: bool,
    /// Held GPUs coming back: `[unix seconds, GPUs]`, by time, one entry per time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<(i64, u32)>,
    /// Granted windows: `[start, end or null for no end, GPUs]` in unix seconds, by start,
    /// one entry per start and end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<(i64, Option<i64>, u32)>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

impl Calendar {
    /// The same nodes, windows and holds as `other`, whatever the time stamps: whether
    /// anything changed.
    pub fn same_as(&self, other: &Calendar) -> bool {
        self.models == other.models
    }
}

/// Reads a published calendar (what `kubectl gpu slots` does with the ConfigMap's data).
pub fn parse(json: &str) -> Result<Calendar, serde_json::Error> {
    serde_json::from_str(json)
}
