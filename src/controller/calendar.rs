//! The published GPU calendar: what `kubectl gpu slots` needs to find free windows, and
//! nothing that says whose they are.
//!
//! A user may not list nodes, pods or anyone else's instances, yet "when are 4 H100s free
//! for 8 hours?" depends on all of them. So after each placement pass the controller
//! publishes an anonymized summary of the scheduler's [`Snapshot`] as the ConfigMap
//! [`CONFIGMAP`] (key [`KEY`]) in its own namespace, which every authenticated identity may
//! `get` (the chart's `gpu-cloud-calendar-reader` Role): per node its name, model, GPUs,
//! GPUs held now, whether it takes new work, when held GPUs come back (summed per node and
//! time) and the granted windows (summed per node, start and end). No user, namespace or
//! instance name is in it.
//!
//! [`Calendar::from_snapshot`] and [`Calendar::to_snapshot`] are pure; slots searched on
//! the rebuilt snapshot with [`crate::scheduler::next_free_slots`] are the slots of the
//! full one (property-tested). Times are whole seconds (releases and window ends rounded
//! up, window starts down: never a slot that is not free), which with the aggregation keeps
//! it small: about 300 KiB for 1,000 nodes of 16 GPUs each held by a different booking.
//!
//! [`publish`] writes it only when it changed, and at most every [`MIN_INTERVAL`]. The
//! throttle is in memory ([`Publisher`]): a restarted controller simply writes it again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

use crate::scheduler::calendar::{NEVER, end_of};
use crate::scheduler::{Booking, InstanceKey, NodeGpus, Snapshot};

/// Name of the ConfigMap the calendar is published in (the controller's namespace).
pub const CONFIGMAP: &str = "gpu-cloud-calendar";
/// Its key holding the JSON.
pub const KEY: &str = "calendar.json";
/// Least time between two writes of the calendar.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a write may take before it is given up (until the next pass).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Free and held GPUs over time, per node, without owners.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Calendar {
    /// When the controller took it (its clock).
    pub generated_at: Timestamp,
    /// GPU nodes by model (the `nvidia.com/gpu.product` label), each list by node name.
    pub models: BTreeMap<String, Vec<CalendarNode>>,
}

/// One GPU node's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalendarNode {
    /// Node name.
    pub name: String,
    /// Allocatable `nvidia.com/gpu`.
    pub allocatable: u32,
    /// GPUs held now by pods that have not finished (anyone's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub used: u32,
    /// It takes new GPU pods (Ready, not cordoned, no taint in the way).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub eligible: bool,
    /// Held GPUs coming back: `[unix seconds, GPUs]`, by time, one entry per time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<(i64, u32)>,
    /// Granted windows: `[start, end or null for no end, GPUs]` in unix seconds, by start,
    /// one entry per start and end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<(i64, Option<i64>, u32)>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// `t` in whole seconds, rounded down.
fn floor_secs(t: Timestamp) -> i64 {
    t.as_second()
}

/// `t` in whole seconds, rounded up.
fn ceil_secs(t: Timestamp) -> i64 {
    let s = t.as_second();
    if t.subsec_nanosecond() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(NEVER)
}

/// Adds `count` at `key`, keeping `v` sorted and one entry per key.
fn add_at<K: Ord + Copy>(v: &mut Vec<(K, u32)>, key: K, count: u32) {
    match v.binary_search_by(|e| e.0.cmp(&key)) {
        Ok(i) => v[i].1 = v[i].1.saturating_add(count),
        Err(i) => v.insert(i, (key, count)),
    }
}

