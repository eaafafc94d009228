//! Criterion micro-benchmarks of the pure placement decision, `scheduler::plan(&Snapshot)`
//! (no API server: the snapshot is built once, outside the timed loop; each iteration is
//! one whole pass, including the waiting bookings' messages and dropping the plan).
//!
//! - `one decision`: 1k and 10k nodes of 8 GPUs, 10k queued bookings; the cluster full
//!   (nothing placeable), and full but for one free GPU (one booking is placed: two sweeps).
//! - `queue drained after a large deletion`: the same, with 1 in 10 nodes freed: the pass
//!   that places everything that fits.
//! - `gangs`: 1k nodes in NVLink cliques of 8, 10k queued of which 1 in 10 is a gang of
//!   2 to 8 whole nodes (half of them requiring one clique); full, 1 in 10 freed, empty.
//! - `growth by queue length` (1k nodes) and `growth by nodes` (10k queued): both cases over
//!   1k, 2k, 5k and 10k; the throughput (elements per second, the element being a queued
//!   booking or a node) stays flat where the cost grows linearly.
//!
//!   cargo bench --bench scheduler
//!   cargo bench --bench scheduler -- 'growth by nodes'   # one group
//!
//! About a minute on 2 cores. Each case takes 10 samples of equal size (flat sampling), so
//! the middle figure on criterion's `time:` line is the mean; the median is in
//! `target/criterion/<group>/<case>/new/estimates.json`. `cargo test --all-targets` runs
//! every case once, unoptimised, as a smoke test (about 2 s).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use gpu_cloud_core::scheduler::{
    Booking, InstanceKey, NodeGpus, Snapshot, StartPolicy, Topology, UserPolicy, plan,
};
use jiff::Timestamp;

const MODELS: [&str; 3] = [
    "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-A100-SXM4-80GB",
    "NVIDIA-L4",
];

/// How full the cluster is.
#[derive(Clone, Copy)]
enum Fill {
    /// Every GPU in use.
    Full,
    /// Every GPU in use but one, on the last H100 node: the H100 queue's head (1 GPU) fits.
    OneFreeGpu,
    /// Every node full except one in `n`, which is empty.
    FreeEvery(usize),
}

/// `nodes` nodes of 8 GPUs (the three models in turn) and `queued` waiting bookings of
/// 1, 2, 4 or 8 GPUs from 100 users. Priority follows the model (L4 2, A100 1, H100 0),
/// so each model's queue is headed by booking 0 (H100, 1 GPU), 1 (A100, 2) or 2 (L4, 4).
fn snapshot(nodes: usize, queued: usize, fill: Fill) -> Snapshot {
    let nodes_v: Vec<NodeGpus> = (0..nodes)
        .map(|i| NodeGpus {
            name: format!("n{i:05}"),
            model: Some(MODELS[i % 3].into()),
            allocatable: 8,
            ready: true,
            schedulable: true,
            untolerated_taint: None,
            domain: None,
            slice: None,
        })
        .collect();
    let last_h100 = (nodes - 1) / 3 * 3;
    let used: BTreeMap<String, u32> = nodes_v
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let used = match fill {
                Fill::Full => 8,
                Fill::OneFreeGpu if i == last_h100 => 7,
                Fill::OneFreeGpu => 8,
                Fill::FreeEvery(every) if i % every == 0 => return None,
                Fill::FreeEvery(_) => 8,
            };
            Some((n.name.clone(), used))
        })
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
            ..Booking::default()
        })
        .collect();
    Snapshot {
        nodes: nodes_v,
        used,
        used_slices: BTreeMap::new(),
        users,
        bookings,
        now: Timestamp::UNIX_EPOCH,
        preemption: false,
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
            ..Booking::default()
        });
    }
    s
}

