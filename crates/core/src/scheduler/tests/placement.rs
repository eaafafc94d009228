//! Placing now: best fit, order, no overtaking, quota, impossible bookings.

use super::*;

#[test]
fn best_fit_picks_the_node_left_with_fewest_free() {
    let mut s = snapshot(
        vec![node("a", H100, 8), node("b", H100, 8), node("c", L4, 1)],
        vec![booking("x", "u", H100, 2, 1)],
    );
    s.used.insert("b".into(), 5); // b has 3 free, a has 8
    assert_eq!(placed(&plan(&s)), vec![("x", "b")]);
}

#[test]
fn fifo_within_priority_and_higher_priority_first() {
    let mut late_urgent = booking("urgent", "u", H100, 8, 9);
    late_urgent.priority = 10;
    let s = snapshot(
        vec![node("a", H100, 8)],
        vec![
            booking("first", "u", H100, 8, 1),
            booking("second", "u", H100, 8, 2),
            late_urgent,
        ],
    );
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("urgent", "a")]);
    let w: Vec<_> = p
        .waiting
        .iter()
        .map(|w| (w.key.name.as_str(), w.position))
        .collect();
    assert_eq!(w, vec![("first", 1), ("second", 2)]);
    assert_eq!(
        p.waiting[1].message,
        format!("waiting for 8 x {H100}: none free, 1 ahead")
    );
}

#[test]
fn a_small_booking_does_not_overtake_a_blocked_larger_one_of_its_model() {
    // One user's queue (between users, fair share orders: see share.rs).
    let mut s = snapshot(
        vec![node("a", H100, 8), node("l", L4, 1)],
        vec![
            booking("big", "u", H100, 8, 1),
            booking("small", "u", H100, 1, 2),
            booking("other-model", "v", L4, 1, 3),
        ],
    );
    s.used.insert("a".into(), 4);
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("other-model", "l")]);
    assert_eq!(p.waiting[1].key.name, "small");
    assert_eq!(
        p.waiting[1].message,
        format!("waiting for 1 x {H100}: free GPUs are held for earlier bookings, 1 ahead")
    );
}

#[test]
fn quota_waits_do_not_hold_up_other_users() {
    let mut s = snapshot(
        vec![node("a", H100, 8)],
        vec![
            booking("running", "u", H100, 4, 0),
            booking("u2", "u", H100, 4, 1),
            booking("v1", "v", H100, 2, 2),
        ],
    );
    s.bookings[0].placed_on = Some("a".into());
    s.used.insert("a".into(), 4);
    s.users.insert(
        "u".into(),
        UserPolicy {
            max_gpus: Some(6),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("v1", "a")]);
    assert_eq!(
        p.waiting[0].wait,
        Wait::GpuQuota {
            in_use_milli: 4000,
            max: 6
        }
    );
    assert!(!p.waiting[0].wait.stalled());
    assert_eq!(
        p.waiting[0].message,
        format!("waiting for quota: user u holds 4 of 6 GPUs, 4 x {H100} would exceed it")
    );
}

#[test]
fn impossible_bookings_are_stalled_with_their_reason() {
    let mut s = snapshot(
        vec![node("a", H100, 8), node("l", L4, 1)],
        vec![
            booking("b200", "u", "NVIDIA-B200", 1, 1),
            booking("l4x2", "u", L4, 2, 2),
            booking("nouser", "u", L4, 1, 3),
            booking("notallowed", "w", H100, 1, 4),
            booking("toomany", "x", H100, 4, 5),
        ],
    );
    s.bookings[2].user = None;
    s.users.insert(
        "w".into(),
        UserPolicy {
            allowed_models: vec![L4.into()],
            ..Default::default()
        },
    );
    s.users.insert(
        "x".into(),
        UserPolicy {
            max_gpus: Some(2),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert!(p.placements.is_empty());
    let mut got: Vec<_> = p
        .waiting
        .iter()
        .map(|w| (w.key.name.as_str(), w.wait.clone(), w.wait.stalled()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        got,
        vec![
            ("b200", Wait::UnknownModel, true),
            ("l4x2", Wait::TooLarge { largest: 1 }, true),
            ("notallowed", Wait::ModelNotAllowed, true),
            ("nouser", Wait::NoUser, true),
            ("toomany", Wait::OverQuotaLimit { max: 2 }, true),
        ]
    );
    let l4x2 = p.waiting.iter().find(|w| w.key.name == "l4x2").unwrap();
    assert_eq!(
        l4x2.message,
        format!("no {L4} node has 2 GPUs (the largest has 1)")
    );
}

#[test]
fn suspended_users_and_ineligible_nodes_get_nothing() {
    let mut tainted = node("t", H100, 8);
    tainted.untolerated_taint = Some("dedicated=infra:NoSchedule".into());
    let mut cordoned = node("c", H100, 8);
    cordoned.schedulable = false;
    let mut s = snapshot(
        vec![tainted, cordoned],
        vec![booking("a", "u", H100, 1, 1), booking("b", "s", H100, 1, 2)],
    );
    s.users.insert(
        "s".into(),
        UserPolicy {
            suspended: true,
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert!(p.placements.is_empty());
    assert_eq!(p.waiting[0].wait, Wait::Capacity { largest_free: 0 });
    assert_eq!(p.waiting[1].wait, Wait::UserSuspended);
}

#[test]
fn instance_quota_counts_placed_instances() {
    let mut s = snapshot(
        vec![node("a", H100, 8)],
        vec![
            booking("one", "u", H100, 1, 1),
            booking("two", "u", H100, 1, 2),
        ],
    );
    s.users.insert(
        "u".into(),
        UserPolicy {
            max_instances: Some(1),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("one", "a")]);
    assert_eq!(p.waiting[0].wait, Wait::InstanceQuota { placed: 1, max: 1 });
}
