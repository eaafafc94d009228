//! The scheduler's tests, by concern: [`placement`] (placing now: order, quota, fit), [`preempting`] (preemption in the plan),
//! [`ahead`] (booking ahead: windows), [`properties`] (random histories against the
//! invariants). Shared builders are here.

mod ahead;
mod gangs;
mod placement;
mod preempting;
mod properties;
mod slices;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::*;

pub const H100: &str = "NVIDIA-H100-80GB-HBM3";
pub const L4: &str = "NVIDIA-L4";

pub fn node(name: &str, model: &str, gpus: u32) -> NodeGpus {
    NodeGpus {
        name: name.into(),
        model: Some(model.into()),
        allocatable: gpus,
        ready: true,
        schedulable: true,
        untolerated_taint: None,
        domain: None,
        slice: None,
    }
}

pub fn booking(name: &str, user: &str, model: &str, count: u32, t: i64) -> Booking {
    let key = InstanceKey {
        namespace: format!("gpu-{user}"),
        name: name.into(),
    };
    let created = Timestamp::from_second(t).unwrap();
    Booking::new(key, Some(user.into()), model, count, created)
}

pub fn snapshot(nodes: Vec<NodeGpus>, bookings: Vec<Booking>) -> Snapshot {
    let users = bookings
        .iter()
        .filter_map(|b| b.user.clone())
        .map(|u| (u, UserPolicy::default()))
        .collect();
    Snapshot {
        nodes,
        used: BTreeMap::new(),
        used_slices: BTreeMap::new(),
        users,
        bookings,
        now: Timestamp::UNIX_EPOCH,
        preemption: false,
    }
}

pub fn placed(plan: &Plan) -> Vec<(&str, &str)> {
    plan.placements
        .iter()
        .map(|(k, n)| (k.name.as_str(), n.first().map_or("", String::as_str)))
        .collect()
}

pub const HOUR: Duration = Duration::from_secs(3600);

pub fn at(s: &str) -> Timestamp {
    s.parse().expect("test time")
}

/// A booking of `hours` (None: no end).
pub fn timed(name: &str, count: u32, hours: Option<u64>, created: i64) -> Booking {
    Booking {
        duration: hours.map(|h| HOUR * h as u32),
        ..booking(name, "u", H100, count, created)
    }
}

/// A booking holding the window from `start` on `node`.
pub fn reserved(name: &str, count: u32, hours: u64, start: &str, node: &str) -> Booking {
    Booking {
        start: Some(at(start)),
        reserved_on: Some(node.into()),
        ..timed(name, count, Some(hours), 0)
    }
}

pub fn running(name: &str, count: u32, hours: u64, started: &str, node: &str) -> Booking {
    Booking {
        placed_on: Some(node.into()),
        started: Some(at(started)),
        ..timed(name, count, Some(hours), 0)
    }
}

/// A snapshot at `now` whose `used` follows the placed bookings.
pub fn at_time(now: &str, nodes: Vec<NodeGpus>, bookings: Vec<Booking>) -> Snapshot {
    let mut s = snapshot(nodes, bookings);
    s.now = at(now);
    for b in &s.bookings {
        if b.placed_on.is_some() {
            for n in b.held_nodes() {
                *s.used.entry(n.to_owned()).or_default() += b.count;
            }
        }
    }
    s
}

/// Places `b` on `nodes` (rank 0 first), as the controller's pods would show it.
pub fn place_on(b: &mut Booking, nodes: &[String]) {
    b.placed_on = nodes.first().cloned();
    b.gang = nodes.get(1..).unwrap_or_default().to_vec();
}

/// Records `b`'s granted window on `nodes` from `start`.
pub fn reserve_on(b: &mut Booking, nodes: &[String], start: Timestamp) {
    b.reserved_on = nodes.first().cloned();
    b.gang = nodes.get(1..).unwrap_or_default().to_vec();
    b.start = Some(start);
}
