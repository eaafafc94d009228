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

/// What one slice counts for in quotas, budgets and cost, in thousandths of a GPU: the
/// fraction installed for it with `--slice-fraction` ([`install_slice_fractions`]), else
/// [`default_slice_milli`].
pub fn slice_milli(slice: &str) -> u32 {
    SLICE_FRACTIONS
        .get()
        .and_then(|table| table.get(slice).copied())
        .unwrap_or_else(|| default_slice_milli(slice))
}

/// The fractions a cluster sets for its slices (`--slice-fraction` of the controller and
/// the agent, the chart's `sliceFractions`), installed once when the process starts: one
/// table for every figure the process computes, so quotas, budgets, cost and usage agree.
static SLICE_FRACTIONS: std::sync::OnceLock<std::collections::BTreeMap<String, u32>> =
    std::sync::OnceLock::new();

/// A `--slice-fraction` that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SliceFractionError {
    /// Not `SLICE=FRACTION`.
    #[error("slice fraction {0:?} is not SLICE=FRACTION (e.g. 1g.10gb=0.15 or shared=0.5)")]
    Malformed(String),
    /// The fraction is no number in (0, 1].
    #[error("slice fraction {0:?}: the fraction must be a number above 0 and at most 1 (of a GPU)")]
    OutOfRange(String),
    /// Installed twice with different tables (a bug: please report it).
    #[error("the slice fractions were already installed with another table")]
    AlreadyInstalled,
}

/// Parses a `--slice-fraction SLICE=FRACTION` (fraction of a GPU, e.g. `1g.10gb=0.15`)
/// into the slice and its thousandths (at least 1).
pub fn parse_slice_fraction(text: &str) -> Result<(String, u32), SliceFractionError> {
    let (slice, fraction) = text
        .split_once('=')
        .map(|(s, f)| (s.trim(), f.trim()))
        .filter(|(s, _)| !s.is_empty())
        .ok_or_else(|| SliceFractionError::Malformed(text.to_owned()))?;
    let fraction: f64 = fraction
        .parse()
        .map_err(|_| SliceFractionError::Malformed(text.to_owned()))?;
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(SliceFractionError::OutOfRange(text.to_owned()));
    }
    let milli = ((fraction * 1000.0).round() as u32).max(1);
    Ok((slice.to_owned(), milli))
}

/// Installs the cluster's slice fractions for this process (once; installing the same
/// table again is a no-op).
pub fn install_slice_fractions(table: &[(String, u32)]) -> Result<(), SliceFractionError> {
    let table: std::collections::BTreeMap<String, u32> = table.iter().cloned().collect();
    let installed = SLICE_FRACTIONS.get_or_init(|| table.clone());
    if *installed == table {
        Ok(())
    } else {
        Err(SliceFractionError::AlreadyInstalled)
    }
}

/// The documented default of what a slice counts for, in thousandths of a GPU: a MIG
/// profile `<n>g.<memory>` is `n` of the 7 compute slices of an A100 or H100 (`1g.10gb`:
/// 143, `3g.40gb`: 429, `7g.80gb`: 1000); a time-sliced share is a quarter (the GPU
/// operator's usual 4 replicas). README "GPU slices" has the table.
pub fn default_slice_milli(slice: &str) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_counts_compute_slices_and_shares() {
        let table = [
            "1g.10gb",
            "2g.20gb",
            "3g.40gb",
            "7g.80gb",
            SHARED_SLICE,
            "odd",
        ]
        .map(default_slice_milli);
        assert_eq!(table, [143, 286, 429, 1000, 250, 1000]);
    }

    #[test]
    fn a_slice_fraction_is_slice_equals_a_fraction_of_one_gpu() {
        assert_eq!(
            parse_slice_fraction("1g.10gb=0.15"),
            Ok(("1g.10gb".into(), 150))
        );
        assert_eq!(
            parse_slice_fraction(" shared = 1 "),
            Ok(("shared".into(), 1000))
        );
        assert_eq!(parse_slice_fraction("x=0.0001"), Ok(("x".into(), 1)));
        for bad in ["1g.10gb", "=0.5", "1g.10gb=half"] {
            assert!(
                matches!(
                    parse_slice_fraction(bad),
                    Err(SliceFractionError::Malformed(_))
                ),
                "{bad}"
            );
        }
        for bad in ["a=0", "a=1.5", "a=-0.2", "a=NaN"] {
            assert!(
                matches!(
                    parse_slice_fraction(bad),
                    Err(SliceFractionError::OutOfRange(_))
                ),
                "{bad}"
            );
        }
    }
}
