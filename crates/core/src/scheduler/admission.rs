//! Admission: the placement decision itself. [`plan`] sweeps the queue (opened windows,
//! then window requests, then the queue in order) against the ledger; the per-booking
//! checks (who asks, for what, within which quota) and the waiting messages are here too.
//! The policy is in the [module docs](super).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use gpu_cloud_api::time::{show_length, show_time};

use super::ledger::{Held, Ledger, ModelNodes};
use super::model::{Booking, InstanceKey, Plan, Snapshot, StartPolicy, UserPolicy, Wait, Waiting};
use super::preemption::{self, Candidate, Preemption, Reason};
use super::share::{first_come, queue_order};
use super::timeline::{NEVER, UserHolds, Want, end_of, release_time};

/// Decides where waiting bookings go now and which windows are granted. See the module
/// docs for the policy.
///
/// The plan is complete: deciding again on the world it leaves places and grants nothing
/// more. (One sweep down the queue is not always enough: a higher-priority booking placed
/// late in a sweep can put an earlier one of the same user over quota, which then no
/// longer holds up its model's queue, and placements change the users' shares and so the
/// order between users; so sweeps repeat until one changes nothing.)
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut out = Plan::default();
    let mut world = std::borrow::Cow::Borrowed(snapshot);
    // Placed in this pass: never preempted in it (a placement is never undone at once).
    let mut fresh: BTreeSet<InstanceKey> = BTreeSet::new();
    loop {
        let swept = sweep(&world, &fresh);
        // Preemptions alone do not call for another sweep: their victims still hold their
        // GPUs, so nothing more would fit; the next pass goes on from there. (Sweeping
        // again for them would cost a sweep of the whole queue per few preemptions.)
        if swept.placements.is_empty() && swept.reservations.is_empty() {
            out.preemptions.extend(swept.preemptions);
            out.waiting = swept.waiting;
            return out;
        }
        let w = world.to_mut();
        let now = w.now;
        // An index, not a search per placement: one pass may place thousands.
        let placed: BTreeMap<&InstanceKey, &[String]> = swept
            .placements
            .iter()
            .map(|(k, n)| (k, n.as_slice()))
            .collect();
        let due: BTreeMap<&InstanceKey, Timestamp> =
            swept.due.iter().map(|(k, t)| (k, *t)).collect();
        let reserved: BTreeMap<&InstanceKey, (&[String], Timestamp)> = swept
            .reservations
            .iter()
            .map(|(k, n, t)| (k, (n.as_slice(), *t)))
            .collect();
        let victims: BTreeSet<&InstanceKey> = swept.preemptions.iter().map(|p| &p.victim).collect();
        let nominated: BTreeMap<&InstanceKey, &String> =
            swept.preemptions.iter().map(|p| (&p.by, &p.node)).collect();
        for b in w.bookings.iter_mut() {
            if victims.contains(&b.key) {
                b.terminating = true;
            }
            if let Some(node) = nominated.get(&b.key) {
                b.nominated_on = Some((*node).clone());
            }
            if let Some(nodes) = placed.get(&b.key) {
                b.placed_on = nodes.first().cloned();
                b.gang = nodes.get(1..).unwrap_or_default().to_vec();
                b.started = Some(due.get(&b.key).copied().unwrap_or(now));
                for node in *nodes {
                    let used = match &b.slice {
                        None => w.used.entry(node.clone()).or_default(),
                        Some(s) => w.used_slices.entry((node.clone(), s.clone())).or_default(),
                    };
                    *used += b.count;
                }
            } else if let Some((nodes, start)) = reserved.get(&b.key) {
                b.reserved_on = nodes.first().cloned();
                b.gang = nodes.get(1..).unwrap_or_default().to_vec();
                b.start = Some(*start);
            }
        }
        fresh.extend(swept.placements.iter().map(|(k, _)| k.clone()));
        out.placements.extend(swept.placements);
        out.reservations.extend(swept.reservations);
        out.due.extend(swept.due);
        out.preemptions.extend(swept.preemptions);
    }
}

/// What a slot search looks for: `count` GPUs of `model` on each of `nodes` nodes (1
/// unless a gang, spread over domains as `topology` allows) for `duration` (`None`: for
/// good).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWant<'a> {
    /// GPU model.
    pub model: &'a str,
    /// A slice of it (MIG profile, `shared`), or whole GPUs.
    pub slice: Option<&'a str>,
    /// GPUs per node.
    pub count: u32,
    /// Nodes (a gang when more than 1).
    pub nodes: u32,
    /// How a gang may spread over domains.
    pub topology: super::Topology,
    /// Length.
    pub duration: Option<Duration>,
}

