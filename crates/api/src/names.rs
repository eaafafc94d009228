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
