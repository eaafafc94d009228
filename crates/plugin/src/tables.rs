//! What `kubectl gpu` prints (pure): the tables of instances, usage, budgets and cost, and
//! the answer of `slots`.

use std::time::Duration;

use gpu_cloud_api::calendar::Calendar;
use gpu_cloud_api::time::{hours_text, show_time};
use gpu_cloud_api::v1::{GpuInstance, GpuUser, Phase};
use gpu_cloud_core::scheduler::published::snapshot_of;
use gpu_cloud_core::scheduler::{SlotWant, free_slots};
use jiff::Timestamp;
use kube::ResourceExt;

use crate::table::render;

/// The `slots` answer (pure): up to `show` windows for what `want` asks (its `duration`
/// is the window's length), from `from`, on the calendar seen at `now`; or why there is
/// none.
pub fn slots_text(
    cal: &Calendar,
    want: &SlotWant<'_>,
    from: Timestamp,
    show: usize,
    now: Timestamp,
) -> String {
    let (model, count) = (want.model, want.count);
    let length = want.duration.unwrap_or(Duration::MAX);
    let snapshot = snapshot_of(cal, now);
    let slots = free_slots(&snapshot, want, from, show);
    let len = jiff::SignedDuration::try_from(length).unwrap_or(jiff::SignedDuration::MAX);
    let what = booking_text(want);
    let mut out = format!(
        "{what} for {len:#}, from {} (calendar of {}):\n",
        show_time(from.max(now)),
        show_time(cal.generated_at)
    );
    if slots.is_empty() {
        let why = match cal.models.get(model) {
            None => {
                let known: Vec<&str> = cal.models.keys().map(String::as_str).collect();
                format!("no node has {model} GPUs (models: {})", known.join(", "))
            }
            Some(nodes) if nodes.iter().all(|n| n.allocatable < count) => {
                let largest = nodes.iter().map(|n| n.allocatable).max().unwrap_or(0);
                format!("no {model} node has {count} GPUs (the largest has {largest})")
            }
            Some(nodes)
                if nodes.iter().filter(|n| n.allocatable >= count).count()
                    < usize::try_from(want.nodes).unwrap_or(usize::MAX) =>
            {
                let have = nodes.iter().filter(|n| n.allocatable >= count).count();
                format!("only {have} {model} node(s) have {count} GPUs")
            }
            Some(nodes) if !nodes.iter().any(|n| n.eligible) => {
                format!("no {model} node takes new work now (not ready, cordoned or tainted)")
            }
            Some(_) => "no free window: the GPUs are held with no end in sight".to_owned(),
        };
        out.push_str(&why);
        out.push('\n');
        return out;
    }
    let mut rows = vec![["START", "END", "NODE"].map(String::from).to_vec()];
    for (start, nodes) in slots {
        let end = start
            .checked_add(len)
            .map_or_else(|_| "-".to_owned(), show_time);
        rows.push(vec![show_time(start), end, nodes.join(",")]);
    }
    out.push_str(&render(&rows, &[]));
    out
}

/// The `ls` table (pure). A booking ahead shows its node and start once its window is
/// granted (Reserved), and its requested start before.
pub fn instance_table(items: &[GpuInstance]) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "MODEL",
            "GPUS",
            "PHASE",
            "NODE",
            "START",
            "GPU-HOURS",
            "UTIL%",
            "PREEMPTIBLE-BY",
            "WAITING",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in items {
        let s = i.status.clone().unwrap_or_default();
        let usage = s.usage.as_ref();
        let reserved = s.phase == Some(Phase::Reserved);
        let nodes = if !reserved {
            s.placed_nodes()
        } else if s.reserved_nodes.is_empty() {
            s.reserved_node.clone().into_iter().collect()
        } else {
            s.reserved_nodes.clone()
        };
        let node = (!nodes.is_empty()).then(|| nodes.join(","));
        let start = if reserved {
            s.starts_at.or(i.spec.start_time)
        } else {
            s.started_at.or(i.spec.start_time)
        };
        rows.push(vec![
            i.namespace().unwrap_or_default(),
            i.name_any(),
            i.spec.gpu.model.clone(),
            gpus_text(&i.spec.gpu),
            s.phase.map_or("-", |p| p.as_str()).to_owned(),
            node.unwrap_or_else(|| "-".into()),
            start.map_or_else(|| "-".into(), show_time),
            usage.map_or("-".into(), |u| format!("{:.2}", u.gpu_seconds / 3600.0)),
            usage.map_or("-".into(), |u| format!("{:.0}", u.avg_utilization)),
            preemptible_by(i),
            s.message.clone().unwrap_or_default(),
        ]);
    }
    render(&rows, &[])
}

