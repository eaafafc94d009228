//! GPU-hour budgets: how many GPU-hours a user may use per week or month.
//!
//! On top of the concurrent limits (`maxGpus`, `maxInstances`), a user may have a budget
//! of GPU-hours per [`Period`]. [`period_bounds`] finds the period in progress,
//! [`gpu_hours_in_period`] counts the user's use inside it (an instance that spans a
//! period boundary is split between the periods by time, not booked wholly to the one
//! in which it was last sampled), [`BudgetStatus`] is what the user's status shows,
//! [`admit`] refuses a booking that needs more than is left, and [`on_exhausted`] says
//! what happens to running instances once the budget is used up.

use std::fmt;
use std::time::Duration;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use gpu_cloud_api::time::{hours_text, short_utc};

use super::Bounds;

/// How a budget's period recurs. All periods are in UTC and start at midnight, so that
/// every user and every report agrees on them whatever the cluster's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Seven days from midnight of `reset_weekday`.
    Week {
        /// The day the budget is renewed.
        reset_weekday: Weekday,
    },
    /// From `reset_day` of one month to the same day of the next.
    Month {
        /// The day of the month the budget is renewed, 1 to 28 (so that every month has
        /// it and all periods of a budget are whole months).
        reset_day: i8,
    },
}

/// Why a period has no bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// A monthly reset day that not every month has.
    #[error("budget reset day {0} must be between 1 and 28 (a day every month has)")]
    ResetDay(i8),
    /// The time lies at the edge of what can be represented (year -9999 or 9999).
    #[error("no budget period around {0}: too close to the end of representable time")]
    OutOfRange(Timestamp),
}

/// The period of `period` that contains `now`: `start <= now < end`, in UTC. The end of
/// one period is the start of the next.
pub fn period_bounds(period: Period, now: Timestamp) -> Result<Bounds, PeriodError> {
    let range = || PeriodError::OutOfRange(now);
    let today = now.to_zoned(TimeZone::UTC).date();
    let (start, end) = match period {
        Period::Week { reset_weekday } => {
            let back = today.weekday().since(reset_weekday);
            let start = today
                .checked_sub(i64::from(back).days())
                .map_err(|_| range())?;
            let end = start.checked_add(7.days()).map_err(|_| range())?;
            (start, end)
        }
        Period::Month { reset_day } => {
            if !(1..=28).contains(&reset_day) {
                return Err(PeriodError::ResetDay(reset_day));
            }
            let this_month =
                Date::new(today.year(), today.month(), reset_day).map_err(|_| range())?;
            let start = if today >= this_month {
                this_month
            } else {
                this_month.checked_sub(1.month()).map_err(|_| range())?
            };
            let end = start.checked_add(1.month()).map_err(|_| range())?;
            (start, end)
        }
    };
    let utc = |d: Date| {
        d.to_zoned(TimeZone::UTC)
            .map(|z| z.timestamp())
            .map_err(|_| range())
    };
    Ok(Bounds {
        start: utc(start)?,
        end: utc(end)?,
    })
}

/// An instance's hold on GPUs, as far as budgets care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceSpan {
    /// GPUs it holds.
    pub gpus: u32,
    /// When it was placed (`status.startedAt`).
    pub started: Timestamp,
    /// When it finished (`status.finishedAt`); `None` while it runs.
    pub ended: Option<Timestamp>,
}

/// GPU-hours of `instances` inside `bounds`, up to `now`: each instance counts GPUs ×
/// the part of `[started, ended or now)` that falls in the period. Time after `now` never
/// counts (an end in the future is not yet used).
pub fn gpu_hours_in_period(instances: &[InstanceSpan], bounds: Bounds, now: Timestamp) -> f64 {
    instances
        .iter()
        .map(|i| {
            let end = i.ended.unwrap_or(now).min(now);
            f64::from(i.gpus) * bounds.overlap_seconds(i.started, end) / 3600.0
        })
        .sum()
}

/// GPU-hours a booking of `gpus` for `duration` plans to use.
pub fn gpu_hours_for(gpus: f64, duration: Duration) -> f64 {
    gpus * duration.as_secs_f64() / 3600.0
}

/// What to do with running instances when the budget runs out during their run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExhaustedPolicy {
    /// Stop them all (their GPUs are freed); nothing new starts.
    Stop,
    /// Let them run to their booked end; nothing new starts.
    #[default]
    FinishRunning,
}