/// The next `n` starts at or after `from` (not before `snapshot.now`) where what `want`
/// asks for is free on eligible nodes, each with the nodes (rank 0 first) a booking for it
/// would get. Bookings still queued hold nothing and are not considered; placed ones and
/// granted windows are.
///
/// Feeds `kubectl gpu slots MODEL --count N [--nodes K] --for 4h`, and is the search
/// behind [`Wait::WindowTaken`] and [`StartPolicy::EarliestAvailable`].
pub fn free_slots(
    snapshot: &Snapshot,
    want: &SlotWant<'_>,
    from: Timestamp,
    n: usize,
) -> Vec<(Timestamp, Vec<String>)> {
    let ledger = Ledger::new(snapshot);
    let names = |nodes: Vec<usize>| {
        nodes
            .into_iter()
            .map(|i| ledger.nodes[i].name.clone())
            .collect()
    };
    slots_of(&ledger, want, from.max(snapshot.now), n)
        .into_iter()
        .map(|(t, nodes)| (t, names(nodes)))
        .collect()
}

/// [`free_slots`] for `count` GPUs of `model` on one node, each start with its node.
pub fn next_free_slots(
    snapshot: &Snapshot,
    model: &str,
    count: u32,
    duration: Option<Duration>,
    from: Timestamp,
    n: usize,
) -> Vec<(Timestamp, String)> {
    let want = SlotWant {
        model,
        slice: None,
        count,
        nodes: 1,
        topology: super::Topology::Preferred,
        duration,
    };
    free_slots(snapshot, &want, from, n)
        .into_iter()
        .filter_map(|(t, nodes)| Some((t, nodes.into_iter().next()?)))
        .collect()
}

/// The slot search on a sweep's ledger: per node for one node, [`Ledger::gang_slots`] for
/// a gang.
fn slots_of(
    ledger: &Ledger<'_>,
    want: &SlotWant<'_>,
    from: Timestamp,
    n: usize,
) -> Vec<(Timestamp, Vec<usize>)> {
    let w = Want {
        count: want.count,
        duration: want.duration,
    };
    if want.nodes > 1 {
        let required = want.topology == super::Topology::Required;
        ledger.gang_slots((want.model, want.slice), w, want.nodes, required, from, n)
    } else {
        ledger
            .slots((want.model, want.slice), w, from, n)
            .into_iter()
            .map(|(t, i)| (t, vec![i]))
            .collect()
    }
}

