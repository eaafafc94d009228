//! The chargeback report: a month's or an ISO week's use summed per user and GPU model,
//! priced with the [`PriceList`], for `gpu-cloud report` and the user's cost of the month.
//!
//! An instance that ran across a period boundary is split between the periods by time, so
//! that adjacent periods add up to the whole (property-tested).

use std::collections::BTreeMap;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::ToSpan;
use jiff::civil::{Date, ISOWeekDate, Weekday};
use jiff::tz::TimeZone;
use serde::Serialize;

use super::Bounds;
use super::cost::{Cost, CostError, JOULES_PER_KWH, PriceList, check_figures};

/// A calendar period of a report: a month (`2026-11`) or an ISO week (`2026-W48`), UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportPeriod {
    /// As written: `2026-11` or `2026-W48`.
    pub label: String,
    /// Its bounds.
    #[serde(flatten)]
    pub bounds: Bounds,
}

/// A `--period` that is neither a month nor an ISO week.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid period {0:?}: write a month as YYYY-MM (2026-11) or an ISO week as YYYY-Www (2026-W48)"
)]
pub struct InvalidPeriod(pub String);

impl ReportPeriod {
    /// The calendar month (UTC) that contains `t`: the default report period, named as
    /// the user rollup names months.
    pub fn month_of(t: Timestamp) -> Result<Self, InvalidPeriod> {
        gpu_cloud_api::time::month_of(t).parse()
    }
}

impl FromStr for ReportPeriod {
    type Err = InvalidPeriod;

    /// Parses `2026-11` (a month) or `2026-W48` (an ISO week, Monday to Monday).
    fn from_str(s: &str) -> Result<Self, InvalidPeriod> {
        let bad = || InvalidPeriod(s.to_owned());
        let number = |digits: &str, len: usize| -> Result<i16, InvalidPeriod> {
            if digits.len() != len || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            digits.parse().map_err(|_| bad())
        };
        let (year, rest) = s.split_once('-').ok_or_else(bad)?;
        let year = number(year, 4)?;
        let (start, end) = if let Some(week) = rest.strip_prefix('W') {
            let week = i8::try_from(number(week, 2)?).map_err(|_| bad())?;
            let start = ISOWeekDate::new(year, week, Weekday::Monday)
                .map_err(|_| bad())?
                .date();
            (start, start.checked_add(7.days()).map_err(|_| bad())?)
        } else {
            let month = i8::try_from(number(rest, 2)?).map_err(|_| bad())?;
            let start = Date::new(year, month, 1).map_err(|_| bad())?;
            (start, start.checked_add(1.month()).map_err(|_| bad())?)
        };
        let utc = |d: Date| {
            d.to_zoned(TimeZone::UTC)
                .map(|z| z.timestamp())
                .map_err(|_| bad())
        };
        Ok(ReportPeriod {
            label: s.to_owned(),
            bounds: Bounds {
                start: utc(start)?,
                end: utc(end)?,
            },
        })
    }
}

/// One instance's figures, as the report needs them (from its status, live or retired).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceFigures {
    /// Its GpuUser.
    pub user: String,
    /// Its GPU model.
    pub model: String,
    /// When it was placed (`status.startedAt`).
    pub started: Timestamp,
    /// When the figures were taken (`status.usage.sampledAt`).
    pub sampled_at: Timestamp,
    /// `status.usage.gpuSeconds`: cumulative since `started`.
    pub gpu_seconds: f64,
    /// `status.usage.energyJoules`: cumulative since `started`.
    pub energy_joules: f64,
    /// A spot instance (priced at the price list's spot factor).
    pub spot: bool,
}

impl InstanceFigures {
    /// The share of its figures that falls inside `bounds`, by time (use is taken as
    /// even over `[started, sampled_at)`, the best the cumulative figures allow), or
    /// `None` when it did not run in the period at all. An instance without elapsed time
    /// belongs to the period in which it started.
    pub fn share_in(&self, bounds: Bounds) -> Option<f64> {
        if self.sampled_at > self.started {
            let inside = bounds.overlap_seconds(self.started, self.sampled_at);
            let all = self.sampled_at.duration_since(self.started).as_secs_f64();
            (inside > 0.0).then(|| (inside / all).min(1.0))
        } else {
            bounds.contains(self.started).then_some(1.0)
        }
    }
}