/// A user's GPU-hour budget (`GpuUser.spec.quota.gpuHours`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// GPU-hours per period.
    pub limit_gpu_hours: f64,
    /// How the period recurs.
    pub period: Period,
    /// What happens when it runs out during a run.
    pub on_exhausted: ExhaustedPolicy,
}

/// The budget of the period in progress: what the user's status shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetStatus {
    /// GPU-hours per period.
    pub limit: f64,
    /// GPU-hours used in this period so far.
    pub used: f64,
    /// GPU-hours left (`limit - used`, never below 0).
    pub remaining: f64,
    /// The period in progress.
    pub period: Bounds,
}

impl BudgetStatus {
    /// The budget of `budget`'s current period, given all of the user's instances (those
    /// finished included: their hours inside the period count).
    pub fn of(
        budget: &Budget,
        instances: &[InstanceSpan],
        now: Timestamp,
    ) -> Result<Self, PeriodError> {
        let period = period_bounds(budget.period, now)?;
        let used = gpu_hours_in_period(instances, period, now);
        Ok(BudgetStatus {
            limit: budget.limit_gpu_hours,
            used,
            remaining: (budget.limit_gpu_hours - used).max(0.0),
            period,
        })
    }

    /// Used up: nothing new may start.
    pub fn exhausted(&self) -> bool {
        self.used >= self.limit
    }
}

/// Why a booking was refused: the numbers, for the user's status and the instance's
/// message. Reads e.g. `needs 8.0 GPU-hours, 3.5 of 100 left until 2026-12-01T00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub struct BudgetRefusal {
    /// GPU-hours the booking plans to use.
    pub planned: f64,
    /// GPU-hours left in the period.
    pub remaining: f64,
    /// GPU-hours per period.
    pub limit: f64,
    /// When the budget is renewed.
    pub period_end: Timestamp,
}

impl fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "needs {:.1} GPU-hours, {:.1} of {} left until {}",
            self.planned,
            self.remaining,
            hours_text(self.limit),
            short_utc(self.period_end)
        )
    }
}

/// Admits a booking planning `planned_gpu_hours` (see [`gpu_hours_for`]) if the
/// budget has that much left. The whole planned use is weighed against what is left now,
/// even if part of the booking would fall into the next period: a booking is refused
/// rather than allowed to overrun, and the message tells when the budget renews.
pub fn admit(status: &BudgetStatus, planned_gpu_hours: f64) -> Result<(), BudgetRefusal> {
    // Written so that a NaN plan is refused too.
    if planned_gpu_hours <= status.remaining && !status.exhausted() {
        Ok(())
    } else {
        Err(BudgetRefusal {
            planned: planned_gpu_hours,
            remaining: status.remaining,
            limit: status.limit,
            period_end: status.period.end,
        })
    }
}

/// What to do about a user whose budget is used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<K> {
    /// Stop this running instance (phase `Stopped`, reason [`REASON_EXHAUSTED`]).
    Stop(K),
    /// Place none of the user's waiting instances until the period ends.
    HoldNew {
        /// When the budget is renewed and placement may resume.
        until: Timestamp,
    },
}

/// Reason of the Events, conditions and stops caused by a used-up budget.
pub const REASON_EXHAUSTED: &str = "BudgetExhausted";

/// What happens once `status` is used up, under `policy`: nothing while budget is left;
/// otherwise no new placements until the period ends, and under [`ExhaustedPolicy::Stop`]
/// every one of `running` (the user's running instances, named however the caller likes)
/// stopped.
pub fn on_exhausted<K: Clone>(
    policy: ExhaustedPolicy,
    status: &BudgetStatus,
    running: &[K],
) -> Vec<Action<K>> {
    if !status.exhausted() {
        return vec![];
    }
    let mut out = vec![Action::HoldNew {
        until: status.period.end,
    }];
    if policy == ExhaustedPolicy::Stop {
        out.extend(running.iter().cloned().map(Action::Stop));
    }
    out
}

