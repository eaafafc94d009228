//! Booking ahead: windows held, backfilled, refused with the next slot, opened.

use gpu_cloud_api::time::show_time;

use super::*;

#[test]
fn a_window_is_held_against_a_long_booking() {
    let s = at_time(
        "2026-12-01T08:00Z",
        vec![node("a", H100, 8)],
        vec![
            reserved("window", 8, 4, "2026-12-01T12:00Z", "a"),
            timed("long", 4, Some(6), 1),
            timed("forever", 4, None, 2),
        ],
    );
    let p = plan(&s);
    assert!(p.placements.is_empty() && p.reservations.is_empty());
    assert_eq!(p.waiting[0].key.name, "long");
    assert_eq!(p.waiting[0].wait, Wait::Capacity { largest_free: 8 });
    assert!(!p.waiting[0].wait.stalled());
    assert_eq!(
        p.waiting[0].message,
        format!(
            "waiting for 4 x {H100}: free GPUs are booked for windows within its length (6h), 0 ahead"
        )
    );
}

#[test]
fn a_short_booking_backfills_before_the_window_which_then_opens_on_its_node() {
    let nodes = vec![node("a", H100, 8), node("b", H100, 8)];
    let mut s = at_time(
        "2026-12-01T08:00Z",
        nodes.clone(),
        vec![
            reserved("window", 8, 4, "2026-12-01T12:00Z", "a"),
            timed("short", 8, Some(4), 1),
        ],
    );
    s.used.insert("b".into(), 1); // b cannot take 8 now: only a can
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("short", "a")]);

    // Noon: the short one has ended, the window opens on a, ahead of a queued rival.
    let s = at_time(
        "2026-12-01T12:00Z",
        nodes,
        vec![
            timed("rival", 8, Some(1), -5),
            reserved("window", 8, 4, "2026-12-01T12:00Z", "a"),
        ],
    );
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("window", "a"), ("rival", "b")]);
    assert_eq!(
        p.due,
        vec![(s.bookings[1].key.clone(), at("2026-12-01T12:00Z"))]
    );
}

#[test]
fn a_window_that_is_taken_is_refused_with_the_next_free_slot() {
    let window = Booking {
        start: Some(at("2026-12-01T10:00Z")),
        ..timed("ahead", 4, Some(4), 1)
    };
    let s = at_time(
        "2026-12-01T08:00Z",
        vec![node("a", H100, 4)],
        vec![
            running("now", 4, 4, "2026-12-01T09:00Z", "a"),
            window.clone(),
        ],
    );
    let p = plan(&s);
    assert!(p.reservations.is_empty());
    let w = &p.waiting[0];
    assert_eq!(
        w.wait,
        Wait::WindowTaken {
            next_free: Some(at("2026-12-01T13:00Z"))
        }
    );
    assert!(w.wait.stalled());
    assert_eq!(w.wait.reason(), "WindowTaken");
    assert_eq!(
        w.message,
        "next free slot for 4 x NVIDIA-H100-80GB-HBM3 of 4h: 2026-12-01T13:00Z"
    );

    // The same request with EarliestAvailable books that slot.
    let mut s = s;
    s.bookings[1].start_policy = StartPolicy::EarliestAvailable;
    let p = plan(&s);
    assert_eq!(
        p.reservations,
        vec![(
            window.key.clone(),
            vec!["a".to_owned()],
            at("2026-12-01T13:00Z")
        )]
    );
    assert!(p.waiting.is_empty() && p.placements.is_empty());
}

#[test]
fn windows_are_first_come_regardless_of_priority_and_fixed_once_granted() {
    let first = Booking {
        start: Some(at("2026-12-02T00:00Z")),
        ..timed("first", 8, Some(2), 1)
    };
    let urgent = Booking {
        start: Some(at("2026-12-02T01:00Z")),
        priority: 100,
        start_policy: StartPolicy::EarliestAvailable,
        ..timed("urgent", 8, Some(2), 2)
    };
    let s = at_time(
        "2026-12-01T00:00Z",
        vec![node("a", H100, 8)],
        vec![urgent.clone(), first.clone()],
    );
    let p = plan(&s);
    let t = |s| at(s);
    assert_eq!(
        p.reservations,
        vec![
            (first.key.clone(), vec!["a".into()], t("2026-12-02T00:00Z")),
            (urgent.key.clone(), vec!["a".into()], t("2026-12-02T02:00Z")),
        ]
    );
}

#[test]
fn an_opened_window_waits_for_an_overrunning_pod_and_a_missed_one_is_refused() {
    let s = at_time(
        "2026-12-01T12:00Z",
        vec![node("a", H100, 8)],
        vec![
            // Its 4 hours ran out at 12:00 but its pod is still there.
            running("overrun", 8, 4, "2026-12-01T08:00Z", "a"),
            reserved("window", 8, 4, "2026-12-01T12:00Z", "a"),
            reserved("missed", 8, 1, "2026-12-01T10:00Z", "a"),
        ],
    );
    let p = plan(&s);
    assert!(p.placements.is_empty());
    let got: Vec<_> = p.waiting.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        got,
        vec![
            "its window for 8 x NVIDIA-H100-80GB-HBM3 ended at 2026-12-01T11:00Z before it could start: book again",
            "window opened: waiting for 8 x NVIDIA-H100-80GB-HBM3 on its node a (0 free)",
        ]
    );
    assert_eq!(
        p.waiting[1].wait,
        Wait::HeldNode {
            node: "a".into(),
            free: 0
        }
    );
}

#[test]
fn next_free_slots_lists_distinct_starts_with_their_best_fit_node() {
    let s = at_time(
        "2026-12-01T08:00Z",
        vec![node("a", H100, 8), node("b", H100, 4), node("l", L4, 8)],
        vec![
            running("on-a", 8, 2, "2026-12-01T08:00Z", "a"),
            running("on-b", 2, 1, "2026-12-01T07:30Z", "b"),
            reserved("later-b", 4, 2, "2026-12-01T11:00Z", "b"),
        ],
    );
    let slots = next_free_slots(&s, H100, 4, Some(HOUR * 2), at("2026-12-01T08:00Z"), 4);
    let got: Vec<(String, &str)> = slots
        .iter()
        .map(|(t, n)| (show_time(*t), n.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-12-01T08:30Z".to_owned(), "b"),
            ("2026-12-01T10:00Z".to_owned(), "a"),
            ("2026-12-01T13:00Z".to_owned(), "b"),
        ]
    );
    assert!(next_free_slots(&s, H100, 9, None, s.now, 3).is_empty());
    // With no end, only nodes with nothing booked later will do.
    let forever = next_free_slots(&s, H100, 4, None, s.now, 1);
    assert_eq!(forever, vec![(at("2026-12-01T10:00Z"), "a".to_owned())]);
}

#[test]
fn quota_counts_booked_windows_over_the_time_a_booking_runs() {
    let mut s = at_time(
        "2026-12-01T08:00Z",
        vec![node("a", H100, 8), node("b", H100, 8)],
        vec![
            reserved("window", 4, 4, "2026-12-01T12:00Z", "a"),
            timed("short", 4, Some(2), 1),
            timed("long", 4, Some(8), 2),
        ],
    );
    s.users.insert(
        "u".into(),
        UserPolicy {
            max_gpus: Some(4),
            ..Default::default()
        },
    );
    let p = plan(&s);
    assert_eq!(placed(&p), vec![("short", "a")]);
    assert_eq!(
        p.waiting[0].wait,
        Wait::GpuQuota {
            in_use_milli: 4000,
            max: 4
        }
    );
}
