//! The ledger of one sweep: free GPUs per node now and over time, kept so that a booking
//! that cannot fit costs O(1) and only a placement walks its model's nodes.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::NodeGpus;
use super::model::{Booking, Snapshot};
use super::timeline::{NEVER, Timeline, Want, end_of, release_time};

/// A granted window as the ledger holds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) node: usize,
    pub(super) start: Timestamp,
    pub(super) end: Timestamp,
}

/// One sweep's view of free GPUs: per node now and over time, and per model the nodes of
/// that model with the largest node and the largest free block now kept current, so that
/// a booking that cannot fit now costs O(1) and only a placement walks its model's nodes.
pub(super) struct Ledger<'s> {
    pub(super) nodes: &'s [NodeGpus],
    /// Free GPUs per node now.
    pub(super) free: Vec<u32>,
    /// Per node: timed placements and windows.
    pub(super) time: Vec<Timeline>,
    /// Per node: the most GPUs ever free at once, windows aside (kept beside `free` so
    /// that refreshing a model's bounds reads two flat arrays).
    pub(super) ever: Vec<u32>,
    /// Node index by name (empty when no booking needs it).
    pub(super) by_name: HashMap<&'s str, usize>,
    pub(super) models: BTreeMap<&'s str, ModelNodes>,
}

/// The nodes of one GPU model.
pub(super) struct ModelNodes {
    /// Ready, schedulable, untainted nodes (indexes into `Ledger::nodes`).
    pub(super) eligible: Vec<usize>,
    /// The largest node of the model, eligible or not.
    pub(super) largest: u32,
    /// The most free GPUs now on one eligible node.
    pub(super) largest_free: u32,
    /// The most GPUs ever free at once on one eligible node (windows aside): a window
    /// request wanting more is refused in O(1).
    pub(super) largest_ever: u32,
}