impl Calendar {
    /// What the scheduler's snapshot says of free and held GPUs over time, without owners
    /// (pure). Only nodes labelled with a GPU model appear; bookings still waiting hold
    /// nothing and do not appear.
    pub fn from_snapshot(snapshot: &Snapshot) -> Calendar {
        // Per node name: (model, node) while building, windows keyed by (start, end).
        struct Building<'s> {
            node: &'s NodeGpus,
            model: &'s str,
            releases: Vec<(i64, u32)>,
            windows: Vec<((i64, Option<i64>), u32)>,
        }
        let mut nodes: BTreeMap<&str, Building<'_>> = snapshot
            .nodes
            .iter()
            .filter_map(|n| {
                let model = n.model.as_deref()?;
                Some((
                    n.name.as_str(),
                    Building {
                        node: n,
                        model,
                        releases: vec![],
                        windows: vec![],
                    },
                ))
            })
            .collect();
        for b in &snapshot.bookings {
            if let Some(node) = &b.placed_on {
                // As the scheduler's ledger: a placed booking with a known end gives its GPUs
                // back then; one without an end holds them for good (counted in `used`).
                let end = b.started.map_or(NEVER, |s| end_of(s, b.duration));
                if let (true, Some(n)) = (end < NEVER, nodes.get_mut(node.as_str())) {
                    add_at(&mut n.releases, ceil_secs(end), b.count);
                }
                continue;
            }
            // A granted window: on a node of its own model, with a start (as the ledger
            // reads it); anything else is a request that holds nothing yet.
            let (Some(start), Some(node)) = (b.start, b.reserved_on.as_deref()) else {
                continue;
            };
            let Some(n) = nodes.get_mut(node).filter(|n| n.model == b.model) else {
                continue;
            };
            let end = end_of(start, b.duration);
            let end = (end < NEVER).then(|| ceil_secs(end));
            add_at(&mut n.windows, (floor_secs(start), end), b.count);
        }
        let mut models: BTreeMap<String, Vec<CalendarNode>> = BTreeMap::new();
        for (name, b) in nodes {
            models
                .entry(b.model.to_owned())
                .or_default()
                .push(CalendarNode {
                    name: name.to_owned(),
                    allocatable: b.node.allocatable,
                    used: snapshot.used.get(name).copied().unwrap_or(0),
                    eligible: b.node.eligible(),
                    releases: b.releases,
                    windows: b.windows.into_iter().map(|((s, e), c)| (s, e, c)).collect(),
                });
        }
        Calendar {
            generated_at: snapshot.now,
            models,
        }
    }

    /// A snapshot the scheduler's slot search ([`crate::scheduler::next_free_slots`])
    /// reads as it reads the full one, at `now` (pure). Held GPUs and windows become
    /// bookings without a user; there are no users and no queue.
    pub fn to_snapshot(&self, now: Timestamp) -> Snapshot {
        let mut snapshot = Snapshot {
            now,
            ..Snapshot::default()
        };
        let booking = |n: usize, model: &str, count: u32| {
            let key = InstanceKey {
                namespace: String::new(),
                name: format!("calendar-{n}"),
            };
            Booking::new(key, None, model, count, Timestamp::UNIX_EPOCH)
        };
        for (model, nodes) in &self.models {
            for node in nodes {
                snapshot.nodes.push(NodeGpus {
                    name: node.name.clone(),
                    model: Some(model.clone()),
                    allocatable: node.allocatable,
                    ready: node.eligible,
                    schedulable: true,
                    untolerated_taint: None,
                });
                if node.used > 0 {
                    snapshot.used.insert(node.name.clone(), node.used);
                }
                for &(release, count) in &node.releases {
                    // Placed, ending at `release`: started then, for no time.
                    let n = snapshot.bookings.len();
                    snapshot.bookings.push(Booking {
                        placed_on: Some(node.name.clone()),
                        started: Some(at(release)),
                        duration: Some(Duration::ZERO),
                        ..booking(n, model, count)
                    });
                }
                for &(start, end, count) in &node.windows {
                    let n = snapshot.bookings.len();
                    let duration = end.map(|e| {
                        Duration::from_secs(e.saturating_sub(start).max(0).unsigned_abs())
                    });
                    snapshot.bookings.push(Booking {
                        reserved_on: Some(node.name.clone()),
                        start: Some(at(start)),
                        duration,
                        ..booking(n, model, count)
                    });
                }
            }
        }
        snapshot
    }

    /// The calendar without its time stamp, to tell whether anything changed.
    fn same_as(&self, other: &Calendar) -> bool {
        self.models == other.models
    }
}

