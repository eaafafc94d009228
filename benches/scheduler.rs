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

fn time(label: &str, s: &Snapshot, rounds: u32) {
    let mut total = Duration::ZERO;
    let mut placed = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let p = plan(s);
        total += t.elapsed();
        placed = p.placements.len();
    }
    println!("{label}: {:?} per pass ({placed} placed)", total / rounds);
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
}
