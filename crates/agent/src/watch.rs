//! What the agent reads of the cluster, kept current by watches instead of listed on every
//! sample: the GpuInstances on its nodes (the CRD's selectable field `status.nodeName`)
//! and our pods there. A LIST per node per second was most of an agent's API load; a
//! watch costs the apiserver nothing between changes. One agent for several nodes (only
//! with --simulate: tests, demos, benchmarks) watches the whole cluster once and keeps its
//! nodes' objects, rather than holding two watches per node.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::task::JoinHandle;
use tracing::warn;

use gpu_cloud_api::MANAGED_BY;
use gpu_cloud_api::v1::GpuInstance;

/// The watched objects of this agent's nodes.
pub struct Watched {
    instances: Vec<Store<GpuInstance>>,
    pods: Vec<Store<Pod>>,
    tasks: Vec<JoinHandle<()>>,
    /// Watching the whole cluster for several nodes: these.
    nodes: Option<Vec<String>>,
}

impl Watched {
    /// Starts the watches: of instances and of our pods on the node, or, for several
    /// nodes, in the whole cluster.
    pub fn start(client: &Client, nodes: &[String]) -> Self {
        let (mut tasks, mut instances, mut pods) = (Vec::new(), Vec::new(), Vec::new());
        let ours = format!("app.kubernetes.io/managed-by={MANAGED_BY}");
        let one: Vec<Option<&String>> = match nodes {
            [node] => vec![Some(node)],
            _ => vec![None],
        };
        for node in one {
            let mut cfg = watcher::Config::default();
            if let Some(node) = node {
                cfg = cfg.fields(&format!("status.nodeName={node}"));
            }
            let (store, task) = run("gpuinstances", Api::all(client.clone()), cfg);
            instances.push(store);
            tasks.push(task);
            let mut cfg = watcher::Config::default().labels(&ours);
            if let Some(node) = node {
                cfg = cfg.fields(&format!("spec.nodeName={node}"));
            }
            let (store, task) = run("pods", Api::all(client.clone()), cfg);
            pods.push(store);
            tasks.push(task);
        }
        Watched {
            instances,
            pods,
            tasks,
            nodes: (nodes.len() != 1).then(|| nodes.to_vec()),
        }
    }

    /// Whether `node` is one of this agent's (always, when the watch selects by node).
    fn mine(&self, node: Option<&String>) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|all| node.is_some_and(|n| all.contains(n)))
    }

    /// Waits until every watch has listed once.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        for s in &self.instances {
            s.wait_until_ready().await?;
        }
        for s in &self.pods {
            s.wait_until_ready().await?;
        }
        Ok(())
    }

    /// The instances on the nodes, as last seen.
    pub fn instances(&self) -> Vec<Arc<GpuInstance>> {
        self.instances
            .iter()
            .flat_map(Store::state)
            .filter(|i| self.mine(i.status.as_ref().and_then(|s| s.node_name.as_ref())))
            .collect()
    }

    /// Our pods on the nodes, as last seen.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.pods
            .iter()
            .flat_map(Store::state)
            .filter(|p| self.mine(p.spec.as_ref().and_then(|s| s.node_name.as_ref())))
            .collect()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs one watch into a store; a failed watch is logged and retried with backoff.
fn run<K>(what: &'static str, api: Api<K>, cfg: watcher::Config) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, mut writer) = reflector::store();
    let task = tokio::spawn(async move {
        // Managed fields are never read here and are most of an object's size.
        let events = watcher(api, cfg)
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => writer.apply_watcher_event(&event),
                Err(e) => warn!(watch = what, error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    (reader, task)
}
