//! Gangs (bookings of several nodes) and topology: all or nothing, packing into the fewest
//! domains, single-node bookings in the fullest domain, quota over the whole gang, gangs
//! booked ahead.

use super::*;

fn in_zone(name: &str, gpus: u32, zone: &str) -> NodeGpus {
    NodeGpus {
        domain: Some(format!("topology.kubernetes.io/zone={zone}")),
        ..node(name, H100, gpus)
    }
}

fn gang(name: &str, nodes: u32, count: u32, t: i64) -> Booking {
    Booking {
        nodes,
        ..booking(name, "u", H100, count, t)
    }
}

fn nodes_of<'p>(p: &'p Plan, name: &str) -> Vec<&'p str> {
    p.placements
        .iter()
        .find(|(k, _)| k.name == name)
        .map(|(_, n)| n.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn a_gang_is_placed_on_distinct_nodes_or_holds_nothing() {
    let mut s = snapshot(
        vec![node("a", H100, 8), node("b", H100, 8), node("c", H100, 8)],
        vec![gang("train", 2, 8, 1)],
    );
    let p = plan(&s);
    assert_eq!(nodes_of(&p, "train"), vec!["a", "b"]);

    // Only one node free: it waits whole, and nothing of it is taken.
    s.used.insert("a".into(), 1);
    s.used.insert("b".into(), 1);
    s.bookings.push(booking("small", "v", L4, 1, 2));
    s.nodes.push(node("l", L4, 1));
    s.users.insert("v".into(), UserPolicy::default());
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("small", "l")]);
    let w = &p.waiting[0];
    assert_eq!(w.wait, Wait::GangCapacity { fitting: 1 });
    assert_eq!(w.wait.reason(), "WaitingForGpus");
    assert!(!w.wait.stalled());
    assert_eq!(
        w.message,
        format!("waiting for 2 nodes x 8 x {H100}: 1 node(s) have 8 free, 0 ahead")
    );
}

#[test]
fn a_waiting_gang_holds_up_its_model_queue() {
    let mut s = snapshot(
        vec![node("a", H100, 8), node("b", H100, 8)],
        vec![gang("train", 2, 8, 1), booking("small", "u", H100, 1, 2)],
    );
    s.used.insert("a".into(), 1);
    let p = plan(&s);
    assert!(p.placements.is_empty(), "{:?}", p.placements);
    assert_eq!(p.waiting[1].key.name, "small");
}

#[test]
fn a_gang_larger_than_the_cluster_is_stalled_with_what_there_is() {
    let s = snapshot(
        vec![node("a", H100, 8), node("b", H100, 4), node("c", H100, 8)],
        vec![gang("train", 3, 8, 1)],
    );
    let p = plan(&s);
    let w = &p.waiting[0];
    assert_eq!(
        w.wait,
        Wait::TooFewNodes {
            have: 2,
            one_domain: false
        }
    );
    assert!(w.wait.stalled());
    assert_eq!(
        w.message,
        format!("wants 3 nodes x 8 x {H100} but only 2 {H100} node(s) have 8 GPUs")
    );
}