impl<'s> Ledger<'s> {
    pub(super) fn new(snapshot: &'s Snapshot) -> Self {
        let nodes = snapshot.nodes.as_slice();
        let free: Vec<u32> = nodes
            .iter()
            .map(|n| {
                n.allocatable
                    .saturating_sub(snapshot.used.get(&n.name).copied().unwrap_or(0))
            })
            .collect();
        let mut models: BTreeMap<&str, ModelNodes> = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            let Some(model) = n.model.as_deref() else {
                continue;
            };
            let m = models.entry(model).or_insert(ModelNodes {
                eligible: vec![],
                largest: 0,
                largest_free: 0,
                largest_ever: 0,
            });
            m.largest = m.largest.max(n.allocatable);
            if n.eligible() {
                m.eligible.push(i);
                m.largest_free = m.largest_free.max(free[i]);
            }
        }
        let timed = |b: &Booking| {
            b.reserved_on.is_some()
                || (b.placed_on.is_some() && (b.duration.is_some() || b.preemptible))
        };
        let by_name = if snapshot.bookings.iter().any(timed) {
            nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.as_str(), i))
                .collect()
        } else {
            HashMap::new()
        };
        let mut ledger = Ledger {
            nodes,
            free,
            time: vec![Timeline::default(); nodes.len()],
            ever: vec![],
            by_name,
            models,
        };
        for b in &snapshot.bookings {
            if let Some(node) = &b.placed_on {
                let end = b.held_until(snapshot.now);
                if let (true, Some(&i)) = (end < NEVER, ledger.by_name.get(node.as_str())) {
                    ledger.time[i].add_release(release_time(end, snapshot.now), b.count);
                }
            } else if let Some(h) = ledger.held(b) {
                ledger.time[h.node].add_window(h.start, h.end, b.count);
            }
        }
        ledger.ever = (0..nodes.len())
            .map(|i| ledger.time[i].most_free(nodes[i].allocatable, ledger.free[i]))
            .collect();
        for m in ledger.models.values_mut() {
            m.largest_ever = m
                .eligible
                .iter()
                .map(|&i| ledger.ever[i])
                .max()
                .unwrap_or(0);
        }
        ledger
    }

    /// The most GPUs ever free at once on node `i`, windows aside.
    pub(super) fn most_free(&self, i: usize) -> u32 {
        self.ever[i]
    }

    /// The window a booking holds, if its `reserved_on` names a node of its model and it
    /// has a start; anything else is not a valid window and the booking asks again.
    pub(super) fn held(&self, b: &Booking) -> Option<Held> {
        if b.placed_on.is_some() {
            return None;
        }
        let start = b.start?;
        let &node = self.by_name.get(b.reserved_on.as_deref()?)?;
        (self.nodes[node].model.as_deref() == Some(b.model.as_str())).then(|| Held {
            node,
            start,
            end: end_of(start, b.duration),
        })
    }

    /// The fewest GPUs free on node `i` over `[a, b)`, `a` not before now.
    pub(super) fn min_free(&self, i: usize, a: Timestamp, b: Timestamp) -> u32 {
        self.time[i].min_free(self.nodes[i].allocatable, self.free[i], a, b)
    }

    /// The eligible node of `model` where `count` GPUs stay free over `[a, b)` that is
    /// left with the fewest free then (then by name). With `now_only`, `a` is now and
    /// nodes without enough free GPUs now are skipped without a look at their timeline.
    pub(super) fn best_fit(
        &self,
        model: &ModelNodes,
        count: u32,
        a: Timestamp,
        b: Timestamp,
        now_only: bool,
    ) -> Option<usize> {
        model
            .eligible
            .iter()
            .copied()
            .filter(|&i| self.most_free(i) >= count && (!now_only || self.free[i] >= count))
            .filter_map(|i| Some((self.min_free(i, a, b).checked_sub(count)?, i)))
            .min_by(|&(x, i), &(y, j)| (x, &self.nodes[i].name).cmp(&(y, &self.nodes[j].name)))
            .map(|(_, i)| i)
    }

    /// Up to `n` distinct starts at or after `from` (not before now) where `want` fits on
    /// an eligible node of `model`, earliest first, each with its best-fit node.
    pub(super) fn slots(
        &self,
        model: &str,
        want: Want,
        from: Timestamp,
        n: usize,
    ) -> Vec<(Timestamp, usize)> {
        let Some(m) = self
            .models
            .get(model)
            .filter(|m| m.largest_ever >= want.count)
        else {
            return vec![];
        };
        let mut all: Vec<(Timestamp, u32, usize)> = m
            .eligible
            .iter()
            .filter(|&&i| self.most_free(i) >= want.count)
            .flat_map(|&i| {
                self.time[i]
                    .fitting_starts(self.nodes[i].allocatable, self.free[i], want, from, n)
                    .into_iter()
                    .map(move |(t, free)| (t, free - want.count, i))
            })
            .collect();
        all.sort_by(|x, y| {
            (x.0, x.1, &self.nodes[x.2].name).cmp(&(y.0, y.1, &self.nodes[y.2].name))
        });
        all.dedup_by_key(|x| x.0);
        all.truncate(n);
        all.into_iter().map(|(t, _, i)| (t, i)).collect()
    }

    /// Recomputes the model's largest free blocks after node `index` lost GPUs now; with
    /// `for_good`, they do not come back, so its most-ever-free bound drops too (a timed
    /// placement leaves that bound as it was: what it takes, it gives back).
    pub(super) fn refresh(&mut self, index: usize, for_good: bool) {
        let Some(m) = self.nodes[index]
            .model
            .as_deref()
            .and_then(|model| self.models.get_mut(model))
        else {
            return;
        };
        let (mut free, mut ever) = (0, 0);
        for &i in &m.eligible {
            free = free.max(self.free[i]);
            if for_good {
                ever = ever.max(self.ever[i]);
            }
        }
        m.largest_free = free;
        if for_good {
            m.largest_ever = ever;
        }
    }

    /// Takes `count` GPUs on node `index` now until `end`; returns its name.
    pub(super) fn take(
        &mut self,
        index: usize,
        count: u32,
        end: Timestamp,
        now: Timestamp,
    ) -> &'s str {
        self.free[index] -= count;
        if end < NEVER {
            self.time[index].add_release(release_time(end, now), count);
        } else {
            self.ever[index] =
                self.time[index].most_free(self.nodes[index].allocatable, self.free[index]);
        }
        self.refresh(index, end >= NEVER);
        &self.nodes[index].name
    }

    /// Turns an opened window into a placement on its node; returns the node's name.
    pub(super) fn open(&mut self, h: Held, count: u32, now: Timestamp) -> &'s str {
        self.time[h.node].remove_window(h.start, h.end, count);
        self.take(h.node, count, h.end, now)
    }

    /// Books a window on node `index`; returns its name.
    pub(super) fn reserve(
        &mut self,
        index: usize,
        start: Timestamp,
        end: Timestamp,
        count: u32,
    ) -> &'s str {
        self.time[index].add_window(start, end, count);
        &self.nodes[index].name
    }
}