/// Should a calendar be written now (pure)? Only when it differs from the last one written,
/// and not within [`MIN_INTERVAL`] of the last write (or attempt).
pub fn due(
    last: Option<&Calendar>,
    last_write: Option<Instant>,
    new: &Calendar,
    now: Instant,
) -> bool {
    let changed = last.is_none_or(|l| !l.same_as(new));
    let rested = last_write.is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL);
    changed && rested
}

/// The throttle of [`publish`]: what was written last, and when a write was last tried.
/// Kept in the controller's [`super::Context`]; empty after a restart, so the first pass
/// writes the calendar again.
#[derive(Debug, Default)]
pub struct Publisher {
    state: Mutex<PublishState>,
}

#[derive(Debug, Default)]
struct PublishState {
    written: Option<Calendar>,
    tried_at: Option<Instant>,
}

/// The ConfigMap holding `calendar` (pure).
pub fn config_map(namespace: &str, calendar: &Calendar) -> Result<ConfigMap, serde_json::Error> {
    let json = serde_json::to_string(calendar)?;
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "gpu-cloud", "app.kubernetes.io/component": "calendar"},
        },
        "data": {KEY: json},
    }))
}

/// Publishes the calendar of `snapshot` as the ConfigMap [`CONFIGMAP`] in the controller's
/// namespace (`--lease-namespace`, from `POD_NAMESPACE` in a pod), when it changed and at
/// most every [`MIN_INTERVAL`]. Never fails the pass: a failed write is logged and tried
/// again on a pass at least [`MIN_INTERVAL`] later.
pub async fn publish(ctx: &super::Context, snapshot: &Snapshot) {
    let now = Instant::now();
    {
        // Resting: not even worth working the calendar out (a pass runs many times a
        // second in a burst, and this is linear in the bookings).
        let state = ctx.calendar.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .tried_at
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return;
        }
    }
    let calendar = Calendar::from_snapshot(snapshot);
    {
        let mut state = ctx.calendar.state.lock().unwrap_or_else(|p| p.into_inner());
        let write = due(state.written.as_ref(), state.tried_at, &calendar, now);
        // Looked at now, written or not: the next look is a rest away.
        state.tried_at = Some(now);
        if !write {
            return;
        }
    }
    let ns = &ctx.args.lease_namespace;
    let written = write(&ctx.client, ns, &calendar).await;
    match written {
        Ok(()) => {
            let mut state = ctx.calendar.state.lock().unwrap_or_else(|p| p.into_inner());
            state.written = Some(calendar);
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, configmap = CONFIGMAP, error = %e, "cannot publish the GPU calendar")
        }
    }
}

async fn write(client: &kube::Client, ns: &str, calendar: &Calendar) -> Result<(), String> {
    let cm = config_map(ns, calendar).map_err(|e| e.to_string())?;
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let params = PatchParams::apply(super::FIELD_MANAGER).force();
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        api.patch(CONFIGMAP, &params, &Patch::Apply(&cm)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
    }
}