#[test]
fn a_required_gang_never_spans_domains_and_a_preferred_one_spans_the_fewest() {
    let nodes = vec![
        in_zone("a1", 8, "a"),
        in_zone("a2", 8, "a"),
        in_zone("b1", 8, "b"),
        in_zone("b2", 8, "b"),
        in_zone("b3", 8, "b"),
    ];
    // Three nodes: zone b holds them all.
    let s = snapshot(nodes.clone(), vec![gang("three", 3, 8, 1)]);
    assert_eq!(nodes_of(&plan(&s), "three"), vec!["b1", "b2", "b3"]);

    // Four nodes: no zone holds them; required waits (stalled: no zone ever can),
    // preferred takes zone b whole and one of zone a.
    let mut required = gang("four", 4, 8, 1);
    required.topology = Topology::Required;
    let s = snapshot(nodes.clone(), vec![required.clone()]);
    let p = plan(&s);
    assert_eq!(
        p.waiting[0].wait,
        Wait::TooFewNodes {
            have: 3,
            one_domain: true
        }
    );
    let s = snapshot(nodes.clone(), vec![gang("four", 4, 8, 1)]);
    assert_eq!(nodes_of(&plan(&s), "four"), vec!["b1", "b2", "b3", "a1"]);

    // Required, zone b partly used: waits for room in one zone, though 4 nodes are free.
    let mut s = snapshot(
        nodes,
        vec![Booking {
            nodes: 3,
            ..required
        }],
    );
    s.used.insert("b1".into(), 1);
    let p = plan(&s);
    assert_eq!(p.waiting[0].wait, Wait::GangCapacity { fitting: 2 });
    assert!(
        p.waiting[0]
            .message
            .contains("2 node(s) in one domain have 8 free")
    );
}

#[test]
fn a_gang_goes_to_the_smallest_domain_that_holds_it_keeping_large_ones_whole() {
    let s = snapshot(
        vec![
            in_zone("a1", 8, "a"),
            in_zone("a2", 8, "a"),
            in_zone("a3", 8, "a"),
            in_zone("a4", 8, "a"),
            in_zone("b1", 8, "b"),
            in_zone("b2", 8, "b"),
        ],
        vec![gang("pair", 2, 8, 1)],
    );
    assert_eq!(nodes_of(&plan(&s), "pair"), vec!["b1", "b2"]);
}

#[test]
fn a_single_node_booking_fits_best_in_the_fullest_domain() {
    let mut s = snapshot(
        vec![
            in_zone("a1", 8, "a"),
            in_zone("a2", 8, "a"),
            in_zone("b1", 8, "b"),
            in_zone("b2", 8, "b"),
        ],
        vec![booking("one", "u", H100, 1, 1)],
    );
    // Zone b has 10 free (b2: 2), zone a 16: the booking goes to b, on b2.
    s.used.insert("b2".into(), 6);
    assert_eq!(placed(&plan(&s)), vec![("one", "b2")]);
    // Node a1 alone is fuller than b2, but its zone is emptier: b2 still.
    s.used.insert("a1".into(), 7);
    s.used.insert("a2".into(), 0);
    s.used.insert("b1".into(), 8);
    assert_eq!(placed(&plan(&s)), vec![("one", "b2")]);
}

#[test]
fn quota_counts_every_gpu_of_a_gang() {
    let mut s = snapshot(
        vec![node("a", H100, 8), node("b", H100, 8)],
        vec![gang("train", 2, 8, 1)],
    );
    s.users.insert(
        "u".into(),
        UserPolicy {
            max_gpus: Some(8),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert_eq!(p.waiting[0].wait, Wait::OverQuotaLimit { max: 8 });
    s.users.get_mut("u").unwrap().max_gpus = Some(20);
    s.bookings.push(booking("more", "u", H100, 8, 2));
    s.nodes.push(node("c", H100, 8));
    let p = plan(&s);
    assert_eq!(nodes_of(&p, "train").len(), 2);
    assert_eq!(
        p.waiting[0].wait,
        Wait::GpuQuota {
            in_use_milli: 16_000,
            max: 20
        }
    );
}

#[test]
fn a_gang_booked_ahead_holds_its_nodes_and_opens_on_all_of_them() {
    let ahead = Booking {
        nodes: 2,
        start: Some(at("2026-12-01T12:00Z")),
        ..timed("train", 8, Some(2), 1)
    };
    let nodes = vec![node("a", H100, 8), node("b", H100, 8), node("c", H100, 8)];
    let s = at_time("2026-12-01T00:00Z", nodes.clone(), vec![ahead.clone()]);
    let p = plan(&s);
    let (_, on, start) = p.reservations[0].clone();
    assert_eq!((on.len(), start), (2, at("2026-12-01T12:00Z")));

    // Granted: a long booking now may not run into it on either node, one on the third
    // node may.
    let mut granted = ahead.clone();
    reserve_on(&mut granted, &on, start);
    let long = timed("long", 8, Some(24), 2);
    let long2 = timed("long2", 8, Some(24), 3);
    let s = at_time(
        "2026-12-01T00:00Z",
        nodes.clone(),
        vec![granted.clone(), long, long2],
    );
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("long", "c")]);

    // The window opens: placed on both of its nodes at its start.
    let s = at_time("2026-12-01T12:00Z", nodes, vec![granted]);
    let p = plan(&s);
    assert_eq!(p.placements, vec![(ahead.key.clone(), on)]);
    assert_eq!(p.due, vec![(ahead.key.clone(), at("2026-12-01T12:00Z"))]);
}

