//! Fair share: the order of the queue between users.
//!
//! Within one priority, bookings of different users are not served first come, first
//! served: they are ordered by the share of its guarantee that each user would hold once
//! the booking (and every earlier booking of theirs in the queue) were placed, the lowest
//! first. A user's share is the GPUs they hold (of any model) divided by their guarantee
//! (`quota.maxGpus`); a user without a limit is measured against every GPU of the cluster,
//! and one whose guarantee is zero comes last. Equal shares, and one user's own bookings,
//! keep first come, first served (creation time, then namespace/name), so a user's own
//! queue is never reordered.
//!
//! Worked example (in the README too): alice's guarantee is 8 GPUs and she holds 6; bob's is
//! 4 and he holds nothing. Alice books 2 GPUs at 10:00, bob books 2 at 10:05 and 2 more at
//! 10:06. Alice's booking would take her to 8/8 = 1.0; bob's first to 2/4 = 0.5, his second
//! to 4/4 = 1.0. Order: bob (0.5), then alice (1.0, booked first), then bob's second (1.0,
//! booked after alice's). First come, first served would have put alice first.
//!
//! The order is computed at the start of each sweep from what is held then, in
//! O(n log n) for n waiting bookings: the projection stands in for re-sorting after every
//! placement (a user's share only grows with the bookings ahead of it). The sweeps of a
//! pass repeat until one changes nothing, so a pass ends in the order its placements
//! leave, as the next pass would see it.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::model::{Booking, Snapshot};

/// The queue in the order the scheduler serves it: higher priority first; within a
/// priority, spot (preemptible) bookings after the others (they would be the first to be
/// preempted again), then the lowest projected share first; then first come, first served.
pub fn queue_order<'s>(snapshot: &Snapshot, mut queue: Vec<&'s Booking>) -> Vec<&'s Booking> {
    queue.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| first_come(a, b)));
    let cluster: u32 = snapshot
        .nodes
        .iter()
        .filter(|n| n.model.is_some() && n.slice.is_none())
        .fold(0u32, |s, n| s.saturating_add(n.allocatable));
    // Per user: GPUs held (then projected), and the guarantee.
    let mut users: HashMap<&str, (u64, u32)> = snapshot
        .users
        .iter()
        .map(|(u, p)| {
            let guarantee = p.max_gpus.unwrap_or(cluster.max(1));
            (u.as_str(), (0, guarantee.saturating_mul(1000)))
        })
        .collect();
    for b in snapshot.bookings.iter().filter(|b| b.placed_on.is_some()) {
        if let Some((held, _)) = b.user.as_deref().and_then(|u| users.get_mut(u)) {
            *held += u64::from(b.milli());
        }
    }
    let mut keyed: Vec<(f64, &'s Booking)> = queue
        .into_iter()
        .map(|b| match b.user.as_deref().and_then(|u| users.get_mut(u)) {
            Some((held, guarantee)) => {
                *held += u64::from(b.milli());
                (share(*held, *guarantee), b)
            }
            // Not a user's (it waits with NoUser anyway).
            None => (0.0, b),
        })
        .collect();
    keyed.sort_unstable_by(|(sa, a), (sb, b)| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.preemptible.cmp(&b.preemptible))
            .then_with(|| sa.partial_cmp(sb).unwrap_or(Ordering::Equal))
            .then_with(|| first_come(a, b))
    });
    keyed.into_iter().map(|(_, b)| b).collect()
}

/// First come, first served: creation time, then namespace/name, so that the order is total.
pub fn first_come(a: &Booking, b: &Booking) -> Ordering {
    a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key))
}

