//! The scheduler's data: what it is given (a [`Snapshot`] of nodes, GPUs in use, users'
//! limits and bookings) and what it answers (a [`Plan`]: placements, granted windows, and
//! why each other booking waits).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;

use super::NodeGpus;

/// Which GPUs: a model, and a slice of it (a MIG profile, `shared`) or whole GPUs (`None`).
/// Each pool of a node is counted apart, and each is a queue of its own.
pub type Pool<'a> = (&'a str, Option<&'a str>);

/// Identifies a GpuInstance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
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
    /// GPUs that may be held beyond `max_gpus` while they are idle: borrowed, and taken
    /// back by preemption when their owners need them (see [`super::preemption`]).
    pub borrow_gpus: u32,
    /// GPUs that may be held in spot (preemptible) bookings, apart from `max_gpus`.
    pub max_spot_gpus: u32,
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Booking {
    /// Which instance.
    pub key: InstanceKey,
    /// Its GpuUser, if its namespace belongs to one.
    pub user: Option<String>,
    /// GPU model.
    pub model: String,
    /// GPUs wanted, all on one node (on each node of a gang).
    pub count: u32,
    /// Nodes of a gang (all placed in one pass or none); 0 and 1 both mean one node.
    pub nodes: u32,
    /// How a gang may spread over topology domains.
    pub topology: Topology,
    /// A slice of a GPU per unit of `count` (a MIG profile, `shared`), or whole GPUs.
    pub slice: Option<String>,
    /// Thousandths of a GPU one unit is, for quotas and shares: 1000 for a whole GPU (0
    /// counts as 1000), a slice's fraction otherwise.
    pub unit_milli: u32,
    /// Queue priority (higher first).
    pub priority: i32,
    /// Creation time: first come, first served within a priority, and for windows.
    pub created: Timestamp,
    /// The node its pod is on, once placed (a gang's rank 0).
    pub placed_on: Option<String>,
    /// A placed or reserved gang's other nodes, ranks 1 and up (empty for one node).
    pub gang: Vec<String>,
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
    /// A spot booking: idle GPUs apart from its user's guarantee, the first to be preempted.
    pub preemptible: bool,
    /// Placed, and its pod is being deleted (preempted): its GPUs are still held, and it
    /// is preempted no further.
    pub terminating: bool,
    /// Waiting for the bookings it preempted on this node to go (from its status).
    pub nominated_on: Option<String>,
    /// The bookings that preempted it (most recent last): it never preempts one of them
    /// back, so that no two bookings take turns.
    pub preempted_by: Vec<InstanceKey>,
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
            created,
            ..Booking::default()
        }
    }
}

impl Booking {
    /// Its nodes: 1 unless it is a gang.
    pub fn size(&self) -> u32 {
        self.nodes.max(1)
    }

    /// Units (GPUs or slices) of the whole booking, on all its nodes.
    pub fn gpus(&self) -> u32 {
        self.count.saturating_mul(self.size())
    }

    /// The whole booking in thousandths of a GPU, a slice as its fraction: what quotas and
    /// shares count.
    pub fn milli(&self) -> u32 {
        let unit = if self.unit_milli == 0 {
            1000
        } else {
            self.unit_milli
        };
        self.gpus().saturating_mul(unit)
    }

    /// The pool it books from.
    pub fn pool(&self) -> Pool<'_> {
        (self.model.as_str(), self.slice.as_deref())
    }

    /// The nodes it holds GPUs on (`count` on each): where it is placed, or where its
    /// window is, rank 0 first.
    pub fn held_nodes(&self) -> impl Iterator<Item = &str> {
        self.placed_on
            .as_deref()
            .or(self.reserved_on.as_deref())
            .into_iter()
            .chain(self.gang.iter().map(String::as_str))
    }

    /// Until when a placed booking's GPUs count as taken for what is booked later (book-
    /// ahead windows, `kubectl gpu slots`): its end ([`super::timeline::NEVER`] when
    /// unknown), or for a spot booking no later than a moment after `now`, since its GPUs
    /// are reclaimable: a window that needs them preempts it when it opens.
    pub fn held_until(&self, now: Timestamp) -> Timestamp {
        let end = self.started.map_or(super::timeline::NEVER, |s| {
            super::timeline::end_of(s, self.duration)
        });
        if self.preemptible {
            end.min(
                now.checked_add(jiff::SignedDuration::from_secs(1))
                    .unwrap_or(end),
            )
        } else {
            end
        }
    }
}

