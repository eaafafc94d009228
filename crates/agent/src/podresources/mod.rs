//! The kubelet's PodResources API (`v1.PodResourcesLister`) over its unix socket: which
//! devices the device plugin gave to which pod's container, and which devices the node has.
//! The messages and the client are generated from the vendored proto
//! (`gpu-cloud-kubelet-api`).

use std::collections::BTreeMap;
use std::path::Path;

use gpu_cloud_kubelet_api::podresources::pod_resources_lister_client::PodResourcesListerClient;
pub use gpu_cloud_kubelet_api::podresources::{
    AllocatableResourcesRequest, ListPodResourcesRequest, ListPodResourcesResponse,
};

/// Where a device went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
}

/// Whether the device plugin hands out devices of `resource` to one container each: whole
/// GPUs (`GPU-…` UUIDs) and MIG devices (`nvidia.com/mig-<profile>`, `MIG-…` UUIDs). A
/// time-sliced share (`nvidia.com/gpu.shared`) is not: its IDs are replicas of a GPU that
/// several pods run on, split by their processes.
pub fn is_exclusive_gpu(resource: &str) -> bool {
    resource == gpu_cloud_api::GPU_RESOURCE
        || (resource.starts_with(gpu_cloud_api::MIG_RESOURCE_PREFIX)
            && gpu_cloud_api::slice_of_resource(resource).is_some())
}

/// GPU (or MIG device) UUID → the container holding it, from a List response (pure).
pub fn gpu_holders(resp: &ListPodResourcesResponse) -> BTreeMap<String, Holder> {
    let mut out = BTreeMap::new();
    for pod in &resp.pod_resources {
        for c in &pod.containers {
            for d in c
                .devices
                .iter()
                .filter(|d| is_exclusive_gpu(&d.resource_name))
            {
                for id in &d.device_ids {
                    let holder = Holder {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        container: c.name.clone(),
                    };
                    out.insert(id.clone(), holder);
                }
            }
        }
    }
    out
}

async fn client(
    socket: &Path,
) -> Result<PodResourcesListerClient<tonic::transport::Channel>, tonic::Status> {
    let channel = gpu_cloud_kubelet_api::unix_channel(socket)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("kubelet PodResources socket: {e}")))?;
    Ok(PodResourcesListerClient::new(channel))
}

/// Asks the kubelet at `socket` (usually `/var/lib/kubelet/pod-resources/kubelet.sock`)
/// which devices each pod's containers hold.
pub async fn list(socket: &Path) -> Result<ListPodResourcesResponse, tonic::Status> {
    client(socket)
        .await?
        .list(ListPodResourcesRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// The IDs of the node's GPUs as the kubelet knows them from the device plugin (every one,
/// held or not), sorted.
pub async fn allocatable_gpus(socket: &Path) -> Result<Vec<String>, tonic::Status> {
    let resp = client(socket)
        .await?
        .get_allocatable_resources(AllocatableResourcesRequest {})
        .await?
        .into_inner();
    let mut ids: Vec<String> = resp
        .devices
        .into_iter()
        .filter(|d| d.resource_name == gpu_cloud_api::GPU_RESOURCE)
        .flat_map(|d| d.device_ids)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A List response as a kubelet sends it (protobuf bytes, hex): two pods, one with two
    /// GPUs and a non-GPU device, one with one GPU, one with none.
    const RECORDED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/podresources/list.hex"
    ));

    fn decode_hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn maps_gpus_to_their_containers() {
        let resp = ListPodResourcesResponse::decode(decode_hex(RECORDED).as_slice())
            .expect("decode recorded response");
        let holders = gpu_holders(&resp);
        assert_eq!(holders.len(), 3);
        assert_eq!(
            holders["GPU-0b1e0c55-aaaa-4bbb-8ccc-000000000001"].pod,
            "train"
        );
        assert_eq!(
            holders["GPU-0b1e0c55-aaaa-4bbb-8ccc-000000000002"].container,
            "main"
        );
        assert_eq!(
            holders["GPU-0b1e0c55-aaaa-4bbb-8ccc-000000000003"].namespace,
            "gpu-bob"
        );
        assert!(
            !holders.contains_key("0000:3b:00.0"),
            "non-GPU devices are not GPUs"
        );
    }

    #[test]
    fn mig_devices_are_their_pods_and_time_sliced_shares_are_no_ones_alone() {
        use gpu_cloud_kubelet_api::podresources::{
            ContainerDevices, ContainerResources, PodResources,
        };
        let devices = |resource: &str, ids: &[&str]| ContainerDevices {
            resource_name: resource.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let resp = ListPodResourcesResponse {
            pod_resources: vec![PodResources {
                name: "nb".into(),
                namespace: "gpu-mia".into(),
                containers: vec![ContainerResources {
                    name: "main".into(),
                    devices: vec![
                        devices("nvidia.com/mig-1g.10gb", &["MIG-a", "MIG-b"]),
                        devices("nvidia.com/gpu.shared", &["GPU-s::2"]),
                        devices("nvidia.com/mig-", &["MIG-odd"]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let holders = gpu_holders(&resp);
        assert_eq!(holders.keys().collect::<Vec<_>>(), ["MIG-a", "MIG-b"]);
        assert_eq!(holders["MIG-b"].pod, "nb");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let err = list(Path::new("/nonexistent/kubelet.sock"))
            .await
            .unwrap_err();
        assert!(err.message().contains("PodResources socket"), "{err}");
    }

    proptest::proptest! {
        /// Random bytes as a kubelet answer: decoding fails or succeeds, never panics, and
        /// what decodes is read without panic.
        #[test]
        fn random_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            use prost::Message;
            if let Ok(resp) = ListPodResourcesResponse::decode(bytes.as_slice()) {
                let _ = gpu_holders(&resp);
            }
        }
    }
}