#[test]
fn slots_for_a_gang_wait_for_enough_nodes() {
    // Two nodes busy until 10:00 and 12:00, one free: 2 nodes first at 10:00.
    let s = at_time(
        "2026-12-01T08:00Z",
        vec![node("a", H100, 8), node("b", H100, 8), node("c", H100, 8)],
        vec![
            running("x", 8, 2, "2026-12-01T08:00Z", "a"),
            running("y", 8, 4, "2026-12-01T08:00Z", "b"),
        ],
    );
    let want = SlotWant {
        model: H100,
        slice: None,
        count: 8,
        nodes: 2,
        topology: Topology::Preferred,
        duration: Some(HOUR),
    };
    let slots = free_slots(&s, &want, s.now, 2);
    let got: Vec<(Timestamp, usize)> = slots.iter().map(|(t, n)| (*t, n.len())).collect();
    assert_eq!(
        got,
        vec![(at("2026-12-01T10:00Z"), 2), (at("2026-12-01T12:00Z"), 2)]
    );
}

/// A spot gang is preempted like any spot booking, whole: an on-demand booking takes one
/// of its nodes, and every GPU it held counts in the cost, so a single spot booking
/// stopping fewer GPUs goes first.
#[test]
fn a_spot_gang_is_preempted_whole_and_costs_every_gpu_it_stops() {
    let spot_gang = |name: &str, on: [&str; 2], t: i64| {
        let mut b = Booking {
            preemptible: true,
            ..gang(name, 2, 8, t)
        };
        place_on(&mut b, &on.map(String::from));
        b.started = Some(Timestamp::from_second(t).unwrap());
        b
    };
    let mut s = snapshot(
        vec![node("a", H100, 8), node("b", H100, 8)],
        vec![
            spot_gang("train", ["a", "b"], 1),
            booking("urgent", "v", H100, 8, 2),
        ],
    );
    s.used.extend([("a".into(), 8), ("b".into(), 8)]);
    s.preemption = true;
    let p = plan(&s);
    let preempted: Vec<(&str, &str, &str)> = p
        .preemptions
        .iter()
        .map(|x| (x.victim.name.as_str(), x.by.name.as_str(), x.node.as_str()))
        .collect();
    assert_eq!(preempted, vec![("train", "urgent", "a")]);

    // Beside it, a single spot booking of 8 (younger, but stopping 8 GPUs, not 16).
    let mut single = booking("notebook", "w", H100, 8, 3);
    single.preemptible = true;
    single.placed_on = Some("c".into());
    single.started = Some(Timestamp::from_second(3).unwrap());
    s.nodes.push(node("c", H100, 8));
    s.used.insert("c".into(), 8);
    s.users.insert("w".into(), UserPolicy::default());
    s.bookings.push(single);
    let p = plan(&s);
    let victims: Vec<&str> = p
        .preemptions
        .iter()
        .map(|x| x.victim.name.as_str())
        .collect();
    assert_eq!(victims, vec!["notebook"]);
}
