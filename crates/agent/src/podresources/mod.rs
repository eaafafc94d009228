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

/// GPU UUID → the container holding it, from a List response (pure).
pub fn gpu_holders(resp: &ListPodResourcesResponse) -> BTreeMap<String, Holder> {
    let mut out = BTreeMap::new();
    for pod in &resp.pod_resources {
        for c in &pod.containers {
            for d in c
                .devices
                .iter()
                .filter(|d| d.resource_name == gpu_cloud_api::GPU_RESOURCE)
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
