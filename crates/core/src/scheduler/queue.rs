//! The placement decision: which waiting bookings go to which node now, which future
//! windows are booked, and why the others wait. A pure function of a snapshot of the
//! cluster and of the clock (`Snapshot::now`); the controller applies the result.
//!
//! Policy:
//! - Order: higher `priority` first; equal priorities first come, first served (creation
//!   time, then namespace/name so that the order is total).
//! - Each GPU model is its own queue. When a booking waits for free GPUs of its model,
//!   every later booking of that model waits behind it, even one that would fit now
//!   (no overtaking: a large booking is never starved by a stream of small ones).
//!   Bookings held back by their own user's quota or that can never run (unknown model,
//!   more GPUs than any node has, not allowed) do not hold up anyone else.
//! - Quota is checked before placement; placement is best fit (the eligible node of the
//!   model left with the fewest free GPUs, then by name).
//!
//! Booking ahead (time):
//! - A booking with a future `start` asks for a window `[start, start + duration)`. Windows
//!   are granted first come, first served regardless of priority, before anything is
//!   placed in the pass, on the best-fit node where the window fits; once granted
//!   (`reserved_on`) a window is fixed: later bookings never move or shorten it.
//! - A window that does not fit is refused with the earliest start that would
//!   ([`Wait::WindowTaken`]), or with [`StartPolicy::EarliestAvailable`] booked there.
//! - A placement made now holds its GPUs for its duration (for good when unknown) and may
//!   use a node only if they stay free of windows for that whole time: short bookings
//!   backfill before a window, long ones do not run into it.
//! - When a window opens its booking is placed on its node ahead of the queue, keeping the
//!   window's end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use super::NodeGpus;
use gpu_cloud_api::time::{show_length, show_time};

use super::timeline::{NEVER, Timeline, UserHolds, Want, end_of, release_time};

/// Identifies a GpuInstance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a user may hold, from `GpuUser.spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPolicy {
    /// Most GPUs held at once.
    pub max_gpus: Option<u32>,
    /// Most placed instances at once.
    pub max_instances: Option<u32>,
    /// Allowed models; empty allows all.
    pub allowed_models: Vec<String>,
    /// No new placements.
    pub suspended: bool,
}

/// What to do when a booking's requested window is taken (`spec.startPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPolicy {
    /// Only the requested start will do: refuse, naming the next free slot, so that the
    /// person decides.
    #[default]
    Exact,
    /// Book the earliest start at or after the requested one where the window fits.
    EarliestAvailable,
}

/// A booking that has not finished: placed (its pod exists), holding a window, or waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    /// Which instance.
    pub key: InstanceKey,
    /// Its GpuUser, if its namespace belongs to one.
    pub user: Option<String>,
    /// GPU model.
    pub model: String,
    /// GPUs wanted, all on one node.
    pub count: u32,
    /// Queue priority (higher first).
    pub priority: i32,
    /// Creation time: first come, first served within a priority, and for windows.
    pub created: Timestamp,
    /// The node its pod is on, once placed.
    pub placed_on: Option<String>,
    /// Booked length (`spec.duration`); `None` is treated as running for good, so that
    /// such a booking never overlaps a window.
    pub duration: Option<Duration>,
    /// Window start: the granted one while it holds a window (`reserved_on`), else the
    /// requested `spec.startTime`. `None` or a time not after `now`: as soon as possible.
    pub start: Option<Timestamp>,
    /// What to do when the requested window is taken.
    pub start_policy: StartPolicy,
    /// The node holding its granted window (from status), until it is placed.
    pub reserved_on: Option<String>,
    /// When its hold began, once placed: it ends at `started + duration`. `None` while
    /// placed means its end is unknown (held for good).
    pub started: Option<Timestamp>,
}

impl Booking {
    /// A waiting booking of priority 0, as soon as possible and for good, not placed: the
    /// usual start from which tests and the published calendar set what differs.
    pub fn new(
        key: InstanceKey,
        user: Option<String>,
        model: &str,
        count: u32,
        created: Timestamp,
    ) -> Booking {
        Booking {
            key,
            user,
            model: model.to_owned(),
            count,
            priority: 0,
            created,
            placed_on: None,
            duration: None,
            start: None,
            start_policy: StartPolicy::default(),
            reserved_on: None,
            started: None,
        }
    }
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every node (GPU or not).
    pub nodes: Vec<NodeGpus>,
    /// GPUs held on each node by pods that have not finished (ours or anyone's).
    pub used: BTreeMap<String, u32>,
    /// Users by name.
    pub users: BTreeMap<String, UserPolicy>,
    /// Unfinished bookings.
    pub bookings: Vec<Booking>,
    /// The clock: an input, so that decisions over time are reproducible in tests.
    pub now: Timestamp,
}

/// Why a booking is not placed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Its namespace belongs to no GpuUser.
    NoUser,
    /// Its user is suspended.
    UserSuspended,
    /// Its user may not book this model.
    ModelNotAllowed,
    /// It wants more GPUs than its user may ever hold.
    OverQuotaLimit { max: u32 },
    /// Its user holds (or has booked) too many GPUs for the time it would run.
    GpuQuota { in_use: u32, max: u32 },
    /// Its user has too many instances placed (or booked) for the time it would run.
    InstanceQuota { placed: u32, max: u32 },
    /// No node has this model.
    UnknownModel,
    /// No node of this model has that many GPUs.
    TooLarge { largest: u32 },
    /// Not enough free GPUs of the model on any one node for its whole duration, or
    /// earlier bookings wait for them.
    Capacity { largest_free: u32 },
    /// Its requested window is taken on every node; `next_free` is the earliest start
    /// where it would fit (`None`: none while GPUs are held for good).
    WindowTaken { next_free: Option<Timestamp> },
    /// Its window ended before it could start (the controller or the node was away): it
    /// will not run; book again.
    WindowMissed { end: Timestamp },
    /// Its window has opened but its node cannot take it yet (a pod overruns, or the node
    /// is not ready).
    HeldNode { node: String, free: u32 },
    /// Its user's GPU-hour budget has not enough left for it (decided in front of the
    /// scheduler, by `policy::objects::budget_gate`); `never`: not even a whole period's.
    Budget { never: bool },
}

