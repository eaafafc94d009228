//! Cost: prices per GPU model and per kWh, the cost of an instance, the chargeback report.
//!
//! One cluster-scoped [`PriceList`] (a small CRD or the chart's values rendered into one)
//! prices GPU-hours per model and, optionally, measured energy. [`planned_cost`] prices a
//! booking before it runs, [`actual_cost`] what it used, and [`report`] sums the use of a
//! period per user and model for `gpu-cloud report`, rendered by [`to_table`], [`to_csv`]
//! and [`to_json`]. Amounts are kept unrounded and rounded to cents only where printed, so
//! that sums are not thrown off by rounding each part.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::time::Duration;

use jiff::civil::{Date, ISOWeekDate, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Bounds, short_utc};

/// Joules in a kilowatt-hour.
const JOULES_PER_KWH: f64 = 3.6e6;

/// The prices of the cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PriceList {
    /// Currency of every price, e.g. `EUR` (only printed; no conversion is made).
    pub currency: String,
    /// Price of one GPU-hour by GPU model (`nvidia.com/gpu.product` value).
    #[serde(default)]
    pub per_gpu_hour: BTreeMap<String, f64>,
    /// Price of one GPU-hour of a model not listed; without it such a model has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_per_gpu_hour: Option<f64>,
    /// Price of one kWh of measured GPU energy; without it energy costs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_kwh: Option<f64>,
}

/// Why no cost could be worked out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CostError {
    /// The model is not priced and there is no default price.
    #[error("no price for GPU model {model:?}: add it to perGpuHour or set defaultPerGpuHour")]
    NoPrice {
        /// The GPU model.
        model: String,
    },
    /// A price is negative or not a number.
    #[error("price {what} is {value}: prices must be numbers of at least 0")]
    InvalidPrice {
        /// Which price (`perGpuHour[<model>]`, `defaultPerGpuHour`, `perKwh`).
        what: String,
        /// Its value.
        value: f64,
    },
    /// The price list names no currency.
    #[error("the price list has no currency (e.g. EUR)")]
    NoCurrency,
    /// A usage figure is negative or not a number.
    #[error("{what} is {value}: usage figures must be numbers of at least 0")]
    InvalidFigure {
        /// Which figure (`gpuSeconds`, `energyJoules`).
        what: &'static str,
        /// Its value.
        value: f64,
    },
}

fn valid(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

impl PriceList {
    /// Checks every price and the currency, so that a bad price list is reported where it
    /// is written (its status, the chart) rather than as odd costs later.
    pub fn validate(&self) -> Result<(), CostError> {
        if self.currency.trim().is_empty() {
            return Err(CostError::NoCurrency);
        }
        let named = self
            .per_gpu_hour
            .iter()
            .map(|(m, p)| (format!("perGpuHour[{m}]"), Some(*p)));
        let others = [
            ("defaultPerGpuHour".to_owned(), self.default_per_gpu_hour),
            ("perKwh".to_owned(), self.per_kwh),
        ];
        for (what, price) in named.chain(others) {
            if let Some(value) = price.filter(|p| !valid(*p)) {
                return Err(CostError::InvalidPrice { what, value });
            }
        }
        Ok(())
    }

    /// The price of one GPU-hour of `model`: its own, else the default.
    pub fn gpu_hour_price(&self, model: &str) -> Result<f64, CostError> {
        let (what, price) = match self.per_gpu_hour.get(model) {
            Some(p) => (format!("perGpuHour[{model}]"), *p),
            None => (
                "defaultPerGpuHour".to_owned(),
                self.default_per_gpu_hour
                    .ok_or_else(|| CostError::NoPrice {
                        model: model.to_owned(),
                    })?,
            ),
        };
        if valid(price) {
            Ok(price)
        } else {
            Err(CostError::InvalidPrice { what, value: price })
        }
    }

    fn kwh_price(&self) -> Result<f64, CostError> {
        match self.per_kwh {
            None => Ok(0.0),
            Some(p) if valid(p) => Ok(p),
            Some(value) => Err(CostError::InvalidPrice {
                what: "perKwh".into(),
                value,
            }),
        }
    }

    fn cost(&self, model: &str, gpu_hours: f64, energy_kwh: f64) -> Result<Cost, CostError> {
        let gpu = gpu_hours * self.gpu_hour_price(model)?;
        let energy = energy_kwh * self.kwh_price()?;
        Ok(Cost {
            gpu,
            energy,
            total: gpu + energy,
            currency: self.currency.clone(),
        })
    }
}

/// An amount of money, unrounded, split by what it pays for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// For GPU-hours.
    pub gpu: f64,
    /// For energy.
    pub energy: f64,
    /// `gpu + energy`.
    pub total: f64,
    /// The price list's currency.
    pub currency: String,
}

impl Cost {
    fn add(&mut self, other: &Cost) {
        self.gpu += other.gpu;
        self.energy += other.energy;
        self.total += other.total;
    }
}