/// The message of the [`REASON_EXHAUSTED`] Event on the user (and its condition).
pub fn exhausted_message(policy: ExhaustedPolicy, status: &BudgetStatus, running: usize) -> String {
    let what = match (policy, running) {
        (_, 0) => "no new instance starts".to_owned(),
        (ExhaustedPolicy::Stop, 1) => "its running instance is stopped".to_owned(),
        (ExhaustedPolicy::Stop, n) => format!("its {n} running instances are stopped"),
        (ExhaustedPolicy::FinishRunning, _) => {
            "running instances finish their bookings, no new instance starts".to_owned()
        }
    };
    format!(
        "GPU-hour budget used up: {:.1} of {} used; {what} until {}",
        status.used,
        hours_text(status.limit),
        short_utc(status.period.end)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn bounds(start: &str, end: &str) -> Bounds {
        Bounds {
            start: ts(start),
            end: ts(end),
        }
    }

    const MONTHLY: Period = Period::Month { reset_day: 1 };

    #[test]
    fn monthly_periods_start_on_the_reset_day() {
        let now = ts("2026-11-25T12:00:00Z");
        assert_eq!(
            period_bounds(MONTHLY, now),
            Ok(bounds("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"))
        );
        let mid = Period::Month { reset_day: 15 };
        assert_eq!(
            period_bounds(mid, now),
            Ok(bounds("2026-11-15T00:00:00Z", "2026-12-15T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(mid, ts("2026-01-14T23:59:59Z")),
            Ok(bounds("2025-12-15T00:00:00Z", "2026-01-15T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(Period::Month { reset_day: 29 }, now),
            Err(PeriodError::ResetDay(29))
        );
        assert_eq!(
            PeriodError::ResetDay(0).to_string(),
            "budget reset day 0 must be between 1 and 28 (a day every month has)"
        );
    }

    #[test]
    fn weekly_periods_start_on_the_reset_weekday() {
        let monday = Period::Week {
            reset_weekday: Weekday::Monday,
        };
        // 2026-11-25 is a Wednesday.
        let now = ts("2026-11-25T12:00:00Z");
        assert_eq!(
            period_bounds(monday, now),
            Ok(bounds("2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            period_bounds(monday, ts("2026-11-23T00:00:00Z")),
            Ok(bounds("2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"))
        );
        let thursday = Period::Week {
            reset_weekday: Weekday::Thursday,
        };
        assert_eq!(
            period_bounds(thursday, now),
            Ok(bounds("2026-11-19T00:00:00Z", "2026-11-26T00:00:00Z"))
        );
    }

    #[test]
    fn the_edges_of_time_are_errors_not_panics() {
        assert!(matches!(
            period_bounds(MONTHLY, Timestamp::MAX),
            Err(PeriodError::OutOfRange(_))
        ));
        let week = Period::Week {
            reset_weekday: Weekday::Sunday,
        };
        assert!(period_bounds(week, Timestamp::MIN).is_err());
    }

    #[test]
    fn an_instance_across_a_boundary_is_split_between_the_periods() {
        let span = InstanceSpan {
            gpus: 2,
            started: ts("2026-10-31T22:00:00Z"),
            ended: Some(ts("2026-11-01T02:00:00Z")),
        };
        let now = ts("2026-11-25T00:00:00Z");
        let oct = bounds("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z");
        let nov = bounds("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
        assert_eq!(gpu_hours_in_period(&[span], oct, now), 4.0);
        assert_eq!(gpu_hours_in_period(&[span], nov, now), 4.0);
        // A running one counts up to now, not to its booked end.
        let running = InstanceSpan {
            gpus: 4,
            started: ts("2026-11-24T22:00:00Z"),
            ended: None,
        };
        assert_eq!(gpu_hours_in_period(&[span, running], nov, now), 12.0);
    }

    fn status_nov(used: f64) -> BudgetStatus {
        BudgetStatus {
            limit: 100.0,
            used,
            remaining: (100.0 - used).max(0.0),
            period: bounds("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        }
    }

    #[test]
    fn a_booking_beyond_the_remaining_hours_is_refused_with_the_numbers() {
        let budget = Budget {
            limit_gpu_hours: 100.0,
            period: MONTHLY,
            on_exhausted: ExhaustedPolicy::Stop,
        };
        // 96.5 GPU-hours used: 1 GPU from Nov 2 for 4 days and 30 minutes.
        let done = InstanceSpan {
            gpus: 1,
            started: ts("2026-11-02T00:00:00Z"),
            ended: Some(ts("2026-11-06T00:30:00Z")),
        };
        let st = BudgetStatus::of(&budget, &[done], ts("2026-11-25T12:00:00Z")).unwrap();
        assert_eq!(st, status_nov(96.5));
        let planned = gpu_hours_for(2.0, Duration::from_secs(4 * 3600));
        assert_eq!(planned, 8.0);
        let e = admit(&st, planned).unwrap_err();
        assert_eq!(
            e.to_string(),
            "needs 8.0 GPU-hours, 3.5 of 100 left until 2026-12-01T00:00Z"
        );
        assert_eq!(admit(&st, 3.5), Ok(()));
        assert!(admit(&st, f64::NAN).is_err());
        assert!(
            admit(&status_nov(100.0), 0.0).is_err(),
            "nothing starts once used up"
        );
    }

    #[test]
    fn a_used_up_budget_stops_or_lets_finish_by_policy() {
        let running = ["a", "b"];
        assert!(on_exhausted(ExhaustedPolicy::Stop, &status_nov(99.0), &running).is_empty());
        let over = status_nov(100.2);
        let until = ts("2026-12-01T00:00:00Z");
        assert_eq!(
            on_exhausted(ExhaustedPolicy::Stop, &over, &running),
            [
                Action::HoldNew { until },
                Action::Stop("a"),
                Action::Stop("b")
            ]
        );
        assert_eq!(
            on_exhausted(ExhaustedPolicy::FinishRunning, &over, &running),
            [Action::HoldNew { until }]
        );
        assert_eq!(
            exhausted_message(ExhaustedPolicy::Stop, &over, 2),
            "GPU-hour budget used up: 100.2 of 100 used; its 2 running instances are stopped \
             until 2026-12-01T00:00Z"
        );
        assert_eq!(
            exhausted_message(ExhaustedPolicy::FinishRunning, &over, 2),
            "GPU-hour budget used up: 100.2 of 100 used; running instances finish their \
             bookings, no new instance starts until 2026-12-01T00:00Z"
        );
    }

    fn any_period() -> impl Strategy<Value = Period> {
        prop_oneof![
            (0i8..7).prop_map(|o| Period::Week {
                reset_weekday: Weekday::from_monday_zero_offset(o).unwrap()
            }),
            (1i8..=28).prop_map(|d| Period::Month { reset_day: d }),
        ]
    }

    fn any_time() -> impl Strategy<Value = Timestamp> {
        // 1970 to 2200.
        (0i64..7_258_118_400).prop_map(|s| Timestamp::from_second(s).unwrap())
    }

    proptest! {
        #[test]
        fn periods_contain_now_and_follow_each_other(period in any_period(), now in any_time()) {
            let b = period_bounds(period, now).unwrap();
            prop_assert!(b.contains(now));
            let next = period_bounds(period, b.end).unwrap();
            prop_assert_eq!(next.start, b.end);
            let just_before = b.start.checked_sub(jiff::SignedDuration::from_nanos(1)).unwrap();
            prop_assert_eq!(period_bounds(period, just_before).unwrap().end, b.start);
            let days = b.end.duration_since(b.start).as_hours() / 24;
            match period {
                Period::Week { reset_weekday } => {
                    prop_assert_eq!(days, 7);
                    prop_assert_eq!(b.start.to_zoned(TimeZone::UTC).weekday(), reset_weekday);
                }
                Period::Month { reset_day } => {
                    prop_assert!((28..=31).contains(&days));
                    prop_assert_eq!(b.start.to_zoned(TimeZone::UTC).day(), reset_day);
                }
            }
        }

        #[test]
        fn hours_split_across_adjacent_periods_sum_to_the_total(
            period in any_period(),
            now in any_time(),
            gpus in 1u32..=64,
            from in 0.0f64..1.0,
            len in 0.0f64..1.0,
        ) {
            let cur = period_bounds(period, now).unwrap();
            let next = period_bounds(period, cur.end).unwrap();
            let span_secs = |a: Timestamp, b: Timestamp| b.duration_since(a).as_secs_f64();
            let start = cur.start.checked_add(jiff::SignedDuration::from_secs_f64(
                span_secs(cur.start, cur.end) * from)).unwrap();
            let end = start.checked_add(jiff::SignedDuration::from_secs_f64(
                span_secs(start, next.end) * len)).unwrap();
            let span = InstanceSpan { gpus, started: start, ended: Some(end) };
            let later = next.end;
            let total = f64::from(gpus) * span_secs(start, end) / 3600.0;
            let split = gpu_hours_in_period(&[span], cur, later)
                + gpu_hours_in_period(&[span], next, later);
            prop_assert!((split - total).abs() <= 1e-9 * total.max(1.0), "{} != {}", split, total);
        }
    }
}
