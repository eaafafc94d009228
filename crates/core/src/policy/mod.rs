//! Policies on top of booking: idle shutdown, GPU-hour budgets, cost and what a user used.
//!
//! Everything here is a pure decision over plain data, in the style of
//! [`crate::scheduler`]: no client, no I/O, the clock passed in as an argument. The
//! controller and the CLI call these functions and act on what they return (write status,
//! publish Events, stop pods, print reports), so each rule has one copy, tested here.
//!
//! - [`idle`]: when an instance whose GPUs sit unused gets a warning, and when it stops.
//! - [`budget`]: GPU-hour budgets per week or month: period bounds, usage within a period,
//!   admission of a booking, what happens when a budget runs out.
//! - [`cost`]: prices, and the planned and actual cost of an instance.
//! - [`chargeback`]: a period's use per user and model, priced (`gpu-cloud report`).
//! - [`figures`]: what one instance used and held (measured, else GPUs x time held): the
//!   one definition budgets, cost, the report and the user's figures share.
//! - [`rollup`]: a user's usage totals from their instances, live and retired.
//! - [`records`]: the chargeback records (GpuUsageRecords) that outlive instances and
//!   users: what a deleted instance writes, which records close, what they say of a user.
//! - [`objects`]: the policies read off the CRD objects: a GpuUser's budget and its state,
//!   a GpuInstance's idle rule and cost, the budget gate in front of the scheduler.

pub mod budget;
pub mod chargeback;
pub mod cost;
pub mod figures;
pub mod idle;
pub mod objects;
pub mod records;
pub mod rollup;

use jiff::Timestamp;
use serde::Serialize;

/// A half-open span of time `[start, end)` in UTC: a budget period or a report period.
///
/// Half-open so that adjacent periods share their boundary without counting an instant
/// twice: the end of one period is the start of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Bounds {
    /// The first instant inside.
    pub start: Timestamp,
    /// The first instant after.
    pub end: Timestamp,
}

impl Bounds {
    /// `t` lies inside (`start <= t < end`).
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }

    /// Seconds of `[from, to)` that fall inside these bounds (0 when they do not meet or
    /// `to` is not after `from`). This is how usage spanning a period boundary is split
    /// between the periods, instead of being booked wholly to one of them.
    pub fn overlap_seconds(&self, from: Timestamp, to: Timestamp) -> f64 {
        let start = from.max(self.start);
        let end = to.min(self.end);
        if end > start {
            end.duration_since(start).as_secs_f64()
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_is_clipped_to_the_bounds() {
        let b = Bounds {
            start: ts("2026-11-01T00:00:00Z"),
            end: ts("2026-12-01T00:00:00Z"),
        };
        assert_eq!(
            b.overlap_seconds(ts("2026-10-31T23:00:00Z"), ts("2026-11-01T02:00:00Z")),
            7200.0
        );
        assert_eq!(
            b.overlap_seconds(ts("2026-12-01T00:00:00Z"), ts("2026-12-02T00:00:00Z")),
            0.0
        );
        assert_eq!(
            b.overlap_seconds(ts("2026-11-02T00:00:00Z"), ts("2026-11-01T00:00:00Z")),
            0.0
        );
        assert!(b.contains(b.start) && !b.contains(b.end));
    }
}
