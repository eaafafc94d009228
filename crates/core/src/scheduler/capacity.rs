//! What each node offers in GPUs and what pods already hold there.

use std::collections::BTreeMap;

use gpu_cloud_api::{
    DEFAULT_TOPOLOGY_LABELS, GPU_PRODUCT_LABEL, GPU_RESOURCE, TOLERATED_TAINT, slice_of_resource,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The GPU view of one node's pool (its whole GPUs, or its slices of one kind): what it
/// has and whether it can take work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGpus {
    /// Node name.
    pub name: String,
    /// GPU model from [`GPU_PRODUCT_LABEL`], if labelled.
    pub model: Option<String>,
    /// Allocatable `nvidia.com/gpu`; 0 when absent or not a whole number.
    pub allocatable: u32,
    /// The node's `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable` is not set (the node is not cordoned).
    pub schedulable: bool,
    /// A `NoSchedule`/`NoExecute` taint our pods do not tolerate, as `key=value:Effect`.
    pub untolerated_taint: Option<String>,
    /// Its topology domain as `label=value`, from the first topology label it carries;
    /// `None`: a domain of its own.
    pub domain: Option<String>,
    /// The slice this pool offers (a MIG profile, `shared`; `allocatable` counts them), or
    /// `None` for its whole GPUs.
    pub slice: Option<String>,
}

impl NodeGpus {
    /// Reads the GPU view of a node object as the API returned it, its domain by the
    /// [`DEFAULT_TOPOLOGY_LABELS`].
    pub fn from_node(node: &Node) -> Self {
        Self::with_topology(node, &DEFAULT_TOPOLOGY_LABELS)
    }

    /// Reads the GPU view of a node, its domain by the first of `topology_labels` (most
    /// specific first) it carries.
    pub fn with_topology<S: AsRef<str>>(node: &Node, topology_labels: &[S]) -> Self {
        let labels = node.metadata.labels.as_ref();
        let domain = topology_labels.iter().find_map(|key| {
            let key = key.as_ref();
            let value = labels?.get(key)?;
            Some(format!("{key}={value}"))
        });
        let name = node.metadata.name.clone().unwrap_or_default();
        let model = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GPU_PRODUCT_LABEL))
            .cloned();
        let status = node.status.as_ref();
        let allocatable = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(GPU_RESOURCE))
            .and_then(parse_whole)
            .unwrap_or(0);
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let spec = node.spec.as_ref();
        let schedulable = !spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let untolerated_taint = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .find(|t| t.effect != "PreferNoSchedule" && t.key != TOLERATED_TAINT)
            .map(|t| {
                format!(
                    "{}={}:{}",
                    t.key,
                    t.value.as_deref().unwrap_or(""),
                    t.effect
                )
            });
        NodeGpus {
            name,
            model,
            allocatable,
            ready,
            schedulable,
            untolerated_taint,
            domain,
            slice: None,
        }
    }

    /// Every pool of a node: its whole GPUs, then one per slice resource it advertises
    /// (MIG profiles of the GPU operator's mixed strategy, time-sliced shares), by name.
    pub fn pools<S: AsRef<str>>(node: &Node, topology_labels: &[S]) -> Vec<NodeGpus> {
        let whole = Self::with_topology(node, topology_labels);
        let slices = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|(resource, q)| {
                let slice = slice_of_resource(resource)?;
                let n = parse_whole(q).filter(|n| *n > 0)?;
                Some(NodeGpus {
                    allocatable: n,
                    slice: Some(slice.to_owned()),
                    ..whole.clone()
                })
            })
            .collect::<Vec<_>>();
        std::iter::once(whole).chain(slices).collect()
    }

    /// The pool it is, if it has a model.
    pub fn pool(&self) -> Option<super::model::Pool<'_>> {
        Some((self.model.as_deref()?, self.slice.as_deref()))
    }

    /// The node may take new GPU pods: Ready, not cordoned, no taint in the way.
    pub fn eligible(&self) -> bool {
        self.ready && self.schedulable && self.untolerated_taint.is_none()
    }
}

/// A pod as GPU accounting reads it: the node it is bound to and the GPUs it holds there.
///
/// Both the full API `Pod` and the controller's compact cached pod implement it, so the
/// same accounting serves `kubectl gpu nodes` (a list of full pods) and the placement loop
/// (the cache).
pub trait GpuPod {
    /// The node the pod is bound to, if any.
    fn bound_node(&self) -> Option<&str>;
    /// GPUs the pod holds on its node: 0 once it has finished.
    fn gpus_held(&self) -> u32;
    /// Slices (MIG profiles, shares) the pod holds on its node, per slice: none once it has
    /// finished.
    fn slices_held(&self) -> Vec<(String, u32)> {
        vec![]
    }
}

