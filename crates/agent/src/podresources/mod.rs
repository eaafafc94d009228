//! The kubelet's PodResources API (`v1.PodResourcesLister`) over its unix socket: which
//! devices the device plugin gave to which pod's container.
//!
//! `api.proto` beside this file is the upstream definition (k8s.io/kubelet v0.37.2,
//! pkg/apis/podresources/v1). The messages and the client below are what prost and
//! tonic-build generate from it, kept in the repository (only the `List` call and the
//! fields the agent reads; protobuf ignores the rest), so that the build needs no protoc.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};

/// `ListPodResourcesRequest {}`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

/// `ListPodResourcesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    /// Every pod on the node.
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

/// `PodResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Pod namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Its containers.
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

/// `ContainerResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    /// Container name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Devices assigned to it.
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
}

/// `ContainerDevices`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    /// Extended resource, e.g. `nvidia.com/gpu`.
    #[prost(string, tag = "1")]
    pub resource_name: String,
    /// Device IDs (for NVIDIA GPUs: their UUIDs).
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
}

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

/// Asks the kubelet at `socket` (usually `/var/lib/kubelet/pod-resources/kubelet.sock`).
pub async fn list(socket: PathBuf) -> Result<ListPodResourcesResponse, tonic::Status> {
    // The URI is required by the API and ignored by the connector.
    let endpoint = Endpoint::try_from("http://localhost")
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("kubelet PodResources socket: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/v1.PodResourcesLister/List");
    let codec = tonic_prost::ProstCodec::default();
    grpc.unary(tonic::Request::new(ListPodResourcesRequest {}), path, codec)
        .await
        .map(tonic::Response::into_inner)
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
        let err = list(PathBuf::from("/nonexistent/kubelet.sock"))
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