/// The total to the cent: `12.35 EUR`.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} {}", self.total, self.currency)
    }
}

/// What a booking of `gpus` GPUs of `model` for `duration` will cost if it runs its whole
/// booking (shown when it is booked). Energy is not known in advance and counts 0.
pub fn planned_cost(
    prices: &PriceList,
    model: &str,
    gpus: u32,
    duration: Duration,
) -> Result<Cost, CostError> {
    let hours = f64::from(gpus) * duration.as_secs_f64() / 3600.0;
    prices.cost(model, hours, 0.0)
}

/// What an instance's measured use costs: `gpu_seconds` and `energy_joules` as in
/// `status.usage`.
pub fn actual_cost(
    prices: &PriceList,
    model: &str,
    gpu_seconds: f64,
    energy_joules: f64,
) -> Result<Cost, CostError> {
    check_figures(gpu_seconds, energy_joules)?;
    prices.cost(model, gpu_seconds / 3600.0, energy_joules / JOULES_PER_KWH)
}

fn check_figures(gpu_seconds: f64, energy_joules: f64) -> Result<(), CostError> {
    for (what, value) in [("gpuSeconds", gpu_seconds), ("energyJoules", energy_joules)] {
        if !valid(value) {
            return Err(CostError::InvalidFigure { what, value });
        }
    }
    Ok(())
}

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
        crate::controller::rollup::period_of(t).parse()
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
    let mut sums: BTreeMap<(&str, &str), (u32, f64, f64)> = BTreeMap::new();
    for f in figures {
        check_figures(f.gpu_seconds, f.energy_joules)?;
        let Some(share) = f.share_in(period.bounds) else {
            continue;
        };
        let e = sums.entry((f.user.as_str(), f.model.as_str())).or_default();
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
    for ((user, model), (instances, gpu_hours, energy_kwh)) in sums {
        let cost = prices.cost(model, gpu_hours, energy_kwh)?;
        totals.instances = totals.instances.saturating_add(instances);
        totals.gpu_hours += gpu_hours;
        totals.energy_kwh += energy_kwh;
        totals.cost.add(&cost);
        rows.push(ReportRow {
            user: user.to_owned(),
            model: model.to_owned(),
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

/// The label of the totals line in the table and the CSV. Upper case, so that it cannot
/// be a GpuUser's name (those are lower-case DNS labels).
pub const TOTAL_LABEL: &str = "TOTAL";

/// The report as an aligned table for a terminal, amounts to the cent.
pub fn to_table(r: &Report) -> String {
    let head = [
        "USER".to_owned(),
        "MODEL".to_owned(),
        "INSTANCES".to_owned(),
        "GPU-HOURS".to_owned(),
        "ENERGY-KWH".to_owned(),
        format!("COST ({})", r.currency),
    ];
    let line = |user: &str, model: &str, n: u32, h: f64, kwh: f64, cost: f64| {
        [
            user.to_owned(),
            model.to_owned(),
            n.to_string(),
            format!("{h:.2}"),
            format!("{kwh:.2}"),
            format!("{cost:.2}"),
        ]
    };
    let mut lines = vec![head];
    for row in &r.rows {
        lines.push(line(
            &row.user,
            &row.model,
            row.instances,
            row.gpu_hours,
            row.energy_kwh,
            row.cost.total,
        ));
    }
    let t = &r.totals;
    lines.push(line(
        TOTAL_LABEL,
        "",
        t.instances,
        t.gpu_hours,
        t.energy_kwh,
        t.cost.total,
    ));
    let mut widths = [0usize; 6];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "Chargeback {} ({} to {})\n",
        r.period.label,
        short_utc(r.period.bounds.start),
        short_utc(r.period.bounds.end)
    );
    for l in &lines {
        let mut text = String::new();
        for (i, (cell, w)) in l.iter().zip(widths).enumerate() {
            // Names left-aligned, numbers right-aligned.
            let _ = if i < 2 {
                write!(text, "{cell:<w$}  ")
            } else {
                write!(text, "{cell:>w$}  ")
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The report as CSV (RFC 4180, header line first, a [`TOTAL_LABEL`] line last), for a
/// spreadsheet or a billing system: hours and kWh to 3 decimals, amounts to the cent.
pub fn to_csv(r: &Report) -> String {
    let mut out = String::from(
        "user,model,instances,gpu_hours,energy_kwh,gpu_cost,energy_cost,total_cost,currency\n",
    );
    let mut line = |user: &str, model: &str, n: u32, h: f64, kwh: f64, c: &Cost| {
        let _ = writeln!(
            out,
            "{},{},{n},{h:.3},{kwh:.3},{:.2},{:.2},{:.2},{}",
            csv_field(user),
            csv_field(model),
            c.gpu,
            c.energy,
            c.total,
            csv_field(&c.currency)
        );
    };
    for row in &r.rows {
        line(
            &row.user,
            &row.model,
            row.instances,
            row.gpu_hours,
            row.energy_kwh,
            &row.cost,
        );
    }
    let t = &r.totals;
    line(
        TOTAL_LABEL,
        "",
        t.instances,
        t.gpu_hours,
        t.energy_kwh,
        &t.cost,
    );
    out
}

/// The report as pretty-printed JSON, unrounded (for programs, which round as they need).
pub fn to_json(r: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H100: &str = "NVIDIA-H100-80GB-HBM3";
    const L4: &str = "NVIDIA-L4";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn prices() -> PriceList {
        PriceList {
            currency: "EUR".into(),
            per_gpu_hour: [(H100.to_owned(), 2.5), (L4.to_owned(), 0.5)].into(),
            default_per_gpu_hour: None,
            per_kwh: Some(0.3),
        }
    }

    #[test]
    fn planned_and_actual_costs() {
        let p = prices();
        let c = planned_cost(&p, H100, 2, Duration::from_secs(4 * 3600)).unwrap();
        assert_eq!((c.gpu, c.energy, c.total), (20.0, 0.0, 20.0));
        assert_eq!(c.to_string(), "20.00 EUR");
        let c = actual_cost(&p, L4, 7200.0, 3.6e6).unwrap();
        assert!((c.total - 1.3).abs() < 1e-12, "{c:?}");
        assert_eq!(c.gpu, 1.0);
        let no_energy_price = PriceList {
            per_kwh: None,
            ..p.clone()
        };
        assert_eq!(
            actual_cost(&no_energy_price, L4, 7200.0, 3.6e6)
                .unwrap()
                .energy,
            0.0
        );
        assert_eq!(
            actual_cost(&p, L4, -1.0, 0.0).unwrap_err().to_string(),
            "gpuSeconds is -1: usage figures must be numbers of at least 0"
        );
    }

    #[test]
    fn unlisted_models_take_the_default_price_or_name_the_gap() {
        let p = prices();
        let e = planned_cost(&p, "NVIDIA-A100", 1, Duration::from_secs(3600)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no price for GPU model \"NVIDIA-A100\": add it to perGpuHour or set defaultPerGpuHour"
        );
        let p = PriceList {
            default_per_gpu_hour: Some(1.25),
            ..p
        };
        assert_eq!(p.gpu_hour_price("NVIDIA-A100"), Ok(1.25));
        assert_eq!(p.gpu_hour_price(H100), Ok(2.5));
    }

    #[test]
    fn bad_price_lists_are_reported_with_the_price_named() {
        assert_eq!(PriceList::default().validate(), Err(CostError::NoCurrency));
        let mut p = prices();
        p.per_gpu_hour.insert("X".into(), -1.0);
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "price perGpuHour[X] is -1: prices must be numbers of at least 0"
        );
        let p = PriceList {
            per_kwh: Some(f64::NAN),
            ..prices()
        };
        assert!(
            matches!(p.validate(), Err(CostError::InvalidPrice { what, .. }) if what == "perKwh")
        );
        assert!(prices().validate().is_ok());
        // Serialized as the CRD / chart values would write it.
        let json = serde_json::to_value(prices()).unwrap();
        assert_eq!(json["perGpuHour"][L4], 0.5);
        assert_eq!(json["perKwh"], 0.3);
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

    #[test]
    fn renderers() {
        let r = sample_report();
        let table = to_table(&r);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(
            lines[0],
            "Chargeback 2026-11 (2026-11-01T00:00Z to 2026-12-01T00:00Z)"
        );
        assert_eq!(
            lines[1],
            "USER   MODEL                  INSTANCES  GPU-HOURS  ENERGY-KWH  COST (EUR)"
        );
        assert_eq!(
            lines[2],
            "alice  NVIDIA-H100-80GB-HBM3          2       9.00        2.00       23.10"
        );
        assert_eq!(
            lines[5],
            "TOTAL                                 4      12.00        3.50       25.05"
        );
        let csv = to_csv(&r);
        let lines: Vec<_> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "user,model,instances,gpu_hours,energy_kwh,gpu_cost,energy_cost,total_cost,currency"
        );
        assert_eq!(lines[3], "bob,NVIDIA-L4,1,2.000,1.000,1.00,0.30,1.30,EUR");
        assert_eq!(lines[4], "TOTAL,,4,12.000,3.500,24.00,1.05,25.05,EUR");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        let json: serde_json::Value = serde_json::from_str(&to_json(&r).unwrap()).unwrap();
        assert_eq!(json["period"]["label"], "2026-11");
        assert_eq!(json["period"]["start"], "2026-11-01T00:00:00Z");
        assert_eq!(json["rows"][2]["user"], "bob");
        assert_eq!(json["rows"][2]["gpuHours"], 2.0);
        assert_eq!(json["totals"]["instances"], 4);
        assert_eq!(json["totals"]["cost"]["currency"], "EUR");
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
                .map(|f| actual_cost(&p, &f.model, f.gpu_seconds, f.energy_joules).unwrap().total)
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
