//! Cost of the pure placement decision (`scheduler::plan`) as nodes and the queue grow:
//! one pass with N nodes and Q queued bookings (most cannot be placed: the cluster is
//! nearly full), and the pass after a large deletion frees a tenth of the nodes.
//!
//!   cargo bench --bench scheduler

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gpu_cloud::scheduler::{
    Booking, InstanceKey, NodeGpus, Snapshot, StartPolicy, UserPolicy, plan,
};
use jiff::Timestamp;

const MODELS: [&str; 3] = [
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-L4",
];

fn snapshot(nodes: usize, queued: usize, free_every: usize) -> Snapshot {
    let nodes_v: Vec<NodeGpus> = (0..nodes)
        .map(|i| NodeGpus {
            name: format!("n{i:05}"),
            model: Some(MODELS[i % 3].into()),
            allocatable: 8,
            ready: true,
            schedulable: true,
            untolerated_taint: None,
        })
        .collect();
    // Every node full except one in `free_every`.
    let used: BTreeMap<String, u32> = nodes_v
        .iter()
        .enumerate()
        .filter(|(i, _)| free_every == 0 || i % free_every != 0)
        .map(|(_, n)| (n.name.clone(), 8))
        .collect();
    let users: BTreeMap<String, UserPolicy> = (0..100)
        .map(|u| (format!("u{u}"), UserPolicy::default()))
        .collect();
    let bookings = (0..queued)
        .map(|i| Booking {
            key: InstanceKey {
                namespace: format!("gpu-u{}", i % 100),
                name: format!("b{i:06}"),
            },
            user: Some(format!("u{}", i % 100)),
            model: MODELS[i % 3].into(),
            count: [1, 2, 4, 8][i % 4],
            priority: (i % 3) as i32,
            created: Timestamp::from_second(1_700_000_000 + i as i64).expect("time"),
            placed_on: None,
            duration: None,
            start: None,
            start_policy: StartPolicy::Exact,
            reserved_on: None,
            started: None,
        })
        .collect();
    Snapshot {
        nodes: nodes_v,
        used,
        users,
        bookings,
        now: Timestamp::UNIX_EPOCH,
    }
}

/// The same cluster at a fixed `now`, with queued bookings of one hour, and `windows`
/// future windows of 2 GPUs for 2 hours spread round robin over the nodes (a node's k-th
/// window starts k x 3 hours from now). `granted`: they already hold their node
/// (`reserved_on`); otherwise they are new requests the pass must place in time.
fn with_windows(mut s: Snapshot, windows: usize, granted: bool) -> Snapshot {
    let now = Timestamp::from_second(1_800_000_000).expect("time");
    s.now = now;
    for b in &mut s.bookings {
        b.duration = Some(Duration::from_secs(3600));
    }
    let nodes = s.nodes.len();
    for i in 0..windows {
        let node = &s.nodes[i % nodes];
        let k = (i / nodes + 1) as i64;
        s.bookings.push(Booking {
            key: InstanceKey {
                namespace: format!("gpu-u{}", i % 100),
                name: format!("w{i:06}"),
            },
            user: Some(format!("u{}", i % 100)),
            model: node.model.clone().unwrap_or_default(),
            count: 2,
            priority: 0,
            created: Timestamp::from_second(1_700_000_000 + i as i64).expect("time"),
            placed_on: None,
            duration: Some(Duration::from_secs(2 * 3600)),
            start: Some(Timestamp::from_second(now.as_second() + k * 3 * 3600).expect("time")),
            start_policy: StartPolicy::EarliestAvailable,
            reserved_on: granted.then(|| node.name.clone()),
            started: None,
        });
    }
    s
}

fn time(label: &str, s: &Snapshot, rounds: u32) {
    let mut total = Duration::ZERO;
    let mut placed = 0;
    let mut reserved = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let p = plan(s);
        total += t.elapsed();
        placed = p.placements.len();
        reserved = p.reservations.len();
    }
    println!(
        "{label}: {:?} per pass ({placed} placed, {reserved} windows granted)",
        total / rounds
    );
}

fn main() {
    for (nodes, queued) in [(1_000, 1_000), (1_000, 10_000), (10_000, 10_000)] {
        time(
            &format!("{nodes} nodes, {queued} queued, cluster full"),
            &snapshot(nodes, queued, 0),
            3,
        );
        time(
            &format!("{nodes} nodes, {queued} queued, 1 in 10 nodes freed"),
            &snapshot(nodes, queued, 10),
            3,
        );
    }
    for (free_every, what) in [(0, "cluster full"), (10, "1 in 10 nodes freed")] {
        for (granted, how) in [(true, "held"), (false, "requested")] {
            time(
                &format!("10000 nodes, 10000 queued (1h), 10000 windows {how}, {what}"),
                &with_windows(snapshot(10_000, 10_000, free_every), 10_000, granted),
                3,
            );
        }
    }
}
