//! Preemption (pure): which running bookings a waiting one may displace, and the smallest
//! set of them that makes it fit.
//!
//! A user's `maxGpus` is their guarantee; `borrowGpus` more may be held while they are
//! idle (borrowed); spot (`preemptible`) bookings use idle GPUs apart from both. A booking
//! that waits for GPUs of its model may preempt, on one node of its model:
//!
//! - **spot** bookings of anyone, first (a spot booking itself preempts nothing);
//! - **borrowed** bookings of other users, when it is within its own guarantee (reclaim),
//!   or when its priority is higher than theirs;
//! - its **own user's** bookings of lower priority.
//!
//! Never another user's booking on guaranteed GPUs, never one of its own preemptors (so
//! that two bookings cannot take turns), and nothing at all when even every allowed victim on a node
//! would not make it fit. Of the sets that make it fit, the chosen one takes the fewest
//! non-spot GPUs, then the fewest GPUs, then the youngest bookings; nodes are compared the
//! same way, then by name.
//!
//! Which bookings are borrowed is worked out afresh on every pass ([`borrowed`]): a user's
//! placed, non-spot bookings in the order they started fill the guarantee, and those that
//! go beyond it are borrowed. So when a user's older booking ends, a younger one that was
//! borrowed is guaranteed from then on.
//!
//! The victims keep their GPUs until their pods are gone (a grace period lets a job
//! checkpoint): the preemptor is nominated on the node ([`super::Booking::nominated_on`]),
//! waits there with [`super::Wait::Preempting`], and the GPUs that free up there are kept
//! for it, so nothing is ever overbooked and nobody else takes what was freed for it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::model::{Booking, InstanceKey, Snapshot};

/// Why a booking is preempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// It is a spot (preemptible) booking.
    Spot,
    /// It runs on borrowed GPUs and their owner books within its guarantee.
    Reclaim,
    /// A booking of higher priority needs its GPUs.
    Priority,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 3] = [Reason::Spot, Reason::Reclaim, Reason::Priority];

    /// The reason a [`Reason::word`] names, as read back from a status; an unknown word is
    /// taken as `Priority` (the rule that applies to any booking).
    pub fn of_word(word: &str) -> Reason {
        [Reason::Spot, Reason::Reclaim]
            .into_iter()
            .find(|r| r.word() == word)
            .unwrap_or(Reason::Priority)
    }

    /// One CamelCase word for conditions, Events and metrics.
    pub fn word(self) -> &'static str {
        match self {
            Reason::Spot => "PreemptedSpot",
            Reason::Reclaim => "PreemptedReclaim",
            Reason::Priority => "PreemptedPriority",
        }
    }
}

/// One booking to preempt, for one preemptor on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    /// The booking whose pod goes.
    pub victim: InstanceKey,
    /// The booking that gets its GPUs.
    pub by: InstanceKey,
    /// The node.
    pub node: String,
    /// Why the victim may be preempted.
    pub reason: Reason,
}

/// The placed bookings that run on borrowed GPUs: per user with a guarantee, the placed
/// non-spot bookings in the order they started (then were created, then by key) beyond
/// the guarantee.
pub fn borrowed(snapshot: &Snapshot) -> BTreeSet<InstanceKey> {
    let mut per_user: BTreeMap<&str, Vec<&Booking>> = BTreeMap::new();
    for b in &snapshot.bookings {
        if let (Some(user), Some(_), false) = (b.user.as_deref(), &b.placed_on, b.preemptible) {
            per_user.entry(user).or_default().push(b);
        }
    }
    let mut out = BTreeSet::new();
    for (user, mut bookings) in per_user {
        let Some(guarantee) = snapshot.users.get(user).and_then(|p| p.max_gpus) else {
            continue;
        };
        bookings.sort_by(|a, b| {
            a.started
                .unwrap_or(Timestamp::MIN)
                .cmp(&b.started.unwrap_or(Timestamp::MIN))
                .then_with(|| a.created.cmp(&b.created))
                .then_with(|| a.key.cmp(&b.key))
        });
        // Thousandths of a GPU, slices as their fraction.
        let mut held = 0u32;
        for b in bookings {
            held = held.saturating_add(b.milli());
            if held > guarantee.saturating_mul(1000) {
                out.insert(b.key.clone());
            }
        }
    }
    out
}

/// Thousandths of a GPU the user holds now in placed, non-spot bookings.
pub fn held_guaranteed(snapshot: &Snapshot, user: &str) -> u32 {
    snapshot
        .bookings
        .iter()
        .filter(|x| x.placed_on.is_some() && !x.preemptible && x.user.as_deref() == Some(user))
        .fold(0u32, |n, x| n.saturating_add(x.milli()))
}

