//! The watch caches the controller reads instead of asking the apiserver: nodes, pods,
//! user namespaces (metadata only), GpuUsers and GpuInstances, each filled by one watch and
//! shared by the placement loop and both reconcilers.
//!
//! Objects are slimmed as they arrive (managed fields and annotations are dropped; pods
//! are decoded as the compact [`CachedPod`]), so 10,000 pods and instances fit in tens of
//! MiB. A cache can lag the apiserver by a moment; the placement loop covers its own
//! writes with [`Assumed`] pods, and on a restart every cache starts from a fresh,
//! consistent list.

use std::collections::HashMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::cached_pod::CachedPod;
use gpu_cloud_api::v1::{GpuInstance, GpuPriceList, GpuUsageRecord, GpuUser, PRICE_LIST_NAME};
use gpu_cloud_api::{INSTANCE_LABEL, USER_LABEL};

/// Objects a feed holds for a slow consumer before its watch waits. A waiting watch is
/// a stale cache for everyone, but each held event keeps that version of its object alive
/// (a pod is a few KiB), so a deep buffer is memory in a burst. The reconcilers drain
/// their feeds as long as they have a free slot (`--concurrency`), so this only fills in a
/// burst that saturates them.
const BUFFER: usize = 8_192;

/// What the controller knows of the cluster, kept current by watches.
#[derive(Clone)]
pub struct Caches {
    /// Every node.
    pub nodes: Store<Node>,
    /// Every pod, as the compact [`CachedPod`].
    pub pods: Store<CachedPod>,
    /// Namespaces labelled with a GpuUser (metadata only).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Every GpuUser.
    pub users: Store<GpuUser>,
    /// Every GpuInstance.
    pub instances: Store<GpuInstance>,
    /// The GpuPriceLists (the one named `default` counts).
    pub prices: Store<GpuPriceList>,
    /// Every GpuUsageRecord (the usage of deleted instances).
    pub records: Store<GpuUsageRecord>,
}

/// Change streams of the caches, one per consumer, for the reconcilers' triggers.
pub struct Feeds {
    /// Pods, for the instance controller (a pod's change reconciles its instance).
    pub pods: Feed<CachedPod>,
    /// GpuInstances, for the instance controller.
    pub instances: Feed<GpuInstance>,
    /// GpuInstances, for the user controller (an instance's change refreshes its user).
    pub user_instances: Feed<GpuInstance>,
    /// GpuUsers, for the user controller.
    pub users: Feed<GpuUser>,
    /// GpuUsers, for the instance controller (a budget used up stops running instances).
    pub instance_users: Feed<GpuUser>,
    /// User namespaces, for the user controller.
    pub namespaces: Feed<PartialObjectMeta<Namespace>>,
    /// Usage records, for the user controller (a record written refreshes its user).
    pub records: Feed<GpuUsageRecord>,
    /// Nodes, for the instance controller (a node not Ready or gone concerns the
    /// instances on it).
    pub nodes: Feed<Node>,
}

/// The tasks that run the watches; dropped with the controller.
pub struct Watches(Vec<JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Caches {
    /// Starts the watches. The feeds carry the initial lists too.
    pub fn start(client: &Client) -> (Caches, Feeds, Watches) {
        let all = watcher::Config::default();
        let (nodes, [nodes_feed], n) = run(
            "nodes",
            watcher(Api::all(client.clone()), all.clone()),
            slim_node,
        );
        let (pods, [pods_feed], p) = run(
            "pods",
            watcher(Api::<CachedPod>::all(client.clone()), all.clone()),
            keep,
        );
        let (namespaces, [ns_feed], ns) = run(
            "namespaces",
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default().labels(USER_LABEL),
            ),
            slim_meta,
        );
        let (users, [users_feed, instance_users_feed], u) = run(
            "gpuusers",
            watcher(Api::all(client.clone()), all.clone()),
            slim_meta,
        );
        let (instances, [inst_feed, user_inst_feed], i) = run(
            "gpuinstances",
            watcher(Api::all(client.clone()), all.clone()),
            slim_meta,
        );
        let (prices, [], pl) = run(
            "gpupricelists",
            watcher(Api::all(client.clone()), all.clone()),
            slim_meta,
        );
        let (records, [records_feed], r) = run(
            "gpuusagerecords",
            watcher(Api::all(client.clone()), all),
            slim_meta,
        );
        (
            Caches {
                nodes,
                pods,
                namespaces,
                users,
                instances,
                prices,
                records,
            },
            Feeds {
                pods: pods_feed,
                instances: inst_feed,
                user_instances: user_inst_feed,
                users: users_feed,
                instance_users: instance_users_feed,
                namespaces: ns_feed,
                nodes: nodes_feed,
                records: records_feed,
            },
            Watches(vec![n, p, ns, u, i, pl, r]),
        )
    }

    /// Waits until every cache holds its initial list: before that, an empty cache would
    /// look like free GPUs.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.nodes.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await?;
        self.users.wait_until_ready().await?;
        self.instances.wait_until_ready().await?;
        self.records.wait_until_ready().await?;
        self.prices.wait_until_ready().await
    }

    /// The cluster's prices (the GpuPriceList `default`), if any.
    pub fn price_list(&self) -> Option<gpu_cloud_core::policy::cost::PriceList> {
        self.prices
            .get(&reflector::ObjectRef::new(PRICE_LIST_NAME))
            .map(|p| (&p.spec).into())
    }

    /// The pod named `name` in `ns`, if cached.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<CachedPod>> {
        self.pods.get(&reflector::ObjectRef::new(name).within(ns))
    }

    /// The records of `user`.
    pub fn records_of(&self, user: &str) -> Vec<Arc<GpuUsageRecord>> {
        self.records.state_filter(|r| r.spec.user == user)
    }

    /// The GpuUser a namespace belongs to, by its label.
    pub fn user_of_namespace(&self, ns: &str) -> Option<String> {
        self.namespaces
            .get(&reflector::ObjectRef::new(ns))
            .and_then(|n| n.labels().get(USER_LABEL).cloned())
    }
}