/// How a gang may spread over topology domains (see [`NodeGpus::domain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// The fewest domains that hold it now (one if any can).
    #[default]
    Preferred,
    /// One domain, or it waits.
    Required,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every node (GPU or not).
    pub nodes: Vec<NodeGpus>,
    /// GPUs held on each node by pods that have not finished (ours or anyone's).
    pub used: BTreeMap<String, u32>,
    /// Slices held on each node, per slice, by pods that have not finished.
    pub used_slices: BTreeMap<(String, String), u32>,
    /// Users by name.
    pub users: BTreeMap<String, UserPolicy>,
    /// Unfinished bookings.
    pub bookings: Vec<Booking>,
    /// The clock: an input, so that decisions over time are reproducible in tests.
    pub now: Timestamp,
    /// Waiting bookings may preempt (see [`super::preemption`]); off, nothing is preempted
    /// and bookings with a nomination wait on as any other.
    pub preemption: bool,
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
    /// Its user holds (or has booked) too many GPUs for the time it would run
    /// (`in_use_milli`: thousandths of a GPU, slices counting as their fraction).
    GpuQuota { in_use_milli: u32, max: u32 },
    /// Its user has too many instances placed (or booked) for the time it would run.
    InstanceQuota { placed: u32, max: u32 },
    /// No node has this model.
    UnknownModel,
    /// No node of this model has that many GPUs.
    TooLarge { largest: u32 },
    /// A gang wants more nodes than there are of its model with its GPUs per node
    /// (`have`), or in one domain when it requires one.
    TooFewNodes { have: u32, one_domain: bool },
    /// Not enough nodes with its GPUs free for a gang (`fitting` have, in one domain when
    /// it requires one), or earlier bookings wait for them.
    GangCapacity { fitting: u32 },
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
    /// A spot booking of a user who may hold no spot GPUs.
    SpotNotAllowed,
    /// It preempted bookings on `node` and waits for their pods to go (`victims` still
    /// there); the GPUs freed there are kept for it.
    Preempting { node: String, victims: u32 },
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
                | Wait::TooFewNodes { .. }
                | Wait::WindowTaken { .. }
                | Wait::WindowMissed { .. }
                | Wait::Budget { never: true }
                | Wait::SpotNotAllowed
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
            Wait::Capacity { .. } | Wait::GangCapacity { .. } => "WaitingForGpus",
            Wait::TooFewNodes { .. } => "TooFewNodes",
            Wait::WindowTaken { .. } => "WindowTaken",
            Wait::WindowMissed { .. } => "WindowMissed",
            Wait::HeldNode { .. } => "WaitingForHeldNode",
            Wait::Budget { .. } => "BudgetExceeded",
            Wait::SpotNotAllowed => "SpotNotAllowed",
            Wait::Preempting { .. } => "Preempting",
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
    /// Bookings to place now, and their nodes (one, or a gang's by rank), in queue order
    /// (opened windows first).
    pub placements: Vec<(InstanceKey, Vec<String>)>,
    /// Bookings that wait, in queue order.
    pub waiting: Vec<Waiting>,
    /// Windows granted in this pass: booking, nodes (a gang's by rank), start. The
    /// controller records them (phase `Reserved`), so that the next pass sees them in
    /// `reserved_on`/`gang`/`start`.
    pub reservations: Vec<(InstanceKey, Vec<String>, Timestamp)>,
    /// Of `placements`, those whose window opened, with the window start: record it as
    /// their start, so that they end when their window ends and not later.
    pub due: Vec<(InstanceKey, Timestamp)>,
    /// Bookings to preempt in this pass (their pods deleted, with a grace period), each
    /// with the booking that gets its GPUs; that one waits with [`Wait::Preempting`].
    pub preemptions: Vec<super::preemption::Preemption>,
}

impl Plan {
    /// Keeps the first `cap` placements (queue order, so the oldest go first) and drops the
    /// rest, with their `due` entries; `0` keeps all. Returns whether any was dropped.
    ///
    /// Under a burst a pass that makes every placement it can lasts as long as its pod
    /// creations, and what arrives meanwhile waits for it and then for the next one just as
    /// long. Capped, each pass is short and the next starts at once. Dropping is always
    /// safe: a placement not made holds nothing, and the next pass plans those bookings
    /// again from what is then in the cluster; the waiting, reserved and preempted lists
    /// stand as planned (a dropped placement only leaves more room than they assumed).
    pub fn limit_placements(&mut self, cap: usize) -> bool {
        if cap == 0 || self.placements.len() <= cap {
            return false;
        }
        let dropped: std::collections::BTreeSet<InstanceKey> =
            self.placements.drain(cap..).map(|(key, _)| key).collect();
        self.due.retain(|(key, _)| !dropped.contains(key));
        true
    }
}
