//! The pod as the controller's cache holds it: a compact type of its own, read straight
//! from the API's JSON, instead of a k8s-openapi `Pod`.
//!
//! A `Pod` is kilobytes even with most fields empty (every container alone is a large
//! struct), decoding one builds every field of the wire object, and the reflector keeps
//! its own copy. At 10,000 pods that was most of the controller's memory. This type
//! decodes only what GPU accounting and the instance lifecycle read and skips the rest
//! of the JSON unbuilt.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};

use gpu_cloud_api::{INSTANCE_LABEL, USER_LABEL};
use gpu_cloud_core::scheduler::GpuPod;
use gpu_cloud_core::scheduler::capacity::{
    LimitsRequests, container_gpus, container_limits_requests, container_request,
    effective_request, holds_nothing, slice_requests,
};

/// A pod as the controller's cache keeps it: identity (name, namespace, uid, resource
/// version, our labels, owner references, creation and deletion time), the node it is
/// bound to, its phase and the GPUs its containers ask for. The apiserver's `Pod` (kind
/// `Pod`, `v1`) decodes into it directly; nothing else of the pod is kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedPod {
    /// The kept metadata; every other field is `None`.
    pub metadata: ObjectMeta,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
    /// The pod's effective `nvidia.com/gpu` request, whatever its phase.
    pub gpus: u32,
    /// Its effective request of each slice resource (MIG profiles, shares), whatever its
    /// phase; empty for most pods.
    pub slices: Vec<(String, u32)>,
    /// How its program is doing, from the status of its container `main` (or its first):
    /// what the kubelet alone can tell (image pulls, exits, OOM kills, restarts).
    pub program: Option<ProgramState>,
}

/// The kubelet's report of a pod's program (its container's status), reduced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramState {
    /// `restartCount`.
    pub restarts: u32,
    /// `state.waiting`: reason (`ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`, …)
    /// and message.
    pub waiting: Option<(String, Option<String>)>,
    /// `state.terminated`.
    pub terminated: Option<Termination>,
    /// `lastState.terminated`: how the run before a restart ended.
    pub last_terminated: Option<Termination>,
}

/// A container's termination as the kubelet reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Termination {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `ContainerCannotRun`, …
    pub reason: Option<String>,
    /// The kubelet's or runtime's message, if any.
    pub message: Option<String>,
    /// When it ended.
    pub finished_at: Option<jiff::Timestamp>,
}

/// The container whose status tells how the program does: ours is `main`; a pod of
/// another shape is read by its first container.
const PROGRAM_CONTAINER: &str = "main";

impl ProgramState {
    /// From a full pod's container statuses.
    fn of_pod(statuses: &[k8s_openapi::api::core::v1::ContainerStatus]) -> Option<Self> {
        let c = statuses
            .iter()
            .find(|c| c.name == PROGRAM_CONTAINER)
            .or(statuses.first())?;
        let term = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| Termination {
            exit_code: t.exit_code,
            reason: t.reason.clone(),
            message: t.message.clone(),
            finished_at: t.finished_at.as_ref().map(|f| f.0),
        };
        let state = c.state.as_ref();
        Some(ProgramState {
            restarts: u32::try_from(c.restart_count).unwrap_or(0),
            waiting: state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| Some((w.reason.clone()?, w.message.clone()))),
            terminated: state.and_then(|s| s.terminated.as_ref()).map(term),
            last_terminated: c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(term),
        })
    }
}

impl Resource for CachedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl GpuPod for CachedPod {
    fn bound_node(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    fn gpus_held(&self) -> u32 {
        if holds_nothing(self.phase.as_deref()) {
            0
        } else {
            self.gpus
        }
    }

    fn slices_held(&self) -> Vec<(String, u32)> {
        if holds_nothing(self.phase.as_deref()) {
            vec![]
        } else {
            self.slices.clone()
        }
    }
}

/// Only our labels are kept: nothing reads the others.
fn kept_labels(labels: Option<BTreeMap<String, String>>) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = labels?
        .into_iter()
        .filter(|(k, _)| k == USER_LABEL || k == INSTANCE_LABEL)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

impl From<&Pod> for CachedPod {
    /// The same reduction as decoding, for a pod built or read as a full `Pod`.
    fn from(pod: &Pod) -> Self {
        let m = &pod.metadata;
        let spec = pod.spec.as_ref();
        CachedPod {
            metadata: ObjectMeta {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                resource_version: m.resource_version.clone(),
                labels: kept_labels(m.labels.clone()),
                owner_references: m.owner_references.clone(),
                creation_timestamp: m.creation_timestamp.clone(),
                deletion_timestamp: m.deletion_timestamp.clone(),
                ..ObjectMeta::default()
            },
            node_name: spec.and_then(|s| s.node_name.clone()),
            phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
            program: pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_deref())
                .and_then(ProgramState::of_pod),
            gpus: spec.map_or(0, |s| {
                effective_request(
                    s.containers.iter().map(container_request),
                    s.init_containers.iter().flatten().map(container_request),
                )
            }),
            slices: spec.map_or(vec![], |s| {
                slice_requests(
                    s.containers.iter().map(container_limits_requests),
                    s.init_containers
                        .iter()
                        .flatten()
                        .map(container_limits_requests),
                )
            }),
        }
    }
}

