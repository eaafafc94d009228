//! The ledger of one sweep: free GPUs per node now and over time, kept so that a booking
//! that cannot fit costs O(1) and only a placement walks its model's nodes.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use super::NodeGpus;
use super::model::{Booking, Pool, Snapshot};
use super::timeline::{NEVER, Timeline, Want, end_of, release_time};

/// A granted window as the ledger holds it.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// Its node (a gang's rank 0).
    pub(super) node: usize,
    /// A gang's other nodes, ranks 1 and up.
    pub(super) gang: Vec<usize>,
    pub(super) start: Timestamp,
    pub(super) end: Timestamp,
}

impl Held {
    /// All its nodes, rank 0 first.
    pub(super) fn nodes(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.node).chain(self.gang.iter().copied())
    }
}

/// Why no set of nodes takes a gang: how many nodes would (in one domain when it requires
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GangMiss {
    pub(super) fitting: u32,
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
    /// Pool indexes by node name, with their slice (empty when no booking needs them).
    pub(super) by_name: HashMap<&'s str, Vec<(Option<&'s str>, usize)>>,
    /// The pools of each model, by slice (`""`: whole GPUs).
    pub(super) models: BTreeMap<&'s str, Vec<(&'s str, ModelNodes)>>,
    /// Per node: its topology domain (an index into `domain_free`), `None` for a node
    /// that is a domain of its own.
    pub(super) domain: Vec<Option<usize>>,
    /// Per domain: free GPUs now on its eligible nodes (so that single-node bookings go
    /// to the fullest domain and whole domains stay free for gangs).
    pub(super) domain_free: Vec<u32>,
}