/// Builds the snapshot and checks that the case measures what it says it does.
fn case(nodes: usize, queued: usize, fill: Fill) -> Snapshot {
    let s = snapshot(nodes, queued, fill);
    let placed = plan(&s).placements.len();
    match fill {
        Fill::Full => assert_eq!(placed, 0, "a full cluster places nothing"),
        Fill::OneFreeGpu => assert_eq!(placed, 1, "one free GPU places one booking"),
        Fill::FreeEvery(_) => assert!(placed > 0, "freed nodes take bookings"),
    }
    s
}

fn one_decision(c: &mut Criterion) {
    let mut g = group(c, "one decision");
    for nodes in [1_000, 10_000] {
        let s = case(nodes, 10_000, Fill::Full);
        g.bench_function(
            BenchmarkId::new("cluster full, 10k queued", format!("{nodes} nodes")),
            |b| b.iter(|| plan(black_box(&s))),
        );
        let s = case(nodes, 10_000, Fill::OneFreeGpu);
        g.bench_function(
            BenchmarkId::new("one free GPU, 10k queued", format!("{nodes} nodes")),
            |b| b.iter(|| plan(black_box(&s))),
        );
    }
    g.finish();
}

fn drained_after_deletion(c: &mut Criterion) {
    let mut g = group(c, "queue drained after a large deletion");
    for nodes in [1_000, 10_000] {
        let s = case(nodes, 10_000, Fill::FreeEvery(10));
        g.bench_function(
            BenchmarkId::new("1 in 10 nodes freed, 10k queued", format!("{nodes} nodes")),
            |b| b.iter(|| plan(black_box(&s))),
        );
    }
    g.finish();
}

/// Booking ahead (issue #9): 10,000 windows on 10,000 nodes beside 10,000 queued bookings
/// of an hour, the windows already held or all asked for in this pass.
fn time_windows(c: &mut Criterion) {
    let mut g = group(c, "10k windows, 10k nodes, 10k queued (1h)");
    for (fill, what) in [
        (Fill::Full, "cluster full"),
        (Fill::FreeEvery(10), "1 in 10 freed"),
    ] {
        for (granted, how) in [(true, "held"), (false, "requested")] {
            let s = with_windows(snapshot(10_000, 10_000, fill), 10_000, granted);
            g.bench_function(BenchmarkId::new(format!("windows {how}"), what), |b| {
                b.iter(|| plan(black_box(&s)))
            });
        }
    }
    g.finish();
}

/// Preemption (issue #15): 1,000 full nodes, each running a spot booking of 2 GPUs and a
/// borrowed one of 6 (a user without a guarantee who borrows), 10,000 queued; with
/// preemption the pass picks victims for the heads of the queues, without it (today's
/// controller) it only finds that nothing fits.
fn preempting(nodes: usize, queued: usize, on: bool) -> Snapshot {
    let mut s = snapshot(nodes, queued, Fill::Full);
    s.preemption = on;
    s.users.insert(
        "lender".into(),
        UserPolicy {
            max_gpus: Some(0),
            borrow_gpus: u32::MAX / 2,
            ..UserPolicy::default()
        },
    );
    s.users.insert(
        "spot".into(),
        UserPolicy {
            max_spot_gpus: u32::MAX / 2,
            ..UserPolicy::default()
        },
    );
    let started = Timestamp::from_second(1_600_000_000).expect("time");
    for (i, n) in s.nodes.clone().iter().enumerate() {
        for (user, count, spot) in [("spot", 2, true), ("lender", 6, false)] {
            let key = InstanceKey {
                namespace: format!("gpu-{user}"),
                name: format!("{user}-{i:05}"),
            };
            let mut b = Booking::new(
                key,
                Some(user.into()),
                n.model.as_deref().unwrap_or_default(),
                count,
                started,
            );
            b.placed_on = Some(n.name.clone());
            b.started = Some(started);
            b.preemptible = spot;
            s.bookings.push(b);
        }
    }
    let p = plan(&s);
    assert_eq!(
        p.preemptions.is_empty(),
        !on,
        "preemption {on}: {} preempted",
        p.preemptions.len()
    );
    s
}