impl GpuPod for Pod {
    fn bound_node(&self) -> Option<&str> {
        self.spec.as_ref().and_then(|s| s.node_name.as_deref())
    }

    fn gpus_held(&self) -> u32 {
        pod_gpu_request(self)
    }

    fn slices_held(&self) -> Vec<(String, u32)> {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        match self.spec.as_ref() {
            Some(spec) if !holds_nothing(phase) => slice_requests(
                spec.containers.iter().map(container_limits_requests),
                spec.init_containers
                    .iter()
                    .flatten()
                    .map(container_limits_requests),
            ),
            _ => vec![],
        }
    }
}

/// A container's limits and requests, as [`slice_requests`] reads them.
pub type LimitsRequests<'a> = (
    Option<&'a BTreeMap<String, Quantity>>,
    Option<&'a BTreeMap<String, Quantity>>,
);

/// A container's limits and requests (what [`slice_requests`] reads).
pub fn container_limits_requests(c: &k8s_openapi::api::core::v1::Container) -> LimitsRequests<'_> {
    let r = c.resources.as_ref();
    (
        r.and_then(|r| r.limits.as_ref()),
        r.and_then(|r| r.requests.as_ref()),
    )
}

/// A pod's effective request of each slice resource (the rule of [`effective_request`]),
/// from its containers' and init containers' limits and requests.
pub fn slice_requests<'a>(
    containers: impl IntoIterator<Item = LimitsRequests<'a>>,
    init_containers: impl IntoIterator<Item = LimitsRequests<'a>>,
) -> Vec<(String, u32)> {
    let per = |(limits, requests): LimitsRequests<'a>| {
        let mut m: BTreeMap<String, u32> = BTreeMap::new();
        for source in [requests, limits].into_iter().flatten() {
            for (resource, q) in source {
                if let (Some(slice), Some(n)) = (slice_of_resource(resource), parse_whole(q)) {
                    // Limits win over requests, as for whole GPUs.
                    m.insert(slice.to_owned(), n);
                }
            }
        }
        m
    };
    let mut sum: BTreeMap<String, u32> = BTreeMap::new();
    for m in containers.into_iter().map(per) {
        for (k, v) in m {
            let e = sum.entry(k).or_default();
            *e = e.saturating_add(v);
        }
    }
    for m in init_containers.into_iter().map(per) {
        for (k, v) in m {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    sum.into_iter().filter(|(_, n)| *n > 0).collect()
}

/// Slices held per (node, slice) by the given pods, from [`GpuPod::slices_held`]; pods not
/// yet bound to a node are left out.
pub fn slices_in_use<'a, P: GpuPod + 'a>(
    pods: impl IntoIterator<Item = &'a P>,
) -> BTreeMap<(String, String), u32> {
    let mut used = BTreeMap::new();
    for pod in pods {
        let Some(node) = pod.bound_node() else {
            continue;
        };
        for (slice, n) in pod.slices_held() {
            let e: &mut u32 = used.entry((node.to_owned(), slice)).or_default();
            *e = e.saturating_add(n);
        }
    }
    used
}

/// GPUs a pod holds on its node: 0 once it has finished (Succeeded or Failed).
///
/// Follows the Kubernetes rule for a pod's effective request: the larger of the sum over
/// its containers and the largest init container. For extended resources the request
/// equals the limit, so either one counts.
pub fn pod_gpu_request(pod: &Pod) -> u32 {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if holds_nothing(phase) {
        return 0;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    effective_request(
        spec.containers.iter().map(container_request),
        spec.init_containers.iter().flatten().map(container_request),
    )
}

/// GPUs one container of a full `Pod` asks for.
pub fn container_request(c: &k8s_openapi::api::core::v1::Container) -> u32 {
    let r = c.resources.as_ref();
    container_gpus(
        r.and_then(|r| r.limits.as_ref()),
        r.and_then(|r| r.requests.as_ref()),
    )
}

/// A pod in this phase holds nothing any more (Succeeded or Failed).
pub fn holds_nothing(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// A pod's effective request from its containers' and init containers' GPUs: the larger
/// of the containers' sum and the largest init container.
pub fn effective_request(
    containers: impl IntoIterator<Item = u32>,
    init_containers: impl IntoIterator<Item = u32>,
) -> u32 {
    let sum = containers.into_iter().fold(0, u32::saturating_add);
    let init_max = init_containers.into_iter().max().unwrap_or(0);
    sum.max(init_max)
}

/// GPUs one container asks for, from its limits or else its requests.
pub fn container_gpus(
    limits: Option<&BTreeMap<String, Quantity>>,
    requests: Option<&BTreeMap<String, Quantity>>,
) -> u32 {
    let get = |m: Option<&BTreeMap<String, Quantity>>| {
        m.and_then(|m| m.get(GPU_RESOURCE)).and_then(parse_whole)
    };
    get(limits).or_else(|| get(requests)).unwrap_or(0)
}

/// GPUs held per node name by the given pods (any pod, ours or not), from
/// [`GpuPod::gpus_held`]; pods not yet bound to a node are left out.
pub fn gpus_in_use<'a, P: GpuPod + 'a>(
    pods: impl IntoIterator<Item = &'a P>,
) -> BTreeMap<String, u32> {
    let mut used = BTreeMap::new();
    for pod in pods {
        let Some(node) = pod.bound_node() else {
            continue;
        };
        let n = pod.gpus_held();
        if n > 0 {
            let e: &mut u32 = used.entry(node.to_owned()).or_default();
            *e = e.saturating_add(n);
        }
    }
    used
}

/// Parses a quantity that must be a whole, non-negative count ("8"); anything else is
/// `None`, because devices cannot be split and the API rejects fractional GPUs anyway.
fn parse_whole(q: &Quantity) -> Option<u32> {
    q.0.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).expect("test node")
    }
    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("test pod")
    }

    #[test]
    fn reads_a_labelled_ready_gpu_node() {
        let n = node(json!({
            "metadata": {"name": "h100-0", "labels": {GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"}},
            "status": {"allocatable": {GPU_RESOURCE: "8", "cpu": "96"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        assert_eq!(
            NodeGpus::from_node(&n),
            NodeGpus {
                name: "h100-0".into(),
                model: Some("NVIDIA-H100-80GB-HBM3".into()),
                allocatable: 8,
                ready: true,
                schedulable: true,
                untolerated_taint: None,
                domain: None,
                slice: None,
            }
        );
    }

    #[test]
    fn a_cordoned_not_ready_node_without_gpus_offers_nothing() {
        let n = node(json!({
            "metadata": {"name": "cpu-0"},
            "spec": {"unschedulable": true, "taints": [
                {"key": GPU_RESOURCE, "effect": "NoSchedule"},
                {"key": "soft", "effect": "PreferNoSchedule"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}
            ]},
            "status": {"allocatable": {GPU_RESOURCE: "1.5"},
                       "conditions": [{"type": "Ready", "status": "Unknown"}]}
        }));
        let g = NodeGpus::from_node(&n);
        assert_eq!(
            (g.allocatable, g.ready, g.schedulable, g.model.clone()),
            (0, false, false, None)
        );
        assert_eq!(
            g.untolerated_taint.as_deref(),
            Some("node.kubernetes.io/not-ready=:NoExecute")
        );
        assert!(!g.eligible());
    }

    #[test]
    fn pod_request_is_max_of_container_sum_and_largest_init() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"limits": {GPU_RESOURCE: "2"}}},
                {"name": "b", "resources": {"requests": {GPU_RESOURCE: "1"}}},
                {"name": "c"}
            ],
            "initContainers": [{"name": "i", "resources": {"limits": {GPU_RESOURCE: "4"}}}]
        }}));
        assert_eq!(pod_gpu_request(&p), 4);
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {GPU_RESOURCE: "3"}}}
        ]}}));
        assert_eq!(pod_gpu_request(&p), 3);
    }

    #[test]
    fn in_use_sums_bound_pods_per_node() {
        let on = |node: Option<&str>, n: &str| {
            pod(json!({"spec": {"nodeName": node, "containers": [
                {"name": "a", "resources": {"limits": {GPU_RESOURCE: n}}}
            ]}}))
        };
        let pods = [
            on(Some("a"), "2"),
            on(Some("a"), "3"),
            on(Some("b"), "1"),
            on(None, "8"),
        ];
        let used = gpus_in_use(&pods);
        assert_eq!(used.get("a"), Some(&5));
        assert_eq!(used.get("b"), Some(&1));
        assert_eq!(used.len(), 2);
    }

    #[test]
    fn finished_pods_hold_no_gpus() {
        for phase in ["Succeeded", "Failed"] {
            let p = pod(json!({
                "spec": {"containers": [{"name": "a", "resources": {"limits": {GPU_RESOURCE: "2"}}}]},
                "status": {"phase": phase}
            }));
            assert_eq!(pod_gpu_request(&p), 0, "{phase}");
        }
    }
}