impl Wait {
    /// Waiting will not help: a person must change something (kstatus `Stalled`).
    pub fn stalled(&self) -> bool {
        matches!(
            self,
            Wait::NoUser
                | Wait::ModelNotAllowed
                | Wait::OverQuotaLimit { .. }
                | Wait::UnknownModel
                | Wait::TooLarge { .. }
                | Wait::WindowTaken { .. }
                | Wait::WindowMissed { .. }
                | Wait::Budget { never: true }
        )
    }

    /// One CamelCase word for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Wait::NoUser => "NoGpuUser",
            Wait::UserSuspended => "UserSuspended",
            Wait::ModelNotAllowed => "ModelNotAllowed",
            Wait::OverQuotaLimit { .. } => "QuotaExceeded",
            Wait::GpuQuota { .. } | Wait::InstanceQuota { .. } => "WaitingForQuota",
            Wait::UnknownModel => "UnknownModel",
            Wait::TooLarge { .. } => "TooLarge",
            Wait::Capacity { .. } => "WaitingForGpus",
            Wait::WindowTaken { .. } => "WindowTaken",
            Wait::WindowMissed { .. } => "WindowMissed",
            Wait::HeldNode { .. } => "WaitingForHeldNode",
            Wait::Budget { .. } => "BudgetExceeded",
        }
    }
}

/// A booking that waits, where it stands and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Which instance.
    pub key: InstanceKey,
    /// 1 for the first waiting booking of its model.
    pub position: u32,
    /// Why it waits.
    pub wait: Wait,
    /// What a person reads.
    pub message: String,
}

/// The outcome of one scheduling pass.
///
/// A booking that already holds a future window (`reserved_on`) and is not due appears in
/// no list: it keeps its window and its `Reserved` status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Bookings to place now, and their node, in queue order (opened windows first).
    pub placements: Vec<(InstanceKey, String)>,
    /// Bookings that wait, in queue order.
    pub waiting: Vec<Waiting>,
    /// Windows granted in this pass: booking, node, start. The controller records them
    /// (phase `Reserved`), so that the next pass sees them in `reserved_on`/`start`.
    pub reservations: Vec<(InstanceKey, String, Timestamp)>,
    /// Of `placements`, those whose window opened, with the window start: record it as
    /// their start, so that they end when their window ends and not later.
    pub due: Vec<(InstanceKey, Timestamp)>,
}

/// Decides where waiting bookings go now and which windows are granted. See the module
/// docs for the policy.
///
/// The plan is complete: deciding again on the world it leaves places and grants nothing
/// more. (One sweep down the queue is not always enough: a higher-priority booking placed
/// late in a sweep can put an earlier one of the same user over quota, which then no
/// longer holds up its model's queue; so sweeps repeat until one changes nothing.)
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut out = Plan::default();
    let mut world = std::borrow::Cow::Borrowed(snapshot);
    loop {
        let swept = sweep(&world);
        if swept.placements.is_empty() && swept.reservations.is_empty() {
            out.waiting = swept.waiting;
            return out;
        }
        let w = world.to_mut();
        let now = w.now;
        // An index, not a search per placement: one pass may place thousands.
        let placed: BTreeMap<&InstanceKey, &String> =
            swept.placements.iter().map(|(k, n)| (k, n)).collect();
        let due: BTreeMap<&InstanceKey, Timestamp> =
            swept.due.iter().map(|(k, t)| (k, *t)).collect();
        let reserved: BTreeMap<&InstanceKey, (&String, Timestamp)> = swept
            .reservations
            .iter()
            .map(|(k, n, t)| (k, (n, *t)))
            .collect();
        for b in w.bookings.iter_mut() {
            if let Some(node) = placed.get(&b.key) {
                b.placed_on = Some((*node).clone());
                b.started = Some(due.get(&b.key).copied().unwrap_or(now));
                *w.used.entry((*node).clone()).or_default() += b.count;
            } else if let Some((node, start)) = reserved.get(&b.key) {
                b.reserved_on = Some((*node).clone());
                b.start = Some(*start);
            }
        }
        out.placements.extend(swept.placements);
        out.reservations.extend(swept.reservations);
        out.due.extend(swept.due);
    }
}

/// The next `n` starts at or after `from` (not before `snapshot.now`) where `count` GPUs of
/// `model` are free on one eligible node for `duration` (`None`: for good), each with the
/// node a booking for it would get. Bookings still queued hold nothing and are not
/// considered; placed ones and granted windows are.
///
/// Feeds `kubectl gpu slots MODEL --count N --for 4h`, and is the search behind
/// [`Wait::WindowTaken`] and [`StartPolicy::EarliestAvailable`].
pub fn next_free_slots(
    snapshot: &Snapshot,
    model: &str,
    count: u32,
    duration: Option<Duration>,
    from: Timestamp,
    n: usize,
) -> Vec<(Timestamp, String)> {
    let ledger = Ledger::new(snapshot);
    let want = Want { count, duration };
    ledger
        .slots(model, want, from.max(snapshot.now), n)
        .into_iter()
        .map(|(t, i)| (t, ledger.nodes[i].name.clone()))
        .collect()
}

/// A granted window as the ledger holds it.
#[derive(Debug, Clone, Copy)]
struct Held {
    node: usize,
    start: Timestamp,
    end: Timestamp,
}

