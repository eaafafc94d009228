//! Time on one node and for one user: when held GPUs come back and which future windows
//! are booked, so that a placement made now can be checked against what is promised later.
//!
//! Everything here is a step function of time built from sorted lists; checking an interval
//! walks the lists once, so a node costs O(its windows + its timed placements).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Stands for "no end": a hold of unknown length lasts until then.
pub const NEVER: Timestamp = Timestamp::MAX;

/// How long an overrunning pod (its booked time is up but the pod is still there) is
/// assumed to stay: its GPUs are counted as held now and free from this much later.
const OVERRUN: SignedDuration = SignedDuration::from_secs(1);

/// When a hold that starts at `start` and lasts `duration` ends; [`NEVER`] when the length
/// is unknown or the end is past what a timestamp can say.
pub fn end_of(start: Timestamp, duration: Option<Duration>) -> Timestamp {
    duration
        .and_then(|d| SignedDuration::try_from(d).ok())
        .and_then(|d| start.checked_add(d).ok())
        .unwrap_or(NEVER)
}

/// When the GPUs of a placed hold ending at `end` are free again, seen at `now`: never
/// before a moment after `now`, since the pod holds them as long as it exists.
pub fn release_time(end: Timestamp, now: Timestamp) -> Timestamp {
    if end > now {
        end
    } else {
        now.checked_add(OVERRUN).unwrap_or(NEVER)
    }
}

/// Inserts keeping the list sorted by time (after equal times: first come stays first).
fn insert_sorted(v: &mut Vec<(Timestamp, u32)>, at: Timestamp, count: u32) {
    let i = v.partition_point(|&(t, _)| t <= at);
    v.insert(i, (at, count));
}

fn remove_one(v: &mut Vec<(Timestamp, u32)>, at: Timestamp, count: u32) {
    if let Some(i) = v.iter().position(|&e| e == (at, count)) {
        v.remove(i);
    }
}

/// One node's future: placed GPUs that come back at known times and booked windows.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// GPUs of placed bookings coming back, by time.
    releases: Vec<(Timestamp, u32)>,
    /// Booked windows opening, by time.
    starts: Vec<(Timestamp, u32)>,
    /// Booked windows closing, by time.
    ends: Vec<(Timestamp, u32)>,
    /// All GPUs in `releases`.
    released: u32,
}

impl Timeline {
    /// Nothing timed on the node: free GPUs now are free forever.
    pub fn is_empty(&self) -> bool {
        self.releases.is_empty() && self.starts.is_empty()
    }

    /// A placed hold whose GPUs come back at `at` (already through [`release_time`]).
    pub fn add_release(&mut self, at: Timestamp, count: u32) {
        if at < NEVER {
            insert_sorted(&mut self.releases, at, count);
            self.released = self.released.saturating_add(count);
        }
    }

    /// The most GPUs that will ever be free at once, windows aside: an O(1) bound that
    /// rules out nodes held for good without walking their timeline.
    pub fn most_free(&self, allocatable: u32, free_now: u32) -> u32 {
        free_now.saturating_add(self.released).min(allocatable)
    }

    /// A booked window on the node starts before `t` (one that has opened included).
    pub fn window_before(&self, t: Timestamp) -> bool {
        self.starts.first().is_some_and(|&(s, _)| s < t)
    }

    /// The times GPUs come back on the node (placements and windows ending), by time:
    /// the only times after now at which a window that did not fit may start to fit.
    pub fn comebacks(&self) -> impl Iterator<Item = Timestamp> + '_ {
        self.releases
            .iter()
            .chain(self.ends.iter())
            .map(|&(t, _)| t)
    }

    /// A booked window `[start, end)`.
    pub fn add_window(&mut self, start: Timestamp, end: Timestamp, count: u32) {
        insert_sorted(&mut self.starts, start, count);
        insert_sorted(&mut self.ends, end, count);
    }

    /// Drops a window (its booking is now placed and held as a placement instead).
    pub fn remove_window(&mut self, start: Timestamp, end: Timestamp, count: u32) {
        remove_one(&mut self.starts, start, count);
        remove_one(&mut self.ends, end, count);
    }

    /// The fewest GPUs free at any instant of `[a, b)` (at least the instant `a`), for a
    /// node with `allocatable` GPUs of which `free_now` are free at the pass's `now <= a`.
    ///
    /// Free GPUs only grow between window starts, so the minimum is at `a` or at a window
    /// start inside the interval; one walk over the sorted lists finds it.
    pub fn min_free(&self, allocatable: u32, free_now: u32, a: Timestamp, b: Timestamp) -> u32 {
        if self.is_empty() {
            return free_now.min(allocatable);
        }
        let (mut rp, mut sp, mut ep) = (0, 0, 0);
        let (mut released, mut opened, mut closed) = (0i64, 0i64, 0i64);
        let first = self.starts.partition_point(|&(t, _)| t <= a);
        let inside = self.starts[first..]
            .iter()
            .map(|&(t, _)| t)
            .take_while(|&t| t < b);
        let mut min = i64::from(allocatable);
        for t in std::iter::once(a).chain(inside) {
            while let Some(&(_, c)) = self.releases.get(rp).filter(|&&(r, _)| r <= t) {
                released += i64::from(c);
                rp += 1;
            }
            while let Some(&(_, c)) = self.starts.get(sp).filter(|&&(s, _)| s <= t) {
                opened += i64::from(c);
                sp += 1;
            }
            while let Some(&(_, c)) = self.ends.get(ep).filter(|&&(e, _)| e <= t) {
                closed += i64::from(c);
                ep += 1;
            }
            let held_free = (i64::from(free_now) + released).min(i64::from(allocatable));
            min = min.min(held_free - (opened - closed));
        }
        u32::try_from(min.max(0)).unwrap_or(0)
    }

    /// Up to `n` starts at or after `from` (itself `>= now`) where `count` GPUs are free
    /// for `duration`, with the fewest GPUs free during that window.
    ///
    /// Whether a window fits changes only when its start passes a time GPUs come back (a
    /// placement or a window ends), so the first fitting start of every stretch is `from`
    /// or one of those times, and only they are tried.
    pub fn fitting_starts(
        &self,
        allocatable: u32,
        free_now: u32,
        want: Want,
        from: Timestamp,
        n: usize,
    ) -> Vec<(Timestamp, u32)> {
        if allocatable < want.count || n == 0 {
            return vec![];
        }
        let mut candidates: Vec<Timestamp> = std::iter::once(from)
            .chain(self.releases.iter().map(|&(t, _)| t))
            .chain(self.ends.iter().map(|&(t, _)| t))
            .filter(|&t| t >= from && t < NEVER)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut out = Vec::new();
        for t in candidates {
            let free = self.min_free(allocatable, free_now, t, end_of(t, want.duration));
            if free >= want.count {
                out.push((t, free));
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }
}

/// What a booking asks for, in time.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// GPUs on one node.
    pub count: u32,
    /// Length; `None` holds them for good.
    pub duration: Option<Duration>,
}