/// What a booking asks for, in words: `8 x MODEL`, `2 nodes x 8 x MODEL`, `2 x MODEL 1g.10gb`.
pub fn booking_text(want: &SlotWant<'_>) -> String {
    let (model, count) = (want.model, want.count);
    match (want.nodes, want.slice) {
        (_, Some(s)) => format!("{count} x {model} {s}"),
        (0 | 1, None) => format!("{count} x {model}"),
        (n, None) => format!("{n} nodes x {count} x {model}"),
    }
}

/// GPUs of a booking as a table shows them: `8`, `2x8` for a gang of 2 nodes, `3x1g.10gb`
/// for slices.
fn gpus_text(gpu: &gpu_cloud_api::v1::GpuRequest) -> String {
    match (gpu.nodes(), &gpu.slice) {
        (_, Some(s)) => format!("{}x{s}", gpu.count),
        (1, None) => gpu.count.to_string(),
        (n, None) => format!("{n}x{}", gpu.count),
    }
}

/// Who may preempt the instance: for a placed one, by the scheduler's rule; for one
/// being preempted, by whom.
fn preemptible_by(i: &GpuInstance) -> String {
    let s = i.status.clone().unwrap_or_default();
    if let Some(n) = &s.preempted {
        return format!("preempted by {}", n.by);
    }
    let placed = s.node_name.is_some() && !s.phase.is_some_and(Phase::is_finished);
    if !placed {
        return "-".into();
    }
    gpu_cloud_core::scheduler::preemption::preemptible_by(i.spec.preemptible, s.borrowed).into()
}

/// What `book` says when no node of the cluster has `model` (pure): the booking waits
/// (UnknownModel) until one does, and the models there are.
pub fn unknown_model_warning(
    cal: &gpu_cloud_api::calendar::Calendar,
    model: &str,
) -> Option<String> {
    if cal.models.contains_key(model) {
        return None;
    }
    let known: Vec<&str> = cal.models.keys().map(String::as_str).collect();
    let there = if known.is_empty() {
        "the cluster has no GPU nodes".to_owned()
    } else {
        format!("models in the cluster: {}", known.join(", "))
    };
    Some(format!(
        "warning: no node has GPU model {model:?}; the booking waits until one does ({there})"
    ))
}