/// `b` fits within its user's guarantee with what the user holds now: it may reclaim.
pub fn within_guarantee(snapshot: &Snapshot, b: &Booking) -> bool {
    let Some(user) = b.user.as_deref() else {
        return false;
    };
    if b.preemptible {
        return false;
    }
    match snapshot.users.get(user).map(|p| p.max_gpus) {
        Some(Some(guarantee)) => {
            held_guaranteed(snapshot, user).saturating_add(b.milli())
                <= guarantee.saturating_mul(1000)
        }
        // No limit: everything it holds is its own, nothing of it is borrowed, but neither
        // does it have a guarantee to reclaim.
        _ => false,
    }
}

/// Whether `by` may preempt `victim`, and why; `victim_borrowed` from [`borrowed`],
/// `reclaiming` from [`within_guarantee`] for `by`.
pub fn may_preempt(
    by: &Booking,
    victim: &Booking,
    reclaiming: bool,
    victim_borrowed: bool,
) -> Option<Reason> {
    // A gang may be a victim by the same rules (a spot gang, one on borrowed GPUs): all
    // its pods go, and its cost counts every GPU it stops ([`Candidate::stops`]).
    if by.preemptible
        || victim.terminating
        || victim.placed_on.is_none()
        || victim.key == by.key
        || victim.model != by.model
        || victim.slice != by.slice
        || by.preempted_by.contains(&victim.key)
    {
        return None;
    }
    if victim.preemptible {
        return Some(Reason::Spot);
    }
    let same_user = victim.user.is_some() && victim.user == by.user;
    if same_user {
        return (by.priority > victim.priority).then_some(Reason::Priority);
    }
    match (victim_borrowed, reclaiming, by.priority > victim.priority) {
        (true, true, _) => Some(Reason::Reclaim),
        (true, false, true) => Some(Reason::Priority),
        _ => None,
    }
}

/// Who may preempt a running booking, in words (`kubectl gpu ls`), by the rules of
/// [`may_preempt`]: a spot booking any on-demand one; one on borrowed GPUs a user
/// reclaiming their guarantee or a booking of higher priority; any other only a booking
/// of higher priority of its own user.
pub fn preemptible_by(spot: bool, borrowed: bool) -> &'static str {
    match (spot, borrowed) {
        (true, _) => "any on-demand booking (spot)",
        (false, true) => "owners reclaiming, higher priority (borrowed)",
        (false, false) => "own user's higher priority",
    }
}

/// A booking that may be preempted on one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// GPUs it would free on the node looked at.
    pub gpus: u32,
    /// GPUs it would stop in all: `gpus`, or a gang's on all its nodes.
    pub stops: u32,
    /// It is a spot booking.
    pub spot: bool,
    /// When it started (the youngest go first).
    pub started: Timestamp,
}

/// How costly a set of victims is: fewer non-spot GPUs stopped, then fewer GPUs stopped
/// (a gang's on all its nodes), then younger (its oldest victim as young as can be), is
/// cheaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost {
    non_spot_gpus: u32,
    gpus: u32,
    oldest: std::cmp::Reverse<Timestamp>,
    victims: usize,
}

/// Sets of this many candidates or fewer are searched exhaustively; larger ones greedily.
const EXHAUSTIVE: usize = 12;

