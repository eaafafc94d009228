//! `gpu-cloud-fake-gpus`: a kubelet device plugin (API v1beta1) that advertises fake
//! NVIDIA GPUs, so that a real node without GPUs takes GPU pods exactly as a GPU node does:
//! the kubelet counts `nvidia.com/gpu`, hands devices to containers, and reports them in
//! its PodResources API; the container gets `NVIDIA_VISIBLE_DEVICES` with its devices'
//! UUIDs, as the NVIDIA device plugin sets it. Used by the real-node tests (`hack/real-node`)
//! beside the agent's simulated devices, which read the same UUIDs back.
//!
//! The kubelet removes every plugin socket when it starts: the plugin serves again and
//! registers again whenever the kubelet's registration socket is new or its own is gone.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use clap::Parser;
use futures::Stream;
use gpu_cloud_kubelet_api::deviceplugin::{
    self as api, AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, RegisterRequest,
    device_plugin_server::{DevicePlugin, DevicePluginServer},
    registration_client::RegistrationClient,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// Advertises fake GPUs to the kubelet of this node.
#[derive(Debug, Parser)]
#[command(name = "gpu-cloud-fake-gpus", version)]
struct Args {
    /// How many GPUs the node has.
    #[arg(long, default_value_t = 8, env = "FAKE_GPUS_COUNT")]
    count: u32,
    /// The node's name: the devices' UUIDs derive from it (stable across restarts).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The extended resource advertised.
    #[arg(long, default_value = "nvidia.com/gpu")]
    resource: String,
    /// The kubelet's device-plugin folder (fixed in the kubelet).
    #[arg(long, default_value = api::DEVICE_PLUGIN_PATH)]
    dir: PathBuf,
}

/// What can stop the plugin.
#[derive(Debug, thiserror::Error)]
enum PluginError {
    #[error("cannot serve the device plugin on {path}: {source}")]
    Serve {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the kubelet at {path} (is it running?): {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("the kubelet refused the registration of {resource}: {source}")]
    Register { resource: String, source: Status },
}

/// The UUIDs of `count` fake GPUs on `node`: `GPU-` and a UUID-shaped hex string from an
/// FNV-1a hash of node and index, so that a restart advertises the same devices (pure).
fn device_ids(node: &str, count: u32) -> Vec<String> {
    (0..count)
        .map(|i| {
            let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
            for b in node.bytes().chain(i.to_le_bytes()) {
                h ^= u128::from(b);
                h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
            }
            let x = format!("{h:032x}");
            format!(
                "GPU-{}-{}-{}-{}-{}",
                &x[0..8],
                &x[8..12],
                &x[12..16],
                &x[16..20],
                &x[20..32]
            )
        })
        .collect()
}

/// What a container given `ids` gets: the variable the NVIDIA container runtime reads,
/// naming its GPUs (pure).
fn allocation(ids: &[String]) -> ContainerAllocateResponse {
    ContainerAllocateResponse {
        envs: [("NVIDIA_VISIBLE_DEVICES".to_owned(), ids.join(","))].into(),
        ..Default::default()
    }
}

struct FakeGpus {
    ids: Vec<String>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for FakeGpus {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    /// Every device, healthy, once; then the stream stays open (fake GPUs never fail).
    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<DeviceStream>, Status> {
        let devices = self
            .ids
            .iter()
            .map(|id| Device {
                id: id.clone(),
                health: api::HEALTHY.to_owned(),
                topology: None,
            })
            .collect();
        let first = futures::stream::once(async { Ok(ListAndWatchResponse { devices }) });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        ))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| ContainerPreferredAllocationResponse {
                device_i_ds: c
                    .available_device_i_ds
                    .into_iter()
                    .take(usize::try_from(c.allocation_size).unwrap_or(0))
                    .collect(),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| allocation(&c.devices_ids))
            .collect();
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// The inode of `path`, if it exists: a new one means a new kubelet.
fn inode(path: &Path) -> Option<u64> {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).ok()?).into()
}

/// Serves on `dir/<socket>` and registers, then returns when the kubelet restarted (its
/// socket is new) or our socket was removed, so that the caller starts again.
async fn serve_once(args: &Args, ids: &[String]) -> Result<(), PluginError> {
    let name = "gpu-cloud-fake-gpus.sock";
    let ours = args.dir.join(name);
    let kubelet = args.dir.join(api::KUBELET_SOCKET);
    let _ = std::fs::remove_file(&ours);
    let listener = tokio::net::UnixListener::bind(&ours).map_err(|source| PluginError::Serve {
        path: ours.clone(),
        source,
    })?;
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(FakeGpus { ids: ids.to_vec() }))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );

    let seen = inode(&kubelet);
    let channel = gpu_cloud_kubelet_api::unix_channel(&kubelet)
        .await
        .map_err(|source| PluginError::Connect {
            path: kubelet.clone(),
            source,
        })?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: api::VERSION.to_owned(),
            endpoint: name.to_owned(),
            resource_name: args.resource.clone(),
            options: Some(DevicePluginOptions::default()),
        })
        .await
        .map_err(|source| PluginError::Register {
            resource: args.resource.clone(),
            source,
        })?;
    info!(resource = %args.resource, count = ids.len(), socket = %ours.display(), "registered with the kubelet");

    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if inode(&kubelet) != seen || !ours.exists() {
            info!("the kubelet restarted or removed our socket; registering again");
            break;
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt().with_ansi(false).init();
    let args = Args::parse();
    let ids = device_ids(&args.node, args.count);
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gpu-cloud-fake-gpus: cannot listen for SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            served = serve_once(&args, &ids) => match served {
                Ok(()) => {}
                // The kubelet may be starting: try again shortly.
                Err(e) => {
                    warn!(error = %e, "not registered; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(args.dir.join("gpu-cloud-fake-gpus.sock"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_uuid_shaped_distinct_and_stable() {
        let a = device_ids("node-a", 8);
        assert_eq!(a, device_ids("node-a", 8));
        assert_eq!(a.len(), 8);
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 8);
        assert!(device_ids("node-b", 8).iter().all(|id| !a.contains(id)));
        for id in &a {
            let parts: Vec<_> = id.trim_start_matches("GPU-").split('-').collect();
            let lens: Vec<_> = parts.iter().map(|p| p.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(id.starts_with("GPU-"));
        }
    }

    #[test]
    fn a_container_gets_its_devices_in_nvidia_visible_devices() {
        let ids = device_ids("n", 2);
        let resp = allocation(&ids);
        assert_eq!(
            resp.envs["NVIDIA_VISIBLE_DEVICES"],
            format!("{},{}", ids[0], ids[1])
        );
    }
}
