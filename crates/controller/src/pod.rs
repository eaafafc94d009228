//! The pod that runs a placed GpuInstance (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Resource, ResourceExt};
use serde_json::json;

use gpu_cloud_api::v1::{EnvVar, GpuInstance, RestartPolicy};
use gpu_cloud_api::{GANG_PORT, RANK_LABEL, TOLERATED_TAINT};
use gpu_cloud_api::{INSTANCE_LABEL, MANAGED_BY, USER_LABEL};

/// Builds the pod of rank `rank` of `inst` placed on `nodes` (one, or a gang's by rank):
/// named as [`GpuInstance::pod_names`] says, in the instance's namespace (so a second
/// attempt collides instead of double-booking), controlled by the instance, bound to its
/// node directly (the operator is the GPU scheduler), with the spec's container and the
/// GPU request. A gang's pods also get host names under the gang's headless Service
/// ([`service`]) and the environment launchers read ([`gang_env`]).
pub fn build(
    inst: &GpuInstance,
    user: &str,
    nodes: &[String],
    rank: usize,
) -> Result<Pod, serde_json::Error> {
    let spec = &inst.spec;
    let names = inst.pod_names();
    let (Some(name), Some(node)) = (names.get(rank), nodes.get(rank)) else {
        return Err(serde::de::Error::custom(format!(
            "no rank {rank} in a booking of {} node(s) placed on {}",
            names.len(),
            nodes.len()
        )));
    };
    let gang = names.len() > 1;
    let mut env = spec.env.clone();
    if gang {
        env.extend(gang_env(inst, rank));
    }
    let gpus = spec.gpu.count.to_string();
    let mut limits = BTreeMap::from([(spec.gpu.resource(), gpus)]);
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
    let mut labels = BTreeMap::from([
        (INSTANCE_LABEL.to_owned(), inst.name_any()),
        (USER_LABEL.to_owned(), user.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
    ]);
    if gang {
        labels.insert(RANK_LABEL.to_owned(), rank.to_string());
    }
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": inst.namespace(),
            "labels": labels,
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
                "env": env,
                "resources": {"limits": limits, "requests": requests},
            }],
        },
    }))?;
    if let (true, Some(s)) = (gang, pod.spec.as_mut()) {
        // `<name>-<rank>.<name>` resolves in the namespace: rank 0 is MASTER_ADDR.
        s.hostname = Some(name.clone());
        s.subdomain = Some(inst.name_any());
    }
    Ok(pod)
}

/// What a gang member's container is told, in the names `torchrun` (its `PET_*` defaults,
/// so that a bare `torchrun train.py` joins the gang) and most launchers (MPI-free PyTorch
/// `env://`, DeepSpeed, Accelerate) read: rank 0's address and port, the number of nodes,
/// this node's rank, the GPUs per node.
pub fn gang_env(inst: &GpuInstance, rank: usize) -> Vec<EnvVar> {
    let name = inst.name_any();
    let master = format!("{name}-0.{name}");
    let nodes = inst.spec.gpu.nodes().to_string();
    let per_node = inst.spec.gpu.count.to_string();
    let rank = rank.to_string();
    let port = GANG_PORT.to_string();
    [
        ("MASTER_ADDR", master.as_str()),
        ("MASTER_PORT", port.as_str()),
        ("WORLD_SIZE", nodes.as_str()),
        ("NNODES", nodes.as_str()),
        ("NODE_RANK", rank.as_str()),
        ("RANK", rank.as_str()),
        ("GPUS_PER_NODE", per_node.as_str()),
        ("PET_MASTER_ADDR", master.as_str()),
        ("PET_MASTER_PORT", port.as_str()),
        ("PET_NNODES", nodes.as_str()),
        ("PET_NODE_RANK", rank.as_str()),
        ("PET_NPROC_PER_NODE", per_node.as_str()),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.to_owned(),
        value: value.to_owned(),
    })
    .collect()
}

/// The headless Service of a gang, named as the instance: its pods' host names resolve
/// under it (`<name>-<rank>.<name>`), also before they are ready (rendezvous happens
/// before any readiness), and it goes with the instance (owner reference).
pub fn service(inst: &GpuInstance) -> Result<Service, serde_json::Error> {
    let owner = inst.controller_owner_ref(&());
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": inst.name_any(),
            "namespace": inst.namespace(),
            "labels": {
                INSTANCE_LABEL: inst.name_any(),
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": {INSTANCE_LABEL: inst.name_any()},
            "ports": [{"name": "rendezvous", "port": GANG_PORT, "targetPort": GANG_PORT}],
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
        let pod = build(&inst, "alice", &["gpu-h100-0".to_owned()], 0).unwrap();
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
        assert!(spec.hostname.is_none() && !pod.labels().contains_key(RANK_LABEL));
    }

    #[test]
    fn a_gang_member_has_its_rank_its_node_its_host_name_and_the_launcher_env() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice", "uid": "u-1"},
            "spec": {"gpu": {"model": "NVIDIA-H100-80GB-HBM3", "count": 8, "nodes": 2},
                     "image": "pytorch:2", "env": [{"name": "A", "value": "1"}], "duration": "2h"}
        }))
        .unwrap();
        let nodes = ["h-0".to_owned(), "h-1".to_owned()];
        let pod = build(&inst, "alice", &nodes, 1).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("train-1"));
        assert_eq!(pod.labels().get(RANK_LABEL).map(String::as_str), Some("1"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("h-1"));
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("train-1"), Some("train"))
        );
        let env: BTreeMap<String, String> = spec.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        for (k, v) in [
            ("A", "1"),
            ("MASTER_ADDR", "train-0.train"),
            ("MASTER_PORT", "29500"),
            ("WORLD_SIZE", "2"),
            ("NODE_RANK", "1"),
            ("RANK", "1"),
            ("PET_NNODES", "2"),
            ("PET_NPROC_PER_NODE", "8"),
        ] {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(pod_gpu_request(&pod), 8);
        assert!(build(&inst, "alice", &nodes, 2).is_err());
        let svc = service(&inst).unwrap();
        let s = svc.spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert_eq!(s.publish_not_ready_addresses, Some(true));
        assert_eq!(
            s.selector.unwrap().get(INSTANCE_LABEL).map(String::as_str),
            Some("train")
        );
    }
}