fn preemption(c: &mut Criterion) {
    let mut g = group(c, "preemption (1k full nodes, 10k queued)");
    for (on, name) in [(false, "without (today)"), (true, "with preemption")] {
        let s = preempting(1_000, 10_000, on);
        g.bench_function(name, |b| b.iter(|| plan(black_box(&s))));
    }
    g.finish();
}

/// Gangs and topology (issue #16): the nodes in NVLink cliques of 8, and one booking in 10
/// a gang of 2 to 8 whole nodes (every other one requiring one clique).
fn with_gangs(mut s: Snapshot) -> Snapshot {
    for (i, n) in s.nodes.iter_mut().enumerate() {
        n.domain = Some(format!("nvidia.com/gpu.clique=c{:03}", i / 8));
    }
    for (i, b) in s.bookings.iter_mut().enumerate() {
        if i % 10 == 5 {
            b.nodes = 2 + (i / 10 % 7) as u32;
            b.count = 8;
            if i % 20 == 5 {
                b.topology = Topology::Required;
            }
        }
    }
    s
}

fn gangs(c: &mut Criterion) {
    let mut g = group(
        c,
        "gangs (1k nodes in cliques of 8, 10k queued, 1 in 10 a gang of 2-8)",
    );
    for (fill, what) in [
        (Fill::Full, "cluster full"),
        (Fill::FreeEvery(10), "1 in 10 freed"),
        (Fill::FreeEvery(1), "cluster empty"),
    ] {
        let s = with_gangs(snapshot(1_000, 10_000, fill));
        let p = plan(&s);
        let gangs = p
            .placements
            .iter()
            .filter(|(_, nodes)| nodes.len() > 1)
            .count();
        match fill {
            Fill::Full => assert!(p.placements.is_empty(), "a full cluster places nothing"),
            // The free nodes go to the heads of the queues, single-node bookings first.
            Fill::FreeEvery(10) => assert!(!p.placements.is_empty(), "{what}: placements"),
            _ => assert!(gangs > 0, "{what}: gangs are placed"),
        }
        g.bench_function(what, |b| b.iter(|| plan(black_box(&s))));
    }
    g.finish();
}

const SIZES: [usize; 4] = [1_000, 2_000, 5_000, 10_000];

fn growth_by_queue(c: &mut Criterion) {
    let mut g = group(c, "growth by queue length (1k nodes)");
    for queued in SIZES {
        g.throughput(Throughput::Elements(queued as u64));
        for (name, fill) in [
            ("cluster full", Fill::Full),
            ("1 in 10 freed", Fill::FreeEvery(10)),
        ] {
            let s = case(1_000, queued, fill);
            g.bench_with_input(BenchmarkId::new(name, queued), &s, |b, s| {
                b.iter(|| plan(black_box(s)))
            });
        }
    }
    g.finish();
}

fn growth_by_nodes(c: &mut Criterion) {
    let mut g = group(c, "growth by nodes (10k queued)");
    for nodes in SIZES {
        g.throughput(Throughput::Elements(nodes as u64));
        for (name, fill) in [
            ("cluster full", Fill::Full),
            ("1 in 10 freed", Fill::FreeEvery(10)),
        ] {
            let s = case(nodes, 10_000, fill);
            g.bench_with_input(BenchmarkId::new(name, nodes), &s, |b, s| {
                b.iter(|| plan(black_box(s)))
            });
        }
    }
    g.finish();
}

/// Passes take milliseconds: few samples and a short measurement, so that the whole run
/// stays within a few minutes on 2 cores.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// A group of slow cases: flat sampling (every sample the same number of passes).
fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_decision, drained_after_deletion, growth_by_queue, growth_by_nodes, time_windows, preemption, gangs
}
criterion_main!(benches);
