//! The published calendar from the scheduler's side (pure): a [`Snapshot`] made anonymous
//! ([`calendar_of`]) and a snapshot rebuilt from it ([`snapshot_of`]), which the slot search
//! reads as it reads the full one. Slots searched on the rebuilt snapshot are the slots of
//! the full one (property-tested). Times are whole seconds (releases and window ends
//! rounded up, window starts down: never a slot that is not free), which with the
//! aggregation keeps it small: about 300 KiB for 1,000 nodes of 16 GPUs each held by a
//! different booking. The wire format is [`gpu_cloud_api::calendar`].

use std::collections::BTreeMap;
use std::time::Duration;

use gpu_cloud_api::calendar::{Calendar, CalendarNode};
use jiff::Timestamp;

use super::timeline::{NEVER, end_of};
use super::{Booking, InstanceKey, NodeGpus, Snapshot};

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

/// What the scheduler's snapshot says of free and held GPUs over time, without owners
/// (pure). Only nodes labelled with a GPU model appear; bookings still waiting hold
/// nothing and do not appear.
pub fn calendar_of(snapshot: &Snapshot) -> Calendar {
    // Per node name: (model, node) while building, windows keyed by (start, end).
    struct Building<'s> {
        node: &'s NodeGpus,
        model: &'s str,
        releases: Vec<(i64, u32)>,
        windows: Vec<((i64, Option<i64>), u32)>,
    }
    let mut nodes: BTreeMap<(&str, Option<&str>), Building<'_>> = snapshot
        .nodes
        .iter()
        .filter_map(|n| {
            let model = n.model.as_deref()?;
            Some((
                (n.name.as_str(), n.slice.as_deref()),
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
        if b.placed_on.is_some() {
            // As the scheduler's ledger: a placed booking with a known end gives its GPUs
            // back then; one without an end holds them for good (counted in `used`).
            // A spot booking's GPUs are reclaimable: free for what is booked later.
            let end = b.held_until(snapshot.now);
            if end < NEVER {
                for node in b.held_nodes() {
                    if let Some(n) = nodes.get_mut(&(node, b.slice.as_deref())) {
                        add_at(&mut n.releases, ceil_secs(end), b.count);
                    }
                }
            }
            continue;
        }
        // A granted window: on nodes of its own model, with a start (as the ledger reads
        // it); anything else is a request that holds nothing yet.
        let (Some(start), Some(_)) = (b.start, b.reserved_on.as_deref()) else {
            continue;
        };
        let end = end_of(start, b.duration);
        let end = (end < NEVER).then(|| ceil_secs(end));
        for node in b.held_nodes() {
            if let Some(n) = nodes
                .get_mut(&(node, b.slice.as_deref()))
                .filter(|n| n.model == b.model)
            {
                add_at(&mut n.windows, (floor_secs(start), end), b.count);
            }
        }
    }
    let mut models: BTreeMap<String, Vec<CalendarNode>> = BTreeMap::new();
    for ((name, slice), b) in nodes {
        let used = match slice {
            None => snapshot.used.get(name).copied(),
            Some(s) => snapshot
                .used_slices
                .get(&(name.to_owned(), s.to_owned()))
                .copied(),
        };
        models
            .entry(b.model.to_owned())
            .or_default()
            .push(CalendarNode {
                name: name.to_owned(),
                allocatable: b.node.allocatable,
                used: used.unwrap_or(0),
                slice: slice.map(str::to_owned),
                domain: b.node.domain.clone(),
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

/// A snapshot the scheduler's slot search ([`super::next_free_slots`])
/// reads as it reads the full one, at `now` (pure). Held GPUs and windows become
/// bookings without a user; there are no users and no queue.
pub fn snapshot_of(calendar: &Calendar, now: Timestamp) -> Snapshot {
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
    for (model, nodes) in &calendar.models {
        for node in nodes {
            snapshot.nodes.push(NodeGpus {
                name: node.name.clone(),
                model: Some(model.clone()),
                allocatable: node.allocatable,
                ready: node.eligible,
                schedulable: true,
                untolerated_taint: None,
                domain: node.domain.clone(),
                slice: node.slice.clone(),
            });
            if node.used > 0 {
                match &node.slice {
                    None => {
                        snapshot.used.insert(node.name.clone(), node.used);
                    }
                    Some(s) => {
                        snapshot
                            .used_slices
                            .insert((node.name.clone(), s.clone()), node.used);
                    }
                }
            }
            for &(release, count) in &node.releases {
                // Placed, ending at `release`: started then, for no time.
                let n = snapshot.bookings.len();
                snapshot.bookings.push(Booking {
                    placed_on: Some(node.name.clone()),
                    started: Some(at(release)),
                    duration: Some(Duration::ZERO),
                    slice: node.slice.clone(),
                    ..booking(n, model, count)
                });
            }
            for &(start, end, count) in &node.windows {
                let n = snapshot.bookings.len();
                let duration =
                    end.map(|e| Duration::from_secs(e.saturating_sub(start).max(0).unsigned_abs()));
                snapshot.bookings.push(Booking {
                    slice: node.slice.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::next_free_slots;
    use gpu_cloud_api::calendar::parse;
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
            domain: None,
            slice: None,
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
            used_slices: BTreeMap::new(),
            users: BTreeMap::new(),
            bookings: vec![placed, twin, forever, window, queued],
            now: t(0),
            preemption: false,
        }
    }

    #[test]
    fn the_calendar_sums_per_node_and_names_no_one() {
        let cal = calendar_of(&sample());
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
        let back = snapshot_of(&calendar_of(&snap), snap.now);
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
        let cal = calendar_of(&snap);
        let h = &cal.models["H100"];
        assert_eq!(h[0].releases, [(T0 + 3000, 2), (T0 + 3001, 2)]);
        assert_eq!(h[1].windows, [(T0 + 7200, Some(T0 + 10801), 4)]);
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
        let size = serde_json::to_string(&calendar_of(&snap)).unwrap().len();
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
                used_slices: BTreeMap::new(),
                users: BTreeMap::new(),
                bookings,
                now: t(0),
                preemption: false,
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
            let json = serde_json::to_string(&calendar_of(&snap)).unwrap();
            let cal = parse(&json).unwrap();
            let mut at_later = snap.clone();
            at_later.now = t(later);
            let back = snapshot_of(&cal, t(later));
            prop_assert_eq!(
                next_free_slots(&back, model, count, duration, t(from), 4),
                next_free_slots(&at_later, model, count, duration, t(from), 4)
            );
        }
    }
}