/// One sweep down the queue: opened windows, then window requests, then the queue.
fn sweep<'s>(snapshot: &'s Snapshot, fresh: &BTreeSet<InstanceKey>) -> Plan {
    let now = snapshot.now;
    let mut ledger = Ledger::new(snapshot);
    // What each user holds over time, spot bookings apart (they count against
    // `max_spot_gpus`, not the guarantee).
    let mut holds: BTreeMap<(&str, bool), UserHolds> = BTreeMap::new();
    for b in &snapshot.bookings {
        let Some(user) = b.user.as_deref() else {
            continue;
        };
        if b.placed_on.is_some() {
            let end = b.started.map_or(NEVER, |s| end_of(s, b.duration));
            holds
                .entry((user, b.preemptible))
                .or_default()
                .add_placed(release_time(end, now), b.milli());
        } else if let Some(h) = ledger.held(b) {
            holds
                .entry((user, b.preemptible))
                .or_default()
                .add_window(h.start, h.end, b.milli());
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
    opened.sort_by(|(a, ha), (b, hb)| ha.start.cmp(&hb.start).then_with(|| first_come(a, b)));
    requests.sort_by(|a, b| first_come(a, b));
    // Fair share is taken from what is held at the sweep's start: a sweep after
    // placements may order users differently, as the next pass would.
    let queue = queue_order(snapshot, queue);

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

    // Preemption's view of the sweep's start: who runs where, who is borrowed.
    let preempting = Preempting::new(snapshot, &ledger, fresh);
    let mut taken: BTreeSet<&InstanceKey> = BTreeSet::new();

    // Opened windows: their GPUs were kept free of everything else, so they go first and
    // are not held up by the queue (nor by quota, checked when the window was granted).
    // Spot bookings on their node were counted as reclaimable: they are preempted now.
    for (b, h) in opened {
        let checked = admit(b, snapshot, &ledger).and_then(|_| {
            if h.end <= now {
                return Err(Wait::WindowMissed { end: h.end });
            }
            // Every node of the window must take its part now (a gang's all at once).
            for i in h.nodes() {
                let n = &ledger.nodes[i];
                let free = ledger.free[i];
                if !n.eligible() || free < b.count {
                    return Err(Wait::HeldNode {
                        node: n.name.clone(),
                        free: if n.eligible() { free } else { 0 },
                    });
                }
            }
            Ok(())
        });
        match checked {
            Ok(()) => {
                let nodes = ledger.open(&h, b.count, now);
                if let Some(u) = b.user.as_deref() {
                    let u = holds.entry((u, b.preemptible)).or_default();
                    u.remove_window(h.start, h.end, b.milli());
                    u.add_placed(release_time(h.end, now), b.milli());
                }
                plan.placements.push((b.key.clone(), nodes));
                plan.due.push((b.key.clone(), h.start));
            }
            // Spot bookings on a single node's window are preempted for it; a gang's
            // window waits for its nodes (gangs preempt nothing).
            Err(Wait::HeldNode { node, free })
                if snapshot.preemption && b.size() == 1 && ledger.nodes[h.node].eligible() =>
            {
                let spot = preempting.spot_victims(b, h.node, &ledger, &taken);
                if spot.is_empty() {
                    wait(&mut plan, b, Wait::HeldNode { node, free }, false);
                    continue;
                }
                for v in &spot {
                    taken.insert(&v.key);
                    plan.preemptions.push(Preemption {
                        victim: v.key.clone(),
                        by: b.key.clone(),
                        node: node.clone(),
                        reason: Reason::Spot,
                    });
                }
                let victims = u32::try_from(spot.len()).unwrap_or(u32::MAX);
                wait(&mut plan, b, Wait::Preempting { node, victims }, false);
            }
            Err(w) => wait(&mut plan, b, w, false),
        }
    }

    // Window requests, first come, first served.
    for b in requests {
        match request(b, snapshot, &ledger, &holds) {
            Ok((indexes, start)) => {
                let end = end_of(start, b.duration);
                let nodes = indexes
                    .into_iter()
                    .map(|i| ledger.reserve(i, start, end, b.count).to_owned())
                    .collect();
                if let Some(u) = b.user.as_deref() {
                    holds
                        .entry((u, b.preemptible))
                        .or_default()
                        .add_window(start, end, b.milli());
                }
                plan.reservations.push((b.key.clone(), nodes, start));
            }
            Err(w) => wait(&mut plan, b, w, false),
        }
    }

    // Bookings nominated on a node by their own earlier preemption: placed there as soon
    // as their victims are gone, and until then the GPUs freed there are kept for them.
    // One whose victims are gone and which still does not fit asks again, in the queue.
    let mut queue: Vec<&Booking> = queue;
    if snapshot.preemption {
        let (nominated, rest): (Vec<&Booking>, Vec<&Booking>) = queue
            .into_iter()
            .partition(|b| preempting.nominated_node(b).is_some());
        queue = rest;
        for b in nominated {
            let Some(i) = preempting.nominated_node(b) else {
                continue;
            };
            let end = end_of(now, b.duration);
            let victims = preempting.terminating_on(i);
            let checked =
                admit(b, snapshot, &ledger).and_then(|_| quota(b, snapshot, &holds, now, end));
            match checked {
                // Its own preempted bookings still count against its quota until they
                // are gone: it goes on waiting for them.
                Err(Wait::GpuQuota { .. }) if victims > 0 => {}
                Err(w) => {
                    wait(&mut plan, b, w, false);
                    continue;
                }
                Ok(()) => {}
            }
            let fits = checked.is_ok()
                && ledger.nodes[i].eligible()
                && ledger.min_free(i, now, end) >= b.count;
            if fits {
                let node = ledger.take(i, b.count, end, now);
                if let Some(u) = b.user.as_deref() {
                    holds
                        .entry((u, b.preemptible))
                        .or_default()
                        .add_placed(release_time(end, now), b.milli());
                }
                plan.placements.push((b.key.clone(), vec![node.to_owned()]));
            } else if victims > 0 {
                let keep = ledger.free[i].min(b.count);
                if keep > 0 {
                    ledger.take(i, keep, end, now);
                }
                let node = ledger.nodes[i].name.clone();
                wait(&mut plan, b, Wait::Preempting { node, victims }, false);
            } else {
                queue.push(b);
            }
        }
        queue = queue_order(snapshot, queue);
    }

    // The queue, now.
    let mut blocked_models: BTreeSet<&str> = BTreeSet::new();
    let mut attempts: BTreeMap<&str, usize> = BTreeMap::new();
    for b in queue {
        let blocked = blocked_models.contains(b.model.as_str());
        match decide(b, snapshot, &ledger, &holds, blocked) {
            Ok(indexes) => {
                let end = end_of(now, b.duration);
                let nodes = indexes
                    .into_iter()
                    .map(|i| ledger.take(i, b.count, end, now).to_owned())
                    .collect();
                if let Some(u) = b.user.as_deref() {
                    holds
                        .entry((u, b.preemptible))
                        .or_default()
                        .add_placed(release_time(end, now), b.milli());
                }
                plan.placements.push((b.key.clone(), nodes));
            }
            Err(w) => {
                // Waiting for GPUs, victims of any kind may make room; waiting for its
                // user's quota, only the user's own bookings of lower priority can.
                let quota_need = match w {
                    Wait::Capacity { .. } | Wait::GangCapacity { .. } => Some(0),
                    Wait::GpuQuota { in_use_milli, max } => Some(
                        in_use_milli
                            .saturating_add(b.milli())
                            .saturating_sub(max.saturating_mul(1000))
                            .div_ceil(1000),
                    ),
                    _ => None,
                };
                if let Some(quota_need) = quota_need {
                    if quota_need == 0 {
                        blocked_models.insert(&b.model);
                    }
                    let tries = || attempts.get(b.model.as_str()).copied().unwrap_or(0);
                    // Gangs preempt nothing: victims on many nodes at once are not looked
                    // for (a gang waits for its GPUs, holding up its model's queue).
                    if snapshot.preemption
                        && !b.preemptible
                        && b.size() == 1
                        && tries() < PREEMPTION_ATTEMPTS
                    {
                        *attempts.entry(b.model.as_str()).or_default() += 1;
                        if let Some((i, victims)) =
                            preempting.choose(b, &ledger, &taken, now, quota_need)
                        {
                            let node = ledger.nodes[i].name.clone();
                            for (v, reason) in &victims {
                                taken.insert(&v.key);
                                plan.preemptions.push(Preemption {
                                    victim: v.key.clone(),
                                    by: b.key.clone(),
                                    node: node.clone(),
                                    reason: *reason,
                                });
                            }
                            // What is free there now is kept for it too.
                            let keep = ledger.free[i].min(b.count);
                            if keep > 0 {
                                ledger.take(i, keep, end_of(now, b.duration), now);
                            }
                            let n = u32::try_from(victims.len()).unwrap_or(u32::MAX);
                            wait(&mut plan, b, Wait::Preempting { node, victims: n }, blocked);
                            continue;
                        }
                    }
                }
                wait(&mut plan, b, w, blocked);
            }
        }
    }
    plan
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
    if b.preemptible && policy.max_spot_gpus == 0 {
        return Err(Wait::SpotNotAllowed);
    }
    if let Some(max) = gpu_limit(b, policy).filter(|&max| b.milli() > max.saturating_mul(1000)) {
        return Err(Wait::OverQuotaLimit { max });
    }
    let model = ledger.pool(b.pool()).ok_or(Wait::UnknownModel)?;
    if model.largest < b.count {
        return Err(Wait::TooLarge {
            largest: model.largest,
        });
    }
    if b.size() > 1 {
        let one_domain = b.topology == super::Topology::Required;
        let have = ledger.nodes_with(model, b.count, one_domain);
        if have < b.size() {
            return Err(Wait::TooFewNodes { have, one_domain });
        }
    }
    Ok(model)
}

/// The user's quota over `[a, b)`: what they hold and have booked at the busiest instant,
/// plus this booking, within their limits.
fn quota(
    b: &Booking,
    snapshot: &Snapshot,
    holds: &BTreeMap<(&str, bool), UserHolds>,
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
    let limit = gpu_limit(b, policy);
    if limit.is_none() && policy.max_instances.is_none() {
        return Ok(());
    }
    let peak = |spot: bool| holds.get(&(user, spot)).map_or((0, 0), |h| h.peak(a, end));
    // Holds are in thousandths of a GPU (slices as their fraction).
    let (in_use_milli, _) = peak(b.preemptible);
    if let Some(max) =
        limit.filter(|&max| in_use_milli.saturating_add(b.milli()) > max.saturating_mul(1000))
    {
        return Err(Wait::GpuQuota { in_use_milli, max });
    }
    let placed = peak(false).1.saturating_add(peak(true).1);
    if let Some(max) = policy.max_instances.filter(|&max| placed >= max) {
        return Err(Wait::InstanceQuota { placed, max });
    }
    Ok(())
}

/// The most GPUs of `b`'s kind (spot or not) its user may hold: the spot allowance, or the
/// guarantee plus what may be borrowed; `None` when unlimited.
fn gpu_limit(b: &Booking, policy: &UserPolicy) -> Option<u32> {
    if b.preemptible {
        Some(policy.max_spot_gpus)
    } else {
        policy
            .max_gpus
            .map(|g| g.saturating_add(policy.borrow_gpus))
    }
}

/// A window request: the node and start it gets, or why not.
fn request(
    b: &Booking,
    snapshot: &Snapshot,
    ledger: &Ledger<'_>,
    holds: &BTreeMap<(&str, bool), UserHolds>,
) -> Result<(Vec<usize>, Timestamp), Wait> {
    let model = admit(b, snapshot, ledger)?;
    let asked = b.start.unwrap_or(snapshot.now).max(snapshot.now);
    let want = SlotWant {
        model: &b.model,
        slice: b.slice.as_deref(),
        count: b.count,
        nodes: b.size(),
        topology: b.topology,
        duration: b.duration,
    };
    if model.largest_ever < b.count {
        // Every node of the model is held for good beyond what it would leave.
        return Err(Wait::WindowTaken { next_free: None });
    }
    let required = b.topology == super::Topology::Required;
    let fits = |start: Timestamp| {
        let end = end_of(start, b.duration);
        if b.size() > 1 {
            ledger
                .gang_fit(model, b.count, b.size(), start, end, false, required)
                .ok()
        } else {
            ledger
                .best_fit(model, b.count, start, end, false)
                .map(|i| vec![i])
        }
    };
    let within_quota =
        |start: Timestamp| quota(b, snapshot, holds, start, end_of(start, b.duration));
    match (fits(asked), b.start_policy) {
        (Some(i), policy) => match within_quota(asked) {
            Ok(()) => return Ok((i, asked)),
            Err(w) if policy == StartPolicy::Exact => return Err(w),
            Err(_) => {}
        },
        (None, StartPolicy::Exact) => {
            let next_free = slots_of(ledger, &want, asked, 1).first().map(|(t, _)| *t);
            return Err(Wait::WindowTaken { next_free });
        }
        (None, StartPolicy::EarliestAvailable) => {}
    }
    // The earliest start where both the GPUs and the user's quota allow it: among the
    // starts where GPUs of the model come free and the ends of what the user holds. (The
    // earliest free GPUs alone may be over quota, and a later start within it would then
    // be left to a later sweep, where later bookings could have taken it.)
    let mut starts: Vec<Timestamp> = slots_of(ledger, &want, asked, EARLIEST_SEARCH)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    if let Some(h) = b
        .user
        .as_deref()
        .and_then(|u| holds.get(&(u, b.preemptible)))
    {
        starts.extend(h.ends().filter(|&t| t > asked && t < NEVER));
    }
    starts.sort();
    starts.dedup();
    let mut refused = None;
    for start in starts {
        let Some(i) = fits(start) else {
            continue;
        };
        match within_quota(start) {
            Ok(()) => return Ok((i, start)),
            Err(w) => refused = refused.or(Some(w)),
        }
    }
    Err(refused.unwrap_or(Wait::WindowTaken { next_free: None }))
}

/// How many starts where GPUs come free an `EarliestAvailable` request looks at.
const EARLIEST_SEARCH: usize = 16;

/// A booking of the queue: the node it goes to now, or why it waits.
fn decide(
    b: &Booking,
    snapshot: &Snapshot,
    ledger: &Ledger<'_>,
    holds: &BTreeMap<(&str, bool), UserHolds>,
    blocked: bool,
) -> Result<Vec<usize>, Wait> {
    let model = admit(b, snapshot, ledger)?;
    let now = snapshot.now;
    let end = end_of(now, b.duration);
    quota(b, snapshot, holds, now, end)?;
    let largest_free = model.largest_free;
    if b.size() > 1 {
        if blocked || largest_free < b.count {
            return Err(Wait::GangCapacity { fitting: 0 });
        }
        let required = b.topology == super::Topology::Required;
        return ledger
            .gang_fit(model, b.count, b.size(), now, end, true, required)
            .map_err(|m| Wait::GangCapacity { fitting: m.fitting });
    }
    if blocked || largest_free < b.count {
        return Err(Wait::Capacity { largest_free });
    }
    ledger
        .best_fit(model, b.count, now, end, true)
        .map(|i| vec![i])
        .ok_or(Wait::Capacity { largest_free })
}

/// Thousandths of a GPU for people: `4`, `1.43`.
fn gpus_text(milli: u32) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        let s = format!("{:.2}", f64::from(milli) / 1000.0);
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn message(b: &Booking, wait: &Wait, ahead: u32, blocked: bool) -> String {
    let model: std::borrow::Cow<'_, str> = match &b.slice {
        Some(s) => format!("{} {s}", b.model).into(),
        None => b.model.as_str().into(),
    };
    let want = if b.size() > 1 {
        format!("{} nodes x {} x {model}", b.size(), b.count)
    } else {
        format!("{} x {model}", b.count)
    };
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
        Wait::GpuQuota { in_use_milli, max } => format!(
            "waiting for quota: user {user} holds {} of {max} GPUs, {want} would exceed it",
            gpus_text(*in_use_milli)
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
        Wait::TooFewNodes { have, one_domain } => {
            let place = if *one_domain { " in one domain" } else { "" };
            format!(
                "wants {want} but only {have} {} node(s){place} have {} GPUs",
                b.model, b.count
            )
        }
        Wait::GangCapacity { fitting } => {
            let place = if b.topology == super::Topology::Required {
                " in one domain"
            } else {
                ""
            };
            let free = if blocked {
                "free GPUs are held for earlier bookings".to_owned()
            } else {
                format!("{fitting} node(s){place} have {} free", b.count)
            };
            format!("waiting for {want}: {free}, {ahead} ahead")
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
        Wait::SpotNotAllowed => {
            format!("user {user} may hold no spot GPUs (quota.maxSpotGpus)")
        }
        Wait::Preempting { node, victims } => format!(
            "preempting on {node}: waiting for {victims} preempted instance(s) to stop, then {want} start there"
        ),
    }
}

/// Bookings of one model that may try to preempt in one sweep: enough for the head of the
/// queue and a few with a right the head lacks, without a search of every node for every
/// waiting booking of a long queue.
const PREEMPTION_ATTEMPTS: usize = 8;

/// A running booking as a preemption candidate.
fn candidate(v: &Booking) -> Candidate {
    Candidate {
        gpus: v.count,
        stops: v.gpus(),
        spot: v.preemptible,
        started: v.started.unwrap_or(Timestamp::MIN),
    }
}

/// Bookings to preempt, each with why.
type Victims<'s> = Vec<(&'s Booking, Reason)>;

/// What preemption needs of a sweep's start: node indexes, who runs where, who is borrowed.
struct Preempting<'s> {
    snapshot: &'s Snapshot,
    /// Pool index by node name and slice.
    index_of: BTreeMap<(&'s str, Option<&'s str>), usize>,
    /// Placed bookings per node index that are not already being preempted.
    running: BTreeMap<usize, Vec<&'s Booking>>,
    /// Placed bookings being preempted, per node index.
    terminating: BTreeMap<usize, u32>,
    borrowed: BTreeSet<InstanceKey>,
}