/// The cheapest set of `candidates` freeing at least `need` GPUs (indexes, by candidate
/// order), with its cost; `None` when all of them together free fewer, and the empty set
/// when nothing is needed.
pub fn cheapest_set(need: u32, candidates: &[Candidate]) -> Option<(Vec<usize>, Cost)> {
    let cost_of = |set: &[usize]| {
        let mut c = Cost {
            non_spot_gpus: 0,
            gpus: 0,
            oldest: std::cmp::Reverse(Timestamp::MAX),
            victims: set.len(),
        };
        for &i in set {
            let v = &candidates[i];
            c.gpus = c.gpus.saturating_add(v.stops);
            if !v.spot {
                c.non_spot_gpus = c.non_spot_gpus.saturating_add(v.stops);
            }
            c.oldest = c.oldest.max(std::cmp::Reverse(v.started));
        }
        c
    };
    if need == 0 {
        return Some((vec![], cost_of(&[])));
    }
    let total: u64 = candidates.iter().map(|c| u64::from(c.gpus)).sum();
    if total < u64::from(need) {
        return None;
    }
    if candidates.len() <= EXHAUSTIVE {
        let mut best: Option<(Vec<usize>, Cost)> = None;
        for mask in 1u32..(1u32 << candidates.len()) {
            let set: Vec<usize> = (0..candidates.len())
                .filter(|i| mask & (1 << i) != 0)
                .collect();
            let gpus: u32 = set.iter().map(|&i| candidates[i].gpus).sum();
            if gpus < need {
                continue;
            }
            let c = cost_of(&set);
            if best.as_ref().is_none_or(|(_, b)| c < *b) {
                best = Some((set, c));
            }
        }
        return best;
    }
    // Greedy: spot first, then the youngest, each taken while it is still needed; then
    // any victim the later ones made unnecessary is given back.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        (!x.spot, std::cmp::Reverse(x.started), x.gpus).cmp(&(
            !y.spot,
            std::cmp::Reverse(y.started),
            y.gpus,
        ))
    });
    let mut set = vec![];
    let mut freed = 0u32;
    for i in order {
        if freed >= need {
            break;
        }
        freed = freed.saturating_add(candidates[i].gpus);
        set.push(i);
    }
    let mut k = 0;
    while k < set.len() {
        let g = candidates[set[k]].gpus;
        if freed - g >= need {
            freed -= g;
            set.remove(k);
        } else {
            k += 1;
        }
    }
    let c = cost_of(&set);
    Some((set, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn cand(gpus: u32, spot: bool, started: i64) -> Candidate {
        Candidate {
            gpus,
            stops: gpus,
            spot,
            started: at(started),
        }
    }

    #[test]
    fn the_fewest_gpus_then_the_youngest_and_spot_first() {
        // Need 2: one 2-GPU booking beats two 1-GPU ones and a 4-GPU one.
        let c = [
            cand(1, false, 0),
            cand(1, false, 1),
            cand(4, false, 2),
            cand(2, false, 3),
        ];
        assert_eq!(cheapest_set(2, &c).unwrap().0, vec![3]);
        // Equal sizes: the youngest.
        let c = [cand(2, false, 0), cand(2, false, 5)];
        assert_eq!(cheapest_set(2, &c).unwrap().0, vec![1]);
        // Spot before anything else, even if it takes more GPUs.
        let c = [cand(2, false, 9), cand(4, true, 0)];
        assert_eq!(cheapest_set(2, &c).unwrap().0, vec![1]);
        // Not enough: nothing.
        assert_eq!(
            cheapest_set(5, &[cand(2, false, 0), cand(2, true, 0)]),
            None
        );
        assert_eq!(
            cheapest_set(0, &[cand(2, false, 0)]).unwrap().0,
            Vec::<usize>::new()
        );
    }

    #[test]
    fn the_words_of_who_may_preempt_follow_the_rule() {
        let b = |user: &str, priority: i32, spot: bool| Booking {
            key: InstanceKey {
                namespace: user.into(),
                name: format!("{user}{priority}{spot}"),
            },
            user: Some(user.into()),
            model: "M".into(),
            count: 1,
            priority,
            preemptible: spot,
            placed_on: Some("n".into()),
            ..Booking::default()
        };
        let waiting = |user: &str, priority: i32| {
            let mut x = b(user, priority, false);
            x.placed_on = None;
            x
        };
        let (other_low, other_high, own_high) = (waiting("o", 0), waiting("o", 9), waiting("v", 9));
        // Spot: anyone on demand, even of lower priority.
        let spot = b("v", 5, true);
        assert!(may_preempt(&other_low, &spot, false, false).is_some());
        assert_eq!(preemptible_by(true, false), "any on-demand booking (spot)");
        // Borrowed: a reclaiming owner, or higher priority, of any user.
        let borrowed = b("v", 5, false);
        assert!(may_preempt(&other_low, &borrowed, true, true).is_some());
        assert!(may_preempt(&other_high, &borrowed, false, true).is_some());
        assert!(may_preempt(&other_low, &borrowed, false, true).is_none());
        // Guaranteed: only the user's own higher priority.
        assert!(may_preempt(&other_high, &borrowed, true, false).is_none());
        assert!(may_preempt(&own_high, &borrowed, false, false).is_some());
        assert_eq!(preemptible_by(false, false), "own user's higher priority");
    }

    proptest! {
        /// The chosen set frees enough, and no victim in it is needed for that (never more
        /// than the smallest set); the greedy path keeps both.
        #[test]
        fn the_set_frees_enough_and_no_victim_is_spare(
            need in 1u32..16,
            cands in prop::collection::vec((1u32..8, any::<bool>(), 0i64..100), 0..20),
        ) {
            let c: Vec<Candidate> = cands.iter().map(|&(g, s, t)| cand(g, s, t)).collect();
            let total: u32 = c.iter().map(|c| c.gpus).sum();
            match cheapest_set(need, &c) {
                None => prop_assert!(total < need),
                Some((set, _)) => {
                    let freed: u32 = set.iter().map(|&i| c[i].gpus).sum();
                    prop_assert!(freed >= need);
                    for &i in &set {
                        prop_assert!(freed - c[i].gpus < need, "victim {} is spare in {:?}", i, set);
                    }
                }
            }
        }
    }
}
