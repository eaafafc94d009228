//! The kubelet's gRPC APIs, as the agent and the fake GPU device plugin speak them:
//! generated at build time (tonic-prost-build, compiled by protox) from the upstream
//! definitions in `proto/`, copied verbatim from `k8s.io/kubelet` v0.37.2
//! (`pkg/apis/podresources/v1`, `pkg/apis/deviceplugin/v1beta1`).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// `v1.PodResourcesLister`: which devices the kubelet gave to which pod's container.
pub mod podresources {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("v1");
}

/// `v1beta1.Registration` and `v1beta1.DevicePlugin`: how a device plugin tells the kubelet
/// about its devices.
pub mod deviceplugin {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("v1beta1");

    /// The API version a plugin registers with.
    pub const VERSION: &str = "v1beta1";
    /// Where the kubelet looks for device plugins' sockets (fixed in the kubelet, whatever
    /// its `--root-dir`).
    pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
    /// The kubelet's registration socket in that folder.
    pub const KUBELET_SOCKET: &str = "kubelet.sock";
    /// A device's health as ListAndWatch reports it.
    pub const HEALTHY: &str = "Healthy";
}

/// A gRPC channel over the unix socket at `socket` (the kubelet's sockets are unix
/// sockets; the URI gRPC needs is required by the API and ignored by the connector).
pub async fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}
