//! GPU slices: MIG profiles and time-sliced shares are pools of their own on a node, each
//! a queue of its own; quotas count a slice as its fraction of a GPU.

use super::*;

const A100: &str = "NVIDIA-A100-SXM4-80GB";

fn pool(name: &str, slice: &str, n: u32) -> NodeGpus {
    NodeGpus {
        slice: Some(slice.into()),
        ..node(name, A100, n)
    }
}

fn slices(name: &str, user: &str, slice: &str, count: u32, t: i64) -> Booking {
    Booking {
        slice: Some(slice.into()),
        unit_milli: gpu_cloud_api::slice_milli(slice),
        ..booking(name, user, A100, count, t)
    }
}

#[test]
fn a_mig_booking_takes_slices_of_its_profile_and_never_whole_gpus() {
    // A MIG node: no whole GPU left, seven 1g.10gb and no 3g.40gb free; and a whole node.
    let mut s = snapshot(
        vec![
            node("mig-0", A100, 0),
            pool("mig-0", "1g.10gb", 7),
            pool("mig-0", "3g.40gb", 1),
            node("whole-0", A100, 8),
        ],
        vec![
            slices("small", "u", "1g.10gb", 3, 1),
            slices("big", "u", "3g.40gb", 1, 2),
            slices("more", "u", "1g.10gb", 5, 3),
        ],
    );
    s.used_slices.insert(("mig-0".into(), "3g.40gb".into()), 1);
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("small", "mig-0")]);
    let reasons: Vec<(&str, &Wait)> = p
        .waiting
        .iter()
        .map(|w| (w.key.name.as_str(), &w.wait))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("big", &Wait::Capacity { largest_free: 0 }),
            ("more", &Wait::Capacity { largest_free: 4 }),
        ]
    );
    assert_eq!(
        p.waiting[0].message,
        format!("waiting for 1 x {A100} 3g.40gb: none free, 0 ahead")
    );
    // A profile no node has is unknown, not a wait for whole GPUs.
    let s = snapshot(
        vec![node("whole-0", A100, 8)],
        vec![slices("x", "u", "2g.20gb", 1, 1)],
    );
    assert_eq!(plan(&s).waiting[0].wait, Wait::UnknownModel);
}

#[test]
fn time_sliced_shares_fill_a_gpu_up_to_its_replicas() {
    let s = snapshot(
        vec![pool("ts-0", "shared", 4)],
        (0..5)
            .map(|i| slices(&format!("nb{i}"), "u", "shared", 1, i))
            .collect(),
    );
    let p = plan(&s);
    assert_eq!(p.placements.len(), 4);
    assert_eq!(p.waiting[0].key.name, "nb4");
}

#[test]
fn quotas_count_a_slice_as_its_fraction_of_a_gpu() {
    let user = UserPolicy {
        max_gpus: Some(1),
        ..Default::default()
    };
    // Seven 1g.10gb are 7 x 143 = 1001 thousandths: over a 1-GPU quota, six are not.
    let mut s = snapshot(
        vec![pool("mig-0", "1g.10gb", 7)],
        vec![slices("seven", "u", "1g.10gb", 7, 1)],
    );
    s.users.insert("u".into(), user.clone());
    assert_eq!(plan(&s).waiting[0].wait, Wait::OverQuotaLimit { max: 1 });
    s.bookings = vec![
        slices("six", "u", "1g.10gb", 6, 1),
        slices("one-more", "u", "1g.10gb", 1, 2),
    ];
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("six", "mig-0")]);
    assert_eq!(
        p.waiting[0].wait,
        Wait::GpuQuota {
            in_use_milli: 858,
            max: 1
        }
    );
    assert!(
        p.waiting[0].message.contains("holds 0.86 of 1 GPUs"),
        "{}",
        p.waiting[0].message
    );
    // Four shares are one GPU.
    let mut s = snapshot(
        vec![pool("ts-0", "shared", 8)],
        (0..5)
            .map(|i| slices(&format!("nb{i}"), "u", "shared", 1, i))
            .collect(),
    );
    s.users.insert("u".into(), user);
    assert_eq!(plan(&s).placements.len(), 4);
}

#[test]
fn the_calendar_keeps_slices_apart() {
    let mut s = snapshot(
        vec![node("mig-0", A100, 2), pool("mig-0", "1g.10gb", 7)],
        vec![],
    );
    s.used.insert("mig-0".into(), 2);
    s.used_slices.insert(("mig-0".into(), "1g.10gb".into()), 3);
    let back = published::snapshot_of(&published::calendar_of(&s), s.now);
    let want = |slice| SlotWant {
        model: A100,
        slice,
        count: 4,
        nodes: 1,
        topology: Topology::Preferred,
        duration: None,
    };
    assert_eq!(free_slots(&back, &want(Some("1g.10gb")), s.now, 1).len(), 1);
    assert!(free_slots(&back, &want(None), s.now, 1).is_empty());
}