/// One line of the report: a user's use of one GPU model in the period.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportRow {
    /// The GpuUser.
    pub user: String,
    /// The GPU model.
    pub model: String,
    /// Spot (preemptible) instances, priced at the spot factor: a row of their own.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    /// Instances that ran in the period.
    pub instances: u32,
    /// GPU-hours inside the period.
    pub gpu_hours: f64,
    /// Energy inside the period, kWh.
    pub energy_kwh: f64,
    /// What that costs.
    pub cost: Cost,
}

/// Sums of all rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportTotals {
    /// Instances that ran in the period.
    pub instances: u32,
    /// GPU-hours.
    pub gpu_hours: f64,
    /// Energy, kWh.
    pub energy_kwh: f64,
    /// Cost.
    pub cost: Cost,
}

/// The chargeback report of a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The period.
    pub period: ReportPeriod,
    /// The currency of every amount.
    pub currency: String,
    /// Per user and model, sorted by user then model.
    pub rows: Vec<ReportRow>,
    /// Sums of the rows.
    pub totals: ReportTotals,
}

/// Sums `figures` (every instance of every user, deleted ones included) into one row per
/// user and GPU model, for the part of each instance's use that falls in `period`, and
/// prices the rows. Fails on the first model without a price or figure that is not a
/// number, naming it, rather than printing a report with a hole.
pub fn report(
    prices: &PriceList,
    figures: &[InstanceFigures],
    period: &ReportPeriod,
) -> Result<Report, CostError> {
    prices.validate()?;
    let mut sums: BTreeMap<(&str, &str, bool), (u32, f64, f64)> = BTreeMap::new();
    for f in figures {
        check_figures(f.gpu_seconds, f.energy_joules)?;
        let Some(share) = f.share_in(period.bounds) else {
            continue;
        };
        let e = sums
            .entry((f.user.as_str(), f.model.as_str(), f.spot))
            .or_default();
        e.0 = e.0.saturating_add(1);
        e.1 += f.gpu_seconds * share / 3600.0;
        e.2 += f.energy_joules * share / JOULES_PER_KWH;
    }
    let mut totals = ReportTotals {
        instances: 0,
        gpu_hours: 0.0,
        energy_kwh: 0.0,
        cost: Cost {
            currency: prices.currency.clone(),
            ..Cost::default()
        },
    };
    let mut rows = Vec::with_capacity(sums.len());
    for ((user, model, spot), (instances, gpu_hours, energy_kwh)) in sums {
        let cost = prices.cost(model, spot, gpu_hours, energy_kwh)?;
        totals.instances = totals.instances.saturating_add(instances);
        totals.gpu_hours += gpu_hours;
        totals.energy_kwh += energy_kwh;
        totals.cost.add(&cost);
        rows.push(ReportRow {
            user: user.to_owned(),
            model: model.to_owned(),
            spot,
            instances,
            gpu_hours,
            energy_kwh,
            cost,
        });
    }
    Ok(Report {
        period: period.clone(),
        currency: prices.currency.clone(),
        rows,
        totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cost::actual_cost;
    use proptest::prelude::*;

    use crate::policy::cost::tests::{H100, L4, prices};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn report_periods_parse_months_and_iso_weeks() {
        let p: ReportPeriod = "2026-11".parse().unwrap();
        assert_eq!(p.bounds.start, ts("2026-11-01T00:00:00Z"));
        assert_eq!(p.bounds.end, ts("2026-12-01T00:00:00Z"));
        let p: ReportPeriod = "2026-12".parse().unwrap();
        assert_eq!(p.bounds.end, ts("2027-01-01T00:00:00Z"));
        let w: ReportPeriod = "2026-W48".parse().unwrap();
        assert_eq!(w.bounds.start, ts("2026-11-23T00:00:00Z"));
        assert_eq!(w.bounds.end, ts("2026-11-30T00:00:00Z"));
        assert_eq!(w.label, "2026-W48");
        // 2026 has 53 ISO weeks (it starts on a Thursday); 2025 has 52.
        let w: ReportPeriod = "2026-W53".parse().unwrap();
        assert_eq!(w.bounds.end, ts("2027-01-04T00:00:00Z"));
        for bad in [
            "",
            "2025-W53",
            "2026-W00",
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026-W",
            "2026/11",
            "2026-11-01",
            "+026-11",
            "2026-W4a",
        ] {
            let e = bad.parse::<ReportPeriod>().unwrap_err();
            assert!(e.to_string().contains("YYYY-MM (2026-11)"), "{bad}: {e}");
        }
        assert_eq!(
            ReportPeriod::month_of(ts("2026-11-30T23:59:59Z"))
                .unwrap()
                .label,
            "2026-11"
        );
    }

    fn fig(
        user: &str,
        model: &str,
        started: &str,
        sampled: &str,
        gpu_s: f64,
        j: f64,
    ) -> InstanceFigures {
        InstanceFigures {
            user: user.into(),
            model: model.into(),
            started: ts(started),
            sampled_at: ts(sampled),
            gpu_seconds: gpu_s,
            energy_joules: j,
            spot: false,
        }
    }

    fn sample_report() -> Report {
        let figs = [
            fig(
                "bob",
                L4,
                "2026-11-03T00:00:00Z",
                "2026-11-03T02:00:00Z",
                7200.0,
                3.6e6,
            ),
            fig(
                "alice",
                H100,
                "2026-11-10T00:00:00Z",
                "2026-11-10T04:00:00Z",
                28800.0,
                7.2e6,
            ),
            fig(
                "alice",
                H100,
                "2026-11-11T00:00:00Z",
                "2026-11-11T01:00:00Z",
                3600.0,
                0.0,
            ),
            // Half in October, half in November: half of it counts.
            fig(
                "alice",
                L4,
                "2026-10-31T23:00:00Z",
                "2026-11-01T01:00:00Z",
                7200.0,
                3.6e6,
            ),
            // Entirely in October: not in the report.
            fig(
                "carol",
                L4,
                "2026-10-01T00:00:00Z",
                "2026-10-02T00:00:00Z",
                86400.0,
                0.0,
            ),
        ];
        report(&prices(), &figs, &"2026-11".parse().unwrap()).unwrap()
    }

    #[test]
    fn the_report_sums_per_user_and_model_inside_the_period() {
        let r = sample_report();
        let keys: Vec<_> = r
            .rows
            .iter()
            .map(|r| (r.user.as_str(), r.model.as_str(), r.instances))
            .collect();
        assert_eq!(keys, [("alice", H100, 2), ("alice", L4, 1), ("bob", L4, 1)]);
        assert_eq!(r.rows[0].gpu_hours, 9.0);
        assert_eq!(r.rows[0].energy_kwh, 2.0);
        assert!((r.rows[0].cost.total - (9.0 * 2.5 + 2.0 * 0.3)).abs() < 1e-12);
        assert_eq!(r.rows[1].gpu_hours, 1.0);
        assert_eq!(r.rows[1].energy_kwh, 0.5);
        assert_eq!(r.totals.instances, 4);
        assert_eq!(r.totals.gpu_hours, 12.0);
        assert!((r.totals.cost.total - (22.5 + 0.5 + 1.0 + 0.3 * 3.5)).abs() < 1e-12);
    }

    #[test]
    fn a_model_without_a_price_fails_the_report_by_name() {
        let figs = [fig(
            "a",
            "NVIDIA-A100",
            "2026-11-03T00:00:00Z",
            "2026-11-03T01:00:00Z",
            3600.0,
            0.0,
        )];
        let e = report(&prices(), &figs, &"2026-11".parse().unwrap()).unwrap_err();
        assert!(matches!(e, CostError::NoPrice { model } if model == "NVIDIA-A100"));
        let nan = [fig(
            "a",
            L4,
            "2026-11-03T00:00:00Z",
            "2026-11-03T01:00:00Z",
            f64::NAN,
            0.0,
        )];
        assert!(report(&prices(), &nan, &"2026-11".parse().unwrap()).is_err());
    }

    fn any_figures() -> impl Strategy<Value = Vec<InstanceFigures>> {
        let one = (
            prop::sample::select(vec!["alice", "bob", "carol"]),
            prop::sample::select(vec![H100, L4, "other"]),
            0i64..20 * 86400,
            0i64..86400,
            0.0f64..1e6,
            0.0f64..1e9,
        )
            .prop_map(|(user, model, from, len, gpu_seconds, energy_joules)| {
                let start = ts("2026-11-01T00:00:00Z");
                let started = start
                    .checked_add(jiff::SignedDuration::from_secs(from))
                    .unwrap();
                InstanceFigures {
                    user: user.into(),
                    model: model.into(),
                    started,
                    sampled_at: started
                        .checked_add(jiff::SignedDuration::from_secs(len))
                        .unwrap(),
                    gpu_seconds,
                    energy_joules,
                    spot: false,
                }
            });
        proptest::collection::vec(one, 0..40)
    }

    proptest! {
        /// Instances wholly inside the period: the totals are the sums of the instances'
        /// own figures and costs, and the rows add up to the totals.
        #[test]
        fn totals_equal_the_sum_of_the_instance_figures(figs in any_figures()) {
            let p = PriceList { default_per_gpu_hour: Some(1.0), ..prices() };
            let r = report(&p, &figs, &"2026-11".parse().unwrap()).unwrap();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            let hours: f64 = figs.iter().map(|f| f.gpu_seconds / 3600.0).sum();
            let kwh: f64 = figs.iter().map(|f| f.energy_joules / 3.6e6).sum();
            let cost: f64 = figs
                .iter()
                .map(|f| actual_cost(&p, &f.model, f.spot, f.gpu_seconds, f.energy_joules).unwrap().total)
                .sum();
            prop_assert_eq!(r.totals.instances as usize, figs.len());
            prop_assert!(close(r.totals.gpu_hours, hours));
            prop_assert!(close(r.totals.energy_kwh, kwh));
            prop_assert!(close(r.totals.cost.total, cost), "{} != {}", r.totals.cost.total, cost);
            let row_hours: f64 = r.rows.iter().map(|r| r.gpu_hours).sum();
            prop_assert!(close(row_hours, r.totals.gpu_hours));
            let keys: Vec<_> = r.rows.iter().map(|r| (&r.user, &r.model)).collect();
            prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted, one row per key");
        }

        /// Any instance's figures are split between adjacent periods without loss.
        #[test]
        fn adjacent_periods_share_an_instance_without_loss(figs in any_figures()) {
            let p = PriceList { default_per_gpu_hour: Some(1.0), ..prices() };
            let halves: Vec<ReportPeriod> = ["2026-W45", "2026-W46", "2026-W47", "2026-W48", "2026-W49"]
                .iter().map(|w| w.parse().unwrap()).collect();
            // Weeks 45 to 49 cover 2026-11-02 to 2026-12-07; shift the instances in.
            let figs: Vec<_> = figs.into_iter().map(|mut f| {
                f.started = f.started.checked_add(jiff::SignedDuration::from_hours(24)).unwrap();
                f.sampled_at = f.sampled_at.checked_add(jiff::SignedDuration::from_hours(24)).unwrap();
                f
            }).collect();
            let total: f64 = halves.iter().map(|w| report(&p, &figs, w).unwrap().totals.gpu_hours).sum();
            let all: f64 = figs.iter().map(|f| f.gpu_seconds / 3600.0).sum();
            prop_assert!((total - all).abs() <= 1e-9 * all.max(1.0), "{} != {}", total, all);
        }
    }
}
