//! From what the CRDs say to the policies' inputs, and the budget gate in front of the
//! scheduler (pure).
//!
//! The controller, the CLI and the tests all go through these, so that a GpuUser's budget
//! or an instance's idle rule means the same everywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Weekday as CivilWeekday;
use kube::ResourceExt;

use super::budget::{self, Budget, BudgetStatus, ExhaustedPolicy, Period, PeriodError};
use super::figures;
use super::idle::{self, IdlePolicy, IdlePolicyError, IdleSettings};
use super::records::Recorded;
use crate::scheduler::{InstanceKey, Snapshot, Wait, Waiting};
use gpu_cloud_api::time;
use gpu_cloud_api::v1::{
    BudgetPeriod, BudgetView, GpuHourBudget, GpuInstance, GpuUser, OnExhausted, Phase, Weekday,
};

/// A GpuUser's `spec.quota.gpuHours` as the budget policy reads it.
pub fn budget(spec: &GpuHourBudget) -> Budget {
    let period = match spec.period {
        BudgetPeriod::Week => Period::Week {
            reset_weekday: match spec.reset_weekday.unwrap_or(Weekday::Monday) {
                Weekday::Monday => CivilWeekday::Monday,
                Weekday::Tuesday => CivilWeekday::Tuesday,
                Weekday::Wednesday => CivilWeekday::Wednesday,
                Weekday::Thursday => CivilWeekday::Thursday,
                Weekday::Friday => CivilWeekday::Friday,
                Weekday::Saturday => CivilWeekday::Saturday,
                Weekday::Sunday => CivilWeekday::Sunday,
            },
        },
        BudgetPeriod::Month => Period::Month {
            reset_day: i8::try_from(spec.reset_day.unwrap_or(1)).unwrap_or(i8::MAX),
        },
    };
    Budget {
        limit_gpu_hours: spec.limit,
        period,
        on_exhausted: match spec.on_exhausted {
            OnExhausted::FinishRunning => ExhaustedPolicy::FinishRunning,
            OnExhausted::Stop => ExhaustedPolicy::Stop,
        },
    }
}

/// The instances of `instances` that still count as live (not in `recorded`).
fn live<'a>(recorded: &Recorded<'_>, instances: &'a [&'a GpuInstance]) -> Vec<&'a GpuInstance> {
    instances
        .iter()
        .copied()
        .filter(|i| {
            i.metadata
                .uid
                .as_deref()
                .is_none_or(|uid| !recorded.contains(uid))
        })
        .collect()
}

/// The user's budget in the period around `now`, from `instances` (all of the user's
/// instances still in the cluster) and `recorded` (its records); `None` without a budget.
pub fn budget_status(
    user: &GpuUser,
    instances: &[&GpuInstance],
    recorded: &Recorded<'_>,
    now: Timestamp,
) -> Option<Result<BudgetStatus, PeriodError>> {
    let spec = user.spec.quota.gpu_hours.as_ref()?;
    let mut spans: Vec<_> = live(recorded, instances)
        .into_iter()
        .flat_map(figures::spans)
        .collect();
    spans.extend(recorded.runs().map(|r| figures::retired_span(&r.figures)));
    Some(BudgetStatus::of(&budget(spec), &spans, now))
}

/// The budget as the user's status shows it.
pub fn budget_view(status: &BudgetStatus) -> BudgetView {
    BudgetView {
        limit_gpu_hours: status.limit,
        used_gpu_hours: round3(status.used),
        remaining_gpu_hours: round3(status.remaining),
        period_start: status.period.start,
        period_end: status.period.end,
        exhausted: status.exhausted(),
    }
}

/// Rounded to 1/1000: status figures that move every second would otherwise never
/// compare equal and be rewritten on every look.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// When the user's running instances use up what is left (GPUs held now burn
/// `held` GPU-hours per hour); `None` when nothing runs or nothing is left to use up.
pub fn exhausted_at(status: &BudgetStatus, held_gpus: u32, now: Timestamp) -> Option<Timestamp> {
    if held_gpus == 0 || status.exhausted() {
        return None;
    }
    let hours = status.remaining / f64::from(held_gpus);
    let at = now
        .checked_add(Duration::try_from_secs_f64(hours * 3600.0).ok()?)
        .ok()?;
    Some(at.min(status.period.end))
}