/// The changes of one cache, for one consumer (a controller's trigger): every object a
/// watch event applied or deleted, and the whole cache after each (re)list.
///
/// Our own, not kube's `ReflectHandle`: that one hands out a reference and looks the object
/// up in the cache when it is read; an object deleted in between made it return `Pending`
/// without a wake-up, and the controller never polled that feed again (its watch then
/// stalled once the feed's buffer filled). It also drops deletes (kube-rs/kube#1590), so a
/// pod's deletion never triggered its instance. This feed carries the objects themselves.
pub struct Feed<K>(mpsc::Receiver<Arc<K>>);

impl<K> Stream for Feed<K> {
    type Item = Arc<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<K>>> {
        self.0.poll_recv(cx)
    }
}

/// Runs one watch into a store with `N` feeds.
fn run<K, const N: usize>(
    what: &'static str,
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    slim: fn(&mut K),
) -> (Store<K>, [Feed<K>; N], JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    let mut senders = Vec::with_capacity(N);
    let feeds: [Feed<K>; N] = std::array::from_fn(|_| {
        let (tx, rx) = mpsc::channel(BUFFER);
        senders.push(tx);
        Feed(rx)
    });
    let store = reader.clone();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events.default_backoff().modify(slim));
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    warn!(cache = what, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            let changed = match event {
                watcher::Event::Apply(obj) => vec![
                    store
                        .get(&reflector::ObjectRef::from_obj(&obj))
                        .unwrap_or_else(|| Arc::new(obj)),
                ],
                watcher::Event::Delete(obj) => vec![Arc::new(obj)],
                watcher::Event::InitDone => store.state(),
                watcher::Event::Init | watcher::Event::InitApply(_) => vec![],
            };
            for obj in changed {
                for tx in &senders {
                    // A consumer that is gone (shutting down) takes nothing more.
                    let _ = tx.send(obj.clone()).await;
                }
            }
        }
    });
    (reader, feeds, task)
}

/// Managed fields and annotations go: nothing the controller decides reads them, and a
/// `kubectl apply` annotation alone doubles an object.
fn slim_meta<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    if let Some(s) = node.status.as_mut() {
        s.images = None;
        s.volumes_attached = None;
        s.volumes_in_use = None;
    }
}

/// Cached pods are already compact ([`CachedPod`] decodes only what is read).
fn keep<K>(_: &mut K) {}

/// Pods the controller created that its pod cache may not show yet: without them, a pass
/// right after a placement would see the GPUs as free again and book them twice. An entry
/// leaves once the cache has its pod, once its instance is gone or finished (its pod goes
/// or went with it), or after [`Assumed::TTL`] as a last resort. Never sooner: under load
/// the pod watch can lag by many seconds, and an entry dropped early is a double booking.
#[derive(Default)]
pub struct Assumed(Mutex<HashMap<PodKey, (Arc<CachedPod>, Instant)>>);

/// Namespace and name of a pod.
type PodKey = (String, String);

/// How long a pod whose create failed in transit (it may or may not exist) is assumed.
const UNSURE_TTL: Duration = Duration::from_secs(60);

impl Assumed {
    /// How long a created pod is assumed at most.
    pub const TTL: Duration = Duration::from_secs(600);