/// One sweep down the queue: opened windows, then window requests, then the queue.
fn sweep<'s>(snapshot: &'s Snapshot) -> Plan {
    let now = snapshot.now;
    let mut ledger = Ledger::new(snapshot);
    let mut holds: BTreeMap<&str, UserHolds> = BTreeMap::new();
    for b in &snapshot.bookings {
        let Some(user) = b.user.as_deref() else {
            continue;
        };
        if b.placed_on.is_some() {
            let end = b.started.map_or(NEVER, |s| end_of(s, b.duration));
            holds
                .entry(user)
                .or_default()
                .add_placed(release_time(end, now), b.count);
        } else if let Some(h) = ledger.held(b) {
            holds
                .entry(user)
                .or_default()
                .add_window(h.start, h.end, b.count);
        }
    }

    let mut opened: Vec<(&Booking, Held)> = vec![];
    let mut requests: Vec<&Booking> = vec![];
    let mut queue: Vec<&Booking> = vec![];
    for b in snapshot.bookings.iter().filter(|b| b.placed_on.is_none()) {
        match ledger.held(b) {
            Some(h) if h.start <= now => opened.push((b, h)),
            Some(_) => {}
            None if b.start.is_some_and(|s| s > now) => requests.push(b),
            None => queue.push(b),
        }
    }
    let first_come =
        |a: &Booking, b: &Booking| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key));
    opened.sort_by(|(a, ha), (b, hb)| ha.start.cmp(&hb.start).then_with(|| first_come(a, b)));
    requests.sort_by(|a, b| first_come(a, b));
    queue.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| first_come(a, b)));

    let mut plan = Plan::default();
    let mut waiting_per_model: BTreeMap<&str, u32> = BTreeMap::new();
    let mut wait = |plan: &mut Plan, b: &'s Booking, wait: Wait, blocked: bool| {
        let position = waiting_per_model.entry(b.model.as_str()).or_default();
        *position += 1;
        let message = message(b, &wait, *position - 1, blocked);
        plan.waiting.push(Waiting {
            key: b.key.clone(),
            position: *position,
            wait,
            message,
        });
    };

    // Opened windows: their GPUs were kept free of everything else, so they go first and
    // are not held up by the queue (nor by quota, checked when the window was granted).
    for (b, h) in opened {
        let checked = admit(b, snapshot, &ledger).and_then(|_| {
            let n = &ledger.nodes[h.node];
            let free = ledger.free[h.node];
            if h.end <= now {
                Err(Wait::WindowMissed { end: h.end })
            } else if n.eligible() && free >= b.count {
                Ok(())
            } else {
                Err(Wait::HeldNode {
                    node: n.name.clone(),
                    free: if n.eligible() { free } else { 0 },
                })
            }
        });
        match checked {
            Ok(()) => {
                let node = ledger.open(h, b.count, now);
                if let Some(u) = b.user.as_deref() {
                    let u = holds.entry(u).or_default();
                    u.remove_window(h.start, h.end, b.count);
                    u.add_placed(release_time(h.end, now), b.count);
                }
                plan.placements.push((b.key.clone(), node.to_owned()));
                plan.due.push((b.key.clone(), h.start));
            }
            Err(w) => wait(&mut plan, b, w, false),
        }
    }

    // Window requests, first come, first served.
    for b in requests {
        match request(b, snapshot, &ledger, &holds) {
            Ok((index, start)) => {
                let end = end_of(start, b.duration);
                let node = ledger.reserve(index, start, end, b.count);
                if let Some(u) = b.user.as_deref() {
                    holds.entry(u).or_default().add_window(start, end, b.count);
                }
                plan.reservations
                    .push((b.key.clone(), node.to_owned(), start));
            }
            Err(w) => wait(&mut plan, b, w, false),
        }
    }

    // The queue, now.
    let mut blocked_models: BTreeSet<&str> = BTreeSet::new();
    for b in queue {
        let blocked = blocked_models.contains(b.model.as_str());
        match decide(b, snapshot, &ledger, &holds, blocked) {
            Ok(index) => {
                let node = ledger.take(index, b.count, end_of(now, b.duration), now);
                if let Some(u) = b.user.as_deref() {
                    holds
                        .entry(u)
                        .or_default()
                        .add_placed(release_time(end_of(now, b.duration), now), b.count);
                }
                plan.placements.push((b.key.clone(), node.to_owned()));
            }
            Err(w) => {
                if matches!(w, Wait::Capacity { .. }) {
                    blocked_models.insert(&b.model);
                }
                wait(&mut plan, b, w, blocked);
            }
        }
    }
    plan
}

/// One sweep's view of free GPUs: per node now and over time, and per model the nodes of
/// that model with the largest node and the largest free block now kept current, so that
/// a booking that cannot fit now costs O(1) and only a placement walks its model's nodes.
struct Ledger<'s> {
    nodes: &'s [NodeGpus],
    /// Free GPUs per node now.
    free: Vec<u32>,
    /// Per node: timed placements and windows.
    time: Vec<Timeline>,
    /// Per node: the most GPUs ever free at once, windows aside (kept beside `free` so
    /// that refreshing a model's bounds reads two flat arrays).
    ever: Vec<u32>,
    /// Node index by name (empty when no booking needs it).
    by_name: HashMap<&'s str, usize>,
    models: BTreeMap<&'s str, ModelNodes>,
}

/// The nodes of one GPU model.
struct ModelNodes {
    /// Ready, schedulable, untainted nodes (indexes into `Ledger::nodes`).
    eligible: Vec<usize>,
    /// The largest node of the model, eligible or not.
    largest: u32,
    /// The most free GPUs now on one eligible node.
    largest_free: u32,
    /// The most GPUs ever free at once on one eligible node (windows aside): a window
    /// request wanting more is refused in O(1).
    largest_ever: u32,
}

