//! The pod that runs a placed GpuInstance (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
use serde_json::json;

use gpu_cloud_api::v1::{GpuInstance, RestartPolicy};
use gpu_cloud_api::{GPU_RESOURCE, TOLERATED_TAINT};
use gpu_cloud_api::{INSTANCE_LABEL, MANAGED_BY, USER_LABEL};

/// Builds the pod for `inst` on `node`: same name and namespace as the instance (so a
/// second attempt collides instead of double-booking), controlled by the instance, bound
/// to the node directly (the operator is the GPU scheduler), with the spec's container and
/// the GPU request.
pub fn build(inst: &GpuInstance, user: &str, node: &str) -> Result<Pod, serde_json::Error> {
    let spec = &inst.spec;
    let gpus = spec.gpu.count.to_string();
    let mut limits = BTreeMap::from([(GPU_RESOURCE.to_owned(), gpus)]);
    let mut requests = BTreeMap::new();
    for (name, value) in [
        ("cpu", &spec.resources.cpu),
        ("memory", &spec.resources.memory),
    ] {
        if let Some(v) = value {
            limits.insert(name.to_owned(), v.clone());
            requests.insert(name.to_owned(), v.clone());
        }
    }
    let owner = inst.controller_owner_ref(&());
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": inst.name_any(),
            "namespace": inst.namespace(),
            "labels": {
                INSTANCE_LABEL: inst.name_any(),
                USER_LABEL: user,
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": match spec.restart_policy() {
                RestartPolicy::Never => "Never",
                RestartPolicy::OnFailure => "OnFailure",
            },
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "nodeSelector": {"nvidia.com/gpu.product": spec.gpu.model},
            "tolerations": [{"key": TOLERATED_TAINT, "operator": "Exists"}],
            "containers": [{
                "name": "main",
                "image": spec.image,
                "command": spec.command,
                "args": spec.args,
                "env": spec.env,
                "resources": {"limits": limits, "requests": requests},
            }],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_cloud_core::scheduler::pod_gpu_request;

    #[test]
    fn the_pod_carries_owner_container_gpus_and_node() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice", "uid": "u-1"},
            "spec": {"gpu": {"model": "NVIDIA-H100-80GB-HBM3", "count": 4}, "image": "pytorch:2",
                     "command": ["python"], "args": ["train.py"], "env": [{"name": "A", "value": "1"}],
                     "resources": {"cpu": "8", "memory": "64Gi"}, "duration": "2h"}
        }))
        .unwrap();
        let pod = build(&inst, "alice", "gpu-h100-0").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("train"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("gpu-h100-0"));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("pytorch:2"));
        assert_eq!(c.command.as_deref(), Some(&["python".to_string()][..]));
        assert_eq!(c.env.as_ref().unwrap()[0].value.as_deref(), Some("1"));
        assert_eq!(pod_gpu_request(&pod), 4);
        assert_eq!(
            pod.labels().get(USER_LABEL).map(String::as_str),
            Some("alice")
        );
    }
}