/// The `usage` table (pure): lifetime and this month, with this month's cost.
pub fn usage_table(users: &[GpuUser]) -> String {
    let mut rows = vec![
        [
            "USER",
            "GPUS-NOW",
            "GPU-HOURS",
            "KWH",
            "PERIOD",
            "GPU-HOURS(PERIOD)",
            "KWH(PERIOD)",
            "COST(PERIOD)",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in users {
        let s = u.status.clone().unwrap_or_default();
        let usage = s.usage.unwrap_or_default();
        rows.push(vec![
            u.name_any(),
            s.gpus_in_use.to_string(),
            format!("{:.2}", usage.lifetime.gpu_hours),
            format!("{:.3}", usage.lifetime.energy_kwh),
            if usage.period.is_empty() {
                "-".into()
            } else {
                usage.period.clone()
            },
            format!("{:.2}", usage.current_period.gpu_hours),
            format!("{:.3}", usage.current_period.energy_kwh),
            s.cost.as_ref().map_or_else(
                || "-".into(),
                |c| format!("{:.2} {}", c.current_period, c.currency),
            ),
        ]);
    }
    render(&rows, &[])
}

/// The GPU-hour budgets of the users that have one (pure); `None` when none has.
pub fn budget_table(users: &[GpuUser]) -> Option<String> {
    let mut rows = vec![
        [
            "USER",
            "USED",
            "REMAINING",
            "LIMIT",
            "PERIOD-START",
            "RENEWS",
            "EXHAUSTED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in users {
        let Some(b) = u.status.as_ref().and_then(|s| s.budget.as_ref()) else {
            continue;
        };
        rows.push(vec![
            u.name_any(),
            format!("{:.2}", b.used_gpu_hours),
            format!("{:.2}", b.remaining_gpu_hours),
            hours_text(b.limit_gpu_hours),
            show_time(b.period_start),
            show_time(b.period_end),
            if b.exhausted { "yes" } else { "no" }.to_owned(),
        ]);
    }
    (rows.len() > 1).then(|| render(&rows, &[]))
}

/// The cost of each instance, from its status (pure).
pub fn cost_table(items: &[GpuInstance]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "MODEL",
            "GPUS",
            "PHASE",
            "DURATION",
            "GPU-HOURS",
            "PLANNED",
            "ACTUAL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in items {
        let s = i.status.clone().unwrap_or_default();
        let cost = s.cost.as_ref();
        let money = |x: Option<f64>| match (x, cost) {
            (Some(x), Some(c)) => format!("{x:.2} {}", c.currency),
            _ => "-".into(),
        };
        rows.push(vec![
            i.name_any(),
            i.spec.gpu.model.clone(),
            gpus_text(&i.spec.gpu),
            s.phase.map_or("-", |p| p.as_str()).to_owned(),
            i.spec.duration.clone(),
            s.usage
                .as_ref()
                .map_or("-".into(), |u| format!("{:.2}", u.gpu_seconds / 3600.0)),
            money(cost.map(|c| c.planned)),
            money(cost.and_then(|c| c.actual)),
        ]);
    }
    render(&rows, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_show_phase_usage_and_reasons() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "1h"},
            "status": {"phase": "Running", "nodeName": "gpu-l4-0", "startedAt": "2026-11-25T10:30:00Z",
                       "usage": {"gpuSeconds": 5400.0, "avgUtilization": 42.4, "peakMemoryBytes": 0,
                                 "energyJoules": 0.0, "sampledAt": "2026-11-25T12:00:00Z", "source": "simulated"}}
        }))
        .unwrap();
        let t = instance_table(&[inst]);
        assert_eq!(
            t.lines().nth(1).unwrap(),
            "gpu-alice  train  NVIDIA-L4  1     Running  gpu-l4-0  2026-11-25T10:30Z  1.50       42     own user's higher priority"
        );
        let user: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "alice"}, "spec": {},
            "status": {"gpusInUse": 1, "instances": 1, "usage": {"period": "2026-11",
                "lifetime": {"gpuHours": 12.5, "energyKwh": 3.25, "instances": 4},
                "currentPeriod": {"gpuHours": 2.0, "energyKwh": 0.5, "instances": 1}}}
        }))
        .unwrap();
        let u = usage_table(&[user]);
        assert!(
            u.lines()
                .nth(1)
                .unwrap()
                .starts_with("alice  1         12.50      3.250  2026-11  2.00"),
            "{u}"
        );
    }

    #[test]
    fn reserved_bookings_show_their_node_and_start() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "later", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "4h",
                     "startTime": "2026-12-01T13:00:00Z"},
            "status": {"phase": "Reserved", "reservedNode": "gpu-l4-1", "startsAt": "2026-12-01T13:00:00Z"}
        }))
        .unwrap();
        let t = instance_table(&[inst]);
        assert_eq!(
            t.lines().nth(1).unwrap(),
            "gpu-alice  later  NVIDIA-L4  1     Reserved  gpu-l4-1  2026-12-01T13:00Z  -          -      -"
        );
    }

    #[test]
    fn budgets_and_costs_read_plainly() {
        let user: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "alice"}, "spec": {},
            "status": {"budget": {"limitGpuHours": 100.0, "usedGpuHours": 12.25, "remainingGpuHours": 87.75,
                "periodStart": "2026-11-01T00:00:00Z", "periodEnd": "2026-12-01T00:00:00Z", "exhausted": false},
                "cost": {"period": "2026-11", "currentPeriod": 30.626, "currency": "EUR"}}
        }))
        .unwrap();
        let b = budget_table(std::slice::from_ref(&user)).unwrap();
        assert_eq!(
            b.lines().nth(1).unwrap(),
            "alice  12.25  87.75      100    2026-11-01T00:00Z  2026-12-01T00:00Z  no"
        );
        assert!(
            usage_table(std::slice::from_ref(&user))
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("30.63 EUR")
        );
        let plain: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "bob"}, "spec": {}
        }))
        .unwrap();
        assert!(budget_table(&[plain]).is_none());

        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 2}, "image": "x", "duration": "4h"},
            "status": {"phase": "Running", "cost": {"planned": 6.4, "actual": 1.234, "currency": "EUR"}}
        }))
        .unwrap();
        assert_eq!(
            cost_table(&[inst]).lines().nth(1).unwrap(),
            "train  NVIDIA-L4  2     Running  4h        -          6.40 EUR  1.23 EUR"
        );
    }

    #[test]
    fn slots_come_from_the_calendar_or_say_why_not() {
        let cal: Calendar = serde_json::from_value(json!({
            "generatedAt": "2026-11-25T12:00:00Z",
            "models": {"NVIDIA-L4": [
                {"name": "l4-0", "allocatable": 2, "used": 2, "releases": [[1795000000, 2]]},
                {"name": "l4-1", "allocatable": 1, "eligible": false}]}
        }))
        .unwrap();
        let now: Timestamp = "2026-11-18T00:00:00Z".parse().unwrap();
        let free_at = Timestamp::from_second(1_795_000_000).unwrap();
        let four_h = Duration::from_secs(4 * 3600);
        let want = |model, count, nodes| SlotWant {
            model,
            slice: None,
            count,
            nodes,
            topology: gpu_cloud_core::scheduler::Topology::Preferred,
            duration: Some(four_h),
        };
        let text = slots_text(&cal, &want("NVIDIA-L4", 2, 1), now, 3, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["START", "END", "NODE"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                show_time(free_at).as_str(),
                &show_time(
                    free_at
                        .checked_add(jiff::SignedDuration::from_hours(4))
                        .unwrap()
                ),
                "l4-0"
            ],
            "{text}"
        );
        assert!(
            slots_text(&cal, &want("NVIDIA-A100", 1, 1), now, 3, now)
                .contains("no node has NVIDIA-A100 GPUs (models: NVIDIA-L4)")
        );
        assert!(
            slots_text(&cal, &want("NVIDIA-L4", 3, 1), now, 3, now)
                .contains("no NVIDIA-L4 node has 3 GPUs (the largest has 2)")
        );
        assert!(
            slots_text(&cal, &want("NVIDIA-L4", 1, 3), now, 3, now)
                .contains("only 2 NVIDIA-L4 node(s) have 1 GPUs")
        );
        // A gang of 2 x 1: l4-0 is busy until `free_at`, l4-1 takes no work: none.
        assert!(
            slots_text(&cal, &want("NVIDIA-L4", 1, 2), now, 3, now).contains("no free window"),
            "{}",
            slots_text(&cal, &want("NVIDIA-L4", 1, 2), now, 3, now)
        );
    }

    #[test]
    fn booking_a_model_no_node_has_names_the_models_there_are() {
        let cal: gpu_cloud_api::calendar::Calendar = serde_json::from_value(json!({
            "generatedAt": "2026-12-01T00:00:00Z",
            "models": {"NVIDIA-L4": [], "NVIDIA-H100-80GB-HBM3": []}
        }))
        .unwrap();
        assert_eq!(unknown_model_warning(&cal, "NVIDIA-L4"), None);
        assert_eq!(
            unknown_model_warning(&cal, "H100").unwrap(),
            "warning: no node has GPU model \"H100\"; the booking waits until one does (models in the cluster: NVIDIA-H100-80GB-HBM3, NVIDIA-L4)"
        );
    }
}