/// The fields of a pod's JSON that are read; serde skips every other one without
/// building it.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
    #[serde(default)]
    status: Option<WireStatus>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    node_name: Option<String>,
    #[serde(default)]
    containers: Option<Vec<WireContainer>>,
    #[serde(default)]
    init_containers: Option<Vec<WireContainer>>,
}

#[derive(Deserialize)]
struct WireContainer {
    #[serde(default)]
    resources: Option<WireResources>,
}

#[derive(Deserialize)]
struct WireResources {
    #[serde(default)]
    limits: Option<BTreeMap<String, Quantity>>,
    #[serde(default)]
    requests: Option<BTreeMap<String, Quantity>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    phase: Option<String>,
    #[serde(default)]
    container_statuses: Option<Vec<WireContainerStatus>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainerStatus {
    name: String,
    #[serde(default)]
    restart_count: i32,
    #[serde(default)]
    state: Option<WireContainerState>,
    #[serde(default)]
    last_state: Option<WireContainerState>,
}

#[derive(Deserialize)]
struct WireContainerState {
    #[serde(default)]
    waiting: Option<WireWaiting>,
    #[serde(default)]
    terminated: Option<WireTerminated>,
}

#[derive(Deserialize)]
struct WireWaiting {
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTerminated {
    exit_code: i32,
    reason: Option<String>,
    message: Option<String>,
    finished_at: Option<Time>,
}

impl WireTerminated {
    fn reduce(self) -> Termination {
        Termination {
            exit_code: self.exit_code,
            reason: self.reason,
            message: self.message,
            finished_at: self.finished_at.map(|t| t.0),
        }
    }
}

impl WireStatus {
    fn program(statuses: Vec<WireContainerStatus>) -> Option<ProgramState> {
        let at = statuses
            .iter()
            .position(|c| c.name == PROGRAM_CONTAINER)
            .or((!statuses.is_empty()).then_some(0))?;
        let c = statuses.into_iter().nth(at)?;
        let (waiting, terminated) = match c.state {
            Some(s) => (
                s.waiting.and_then(|w| Some((w.reason?, w.message))),
                s.terminated.map(WireTerminated::reduce),
            ),
            None => (None, None),
        };
        Some(ProgramState {
            restarts: u32::try_from(c.restart_count).unwrap_or(0),
            waiting,
            terminated,
            last_terminated: c
                .last_state
                .and_then(|s| s.terminated)
                .map(WireTerminated::reduce),
        })
    }
}

impl WireContainer {
    fn limits_requests(&self) -> LimitsRequests<'_> {
        let r = self.resources.as_ref();
        (
            r.and_then(|r| r.limits.as_ref()),
            r.and_then(|r| r.requests.as_ref()),
        )
    }
}

impl<'de> Deserialize<'de> for CachedPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut w = Wire::deserialize(d)?;
        let gpus = |cs: Option<Vec<WireContainer>>| {
            cs.into_iter().flatten().map(|c| {
                let r = c.resources.as_ref();
                container_gpus(
                    r.and_then(|r| r.limits.as_ref()),
                    r.and_then(|r| r.requests.as_ref()),
                )
            })
        };
        let (node_name, gpus, slices) = match w.spec {
            Some(s) => {
                let slices = slice_requests(
                    s.containers
                        .iter()
                        .flatten()
                        .map(WireContainer::limits_requests),
                    s.init_containers
                        .iter()
                        .flatten()
                        .map(WireContainer::limits_requests),
                );
                (
                    s.node_name,
                    effective_request(gpus(s.containers), gpus(s.init_containers)),
                    slices,
                )
            }
            None => (None, 0, vec![]),
        };
        let m = w.metadata;
        Ok(CachedPod {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                labels: kept_labels(m.labels),
                owner_references: m.owner_references,
                creation_timestamp: m.creation_timestamp,
                deletion_timestamp: m.deletion_timestamp,
                ..ObjectMeta::default()
            },
            node_name,
            gpus,
            slices,
            program: w
                .status
                .as_mut()
                .and_then(|s| s.container_statuses.take())
                .and_then(WireStatus::program),
            phase: w.status.and_then(|s| s.phase),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_cloud_api::GPU_RESOURCE;
    use gpu_cloud_core::scheduler::pod_gpu_request;
    use proptest::prelude::*;
    use serde_json::json;

    /// A container status: restarts, waiting reason, terminated (exit code, reason), last
    /// terminated exit code, and its name.
    type Status = (
        i32,
        Option<String>,
        Option<(i32, Option<String>)>,
        Option<i32>,
        String,
    );

    fn container_status((restarts, waiting, terminated, last, name): &Status) -> serde_json::Value {
        let mut state = serde_json::Map::new();
        if let Some(reason) = waiting {
            state.insert("waiting".into(), json!({"reason": reason, "message": "m"}));
        }
        if let Some((code, reason)) = terminated {
            state.insert(
                "terminated".into(),
                json!({"exitCode": code, "reason": reason, "finishedAt": "2026-11-25T10:30:00Z",
                       "containerID": "containerd://abc"}),
            );
        }
        json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": restarts,
               "state": state,
               "lastState": last.map(|c| json!({"terminated": {"exitCode": c, "reason": "Error"}}))})
    }

    fn wire(
        node: Option<&str>,
        phase: Option<&str>,
        containers: &[(Option<u32>, Option<u32>)],
        inits: &[u32],
        deleting: bool,
    ) -> serde_json::Value {
        wire_with(node, phase, containers, inits, deleting, &[])
    }

    fn wire_with(
        node: Option<&str>,
        phase: Option<&str>,
        containers: &[(Option<u32>, Option<u32>)],
        inits: &[u32],
        deleting: bool,
        statuses: &[Status],
    ) -> serde_json::Value {
        let container = |(lim, req): &(Option<u32>, Option<u32>)| {
            let mut r = serde_json::Map::new();
            if let Some(l) = lim {
                r.insert(
                    "limits".into(),
                    json!({GPU_RESOURCE: l.to_string(), "cpu": "4"}),
                );
            }
            if let Some(q) = req {
                r.insert(
                    "requests".into(),
                    json!({GPU_RESOURCE: q.to_string(), "memory": "1Gi"}),
                );
            }
            json!({"name": "c", "image": "x", "command": ["sleep"], "resources": r})
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "p1", "resourceVersion": "42",
                "labels": {USER_LABEL: "u", "app": "x"}, "annotations": {"a": "b"},
                "managedFields": [{"manager": "m", "operation": "Update"}],
                "creationTimestamp": "2026-11-25T10:00:00Z",
                "deletionTimestamp": if deleting { json!("2026-11-25T11:00:00Z") } else { json!(null) },
                "ownerReferences": [{"apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
                    "name": "a", "uid": "i1", "controller": true}]},
            "spec": {"nodeName": node,
                "containers": containers.iter().map(container).collect::<Vec<_>>(),
                "initContainers": inits.iter().map(|n| container(&(Some(*n), None))).collect::<Vec<_>>(),
                "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists"}]},
            "status": {"phase": phase, "hostIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": statuses.iter().map(container_status).collect::<Vec<_>>()}
        })
    }

    proptest! {
        /// Decoding the JSON directly gives what reducing the full `Pod` gives, and GPU
        /// accounting agrees with the full pod's.
        #[test]
        fn decoding_equals_reducing_the_full_pod(
            node in proptest::option::of("n[0-9]"),
            phase in proptest::option::of(prop_oneof!["Pending", "Running", "Succeeded", "Failed"]),
            containers in proptest::collection::vec(
                (proptest::option::of(0u32..9), proptest::option::of(0u32..9)), 0..4),
            inits in proptest::collection::vec(0u32..9, 0..3),
            deleting in any::<bool>(),
            statuses in proptest::collection::vec((
                0i32..5,
                proptest::option::of(prop_oneof!["ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff"]),
                proptest::option::of((-1i32..140, proptest::option::of(prop_oneof!["Error", "OOMKilled", "Completed"]))),
                proptest::option::of(0i32..140),
                prop_oneof!["main", "side"],
            ), 0..3),
        ) {
            let v = wire_with(node.as_deref(), phase.as_deref(), &containers, &inits, deleting, &statuses);
            let full: Pod = serde_json::from_value(v.clone()).unwrap();
            let cached: CachedPod = serde_json::from_value(v).unwrap();
            prop_assert_eq!(&cached, &CachedPod::from(&full));
            prop_assert_eq!(cached.gpus_held(), pod_gpu_request(&full));
            prop_assert_eq!(cached.bound_node(), full.bound_node());
        }
    }

    #[test]
    fn keeps_identity_our_labels_and_nothing_else() {
        let v = wire(Some("n1"), Some("Running"), &[(Some(2), None)], &[3], false);
        let p: CachedPod = serde_json::from_value(v).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("a"));
        assert_eq!(p.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(p.metadata.labels.as_ref().map(|l| l.len()), Some(1));
        assert!(p.metadata.annotations.is_none() && p.metadata.managed_fields.is_none());
        assert_eq!(p.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!((p.node_name.as_deref(), p.gpus), (Some("n1"), 3));
        // A list of pods (what a watch's first list returns) decodes too.
        let list: kube::core::ObjectList<CachedPod> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "b"}}]
        }))
        .unwrap();
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("b"));
    }
}