/// `held` GPUs as a share of `guarantee`; a zero guarantee is an infinite share (last).
fn share(held: u64, guarantee: u32) -> f64 {
    if guarantee == 0 {
        f64::INFINITY
    } else {
        held as f64 / f64::from(guarantee)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jiff::Timestamp;
    use proptest::prelude::*;

    use super::*;
    use crate::scheduler::{InstanceKey, NodeGpus, UserPolicy};

    fn booking(name: &str, user: &str, count: u32, created: i64) -> Booking {
        let key = InstanceKey {
            namespace: format!("gpu-{user}"),
            name: name.into(),
        };
        Booking::new(
            key,
            Some(user.into()),
            "H100",
            count,
            Timestamp::from_second(created).unwrap(),
        )
    }

    fn with_guarantees(guarantees: &[(&str, Option<u32>)], bookings: Vec<Booking>) -> Snapshot {
        Snapshot {
            nodes: vec![NodeGpus {
                name: "n".into(),
                model: Some("H100".into()),
                allocatable: 16,
                ready: true,
                schedulable: true,
                untolerated_taint: None,
                domain: None,
                slice: None,
            }],
            users: guarantees
                .iter()
                .map(|&(u, max)| {
                    let p = UserPolicy {
                        max_gpus: max,
                        ..UserPolicy::default()
                    };
                    (u.to_owned(), p)
                })
                .collect(),
            bookings,
            ..Snapshot::default()
        }
    }

    fn names(s: &Snapshot) -> Vec<&str> {
        let queue = s
            .bookings
            .iter()
            .filter(|b| b.placed_on.is_none())
            .collect();
        queue_order(s, queue)
            .into_iter()
            .map(|b| b.key.name.as_str())
            .collect()
    }

    /// The worked example of the module docs and the README.
    #[test]
    fn the_lower_share_goes_first_and_ties_keep_first_come() {
        let mut held = booking("alice-running", "alice", 6, 0);
        held.placed_on = Some("n".into());
        let s = with_guarantees(
            &[("alice", Some(8)), ("bob", Some(4))],
            vec![
                held,
                booking("alice-1", "alice", 2, 1000),
                booking("bob-1", "bob", 2, 1300),
                booking("bob-2", "bob", 2, 1360),
            ],
        );
        assert_eq!(names(&s), ["bob-1", "alice-1", "bob-2"]);
    }

    #[test]
    fn priority_comes_before_share_and_a_zero_guarantee_comes_last() {
        let mut urgent = booking("alice-urgent", "alice", 8, 5);
        urgent.priority = 10;
        let s = with_guarantees(
            &[("alice", Some(8)), ("bob", Some(8)), ("carol", Some(0))],
            vec![
                booking("carol-1", "carol", 1, 1),
                booking("bob-1", "bob", 4, 2),
                urgent,
            ],
        );
        assert_eq!(names(&s), ["alice-urgent", "bob-1", "carol-1"]);
    }

    proptest! {
        /// One user's own bookings keep first come, first served within a priority; and
        /// equal users with equal bookings alternate.
        #[test]
        fn a_users_own_queue_is_never_reordered(
            bookings in prop::collection::vec((0u8..3, 1u32..5, 0i64..50, 0i32..2), 1..40),
        ) {
            let bs: Vec<Booking> = bookings
                .iter()
                .enumerate()
                .map(|(i, &(u, c, t, p))| {
                    let mut b = booking(&format!("b{i}"), &format!("u{u}"), c, t);
                    b.priority = p;
                    b
                })
                .collect();
            let s = with_guarantees(&[("u0", Some(8)), ("u1", None), ("u2", Some(3))], bs);
            let queue = s.bookings.iter().collect();
            let order = queue_order(&s, queue);
            let mut last: BTreeMap<(&str, i32), &Booking> = BTreeMap::new();
            for b in &order {
                if let Some(prev) = last.insert((b.user.as_deref().unwrap(), b.priority), b) {
                    prop_assert_eq!(first_come(prev, b), Ordering::Less, "{} before {}", prev.key, b.key);
                }
            }
            for w in order.windows(2) {
                prop_assert!(w[0].priority >= w[1].priority);
            }
        }
    }

    #[test]
    fn equal_users_alternate() {
        let s = with_guarantees(
            &[("a", Some(4)), ("b", Some(4))],
            vec![
                booking("a1", "a", 1, 1),
                booking("a2", "a", 1, 2),
                booking("a3", "a", 1, 3),
                booking("b1", "b", 1, 10),
                booking("b2", "b", 1, 11),
            ],
        );
        assert_eq!(names(&s), ["a1", "b1", "a2", "b2", "a3"]);
    }
}