/// What one user holds over time: placed instances (with when they end) and booked windows.
#[derive(Debug, Clone, Default)]
pub struct UserHolds {
    /// Per placed instance: GPUs and when they come back ([`NEVER`] when unknown).
    placed: Vec<(Timestamp, u32)>,
    /// Booked windows: start, end, GPUs.
    windows: Vec<(Timestamp, Timestamp, u32)>,
}

impl UserHolds {
    /// A placed instance, its GPUs back at `release` (through [`release_time`]).
    pub fn add_placed(&mut self, release: Timestamp, count: u32) {
        self.placed.push((release, count));
    }

    /// A booked window.
    pub fn add_window(&mut self, start: Timestamp, end: Timestamp, count: u32) {
        self.windows.push((start, end, count));
    }

    /// Drops a window (it became a placement).
    pub fn remove_window(&mut self, start: Timestamp, end: Timestamp, count: u32) {
        if let Some(i) = self.windows.iter().position(|&w| w == (start, end, count)) {
            self.windows.remove(i);
        }
    }

    /// When what is held comes back: placed instances' releases and windows' ends.
    pub fn ends(&self) -> impl Iterator<Item = Timestamp> + '_ {
        self.placed
            .iter()
            .map(|&(r, _)| r)
            .chain(self.windows.iter().map(|&(_, e, _)| e))
    }

    /// The most GPUs and the most instances held at once during `[a, b)`, `a` being at or
    /// after the pass's `now`. Holdings only grow when a window opens, so only `a` and the
    /// window starts inside are looked at.
    pub fn peak(&self, a: Timestamp, b: Timestamp) -> (u32, u32) {
        let points = std::iter::once(a).chain(
            self.windows
                .iter()
                .map(|&(s, _, _)| s)
                .filter(|&s| s > a && s < b),
        );
        let mut peak = (0u32, 0u32);
        for t in points {
            let mut at = (0u32, 0u32);
            let live = self
                .placed
                .iter()
                .filter(|&&(r, _)| r > t)
                .map(|&(_, c)| c)
                .chain(
                    self.windows
                        .iter()
                        .filter(|&&(s, e, _)| s <= t && t < e)
                        .map(|&(_, _, c)| c),
                );
            for c in live {
                at = (at.0.saturating_add(c), at.1.saturating_add(1));
            }
            peak = (peak.0.max(at.0), peak.1.max(at.1));
        }
        peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn min_free_sees_windows_and_releases_inside_the_interval() {
        let mut tl = Timeline::default();
        tl.add_window(t(100), t(200), 6);
        tl.add_release(t(50), 2);
        // 8 GPUs, 4 free now; 2 come back at 50; 6 booked over [100, 200).
        assert_eq!(tl.min_free(8, 4, t(0), t(50)), 4);
        assert_eq!(tl.min_free(8, 4, t(0), t(100)), 4);
        assert_eq!(tl.min_free(8, 4, t(0), t(101)), 0);
        assert_eq!(tl.min_free(8, 4, t(200), NEVER), 6);
        assert_eq!(tl.min_free(8, 8, t(200), NEVER), 8);
    }

    #[test]
    fn fitting_starts_are_from_or_when_gpus_come_back() {
        let mut tl = Timeline::default();
        tl.add_window(t(100), t(200), 8);
        let want = Want {
            count: 4,
            duration: Some(Duration::from_secs(150)),
        };
        assert_eq!(tl.fitting_starts(8, 8, want, t(0), 2), vec![(t(200), 8)]);
        let short = Want {
            count: 4,
            duration: Some(Duration::from_secs(50)),
        };
        assert_eq!(
            tl.fitting_starts(8, 8, short, t(0), 3),
            vec![(t(0), 8), (t(200), 8)]
        );
    }
}