/// Reads a published calendar (what `kubectl gpu slots` does with the ConfigMap's data).
pub fn parse(json: &str) -> Result<Calendar, serde_json::Error> {
    serde_json::from_str(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::next_free_slots;
    use jiff::SignedDuration;
    use proptest::prelude::*;

    const T0: i64 = 1_795_000_000; // 2026-11-18, whole seconds

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(T0 + s).unwrap()
    }

    fn node(name: &str, model: &str, gpus: u32, eligible: bool) -> NodeGpus {
        NodeGpus {
            name: name.into(),
            model: Some(model.into()),
            allocatable: gpus,
            ready: eligible,
            schedulable: true,
            untolerated_taint: None,
        }
    }

    fn booking(name: &str, user: &str, model: &str, count: u32) -> Booking {
        let key = InstanceKey {
            namespace: format!("gpu-{user}"),
            name: name.into(),
        };
        Booking::new(key, Some(user.into()), model, count, t(-1000))
    }

    fn sample() -> Snapshot {
        let h = Some(Duration::from_secs(3600));
        let mut placed = booking("secret-job", "alice", "H100", 2);
        placed.placed_on = Some("h-0".into());
        placed.started = Some(t(-600));
        placed.duration = h;
        let mut twin = placed.clone();
        twin.key.name = "twin".into();
        let mut forever = booking("forever", "bob", "H100", 1);
        forever.placed_on = Some("h-1".into());
        let mut window = booking("ahead", "carol", "H100", 4);
        window.reserved_on = Some("h-1".into());
        window.start = Some(t(7200));
        window.duration = h;
        let mut queued = booking("queued", "dave", "H100", 8);
        queued.start = Some(t(100));
        Snapshot {
            nodes: vec![
                node("h-0", "H100", 8, true),
                node("h-1", "H100", 8, true),
                node("l4-0", "L4", 1, false),
                NodeGpus {
                    model: None,
                    ..node("cpu-0", "-", 0, true)
                },
            ],
            used: [("h-0".to_owned(), 4), ("h-1".to_owned(), 1)].into(),
            users: BTreeMap::new(),
            bookings: vec![placed, twin, forever, window, queued],
            now: t(0),
        }
    }

    #[test]
    fn the_calendar_sums_per_node_and_names_no_one() {
        let cal = Calendar::from_snapshot(&sample());
        let json = serde_json::to_string(&cal).unwrap();
        for secret in [
            "alice",
            "bob",
            "carol",
            "dave",
            "gpu-",
            "secret-job",
            "ahead",
            "cpu-0",
        ] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        let h = &cal.models["H100"];
        assert_eq!(h[0].releases, [(T0 + 3000, 4)], "two bookings, one entry");
        assert_eq!(h[1].windows, [(T0 + 7200, Some(T0 + 10800), 4)]);
        assert!(!cal.models["L4"][0].eligible);
        assert_eq!(parse(&json).unwrap(), cal);
        assert!(
            json.contains(r#"{"name":"l4-0","allocatable":1,"eligible":false}"#),
            "{json}"
        );
    }

    #[test]
    fn slots_from_the_calendar_are_the_slots_of_the_cluster() {
        let snap = sample();
        let back = Calendar::from_snapshot(&snap).to_snapshot(snap.now);
        let h4 = Some(Duration::from_secs(4 * 3600));
        for (count, duration) in [
            (1, h4),
            (4, h4),
            (6, Some(Duration::from_secs(60))),
            (8, None),
        ] {
            let want = next_free_slots(&snap, "H100", count, duration, snap.now, 5);
            let got = next_free_slots(&back, "H100", count, duration, snap.now, 5);
            assert_eq!(got, want, "{count} for {duration:?}");
        }
        assert!(next_free_slots(&back, "L4", 1, h4, snap.now, 5).is_empty());
    }

    #[test]
    fn times_round_so_that_no_slot_is_promised_early() {
        let mut snap = sample();
        let half = SignedDuration::from_millis(500);
        snap.bookings[0].started = Some(t(-600).checked_add(half).unwrap());
        snap.bookings[3].start = Some(t(7200).checked_add(half).unwrap());
        let cal = Calendar::from_snapshot(&snap);
        let h = &cal.models["H100"];
        assert_eq!(h[0].releases, [(T0 + 3000, 2), (T0 + 3001, 2)]);
        assert_eq!(h[1].windows, [(T0 + 7200, Some(T0 + 10801), 4)]);
    }

    #[test]
    fn it_is_written_when_it_changed_and_not_more_often_than_every_10_s() {
        let snap = sample();
        let cal = Calendar::from_snapshot(&snap);
        let t0 = Instant::now();
        assert!(due(None, None, &cal, t0), "first pass after a start");
        let later = Calendar {
            generated_at: t(5),
            ..cal.clone()
        };
        assert!(
            !due(Some(&cal), Some(t0), &later, t0 + Duration::from_secs(60)),
            "only the time changed"
        );
        let mut changed = later.clone();
        changed.models.get_mut("H100").unwrap()[0].used = 8;
        assert!(!due(
            Some(&cal),
            Some(t0),
            &changed,
            t0 + Duration::from_secs(9)
        ));
        assert!(due(Some(&cal), Some(t0), &changed, t0 + MIN_INTERVAL));
        // A failed write leaves `last` as it was: tried again after the interval.
        assert!(due(None, Some(t0), &cal, t0 + MIN_INTERVAL));
    }

    #[test]
    fn the_config_map_stays_small_at_1000_nodes_of_16_gpus() {
        let mut snap = Snapshot {
            now: t(0),
            ..Snapshot::default()
        };
        for i in 0..1000 {
            let name = format!("gpu-node-{i:04}");
            snap.nodes
                .push(node(&name, "NVIDIA-H100-80GB-HBM3", 16, true));
            snap.used.insert(name.clone(), 16);
            for g in 0..16 {
                // Every GPU held by a different booking ending at a different time.
                let mut b = booking(&format!("b{i}-{g}"), "u", "NVIDIA-H100-80GB-HBM3", 1);
                b.placed_on = Some(name.clone());
                b.started = Some(
                    t(-(i * 16 + g))
                        .checked_add(SignedDuration::from_millis(123))
                        .unwrap(),
                );
                b.duration = Some(Duration::from_secs(8 * 3600));
                snap.bookings.push(b);
            }
        }
        let cm = config_map("gpu-cloud", &Calendar::from_snapshot(&snap)).unwrap();
        let size = cm.data.unwrap()[KEY].len();
        assert!(size < 400 * 1024, "{size} bytes");
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        let nodes = prop::collection::vec((0usize..2, 0u32..9, any::<bool>(), 0u32..10), 1..5);
        // (placed?, node, model, count, start offset, duration (None: no end), start set?)
        let bookings = prop::collection::vec(
            (
                0u8..3,
                0usize..5,
                0usize..2,
                1u32..5,
                -200i64..400,
                prop::option::of(1u64..300),
                any::<bool>(),
            ),
            0..12,
        );
        (nodes, bookings).prop_map(|(nodes, bookings)| {
            const MODELS: [&str; 2] = ["A", "B"];
            let nodes: Vec<NodeGpus> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (m, gpus, eligible, used))| {
                    let mut n = node(&format!("n{i}"), MODELS[m], gpus, eligible);
                    // Some with no model at all, and some with GPUs of a taint.
                    if used == 9 {
                        n.model = None;
                    }
                    if used == 8 {
                        n.untolerated_taint = Some("x=y:NoSchedule".into());
                    }
                    n
                })
                .collect();
            let used = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), (i as u32 * 3) % (n.allocatable + 2)))
                .collect();
            let n = nodes.len();
            let bookings = bookings
                .into_iter()
                .enumerate()
                .map(
                    |(i, (kind, node, model, count, offset, secs, with_start))| {
                        let mut b = booking(&format!("b{i}"), "u", MODELS[model], count);
                        b.duration = secs.map(Duration::from_secs);
                        let name = format!("n{}", node % (n + 1)); // n{n}: a node that is gone
                        match kind {
                            0 => {
                                b.placed_on = Some(name);
                                b.started = with_start.then(|| t(offset));
                            }
                            1 => {
                                b.reserved_on = Some(name);
                                b.start = with_start.then(|| t(offset));
                            }
                            _ => b.start = with_start.then(|| t(offset)),
                        }
                        b
                    },
                )
                .collect();
            Snapshot {
                nodes,
                used,
                users: BTreeMap::new(),
                bookings,
                now: t(0),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn slots_from_the_published_calendar_equal_slots_from_the_snapshot(
            snap in arb_snapshot(),
            model in 0usize..2,
            count in 1u32..9,
            secs in prop::option::of(1u64..500),
            from in -50i64..500,
            later in 0i64..100,
        ) {
            let model = ["A", "B"][model];
            let duration = secs.map(Duration::from_secs);
            // Through JSON, as the plugin reads it, and looked at a little later than taken.
            let json = serde_json::to_string(&Calendar::from_snapshot(&snap)).unwrap();
            let cal = parse(&json).unwrap();
            let mut at_later = snap.clone();
            at_later.now = t(later);
            let back = cal.to_snapshot(t(later));
            prop_assert_eq!(
                next_free_slots(&back, model, count, duration, t(from), 4),
                next_free_slots(&at_later, model, count, duration, t(from), 4)
            );
        }
    }
}