impl<'s> Ledger<'s> {
    fn new(snapshot: &'s Snapshot) -> Self {
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
            b.reserved_on.is_some() || (b.placed_on.is_some() && b.duration.is_some())
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
                let end = b.started.map_or(NEVER, |s| end_of(s, b.duration));
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
    fn most_free(&self, i: usize) -> u32 {
        self.ever[i]
    }

    /// The window a booking holds, if its `reserved_on` names a node of its model and it
    /// has a start; anything else is not a valid window and the booking asks again.
    fn held(&self, b: &Booking) -> Option<Held> {
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
    fn min_free(&self, i: usize, a: Timestamp, b: Timestamp) -> u32 {
        self.time[i].min_free(self.nodes[i].allocatable, self.free[i], a, b)
    }

    /// The eligible node of `model` where `count` GPUs stay free over `[a, b)` that is
    /// left with the fewest free then (then by name). With `now_only`, `a` is now and
    /// nodes without enough free GPUs now are skipped without a look at their timeline.
    fn best_fit(
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
    fn slots(&self, model: &str, want: Want, from: Timestamp, n: usize) -> Vec<(Timestamp, usize)> {
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
    fn refresh(&mut self, index: usize, for_good: bool) {
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
    fn take(&mut self, index: usize, count: u32, end: Timestamp, now: Timestamp) -> &'s str {
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
    fn open(&mut self, h: Held, count: u32, now: Timestamp) -> &'s str {
        self.time[h.node].remove_window(h.start, h.end, count);
        self.take(h.node, count, h.end, now)
    }

    /// Books a window on node `index`; returns its name.
    fn reserve(&mut self, index: usize, start: Timestamp, end: Timestamp, count: u32) -> &'s str {
        self.time[index].add_window(start, end, count);
        &self.nodes[index].name
    }
}

/// The checks that do not depend on what is held: who asks, for what, whether it can ever
/// fit. Returns the model's nodes.
fn admit<'l>(
    b: &Booking,
    snapshot: &Snapshot,
    ledger: &'l Ledger<'_>,
) -> Result<&'l ModelNodes, Wait> {
    let user = b.user.as_deref().ok_or(Wait::NoUser)?;
    let policy = snapshot.users.get(user).ok_or(Wait::NoUser)?;
    if policy.suspended {
        return Err(Wait::UserSuspended);
    }
    if !policy.allowed_models.is_empty() && !policy.allowed_models.contains(&b.model) {
        return Err(Wait::ModelNotAllowed);
    }
    if let Some(max) = policy.max_gpus.filter(|&max| b.count > max) {
        return Err(Wait::OverQuotaLimit { max });
    }
    let model = ledger
        .models
        .get(b.model.as_str())
        .ok_or(Wait::UnknownModel)?;
    if model.largest < b.count {
        return Err(Wait::TooLarge {
            largest: model.largest,
        });
    }
    Ok(model)
}

/// The user's quota over `[a, b)`: what they hold and have booked at the busiest instant,
/// plus this booking, within their limits.
fn quota(
    b: &Booking,
    snapshot: &Snapshot,
    holds: &BTreeMap<&str, UserHolds>,
    a: Timestamp,
    end: Timestamp,
) -> Result<(), Wait> {
    let Some((user, policy)) = b
        .user
        .as_deref()
        .and_then(|u| Some((u, snapshot.users.get(u)?)))
    else {
        return Err(Wait::NoUser);
    };
    if policy.max_gpus.is_none() && policy.max_instances.is_none() {
        return Ok(());
    }
    let (in_use, placed) = holds.get(user).map_or((0, 0), |h| h.peak(a, end));
    if let Some(max) = policy.max_gpus.filter(|&max| in_use + b.count > max) {
        return Err(Wait::GpuQuota { in_use, max });
    }
    if let Some(max) = policy.max_instances.filter(|&max| placed >= max) {
        return Err(Wait::InstanceQuota { placed, max });
    }
    Ok(())
}

/// A window request: the node and start it gets, or why not.
fn request(
    b: &Booking,
    snapshot: &Snapshot,
    ledger: &Ledger<'_>,
    holds: &BTreeMap<&str, UserHolds>,
) -> Result<(usize, Timestamp), Wait> {
    let model = admit(b, snapshot, ledger)?;
    let asked = b.start.unwrap_or(snapshot.now).max(snapshot.now);
    let want = Want {
        count: b.count,
        duration: b.duration,
    };
    if model.largest_ever < b.count {
        // Every node of the model is held for good beyond what it would leave.
        return Err(Wait::WindowTaken { next_free: None });
    }
    let start = match ledger.best_fit(model, b.count, asked, end_of(asked, b.duration), false) {
        Some(_) => asked,
        None => {
            let next_free = ledger
                .slots(&b.model, want, asked, 1)
                .first()
                .map(|&(t, _)| t);
            match (b.start_policy, next_free) {
                (StartPolicy::EarliestAvailable, Some(t)) => t,
                _ => return Err(Wait::WindowTaken { next_free }),
            }
        }
    };
    let end = end_of(start, b.duration);
    quota(b, snapshot, holds, start, end)?;
    ledger
        .best_fit(model, b.count, start, end, false)
        .map(|i| (i, start))
        .ok_or(Wait::WindowTaken { next_free: None })
}

/// A booking of the queue: the node it goes to now, or why it waits.
fn decide(
    b: &Booking,
    snapshot: &Snapshot,
    ledger: &Ledger<'_>,
    holds: &BTreeMap<&str, UserHolds>,
    blocked: bool,
) -> Result<usize, Wait> {
    let model = admit(b, snapshot, ledger)?;
    let now = snapshot.now;
    let end = end_of(now, b.duration);
    quota(b, snapshot, holds, now, end)?;
    let largest_free = model.largest_free;
    if blocked || largest_free < b.count {
        return Err(Wait::Capacity { largest_free });
    }
    ledger
        .best_fit(model, b.count, now, end, true)
        .ok_or(Wait::Capacity { largest_free })
}

fn message(b: &Booking, wait: &Wait, ahead: u32, blocked: bool) -> String {
    let want = format!("{} x {}", b.count, b.model);
    let user = b.user.as_deref().unwrap_or("");
    match wait {
        Wait::NoUser => format!(
            "namespace {} belongs to no GpuUser: book in your user's namespace (gpu-<user>)",
            b.key.namespace
        ),
        Wait::UserSuspended => format!("user {user} is suspended: no new instance starts"),
        Wait::ModelNotAllowed => format!("user {user} may not book {}", b.model),
        Wait::OverQuotaLimit { max } => {
            format!("wants {want} but user {user} may hold at most {max} GPUs")
        }
        Wait::GpuQuota { in_use, max } => format!(
            "waiting for quota: user {user} holds {in_use} of {max} GPUs, {want} would exceed it"
        ),
        Wait::InstanceQuota { placed, max } => {
            format!("waiting for quota: user {user} runs {placed} of {max} instances")
        }
        Wait::UnknownModel => format!("no node has {} GPUs", b.model),
        Wait::Budget { .. } => format!("user {user} has not enough GPU-hour budget left"),
        Wait::TooLarge { largest } => {
            format!(
                "no {} node has {} GPUs (the largest has {largest})",
                b.model, b.count
            )
        }
        Wait::Capacity { largest_free } => {
            let free = match *largest_free {
                0 => "none free".to_owned(),
                n if n >= b.count && blocked => {
                    "free GPUs are held for earlier bookings".to_owned()
                }
                n if n >= b.count => format!(
                    "free GPUs are booked for windows within its length ({})",
                    show_length(b.duration).trim_start_matches("of ")
                ),
                n => format!("at most {n} free on one node"),
            };
            format!("waiting for {want}: {free}, {ahead} ahead")
        }
        Wait::WindowTaken { next_free } => {
            let length = show_length(b.duration);
            match next_free {
                Some(t) => format!("next free slot for {want} {length}: {}", show_time(*t)),
                None => format!(
                    "no free slot for {want} {length}: GPUs of the model are held with no end"
                ),
            }
        }
        Wait::WindowMissed { end } => format!(
            "its window for {want} ended at {} before it could start: book again",
            show_time(*end)
        ),
        Wait::HeldNode { node, free } => {
            format!("window opened: waiting for {want} on its node {node} ({free} free)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::timeline::end_of;
    use gpu_cloud_api::time::show_time;
    use proptest::prelude::*;

    const H100: &str = "NVIDIA-H100-80GB-HBM3";
    const L4: &str = "NVIDIA-L4";

    fn node(name: &str, model: &str, gpus: u32) -> NodeGpus {
        NodeGpus {
            name: name.into(),
            model: Some(model.into()),
            allocatable: gpus,
            ready: true,
            schedulable: true,
            untolerated_taint: None,
        }
    }

    fn booking(name: &str, user: &str, model: &str, count: u32, t: i64) -> Booking {
        let key = InstanceKey {
            namespace: format!("gpu-{user}"),
            name: name.into(),
        };
        let created = Timestamp::from_second(t).unwrap();
        Booking::new(key, Some(user.into()), model, count, created)
    }

    fn snapshot(nodes: Vec<NodeGpus>, bookings: Vec<Booking>) -> Snapshot {
        let users = bookings
            .iter()
            .filter_map(|b| b.user.clone())
            .map(|u| (u, UserPolicy::default()))
            .collect();
        Snapshot {
            nodes,
            used: BTreeMap::new(),
            users,
            bookings,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn placed(plan: &Plan) -> Vec<(&str, &str)> {
        plan.placements
            .iter()
            .map(|(k, n)| (k.name.as_str(), n.as_str()))
            .collect()
    }

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
        let mut s = snapshot(
            vec![node("a", H100, 8), node("l", L4, 1)],
            vec![
                booking("big", "u", H100, 8, 1),
                booking("small", "v", H100, 1, 2),
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
        assert_eq!(p.waiting[0].wait, Wait::GpuQuota { in_use: 4, max: 6 });
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
        let got: Vec<_> = p
            .waiting
            .iter()
            .map(|w| (w.wait.clone(), w.wait.stalled()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Wait::UnknownModel, true),
                (Wait::TooLarge { largest: 1 }, true),
                (Wait::NoUser, true),
                (Wait::ModelNotAllowed, true),
                (Wait::OverQuotaLimit { max: 2 }, true),
            ]
        );
        assert_eq!(
            p.waiting[1].message,
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

    // ---- booking ahead -----------------------------------------------------------

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(s: &str) -> Timestamp {
        s.parse().expect("test time")
    }

    /// A booking of `hours` (None: no end).
    fn timed(name: &str, count: u32, hours: Option<u64>, created: i64) -> Booking {
        Booking {
            duration: hours.map(|h| HOUR * h as u32),
            ..booking(name, "u", H100, count, created)
        }
    }

    /// A booking holding the window from `start` on `node`.
    fn reserved(name: &str, count: u32, hours: u64, start: &str, node: &str) -> Booking {
        Booking {
            start: Some(at(start)),
            reserved_on: Some(node.into()),
            ..timed(name, count, Some(hours), 0)
        }
    }

    fn running(name: &str, count: u32, hours: u64, started: &str, node: &str) -> Booking {
        Booking {
            placed_on: Some(node.into()),
            started: Some(at(started)),
            ..timed(name, count, Some(hours), 0)
        }
    }

    /// A snapshot at `now` whose `used` follows the placed bookings.
    fn at_time(now: &str, nodes: Vec<NodeGpus>, bookings: Vec<Booking>) -> Snapshot {
        let mut s = snapshot(nodes, bookings);
        s.now = at(now);
        for b in &s.bookings {
            if let Some(n) = &b.placed_on {
                *s.used.entry(n.clone()).or_default() += b.count;
            }
        }
        s
    }

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
            vec![(window.key.clone(), "a".to_owned(), at("2026-12-01T13:00Z"))]
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
                (first.key.clone(), "a".into(), t("2026-12-02T00:00Z")),
                (urgent.key.clone(), "a".into(), t("2026-12-02T02:00Z")),
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
        assert_eq!(p.waiting[0].wait, Wait::GpuQuota { in_use: 4, max: 4 });
    }

    // ---- properties --------------------------------------------------------------

    const MODELS: [&str; 3] = [H100, L4, "NVIDIA-A100-SXM4-80GB"];

    #[derive(Debug, Clone)]
    enum Op {
        Book {
            user: u8,
            model: u8,
            count: u32,
            priority: i32,
        },
        Delete(usize),
        /// Someone else's pod takes GPUs on a node.
        Foreign {
            node: usize,
            count: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u8..3, 1u32..9, -1i32..2)
                .prop_map(|(user, model, count, priority)| Op::Book { user, model, count, priority }),
            2 => any::<usize>().prop_map(Op::Delete),
            1 => (any::<usize>(), 1u32..4).prop_map(|(node, count)| Op::Foreign { node, count }),
        ]
    }

    fn nodes() -> impl Strategy<Value = Vec<NodeGpus>> {
        prop::collection::vec((0usize..3, 0u32..9, any::<bool>()), 1..6).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (m, gpus, ok))| {
                    let mut n = node(&format!("n{i}"), MODELS[m], gpus);
                    n.ready = ok || i % 2 == 0;
                    n
                })
                .collect()
        })
    }

    /// The cluster as objects: nodes, foreign pods, bookings (with `placed_on` standing
    /// for their pods). A pass sees only this, as a freshly restarted controller would,
    /// so each step below is also a restart.
    #[derive(Debug, Clone)]
    struct World {
        nodes: Vec<NodeGpus>,
        foreign: BTreeMap<String, u32>,
        bookings: Vec<Booking>,
        users: BTreeMap<String, UserPolicy>,
        clock: i64,
    }

    impl World {
        fn snapshot(&self) -> Snapshot {
            let mut used = self.foreign.clone();
            for b in &self.bookings {
                if let Some(n) = &b.placed_on {
                    *used.entry(n.clone()).or_default() += b.count;
                }
            }
            Snapshot {
                nodes: self.nodes.clone(),
                used,
                users: self.users.clone(),
                bookings: self.bookings.clone(),
                now: Timestamp::UNIX_EPOCH,
            }
        }

        fn apply(&mut self, plan: &Plan) {
            for (key, node) in &plan.placements {
                let b = self
                    .bookings
                    .iter_mut()
                    .find(|b| &b.key == key)
                    .expect("placed booking exists");
                assert!(b.placed_on.is_none(), "{key} placed twice");
                b.placed_on = Some(node.clone());
            }
        }
    }

    fn check_invariants(
        world: &World,
        before: &Snapshot,
        plan: &Plan,
    ) -> Result<(), TestCaseError> {
        // Capacity: a pass never takes more than was free on a node.
        for n in &world.nodes {
            let was_used = before.used.get(&n.name).copied().unwrap_or(0);
            let added: u32 = plan
                .placements
                .iter()
                .filter(|(_, node)| node == &n.name)
                .map(|(k, _)| {
                    before
                        .bookings
                        .iter()
                        .find(|b| &b.key == k)
                        .map_or(0, |b| b.count)
                })
                .sum();
            if added > 0 {
                prop_assert!(n.eligible(), "placed on ineligible node {}", n.name);
                prop_assert!(
                    was_used + added <= n.allocatable,
                    "node {} over capacity",
                    n.name
                );
            }
        }
        // Model match, quota.
        let mut gpus: BTreeMap<&str, u32> = BTreeMap::new();
        for b in world.bookings.iter().filter(|b| b.placed_on.is_some()) {
            let n = world
                .nodes
                .iter()
                .find(|n| Some(&n.name) == b.placed_on.as_ref())
                .unwrap();
            prop_assert_eq!(n.model.as_deref(), Some(b.model.as_str()));
            *gpus.entry(b.user.as_deref().unwrap()).or_default() += b.count;
        }
        for (user, used) in gpus {
            if let Some(max) = world.users[user].max_gpus {
                prop_assert!(used <= max, "user {} holds {} > {}", user, used, max);
            }
        }
        // No overtaking: after a booking waits for GPUs of its model, no later booking
        // of that model is placed in the same pass.
        let order = |k: &InstanceKey| {
            let b = before.bookings.iter().find(|b| &b.key == k).unwrap();
            (-b.priority, b.created, b.key.clone(), b.model.clone())
        };
        for w in plan
            .waiting
            .iter()
            .filter(|w| matches!(w.wait, Wait::Capacity { .. }))
        {
            let (p, c, k, model) = order(&w.key);
            for (placed, _) in &plan.placements {
                let (p2, c2, k2, model2) = order(placed);
                if model2 == model {
                    prop_assert!(
                        (p2, c2, k2) < (p, c, k.clone()),
                        "{} overtook {}",
                        placed,
                        w.key
                    );
                }
            }
        }
        Ok(())
    }

    /// Users u0, u1, ... with these GPU quotas.
    fn users_with_gpu_quotas(quotas: &[Option<u32>]) -> BTreeMap<String, UserPolicy> {
        quotas
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let policy = UserPolicy {
                    max_gpus: *q,
                    ..Default::default()
                };
                (format!("u{i}"), policy)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_histories_keep_capacity_quota_and_order(
            nodes in nodes(),
            quotas in prop::collection::vec(prop::option::of(1u32..12), 3),
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let users = users_with_gpu_quotas(&quotas);
            let mut world = World { nodes, foreign: BTreeMap::new(), bookings: vec![], users, clock: 0 };
            for (i, op) in ops.into_iter().enumerate() {
                world.clock += 1;
                match op {
                    Op::Book { user, model, count, priority } => {
                        let mut b = booking(&format!("b{i}"), &format!("u{user}"), MODELS[model as usize], count, world.clock);
                        b.priority = priority;
                        world.bookings.push(b);
                    }
                    Op::Delete(i) if !world.bookings.is_empty() => {
                        let i = i % world.bookings.len();
                        world.bookings.remove(i);
                    }
                    Op::Foreign { node, count } => {
                        // Only where it fits: the kubelet would refuse it otherwise.
                        let snap = world.snapshot();
                        let n = &world.nodes[node % world.nodes.len()];
                        let used = snap.used.get(&n.name).copied().unwrap_or(0);
                        if used + count <= n.allocatable {
                            *world.foreign.entry(n.name.clone()).or_default() += count;
                        }
                    }
                    Op::Delete(_) => {}
                }
                let before = world.snapshot();
                let p = plan(&before);
                world.apply(&p);
                check_invariants(&world, &before, &p)?;
                // Deciding again on the resulting world places nothing more: a pass after
                // a crash or restart, seeing only the cluster, cannot double-book.
                let again = plan(&world.snapshot());
                prop_assert!(again.placements.is_empty(), "second pass placed {:?}", again.placements);
            }
        }
    }

    // ---- properties over time ----------------------------------------------------

    /// Times in the timed properties are whole half hours after this, so that windows and
    /// placements often touch and boundaries are exercised.
    const UNIT: i64 = 1800;

    fn t0() -> Timestamp {
        at("2026-12-01T00:00Z")
    }

    fn units(n: i64) -> Timestamp {
        Timestamp::from_second(t0().as_second() + n * UNIT).expect("test time")
    }

    #[derive(Debug, Clone)]
    enum TimedOp {
        Book {
            user: u8,
            model: u8,
            count: u32,
            priority: i32,
            /// Half hours; `None`: no end.
            length: Option<u32>,
            /// Half hours from now; `None`: now.
            ahead: Option<u32>,
            earliest: bool,
        },
        Delete(usize),
        /// Half hours.
        Advance(u32),
    }

    fn timed_op() -> impl Strategy<Value = TimedOp> {
        prop_oneof![
            6 => (
                0u8..3,
                0u8..3,
                1u32..9,
                -1i32..2,
                prop::option::weighted(0.8, 1u32..12),
                prop::option::weighted(0.5, 1u32..24),
                any::<bool>(),
            )
                .prop_map(|(user, model, count, priority, length, ahead, earliest)| {
                    TimedOp::Book { user, model, count, priority, length, ahead, earliest }
                }),
            1 => any::<usize>().prop_map(TimedOp::Delete),
            3 => (0u32..8).prop_map(TimedOp::Advance),
        ]
    }

    /// The cluster over time: bookings with what the controller records (placement and its
    /// start, granted windows), the clock. Bookings end when their time is up.
    #[derive(Debug, Clone)]
    struct TimedWorld {
        nodes: Vec<NodeGpus>,
        bookings: Vec<Booking>,
        users: BTreeMap<String, UserPolicy>,
        now: Timestamp,
        serial: i64,
    }

    impl TimedWorld {
        fn snapshot(&self) -> Snapshot {
            let mut used = BTreeMap::new();
            for b in &self.bookings {
                if let Some(n) = &b.placed_on {
                    *used.entry(n.clone()).or_default() += b.count;
                }
            }
            Snapshot {
                nodes: self.nodes.clone(),
                used,
                users: self.users.clone(),
                bookings: self.bookings.clone(),
                now: self.now,
            }
        }

        /// What the controller does with a plan.
        fn apply(&mut self, plan: &Plan) {
            let due: BTreeMap<_, _> = plan.due.iter().cloned().collect();
            for (key, node) in &plan.placements {
                let b = self
                    .bookings
                    .iter_mut()
                    .find(|b| &b.key == key)
                    .expect("exists");
                assert!(b.placed_on.is_none(), "{key} placed twice");
                b.placed_on = Some(node.clone());
                b.started = Some(due.get(key).copied().unwrap_or(self.now));
            }
            for (key, node, start) in &plan.reservations {
                let b = self
                    .bookings
                    .iter_mut()
                    .find(|b| &b.key == key)
                    .expect("exists");
                assert!(b.reserved_on.is_none(), "{key} reserved twice");
                b.reserved_on = Some(node.clone());
                b.start = Some(*start);
            }
        }

        /// The controller ends bookings whose time is up.
        fn expire(&mut self) {
            let now = self.now;
            self.bookings
                .retain(|b| match (b.placed_on.as_ref(), b.started) {
                    (Some(_), Some(s)) => end_of(s, b.duration) > now,
                    _ => true,
                });
        }
    }

    /// GPUs held on every node at every instant from `now` on (checked at every boundary)
    /// never exceed what the node has: placements for their time, windows for theirs.
    fn check_over_time(world: &TimedWorld) -> Result<(), TestCaseError> {
        for n in &world.nodes {
            let mut holds: Vec<(Timestamp, Timestamp, u32)> = vec![];
            for b in &world.bookings {
                if b.placed_on.as_ref() == Some(&n.name) {
                    let s = b.started.expect("placed bookings have a start");
                    holds.push((s, end_of(s, b.duration), b.count));
                } else if b.placed_on.is_none() && b.reserved_on.as_ref() == Some(&n.name) {
                    let s = b.start.expect("windows have a start");
                    holds.push((s, end_of(s, b.duration), b.count));
                }
            }
            let points = std::iter::once(world.now)
                .chain(holds.iter().map(|h| h.0))
                .filter(|&t| t >= world.now);
            for t in points {
                let held: u32 = holds
                    .iter()
                    .filter(|&&(s, e, _)| s <= t && t < e)
                    .map(|h| h.2)
                    .sum();
                prop_assert!(
                    held <= n.allocatable,
                    "node {} holds {} > {} at {}",
                    n.name,
                    held,
                    n.allocatable,
                    t
                );
            }
        }
        Ok(())
    }

    fn timed_booking(world: &mut TimedWorld, op: &TimedOp) -> Option<Booking> {
        let TimedOp::Book {
            user,
            model,
            count,
            priority,
            length,
            ahead,
            earliest,
        } = *op
        else {
            return None;
        };
        world.serial += 1;
        let mut b = booking(
            &format!("b{}", world.serial),
            &format!("u{user}"),
            MODELS[model as usize],
            count,
            world.now.as_second() + world.serial,
        );
        b.priority = priority;
        b.duration = length.map(|l| Duration::from_secs(u64::from(l) * UNIT as u64));
        b.start = ahead.map(|a| {
            Timestamp::from_second(world.now.as_second() + i64::from(a) * UNIT).expect("time")
        });
        b.start_policy = if earliest {
            StartPolicy::EarliestAvailable
        } else {
            StartPolicy::Exact
        };
        Some(b)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn windows_never_overlap_beyond_capacity_and_are_never_moved(
            nodes in nodes(),
            quotas in prop::collection::vec(prop::option::of(1u32..16), 3),
            ops in prop::collection::vec(timed_op(), 1..50),
            later in prop::collection::vec(timed_op(), 1..6),
        ) {
            let users = users_with_gpu_quotas(&quotas);
            let mut world = TimedWorld { nodes, bookings: vec![], users, now: units(0), serial: 0 };
            // Every window granted so far: it keeps its node and start until it opens there.
            let mut granted: BTreeMap<InstanceKey, (String, Timestamp)> = BTreeMap::new();
            for op in &ops {
                match op {
                    TimedOp::Book { .. } => {
                        let b = timed_booking(&mut world, op).expect("a booking");
                        world.bookings.push(b);
                    }
                    TimedOp::Delete(i) if !world.bookings.is_empty() => {
                        let i = i % world.bookings.len();
                        granted.remove(&world.bookings[i].key);
                        world.bookings.remove(i);
                    }
                    TimedOp::Delete(_) => {}
                    TimedOp::Advance(n) => {
                        world.now = units((world.now.as_second() - t0().as_second()) / UNIT + i64::from(*n));
                        world.expire();
                    }
                }
                let before = world.snapshot();
                let p = plan(&before);

                // Later bookings (created after all of these) change no window granted
                // now, and no window due now.
                let mut extended = world.clone();
                for op in &later {
                    if let Some(b) = timed_booking(&mut extended, op) {
                        extended.bookings.push(b);
                    }
                }
                let p2 = plan(&extended.snapshot());
                for r in &p.reservations {
                    prop_assert!(p2.reservations.contains(r), "{:?} moved by later bookings", r);
                }
                for d in &p.due {
                    prop_assert!(p2.due.contains(d), "{:?} delayed by later bookings", d);
                }

                world.apply(&p);
                check_over_time(&world)?;

                // A granted window opens on its node at its start, unless it was missed
                // altogether (the clock jumped past its end).
                for (key, node, start) in &p.reservations {
                    prop_assert!(*start > world.now);
                    granted.insert(key.clone(), (node.clone(), *start));
                }
                for (key, node) in &p.placements {
                    if let Some((n, s)) = granted.remove(key) {
                        prop_assert_eq!(&n, node);
                        let due = p.due.iter().find(|(k, _)| k == key).map(|d| d.1);
                        prop_assert_eq!(due, Some(s));
                    }
                }
                for w in &p.waiting {
                    if granted.contains_key(&w.key) {
                        prop_assert!(
                            matches!(w.wait, Wait::WindowMissed { .. }),
                            "a granted window waits: {:?}", w
                        );
                    }
                }

                // Complete: nothing more to place or grant at the same instant.
                let again = plan(&world.snapshot());
                prop_assert!(again.placements.is_empty(), "second pass placed {:?}", again.placements);
                prop_assert!(again.reservations.is_empty(), "second pass granted {:?}", again.reservations);
            }
        }

        #[test]
        fn the_first_slot_offered_is_the_one_earliest_available_books(
            nodes in nodes(),
            ops in prop::collection::vec(timed_op(), 1..30),
            count in 1u32..9,
            length in 1u32..12,
            model in 0usize..3,
        ) {
            let users = (0..3).map(|i| (format!("u{i}"), UserPolicy::default())).collect();
            let mut world = TimedWorld { nodes, bookings: vec![], users, now: units(0), serial: 0 };
            for op in &ops {
                match op {
                    TimedOp::Book { .. } => {
                        let b = timed_booking(&mut world, op).expect("a booking");
                        world.bookings.push(b);
                    }
                    TimedOp::Advance(n) => {
                        world.now = units((world.now.as_second() - t0().as_second()) / UNIT + i64::from(*n));
                        world.expire();
                    }
                    TimedOp::Delete(_) => {}
                }
                let p = plan(&world.snapshot());
                world.apply(&p);
            }
            // Whatever the queue says, a new window request for the first slot gets it.
            let s = world.snapshot();
            let duration = Some(Duration::from_secs(u64::from(length) * UNIT as u64));
            let from = Timestamp::from_second(s.now.as_second() + UNIT).expect("time");
            let slots = next_free_slots(&s, MODELS[model], count, duration, from, 3);
            prop_assert!(slots.windows(2).all(|w| w[0].0 < w[1].0));
            if let Some((first, _)) = slots.first() {
                let mut b = booking("probe", "u0", MODELS[model], count, s.now.as_second() + 1_000_000);
                b.duration = duration;
                b.start = Some(from);
                b.start_policy = StartPolicy::EarliestAvailable;
                let mut s2 = s.clone();
                s2.bookings.retain(|b| b.placed_on.is_some() || b.reserved_on.is_some());
                s2.bookings.push(b);
                let p = plan(&s2);
                let got = p.reservations.iter().find(|r| r.0.name == "probe").map(|r| r.2);
                prop_assert_eq!(got, Some(*first));
            }
        }
    }
}
