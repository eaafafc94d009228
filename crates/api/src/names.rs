//! Every name the components share on the cluster: the API group, labels, the GPU
//! resource and node labels, the managed-by value and the user namespaces.
//!
//! One copy of each, so that the controller, the agent, the plugin and the chart's tests
//! cannot drift apart.

/// The API group of every gpu-cloud resource.
pub const GROUP: &str = "gpu-cloud.io";
/// Label on a user's namespace (and on the pods of its instances) naming the GpuUser.
pub const USER_LABEL: &str = "gpu-cloud.io/user";
/// Label on an instance's pod naming the GpuInstance.
pub const INSTANCE_LABEL: &str = "gpu-cloud.io/instance";
/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "gpu-cloud";

/// The extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Node label (set by GPU feature discovery) naming the GPU model, e.g. `NVIDIA-L4`.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Node label (set by GPU feature discovery) saying the node has NVIDIA GPUs.
pub const GPU_PRESENT_LABEL: &str = "nvidia.com/gpu.present";
/// Node labels that name a node's topology domain, most specific first, unless the
/// controller is given its own (`--topology-label`): the NVLink domain the GPU operator
/// labels (`nvidia.com/gpu.clique`), then the zone. A node's domain is the first of them
/// it carries; gangs are packed into the fewest domains.
pub const DEFAULT_TOPOLOGY_LABELS: [&str; 2] =
    ["nvidia.com/gpu.clique", "topology.kubernetes.io/zone"];
/// Prefix of the MIG resources the GPU operator's mixed strategy advertises, one per
/// profile: `nvidia.com/mig-1g.10gb`, `nvidia.com/mig-3g.40gb`, ...
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// The resource of time-sliced GPU shares (the GPU operator's time-slicing with
/// `renameByDefault: true`).
pub const SHARED_RESOURCE: &str = "nvidia.com/gpu.shared";
/// The slice name of a time-sliced share.
pub const SHARED_SLICE: &str = "shared";

/// The extended resource of a slice: `1g.10gb` → `nvidia.com/mig-1g.10gb`, `shared` →
/// [`SHARED_RESOURCE`].
pub fn slice_resource(slice: &str) -> String {
    if slice == SHARED_SLICE {
        SHARED_RESOURCE.to_owned()
    } else {
        format!("{MIG_RESOURCE_PREFIX}{slice}")
    }
}

/// The slice a resource is, if it is one (the inverse of [`slice_resource`]).
pub fn slice_of_resource(resource: &str) -> Option<&str> {
    if resource == SHARED_RESOURCE {
        return Some(SHARED_SLICE);
    }
    resource
        .strip_prefix(MIG_RESOURCE_PREFIX)
        .filter(|s| !s.is_empty())
}

/// What one slice counts for in quotas, budgets and cost, in thousandths of a GPU: a MIG
/// profile `<n>g.<memory>` is `n` of the 7 compute slices of an A100 or H100 (`1g.10gb`:
/// 143, `3g.40gb`: 429, `7g.80gb`: 1000); a time-sliced share is a quarter (the GPU
/// operator's usual 4 replicas). README "GPU slices" has the table.
pub fn slice_milli(slice: &str) -> u32 {
    if slice == SHARED_SLICE {
        return 250;
    }
    let compute: u32 = slice
        .split_once('g')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(7)
        .clamp(1, 7);
    (compute * 1000).div_ceil(7)
}

/// Label on a gang's pods: its rank (0 for the first node).
pub const RANK_LABEL: &str = "gpu-cloud.io/rank";
/// Port a gang's rank 0 listens on for the others (`MASTER_PORT`), torchrun's default.
pub const GANG_PORT: i32 = 29500;

/// Taint key our pods tolerate (GPU nodes are commonly tainted with it so that only GPU
/// workloads land there).
pub const TOLERATED_TAINT: &str = GPU_RESOURCE;

/// Prefix of user namespaces: user `alice` books in `gpu-alice`.
pub const NAMESPACE_PREFIX: &str = "gpu-";

/// The namespace of user `name`.
pub fn namespace_of(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}

/// The user whose namespace `ns` is, by its name alone (`gpu-alice` -> `alice`).
pub fn user_of_namespace(ns: &str) -> Option<&str> {
    ns.strip_prefix(NAMESPACE_PREFIX).filter(|u| !u.is_empty())
}
