//! Admission: the placement decision itself. [`plan`] sweeps the queue (opened windows,
//! then window requests, then the queue in order) against the [`Ledger`]; the per-booking
//! checks (who asks, for what, within which quota) and the waiting messages are here too.
//! The policy is in the [module docs](super).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use gpu_cloud_api::time::{show_length, show_time};

use super::ledger::{Held, Ledger, ModelNodes};
use super::model::{Booking, InstanceKey, Plan, Snapshot, StartPolicy, Wait, Waiting};
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