/// GPU-hours a booking plans to use (GPUs x its duration); 0 for a duration that does not
/// parse (the booking fails on that instead).
pub fn planned_gpu_hours(inst: &GpuInstance) -> f64 {
    time::parse_duration(&inst.spec.duration)
        .map(|d| budget::gpu_hours_for(inst.spec.gpu.gpu_equivalent(), d))
        .unwrap_or(0.0)
}

/// GPU-hours that `instances` (placed or holding a window) will still use inside the
/// period of `status` after `now`: what a new booking must leave room for.
pub fn committed_gpu_hours(
    instances: &[&GpuInstance],
    status: &BudgetStatus,
    now: Timestamp,
) -> f64 {
    instances
        .iter()
        .filter_map(|i| {
            let s = i.status.as_ref()?;
            let d = time::parse_duration(&i.spec.duration).ok()?;
            let start = match s.phase? {
                p if p.is_finished() => return None,
                // A granted window not started yet (Reserved, or waiting for its node).
                _ if s.reserved_node.is_some() && s.started_at.is_none() => s.starts_at?,
                Phase::Scheduled | Phase::Running => {
                    let held = s.started_at?;
                    figures::booking_start(s, held)
                }
                _ => return None,
            };
            let end = start.checked_add(d).ok()?;
            let secs = status.period.overlap_seconds(start.max(now), end);
            Some(i.spec.gpu.gpu_equivalent() * secs / 3600.0)
        })
        .sum()
}

/// One user's budget as the gate weighs new bookings against it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// The period's figures.
    pub status: BudgetStatus,
    /// GPU-hours already committed to placed and reserved instances (see
    /// [`committed_gpu_hours`]).
    pub committed: f64,
}

/// A user and the start of one of its budget periods: a booking is weighed against the
/// period its start falls in (now, or a future `startTime`), so that booking ahead into
/// next month spends next month's budget, not this one's, and cannot exceed it either.
pub type GateKey = (String, Timestamp);

/// Takes out of `snapshot` the bookings their user's budget cannot admit, in queue order
/// (priority, then first come): each admitted booking's planned GPU-hours count against
/// the next of the same period, so that a user cannot get around a budget by booking many
/// at once. `planned` gives each booking's GPU-hours and the start of the period it falls
/// in. Returns them as waiting, with the numbers. Placed bookings and granted windows are
/// not weighed again.
pub fn budget_gate(
    snapshot: &mut Snapshot,
    gates: &BTreeMap<GateKey, Gate>,
    planned: &BTreeMap<InstanceKey, (f64, Timestamp)>,
) -> Vec<Waiting> {
    if gates.is_empty() {
        return vec![];
    }
    let mut order: Vec<usize> = (0..snapshot.bookings.len())
        .filter(|&i| {
            let b = &snapshot.bookings[i];
            b.placed_on.is_none() && b.reserved_on.is_none()
        })
        .collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&snapshot.bookings[a], &snapshot.bookings[b]);
        b.priority
            .cmp(&a.priority)
            .then(a.created.cmp(&b.created))
            .then(a.key.cmp(&b.key))
    });
    let mut left: BTreeMap<&GateKey, f64> = gates
        .iter()
        .map(|(k, g)| (k, g.status.remaining - g.committed))
        .collect();
    let mut refused: Vec<(usize, Waiting)> = vec![];
    for i in order {
        let b = &snapshot.bookings[i];
        let (Some(user), Some(&(want, period))) = (b.user.as_deref(), planned.get(&b.key)) else {
            continue;
        };
        let key = (user.to_owned(), period);
        let (Some(gate), Some(rest)) = (gates.get(&key), left.get_mut(&key)) else {
            continue;
        };
        let status = BudgetStatus {
            remaining: rest.max(0.0),
            ..gate.status
        };
        match budget::admit(&status, want) {
            Ok(()) => *rest -= want,
            Err(refusal) => {
                let never = want > gate.status.limit;
                let message = if never {
                    format!(
                        "over the GPU-hour budget: {refusal}; it can never fit a budget of {} per period",
                        gpu_cloud_api::time::hours_text(gate.status.limit)
                    )
                } else {
                    format!("over the GPU-hour budget: {refusal}")
                };
                refused.push((
                    i,
                    Waiting {
                        key: b.key.clone(),
                        position: 0,
                        wait: Wait::Budget { never },
                        message,
                    },
                ));
            }
        }
    }
    let out_idx: std::collections::BTreeSet<usize> = refused.iter().map(|(i, _)| *i).collect();
    let mut idx = 0;
    snapshot.bookings.retain(|_| {
        let keep = !out_idx.contains(&idx);
        idx += 1;
        keep
    });
    refused.into_iter().map(|(_, w)| w).collect()
}