impl<'s> Preempting<'s> {
    fn new(snapshot: &'s Snapshot, ledger: &Ledger<'s>, fresh: &BTreeSet<InstanceKey>) -> Self {
        let mut p = Preempting {
            snapshot,
            index_of: BTreeMap::new(),
            running: BTreeMap::new(),
            terminating: BTreeMap::new(),
            borrowed: BTreeSet::new(),
        };
        if !snapshot.preemption {
            return p;
        }
        p.index_of = ledger
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| ((n.name.as_str(), n.slice.as_deref()), i))
            .collect();
        for b in &snapshot.bookings {
            let at = |n: &'s str| p.index_of.get(&(n, b.slice.as_deref())).copied();
            if b.placed_on.as_deref().and_then(at).is_none() {
                continue;
            }
            if b.terminating {
                for n in b.held_nodes() {
                    if let Some(j) = at(n) {
                        *p.terminating.entry(j).or_default() += 1;
                    }
                }
            } else if !fresh.contains(&b.key) {
                // On every node it holds: a gang may be preempted for any of them.
                for j in b.held_nodes().filter_map(at) {
                    p.running.entry(j).or_default().push(b);
                }
            }
        }
        p.borrowed = preemption::borrowed(snapshot);
        p
    }

    /// The node `b` is nominated on, if it is one of its model.
    fn nominated_node(&self, b: &Booking) -> Option<usize> {
        let &i = self
            .index_of
            .get(&(b.nominated_on.as_deref()?, b.slice.as_deref()))?;
        (self.snapshot.nodes[i].model.as_deref() == Some(b.model.as_str())).then_some(i)
    }

    /// The spot bookings on node `i` whose preemption makes room for `b`'s opened window
    /// (the cheapest set), none when none would (or `b` is spot itself).
    fn spot_victims(
        &self,
        b: &Booking,
        i: usize,
        ledger: &Ledger<'_>,
        taken: &BTreeSet<&InstanceKey>,
    ) -> Vec<&'s Booking> {
        // The preemption rule itself, keeping its spot victims only.
        let spot: Vec<&'s Booking> = self
            .running
            .get(&i)
            .into_iter()
            .flatten()
            .copied()
            .filter(|v| !taken.contains(&v.key))
            .filter(|v| preemption::may_preempt(b, v, false, false) == Some(Reason::Spot))
            .collect();
        let candidates: Vec<Candidate> = spot.iter().map(|v| candidate(v)).collect();
        let need = b.count.saturating_sub(ledger.free[i]);
        match preemption::cheapest_set(need, &candidates) {
            Some((set, _)) if need > 0 => set.into_iter().map(|k| spot[k]).collect(),
            _ => vec![],
        }
    }

    /// Bookings on node `i` still being preempted.
    fn terminating_on(&self, i: usize) -> u32 {
        self.terminating.get(&i).copied().unwrap_or(0)
    }

    /// The node and the cheapest set of bookings there whose preemption makes `b` fit
    /// now, of those `b` may preempt and not already `taken` in this sweep; `None` when
    /// no node would do. Only nodes without a window before `b` would end are looked at,
    /// so that what the victims free is free for all of its time. With `quota_need` > 0
    /// (`b` is over its user's quota by that many GPUs) only the user's own bookings are
    /// victims, and they must free that many too.
    fn choose(
        &self,
        b: &Booking,
        ledger: &Ledger<'_>,
        taken: &BTreeSet<&InstanceKey>,
        now: Timestamp,
        quota_need: u32,
    ) -> Option<(usize, Victims<'s>)> {
        let model = ledger.pool(b.pool())?;
        let end = end_of(now, b.duration);
        let reclaiming = preemption::within_guarantee(self.snapshot, b);
        let mut best: Option<(preemption::Cost, &str, usize, Victims<'s>)> = None;
        for &i in &model.eligible {
            let free = ledger.free[i];
            // A window may count on a victim's release: with one in the way the GPUs
            // freed now need not stay free for `b`'s time, so no node with a window.
            if (free >= b.count && quota_need == 0) || ledger.time[i].window_before(end) {
                continue;
            }
            let allowed: Victims<'s> = self
                .running
                .get(&i)
                .into_iter()
                .flatten()
                .filter(|v| !taken.contains(&v.key))
                .filter(|v| quota_need == 0 || (v.user == b.user && !v.preemptible))
                .filter_map(|v| {
                    let r =
                        preemption::may_preempt(b, v, reclaiming, self.borrowed.contains(&v.key))?;
                    Some((*v, r))
                })
                .collect();
            let candidates: Vec<Candidate> = allowed.iter().map(|(v, _)| candidate(v)).collect();
            let need = b.count.saturating_sub(free).max(quota_need);
            let Some((set, cost)) = preemption::cheapest_set(need, &candidates) else {
                continue;
            };
            let name = ledger.nodes[i].name.as_str();
            if best
                .as_ref()
                .is_none_or(|(c, n, _, _)| (cost, name) < (*c, *n))
            {
                let victims = set.into_iter().map(|k| allowed[k]).collect();
                best = Some((cost, name, i, victims));
            }
        }
        best.map(|(_, _, i, v)| (i, v))
    }
}