    /// Records a pod just created.
    pub fn insert(&self, pod: &Pod) {
        let pod = CachedPod::from(pod);
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, (Arc::new(pod), Instant::now()));
        }
    }

    /// Records a pod whose create failed in transit: it may exist. Without a uid it is
    /// matched by name, and assumed for [`UNSURE_TTL`] at most.
    pub fn insert_unsure(&self, pod: &Pod) {
        let mut pod = CachedPod::from(pod);
        pod.metadata.uid = None;
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let at = Instant::now()
            .checked_sub(Self::TTL.saturating_sub(UNSURE_TTL))
            .unwrap_or_else(Instant::now);
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, (Arc::new(pod), at));
        }
    }

    /// `ns/name` is assumed: this controller is creating it or created it, and (when the
    /// caller found no such pod in the cache) the pod cache does not show it yet.
    pub fn contains(&self, ns: &str, name: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.get(&(ns.to_owned(), name.to_owned()))
                .is_some_and(|(_, at)| at.elapsed() < Self::TTL)
        })
    }

    /// Forgets `ns/name`: its create was refused, nothing was made.
    pub fn forget(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&(ns.to_owned(), name.to_owned()));
        }
    }

    /// The assumed pods that `pods` (one read of the pod cache) does not hold, given
    /// `instances` (a read of the instance cache taken with it); forgets the others.
    /// Judged against the same reads the pass uses: checking the live cache instead could
    /// drop a pod that arrived after the pass read it, and the pod would count nowhere.
    pub fn pending(
        &self,
        pods: &[Arc<CachedPod>],
        instances: &[Arc<GpuInstance>],
    ) -> Vec<Arc<CachedPod>> {
        let Ok(mut m) = self.0.lock() else {
            return vec![];
        };
        if m.is_empty() {
            return vec![];
        }
        let seen: HashMap<(String, String), Option<String>> = pods
            .iter()
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p.uid()))
            .collect();
        let alive: std::collections::HashSet<(String, String)> = instances
            .iter()
            .filter(|i| {
                i.metadata.deletion_timestamp.is_none()
                    && !i
                        .status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(gpu_cloud_api::v1::Phase::is_finished)
            })
            .map(|i| (i.namespace().unwrap_or_default(), i.name_any()))
            .collect();
        m.retain(|key, (pod, at)| {
            let cached = seen
                .get(key)
                .is_some_and(|uid| pod.uid().is_none() || *uid == pod.uid());
            // Its instance: the one its label names (a gang's pods are `<name>-<rank>`),
            // else the one of its own name.
            let instance = (
                key.0.clone(),
                pod.labels()
                    .get(INSTANCE_LABEL)
                    .cloned()
                    .unwrap_or_else(|| key.1.clone()),
            );
            !cached && alive.contains(&instance) && at.elapsed() < Self::TTL
        });
        m.values().map(|(p, _)| Arc::clone(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "gpu-u", "uid": uid}}))
            .unwrap()
    }

    fn cached(uid: &str) -> CachedPod {
        CachedPod::from(&pod(uid))
    }

    fn instance(phase: Option<&str>) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "i1"},
            "spec": {"gpu": {"model": "M", "count": 1}, "image": "x", "duration": "1h"},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn named(name: &str) -> CachedPod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "n"}})).unwrap()
    }

    /// The object a watch deletes right after applying it still reaches every feed, as do
    /// the deletion and everything after it (kube's own feed hung here).
    #[tokio::test]
    async fn a_feed_carries_applies_deletes_and_lists_and_never_stalls() {
        use watcher::Event::*;
        let events = futures::stream::iter(
            [
                Init,
                InitApply(named("a")),
                InitDone,
                Apply(named("b")),
                Delete(named("b")),
                Apply(named("c")),
            ]
            .map(Ok),
        );
        let (store, [mut one, mut two], _task) = run::<CachedPod, 2>("pods", events, keep);
        for feed in [&mut one, &mut two] {
            let mut seen = vec![];
            for _ in 0..4 {
                let next = tokio::time::timeout(Duration::from_secs(5), feed.next()).await;
                seen.push(next.expect("feed stalled").expect("feed open").name_any());
            }
            assert_eq!(seen, ["a", "b", "b", "c"]);
        }
        let mut names: Vec<String> = store.state().iter().map(|p| p.name_any()).collect();
        names.sort();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn an_assumed_pod_stays_until_the_cache_has_it_or_its_instance_ends() {
        let running = vec![Arc::new(instance(None))];
        let assumed = Assumed::default();
        assumed.insert(&pod("p1"));
        // The pod cache lags: the pod still counts, however long that takes.
        assert_eq!(assumed.pending(&[], &running).len(), 1);
        assert_eq!(assumed.pending(&[], &running).len(), 1);
        // The cache has it now: the cache counts it, the assumption goes.
        assert!(
            assumed
                .pending(&[Arc::new(cached("p1"))], &running)
                .is_empty()
        );
        // Its instance finished before the cache saw the pod: the pod went with it.
        assumed.insert(&pod("p2"));
        let done = vec![Arc::new(instance(Some("Expired")))];
        assert!(assumed.pending(&[], &done).is_empty());
    }

    /// A gang's pods are named `<instance>-<rank>`: they stay assumed while their instance
    /// (named by their label) lives. Dropped for want of an instance of their own name,
    /// their GPUs looked free and were booked twice (the scale benchmark caught it).
    #[test]
    fn a_gang_members_assumed_pod_stays_while_its_instance_lives() {
        let member: Pod = serde_json::from_value(json!({"metadata": {
            "name": "a-1", "namespace": "gpu-u", "uid": "m1",
            "labels": {INSTANCE_LABEL: "a"}
        }}))
        .unwrap();
        let assumed = Assumed::default();
        assumed.insert(&member);
        let running = vec![Arc::new(instance(None))];
        assert_eq!(assumed.pending(&[], &running).len(), 1);
        let done = vec![Arc::new(instance(Some("Failed")))];
        assert!(assumed.pending(&[], &done).is_empty());
    }
}