/// Why an instance's idle settings cannot be used: told to its owner.
#[derive(Debug, thiserror::Error)]
pub enum IdleSettingsError {
    /// A timeout that is not a duration.
    #[error("{field}: {source}")]
    Duration {
        /// Which field.
        field: &'static str,
        /// The parser's complaint.
        source: time::InvalidDuration,
    },
    /// Settings that do not make a policy together.
    #[error(transparent)]
    Policy(#[from] IdlePolicyError),
}

fn timeout(
    text: Option<&String>,
    field: &'static str,
) -> Result<Option<Duration>, IdleSettingsError> {
    text.map(|t| {
        time::parse_duration(t).map_err(|source| IdleSettingsError::Duration { field, source })
    })
    .transpose()
}

/// The idle rule in force for `inst` of `user`: its own settings, its user's default for
/// what it leaves out; `None` when neither sets a timeout (or it is `0s`), and for a slice
/// of a GPU: NVML reads no utilization per MIG device or time-sliced share, so the agent
/// reports none for them and an idle rule would stop them for idleness it never saw.
pub fn idle_policy(
    inst: &GpuInstance,
    user: Option<&GpuUser>,
) -> Result<Option<IdlePolicy>, IdleSettingsError> {
    if inst.spec.gpu.slice.is_some() {
        return Ok(None);
    }
    let own = IdleSettings {
        timeout: timeout(inst.spec.idle_timeout.as_ref(), "spec.idleTimeout")?,
        threshold_percent: inst.spec.idle_threshold_percent,
        warn_only: inst.spec.idle_warn_only,
        ..IdleSettings::default()
    };
    let default = match user.and_then(|u| u.spec.idle.as_ref()) {
        Some(d) => Some(IdleSettings {
            timeout: timeout(d.timeout.as_ref(), "GpuUser spec.idle.timeout")?,
            threshold_percent: d.threshold_percent,
            warn_only: d.warn_only,
            ..IdleSettings::default()
        }),
        None => None,
    };
    Ok(idle::effective(Some(&own), default.as_ref())?)
}

/// How often a running instance's actual cost is refreshed from its usage: each refresh is
/// a status write, and the agent samples every few seconds.
pub const COST_REFRESH: Duration = Duration::from_secs(300);

/// The cost `inst` should show under `prices`, given the one it shows (`None` when its
/// model has no price or its duration does not parse). The actual cost follows its usage
/// at most every [`COST_REFRESH`], and always once the usage is final or the instance ended.
pub fn instance_cost(
    inst: &GpuInstance,
    prices: &super::cost::PriceList,
) -> Option<gpu_cloud_api::v1::InstanceCost> {
    let d = time::parse_duration(&inst.spec.duration).ok()?;
    let model = inst.spec.gpu.model.as_str();
    let spot = inst.spec.preemptible;
    let planned =
        super::cost::planned_cost(prices, model, spot, inst.spec.gpu.gpu_equivalent(), d).ok()?;
    let status = inst.status.clone().unwrap_or_default();
    let old = status.cost.as_ref();
    let ended = status.phase.is_some_and(Phase::is_finished);
    let (mut actual, mut actual_sampled_at) = (
        old.and_then(|c| c.actual),
        old.and_then(|c| c.actual_sampled_at),
    );
    // Runs ended by preemption are priced once each, whole; the current run as the agent
    // measures it.
    let previous = status
        .previous_runs
        .iter()
        .map(|r| {
            let f = &r.figures;
            super::cost::actual_cost(prices, model, spot, f.gpu_seconds, f.energy_joules)
                .map(|c| c.total)
        })
        .sum::<Result<f64, _>>()
        .ok()?;
    match figures::current_usage(&status) {
        Some(u) => {
            let due = u.final_
                || ended
                || actual_sampled_at.is_none_or(|at| {
                    u.sampled_at.duration_since(at).as_secs_f64() >= COST_REFRESH.as_secs_f64()
                });
            if due && actual_sampled_at != Some(u.sampled_at) {
                let c =
                    super::cost::actual_cost(prices, model, spot, u.gpu_seconds, u.energy_joules)
                        .ok()?;
                actual = Some(round4(previous + c.total));
                actual_sampled_at = Some(u.sampled_at);
            }
        }
        // Between runs: what the ended runs cost.
        None if !status.previous_runs.is_empty() => {
            actual = Some(round4(previous));
            actual_sampled_at = status.previous_runs.last().map(|r| r.figures.ended_at);
        }
        None => {}
    }
    Some(gpu_cloud_api::v1::InstanceCost {
        planned: round4(planned.total),
        actual,
        actual_sampled_at,
        currency: prices.currency.clone(),
    })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The figures of `user`'s instances: those of `instances` not in `recorded`, and the
/// recorded ones.
pub fn user_figures(
    user: &GpuUser,
    instances: &[&GpuInstance],
    recorded: &Recorded<'_>,
    now: Timestamp,
) -> Vec<super::chargeback::InstanceFigures> {
    let mut out = user_live_figures(user, instances, recorded, now);
    out.extend(recorded.figures());
    out
}

/// The figures of `user`'s instances (of `instances`) not yet in `recorded`.
pub fn user_live_figures(
    user: &GpuUser,
    instances: &[&GpuInstance],
    recorded: &Recorded<'_>,
    now: Timestamp,
) -> Vec<super::chargeback::InstanceFigures> {
    let name = user.name_any();
    live(recorded, instances)
        .into_iter()
        .flat_map(|i| figures::instance_figures(&name, i, now))
        .collect()
}

/// GPU-hours of `figures` inside `period`.
pub fn gpu_hours_in(figures: &[super::chargeback::InstanceFigures], period: super::Bounds) -> f64 {
    figures
        .iter()
        .filter_map(|f| Some(f.gpu_seconds * f.share_in(period)? / 3600.0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Booking;
    use proptest::prelude::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn booking(name: &str, user: &str, priority: i32, created: i64) -> Booking {
        let key = InstanceKey {
            namespace: format!("gpu-{user}"),
            name: name.into(),
        };
        Booking {
            priority,
            ..Booking::new(key, Some(user.into()), "M", 1, ts(created))
        }
    }

    fn gate(limit: f64, used: f64, committed: f64) -> Gate {
        Gate {
            status: BudgetStatus {
                limit,
                used,
                remaining: (limit - used).max(0.0),
                period: crate::policy::Bounds {
                    start: ts(0),
                    end: ts(86_400 * 30),
                },
            },
            committed,
        }
    }

    #[test]
    fn the_gate_admits_in_queue_order_until_the_budget_is_spent() {
        let mut snap = Snapshot {
            bookings: vec![
                booking("late", "u", 0, 30),
                booking("first", "u", 0, 10),
                booking("urgent", "u", 5, 40),
                booking("huge", "u", 0, 50),
                booking("other", "v", 0, 1),
            ],
            ..Snapshot::default()
        };
        let planned: BTreeMap<InstanceKey, (f64, Timestamp)> = snap
            .bookings
            .iter()
            .map(|b| {
                let want = if b.key.name == "huge" { 500.0 } else { 4.0 };
                (b.key.clone(), (want, ts(0)))
            })
            .collect();
        // 10 left, 1 of them committed to a running instance: urgent (4) and first (4) fit.
        let gates = BTreeMap::from([(("u".to_string(), ts(0)), gate(100.0, 90.0, 1.0))]);
        let refused = budget_gate(&mut snap, &gates, &planned);
        let names: Vec<&str> = refused.iter().map(|w| w.key.name.as_str()).collect();
        assert_eq!(names, ["late", "huge"]);
        assert_eq!(refused[0].wait, Wait::Budget { never: false });
        assert!(
            refused[0]
                .message
                .contains("needs 4.0 GPU-hours, 1.0 of 100 left"),
            "{}",
            refused[0].message
        );
        assert_eq!(refused[1].wait, Wait::Budget { never: true });
        let kept: Vec<&str> = snap.bookings.iter().map(|b| b.key.name.as_str()).collect();
        assert_eq!(kept, ["first", "urgent", "other"]);
    }

    #[test]
    fn a_booking_ahead_spends_the_budget_of_the_period_it_falls_in() {
        let mut snap = Snapshot {
            bookings: vec![
                booking("now", "u", 0, 1),
                booking("next-month", "u", 0, 2),
                booking("next-month-too", "u", 0, 3),
            ],
            ..Snapshot::default()
        };
        let next = ts(86_400 * 30);
        let planned: BTreeMap<InstanceKey, (f64, Timestamp)> = snap
            .bookings
            .iter()
            .map(|b| {
                let period = if b.key.name == "now" { ts(0) } else { next };
                (b.key.clone(), (6.0, period))
            })
            .collect();
        let mut later = gate(10.0, 0.0, 0.0);
        later.status.period = crate::policy::Bounds {
            start: next,
            end: ts(86_400 * 60),
        };
        // This period is used up; next period's 10 hold one booking of 6, not two.
        let gates = BTreeMap::from([
            (("u".to_string(), ts(0)), gate(10.0, 10.0, 0.0)),
            (("u".to_string(), next), later),
        ]);
        let refused = budget_gate(&mut snap, &gates, &planned);
        let names: Vec<&str> = refused.iter().map(|w| w.key.name.as_str()).collect();
        assert_eq!(names, ["now", "next-month-too"]);
        let kept: Vec<&str> = snap.bookings.iter().map(|b| b.key.name.as_str()).collect();
        assert_eq!(kept, ["next-month"]);
    }

    proptest! {
        /// Whatever the queue, what the gate lets through for a user never plans more than
        /// that user has left, and nobody else's bookings are touched.
        #[test]
        fn the_gate_never_admits_more_than_is_left(
            wants in prop::collection::vec((0.0f64..50.0, -3i32..3, 0i64..100), 0..20),
            left in 0.0f64..100.0,
        ) {
            let mut snap = Snapshot::default();
            let mut planned = BTreeMap::new();
            for (i, (want, prio, created)) in wants.iter().enumerate() {
                let b = booking(&format!("b{i}"), if i % 3 == 0 { "v" } else { "u" }, *prio, *created);
                planned.insert(b.key.clone(), (*want, ts(0)));
                snap.bookings.push(b);
            }
            let before = snap.bookings.iter().filter(|b| b.user.as_deref() == Some("v")).count();
            let gates = BTreeMap::from([(("u".to_string(), ts(0)), gate(100.0, 100.0 - left, 0.0))]);
            budget_gate(&mut snap, &gates, &planned);
            let admitted: f64 = snap
                .bookings
                .iter()
                .filter(|b| b.user.as_deref() == Some("u"))
                .map(|b| planned[&b.key].0)
                .sum();
            prop_assert!(admitted <= left + 1e-9);
            let after = snap.bookings.iter().filter(|b| b.user.as_deref() == Some("v")).count();
            prop_assert_eq!(before, after);
        }
    }

    fn instance(status: serde_json::Value) -> GpuInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "a", "namespace": "gpu-u", "uid": "u1"},
            "spec": {"gpu": {"model": "M", "count": 2}, "image": "x", "duration": "2h"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn slices_have_no_idle_rule_and_cost_their_fraction() {
        let mut inst = instance(serde_json::json!(null));
        inst.spec.idle_timeout = Some("30m".into());
        assert!(idle_policy(&inst, None).unwrap().is_some());
        inst.spec.gpu.slice = Some("1g.10gb".into());
        assert_eq!(idle_policy(&inst, None).unwrap(), None);
        // 2 x 1g.10gb for 2 h: 2 x 1/7 x 2 = 0.57 GPU-hours.
        let planned = planned_gpu_hours(&inst);
        assert!(
            (planned - 2.0 * 143.0 / 1000.0 * 2.0).abs() < 1e-9,
            "{planned}"
        );
    }

    #[test]
    fn cost_is_planned_at_booking_and_follows_usage_every_few_minutes() {
        let prices = super::super::cost::PriceList {
            currency: "EUR".into(),
            per_gpu_hour: BTreeMap::from([("M".to_string(), 3.0)]),
            default_per_gpu_hour: None,
            per_kwh: Some(0.5),
            spot_factor: None,
        };
        let queued = instance(serde_json::json!({"phase": "Queued"}));
        let c = instance_cost(&queued, &prices).unwrap();
        assert_eq!(
            (c.planned, c.actual, c.currency.as_str()),
            (12.0, None, "EUR")
        );
        let usage = |secs: i64, gpu_seconds: f64, final_: bool| {
            serde_json::json!({"gpuSeconds": gpu_seconds, "avgUtilization": 1.0, "peakMemoryBytes": 0,
                "energyJoules": 3.6e6, "sampledAt": ts(secs), "source": "simulated", "final": final_})
        };
        let running = instance(
            serde_json::json!({"phase": "Running", "startedAt": ts(0), "usage": usage(1000, 3600.0, false)}),
        );
        let c = instance_cost(&running, &prices).unwrap();
        assert_eq!(c.actual, Some(3.5)); // 1 GPU-hour x 3 + 1 kWh x 0.5
        // A minute later: not refreshed yet.
        let mut later = running.clone();
        later.status.as_mut().unwrap().cost = Some(c.clone());
        later.status.as_mut().unwrap().usage =
            serde_json::from_value(usage(1060, 3720.0, false)).ok();
        assert_eq!(instance_cost(&later, &prices).unwrap(), c);
        // Final figures: refreshed at once.
        later.status.as_mut().unwrap().usage =
            serde_json::from_value(usage(1070, 7200.0, true)).ok();
        assert_eq!(instance_cost(&later, &prices).unwrap().actual, Some(6.5));
        // A model without a price: no cost at all.
        let mut unpriced = prices.clone();
        unpriced.per_gpu_hour.clear();
        assert!(instance_cost(&queued, &unpriced).is_none());
    }

    #[test]
    fn a_spot_instance_costs_the_spot_factor_and_its_preempted_runs_count() {
        let prices = super::super::cost::PriceList {
            currency: "EUR".into(),
            per_gpu_hour: BTreeMap::from([("M".to_string(), 4.0)]),
            default_per_gpu_hour: None,
            per_kwh: None,
            spot_factor: Some(0.25),
        };
        let run = serde_json::json!({"model": "M", "gpus": 2, "startedAt": ts(0),
            "endedAt": ts(3600), "gpuSeconds": 7200.0, "spot": true, "node": "n",
            "preempted": {"by": "gpu-x/y", "reason": "PreemptedSpot", "node": "n", "at": ts(3590)}});
        // Back in the queue: what its run cost (2 GPU-hours x 4 x 0.25).
        let mut queued = instance(serde_json::json!({"phase": "Queued", "previousRuns": [run]}));
        queued.spec.preemptible = true;
        let c = instance_cost(&queued, &prices).unwrap();
        assert_eq!((c.planned, c.actual), (4.0, Some(2.0)));
        // Placed again and measured: both runs.
        let mut again = queued.clone();
        let status = again.status.as_mut().unwrap();
        status.phase = Some(Phase::Running);
        status.started_at = Some(ts(4000));
        status.usage = serde_json::from_value(serde_json::json!({"gpuSeconds": 3600.0,
            "avgUtilization": 1.0, "peakMemoryBytes": 0, "energyJoules": 0.0,
            "sampledAt": ts(5800), "source": "simulated", "final": true}))
        .ok();
        assert_eq!(instance_cost(&again, &prices).unwrap().actual, Some(3.0));
    }
}