/// The nodes of one GPU model.
pub(super) struct ModelNodes {
    /// The allocatable GPUs of every node of the model, eligible or not, ascending: how
    /// many could ever hold a gang's part is a binary search.
    pub(super) allocs: Vec<u32>,
    /// The same per labelled domain (by domain index), and the most of a node of none.
    pub(super) domain_allocs: BTreeMap<usize, Vec<u32>>,
    pub(super) alone_max: u32,
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
                let used = match &n.slice {
                    None => snapshot.used.get(&n.name).copied(),
                    Some(s) => snapshot
                        .used_slices
                        .get(&(n.name.clone(), s.clone()))
                        .copied(),
                };
                n.allocatable.saturating_sub(used.unwrap_or(0))
            })
            .collect();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let domain: Vec<Option<usize>> = nodes
            .iter()
            .map(|n| {
                let d = n.domain.as_deref()?;
                let next = names.len();
                Some(*names.entry(d).or_insert(next))
            })
            .collect();
        let mut domain_free = vec![0u32; names.len()];
        for (i, n) in nodes.iter().enumerate() {
            // Whole GPUs only: slices are no room for a gang.
            if let (Some(d), true, None) = (domain[i], n.eligible(), &n.slice) {
                domain_free[d] = domain_free[d].saturating_add(free[i]);
            }
        }
        let mut models: BTreeMap<&str, Vec<(&str, ModelNodes)>> = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            let Some((model, slice)) = n.pool() else {
                continue;
            };
            let slices = models.entry(model).or_default();
            let slice = slice.unwrap_or("");
            let at = match slices.iter().position(|(s, _)| *s == slice) {
                Some(at) => at,
                None => {
                    slices.push((
                        slice,
                        ModelNodes {
                            allocs: vec![],
                            domain_allocs: BTreeMap::new(),
                            alone_max: 0,
                            eligible: vec![],
                            largest: 0,
                            largest_free: 0,
                            largest_ever: 0,
                        },
                    ));
                    slices.len() - 1
                }
            };
            let m = &mut slices[at].1;
            m.largest = m.largest.max(n.allocatable);
            m.allocs.push(n.allocatable);
            match domain[i] {
                Some(d) => m.domain_allocs.entry(d).or_default().push(n.allocatable),
                None => m.alone_max = m.alone_max.max(n.allocatable),
            }
            if n.eligible() {
                m.eligible.push(i);
                m.largest_free = m.largest_free.max(free[i]);
            }
        }
        let timed = |b: &Booking| {
            b.reserved_on.is_some()
                || (b.placed_on.is_some() && (b.duration.is_some() || b.preemptible))
        };
        let mut by_name: HashMap<&str, Vec<(Option<&str>, usize)>> = HashMap::new();
        if snapshot.bookings.iter().any(timed) {
            for (i, n) in nodes.iter().enumerate() {
                by_name
                    .entry(n.name.as_str())
                    .or_default()
                    .push((n.slice.as_deref(), i));
            }
        }
        let mut ledger = Ledger {
            nodes,
            free,
            time: vec![Timeline::default(); nodes.len()],
            ever: vec![],
            by_name,
            models,
            domain,
            domain_free,
        };
        for b in &snapshot.bookings {
            if b.placed_on.is_some() {
                let end = b.held_until(snapshot.now);
                if end >= NEVER {
                    continue;
                }
                for node in b.held_nodes() {
                    if let Some(i) = ledger.index_of(node, b.slice.as_deref()) {
                        ledger.time[i].add_release(release_time(end, snapshot.now), b.count);
                    }
                }
            } else if let Some(h) = ledger.held(b) {
                for i in h.nodes() {
                    ledger.time[i].add_window(h.start, h.end, b.count);
                }
            }
        }
        ledger.ever = (0..nodes.len())
            .map(|i| ledger.time[i].most_free(nodes[i].allocatable, ledger.free[i]))
            .collect();
        for (_, m) in ledger.models.values_mut().flatten() {
            m.allocs.sort_unstable();
            for v in m.domain_allocs.values_mut() {
                v.sort_unstable();
            }
            m.largest_ever = m
                .eligible
                .iter()
                .map(|&i| ledger.ever[i])
                .max()
                .unwrap_or(0);
        }
        ledger
    }

    /// The pools of a model and slice.
    pub(super) fn pool(&self, (model, slice): Pool<'_>) -> Option<&ModelNodes> {
        let slice = slice.unwrap_or("");
        self.models
            .get(model)?
            .iter()
            .find(|(s, _)| *s == slice)
            .map(|(_, m)| m)
    }

    /// The index of node `name`'s pool of `slice` (whole GPUs for `None`), if a booking
    /// needed the index (see `by_name`).
    pub(super) fn index_of(&self, name: &str, slice: Option<&str>) -> Option<usize> {
        self.by_name
            .get(name)?
            .iter()
            .find(|(s, _)| *s == slice)
            .map(|&(_, i)| i)
    }

    /// The most GPUs ever free at once on node `i`, windows aside.
    pub(super) fn most_free(&self, i: usize) -> u32 {
        self.ever[i]
    }

    /// The window a booking holds, if its `reserved_on` (and a gang's other nodes) name
    /// distinct nodes of its model, as many as it wants, and it has a start; anything else
    /// is not a valid window and the booking asks again.
    pub(super) fn held(&self, b: &Booking) -> Option<Held> {
        if b.placed_on.is_some() {
            return None;
        }
        let start = b.start?;
        let of_model = |name: &str| {
            let i = self.index_of(name, b.slice.as_deref())?;
            (self.nodes[i].model.as_deref() == Some(b.model.as_str())).then_some(i)
        };
        let node = of_model(b.reserved_on.as_deref()?)?;
        let gang = b
            .gang
            .iter()
            .map(|n| of_model(n))
            .collect::<Option<Vec<usize>>>()?;
        let mut distinct: Vec<usize> = std::iter::once(node).chain(gang.iter().copied()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        (u32::try_from(distinct.len()).ok() == Some(b.size())).then(|| Held {
            node,
            gang,
            start,
            end: end_of(start, b.duration),
        })
    }

    /// Free GPUs now in node `i`'s domain: 0 for a node of no domain (a domain of its own
    /// is no loss to a gang), so that best fit looks at the node alone then.
    fn domain_free_of(&self, i: usize) -> u32 {
        self.domain[i].map_or(0, |d| self.domain_free[d])
    }

    /// The nodes for a gang of `size` nodes with `count` GPUs free on each over `[a, b)`
    /// (with `now_only`: `a` is now, and nodes short now are skipped at once), rank 0
    /// first; or how many would fit.
    ///
    /// Packing: the gang goes into one domain if any can take it (the one with the fewest
    /// fitting nodes, then the fullest, so that large domains stay whole); otherwise, unless
    /// it requires one domain, into the fewest domains (the largest first). Within a
    /// domain, best fit (the nodes left with the fewest free GPUs). A node without a
    /// domain label is a domain of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gang_fit(
        &self,
        model: &ModelNodes,
        count: u32,
        size: u32,
        a: Timestamp,
        b: Timestamp,
        now_only: bool,
        required: bool,
    ) -> Result<Vec<usize>, GangMiss> {
        // Fitting nodes by domain: (domain key, [(left free, node)]).
        let mut groups: BTreeMap<DomainKey, Vec<(u32, usize)>> = BTreeMap::new();
        for &i in &model.eligible {
            if self.most_free(i) < count || (now_only && self.free[i] < count) {
                continue;
            }
            let Some(left) = self.min_free(i, a, b).checked_sub(count) else {
                continue;
            };
            let key = match self.domain[i] {
                Some(d) => DomainKey::Labelled(d),
                None => DomainKey::Alone(i),
            };
            groups.entry(key).or_default().push((left, i));
        }
        let name = |i: usize| self.nodes[i].name.as_str();
        let dfree = |k: &DomainKey| match *k {
            DomainKey::Labelled(d) => self.domain_free[d],
            DomainKey::Alone(i) => self.free[i],
        };
        let first_name = |g: &[(u32, usize)]| g.iter().map(|&(_, i)| name(i)).min();
        for g in groups.values_mut() {
            g.sort_by(|&(x, i), &(y, j)| (x, name(i)).cmp(&(y, name(j))));
        }
        let want = usize::try_from(size).unwrap_or(usize::MAX);
        let one = groups
            .iter()
            .filter(|(_, g)| g.len() >= want)
            .min_by(|(k1, g1), (k2, g2)| {
                (g1.len(), dfree(k1), first_name(g1)).cmp(&(g2.len(), dfree(k2), first_name(g2)))
            });
        if let Some((_, g)) = one {
            return Ok(g.iter().take(want).map(|&(_, i)| i).collect());
        }
        let count_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        if required {
            let fitting = count_of(groups.values().map(Vec::len).max().unwrap_or(0));
            return Err(GangMiss { fitting });
        }
        let mut order: Vec<(&DomainKey, &Vec<(u32, usize)>)> = groups.iter().collect();
        order.sort_by(|(k1, g1), (k2, g2)| {
            (std::cmp::Reverse(g1.len()), dfree(k1), first_name(g1)).cmp(&(
                std::cmp::Reverse(g2.len()),
                dfree(k2),
                first_name(g2),
            ))
        });
        let chosen: Vec<usize> = order
            .into_iter()
            .flat_map(|(_, g)| g.iter().map(|&(_, i)| i))
            .take(want)
            .collect();
        if chosen.len() < want {
            return Err(GangMiss {
                fitting: count_of(chosen.len()),
            });
        }
        Ok(chosen)
    }

    /// How many nodes of `model` could ever hold `count` GPUs (eligible or not): in the
    /// largest domain when `one_domain`, else all of them.
    pub(super) fn nodes_with(&self, model: &ModelNodes, count: u32, one_domain: bool) -> u32 {
        let at_least = |sorted: &[u32]| sorted.len() - sorted.partition_point(|&a| a < count);
        let n = if one_domain {
            let alone = usize::from(model.alone_max >= count);
            model
                .domain_allocs
                .values()
                .map(|v| at_least(v))
                .max()
                .unwrap_or(0)
                .max(alone)
        } else {
            at_least(&model.allocs)
        };
        u32::try_from(n).unwrap_or(u32::MAX)
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
            .min_by(|&(x, i), &(y, j)| {
                (self.domain_free_of(i), x, &self.nodes[i].name).cmp(&(
                    self.domain_free_of(j),
                    y,
                    &self.nodes[j].name,
                ))
            })
            .map(|(_, i)| i)
    }

    /// Up to `n` distinct starts at or after `from` (not before now) where `want` fits on
    /// an eligible node of `model`, earliest first, each with its best-fit node.
    pub(super) fn slots(
        &self,
        pool: Pool<'_>,
        want: Want,
        from: Timestamp,
        n: usize,
    ) -> Vec<(Timestamp, usize)> {
        let Some(m) = self.pool(pool).filter(|m| m.largest_ever >= want.count) else {
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

    /// Up to `n` distinct starts at or after `from` (not before now) where a gang of
    /// `size` nodes with `want` each fits on eligible nodes of `model`, earliest first,
    /// each with the nodes it would get ([`Ledger::gang_fit`]).
    pub(super) fn gang_slots(
        &self,
        pool: Pool<'_>,
        want: Want,
        size: u32,
        required: bool,
        from: Timestamp,
        n: usize,
    ) -> Vec<(Timestamp, Vec<usize>)> {
        let Some(m) = self.pool(pool).filter(|m| m.largest_ever >= want.count) else {
            return vec![];
        };
        // A gang that does not fit may start to fit only when GPUs come back on one of
        // its model's nodes.
        let mut starts: Vec<Timestamp> = std::iter::once(from)
            .chain(m.eligible.iter().flat_map(|&i| self.time[i].comebacks()))
            .filter(|&t| t >= from && t < NEVER)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let mut out = vec![];
        for t in starts.into_iter().take(GANG_SEARCH) {
            let end = end_of(t, want.duration);
            if let Ok(nodes) = self.gang_fit(m, want.count, size, t, end, false, required) {
                out.push((t, nodes));
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    /// Recomputes the model's largest free blocks after node `index` lost GPUs now; with
    /// `for_good`, they do not come back, so its most-ever-free bound drops too (a timed
    /// placement leaves that bound as it was: what it takes, it gives back).
    pub(super) fn refresh(&mut self, index: usize, for_good: bool) {
        let Some(m) = self.nodes[index].pool().and_then(|(model, slice)| {
            let slice = slice.unwrap_or("");
            self.models
                .get_mut(model)?
                .iter_mut()
                .find(|(s, _)| *s == slice)
                .map(|(_, m)| m)
        }) else {
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
        if let (Some(d), None) = (self.domain[index], &self.nodes[index].slice) {
            self.domain_free[d] = self.domain_free[d].saturating_sub(count);
        }
        if end < NEVER {
            self.time[index].add_release(release_time(end, now), count);
        } else {
            self.ever[index] =
                self.time[index].most_free(self.nodes[index].allocatable, self.free[index]);
        }
        self.refresh(index, end >= NEVER);
        &self.nodes[index].name
    }

    /// Turns an opened window into a placement on its nodes; returns their names, rank 0
    /// first.
    pub(super) fn open(&mut self, h: &Held, count: u32, now: Timestamp) -> Vec<String> {
        h.nodes()
            .map(|i| {
                self.time[i].remove_window(h.start, h.end, count);
                self.take(i, count, h.end, now).to_owned()
            })
            .collect()
    }

    /// Books a window on node `index`; returns its name (for a gang, once per node).
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

/// How many times GPUs come back a gang's slot search tries: its cost is a fit over the
/// model's nodes per try.
const GANG_SEARCH: usize = 1024;

/// A topology domain in one sweep: a labelled one, or a node without a label on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DomainKey {
    Labelled(usize),
    Alone(usize),
}
