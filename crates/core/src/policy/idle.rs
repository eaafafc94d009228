//! Idle-GPU shutdown: when an instance whose GPUs sit unused is warned, and when it stops.
//!
//! The node agent writes cumulative usage into `status.usage` every few seconds. Each new
//! write gives one [`Sample`]: the mean GPU utilization since the previous write
//! ([`interval_sample`] derives it from two cumulative [`UsageReading`]s). [`observe`] folds a
//! sample into the persisted [`IdleState`] and says what to do ([`IdleVerdict`]):
//!
//! - a sample at or above the threshold resets the idle clock;
//! - a sample under it starts the clock (at that sample's time) or keeps it running;
//! - `warn_before` ahead of the stop the instance gets a warning (condition and Event);
//! - once the utilization has stayed under the threshold for `timeout`, it is stopped
//!   (phase `Stopped`, reason [`REASON_STOPPED`]), or in `warn_only` mode only told so.
//!
//! Missing data is never evidence of idleness: when the agent has not written for longer
//! than `max_gap` (agent down, node unreachable), nothing is decided and the idle clock
//! starts afresh with the next sample, so an outage can neither stop an instance nor count
//! towards its idle time. The clock also starts at the first idle *sample*, not at the
//! previous busy one, so a stop comes at most one write interval late, never early.

use std::time::Duration;

use jiff::Timestamp;

use gpu_cloud_api::time::{go_duration, short_utc};
use gpu_cloud_api::v1::{IdleState, UsageReading};

/// Utilization (percent) under which a GPU counts as idle unless configured otherwise:
/// a notebook left open or a finished job reads 0–2 %, real work far more.
pub const DEFAULT_THRESHOLD_PERCENT: f64 = 5.0;

/// How long the agent may stay silent before its silence makes the data stale, unless
/// configured otherwise: four of its default 15 s write intervals, so one slow or lost
/// write does not reset an idle clock but a stopped agent does within a minute.
pub const DEFAULT_MAX_GAP: Duration = Duration::from_secs(60);

/// Event and condition reason of the warning ahead of an idle stop.
pub const REASON_WARNING: &str = "IdleWarning";
/// Reason of the stop (the `Stopped` phase's condition and Event).
pub const REASON_STOPPED: &str = "Idle";
/// Event and condition reason in `warn_only` mode once the timeout is reached.
pub const REASON_WOULD_STOP: &str = "IdleWouldStop";

/// Idle settings as written on an instance (`spec.idleTimeout` and friends) or as a user's
/// default; every field optional, so that [`effective`] can merge them field by field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdleSettings {
    /// How long the GPUs must stay idle before the instance stops; zero turns idle
    /// shutdown off (an instance can so opt out of its user's default).
    pub timeout: Option<Duration>,
    /// Utilization, percent, under which the GPUs count as idle.
    pub threshold_percent: Option<f64>,
    /// Only warn (condition + Event), never stop.
    pub warn_only: Option<bool>,
    /// How long before the stop the warning comes.
    pub warn_before: Option<Duration>,
    /// Longest silence of the agent that still counts as continuous data.
    pub max_gap: Option<Duration>,
}

/// The idle rule in force for one instance (see [`effective`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IdlePolicy {
    /// How long the GPUs must stay under the threshold before the stop (more than zero).
    pub timeout: Duration,
    /// Utilization, percent, under which the GPUs count as idle (0–100; default
    /// [`DEFAULT_THRESHOLD_PERCENT`]). A sample exactly at the threshold is busy.
    pub threshold_percent: f64,
    /// Warn once the timeout is reached instead of stopping.
    pub warn_only: bool,
    /// How long before the stop the warning comes (default a quarter of `timeout`:
    /// 15 minutes for an hour, long enough to react, short enough to still matter).
    /// Unused in `warn_only` mode, whose single notice comes at the timeout.
    pub warn_before: Duration,
    /// Longest silence of the agent that still counts as continuous data (default
    /// [`DEFAULT_MAX_GAP`]); longer gaps restart the idle clock.
    pub max_gap: Duration,
}

impl IdlePolicy {
    /// A policy with `timeout` and every other field at its default.
    pub fn with_timeout(timeout: Duration) -> Self {
        IdlePolicy {
            timeout,
            threshold_percent: DEFAULT_THRESHOLD_PERCENT,
            warn_only: false,
            warn_before: timeout / 4,
            max_gap: DEFAULT_MAX_GAP,
        }
    }
}

/// Why idle settings cannot make a policy: told to the user, so it names the fields.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdlePolicyError {
    /// The threshold is not a percentage.
    #[error("idle threshold {0}% must be a percentage between 0 and 100")]
    Threshold(f64),
    /// The warning would come before the idle time could even start.
    #[error("idle warnBefore ({warn_before}) must not be longer than idleTimeout ({timeout})")]
    WarnBefore {
        /// The warning lead, Go-style (`30m`).
        warn_before: String,
        /// The timeout, Go-style.
        timeout: String,
    },
    /// A zero gap would make every reading stale at once.
    #[error("idle maxGap must be longer than 0s")]
    MaxGap,
}

/// The policy for an instance: its own settings where given, its user's default for each
/// field it leaves out, defaults for the rest. `None` when neither sets a timeout or the
/// timeout in force is zero: no idle shutdown.
///
/// Merged field by field, so that an instance may for instance shorten its user's timeout
/// yet keep the user's `warnOnly`.
pub fn effective(
    instance: Option<&IdleSettings>,
    user_default: Option<&IdleSettings>,
) -> Result<Option<IdlePolicy>, IdlePolicyError> {
    let pick = |f: fn(&IdleSettings) -> Option<Duration>| {
        instance.and_then(f).or_else(|| user_default.and_then(f))
    };
    let Some(timeout) = pick(|s| s.timeout).filter(|t| !t.is_zero()) else {
        return Ok(None);
    };
    let threshold_percent = instance
        .and_then(|s| s.threshold_percent)
        .or_else(|| user_default.and_then(|s| s.threshold_percent))
        .unwrap_or(DEFAULT_THRESHOLD_PERCENT);
    if !(0.0..=100.0).contains(&threshold_percent) {
        return Err(IdlePolicyError::Threshold(threshold_percent));
    }
    let warn_only = instance
        .and_then(|s| s.warn_only)
        .or_else(|| user_default.and_then(|s| s.warn_only))
        .unwrap_or(false);
    let warn_before = pick(|s| s.warn_before).unwrap_or(timeout / 4);
    if warn_before > timeout {
        return Err(IdlePolicyError::WarnBefore {
            warn_before: go_duration(warn_before),
            timeout: go_duration(timeout),
        });
    }
    let max_gap = pick(|s| s.max_gap).unwrap_or(DEFAULT_MAX_GAP);
    if max_gap.is_zero() {
        return Err(IdlePolicyError::MaxGap);
    }
    Ok(Some(IdlePolicy {
        timeout,
        threshold_percent,
        warn_only,
        warn_before,
        max_gap,
    }))
}

/// Mean GPU utilization over the interval that ends at `at` (since the previous sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the interval ended (the agent's `sampledAt`).
    pub at: Timestamp,
    /// Mean utilization of the instance's GPUs over the interval, percent.
    pub utilization_percent: f64,
}

/// The reading before the first write: nothing used yet at placement.
pub fn reading_at_placement(started: Timestamp) -> UsageReading {
    UsageReading {
        at: started,
        gpu_seconds: 0.0,
        avg_utilization: 0.0,
    }
}

/// The utilization between two cumulative readings: the GPU-second-weighted mean of the
/// interval, recovered from the two running means. The lifetime mean alone would not do:
/// after ten busy hours it would take hours of idleness to fall under any threshold.
///
/// `None` when `cur` does not follow `prev` (same write seen again, clock going back,
/// counters reset by a re-placement): no new evidence either way.
pub fn interval_sample(prev: &UsageReading, cur: &UsageReading) -> Option<Sample> {
    let held = cur.gpu_seconds - prev.gpu_seconds;
    if cur.at <= prev.at || held.is_nan() || held <= 0.0 {
        return None;
    }
    let used = cur.avg_utilization * cur.gpu_seconds - prev.avg_utilization * prev.gpu_seconds;
    let utilization_percent = (used / held).clamp(0.0, 100.0);
    utilization_percent.is_finite().then_some(Sample {
        at: cur.at,
        utilization_percent,
    })
}

/// What [`observe`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IdleVerdict {
    /// No sample yet, or none within `max_gap`: nothing can be said, nothing is done.
    NoData,
    /// The newest sample is at or above the threshold.
    Active,
    /// Idle, but not yet long enough for anything.
    Idle {
        /// The first idle sample of this stretch.
        since: Timestamp,
        /// When the warning is due (in `warn_only` mode: the would-stop notice); the
        /// controller looks again then.
        warn_at: Timestamp,
    },
    /// Idle long enough to be warned: the instance stops at `stop_at` unless used.
    Warn {
        /// The first idle sample of this stretch.
        since: Timestamp,
        /// When it will be stopped; the controller looks again then.
        stop_at: Timestamp,
        /// First time for this stretch: set the condition and publish the Event now.
        announce: bool,
    },
    /// Idle for the whole timeout: stop it (phase `Stopped`, reason [`REASON_STOPPED`]),
    /// free its GPUs.
    Stop {
        /// The first idle sample of this stretch.
        since: Timestamp,
        /// How long it has been idle.
        idle_for: Duration,
    },
    /// As [`IdleVerdict::Stop`], but the policy is `warn_only`: the instance keeps running.
    WouldStop {
        /// The first idle sample of this stretch.
        since: Timestamp,
        /// How long it has been idle.
        idle_for: Duration,
        /// First time for this stretch: set the condition and publish the Event now.
        announce: bool,
    },
}

impl IdleVerdict {
    /// When the controller should look again even without a new sample (the warning or
    /// the stop falls due); `None` when only new samples can change the verdict.
    pub fn revisit_at(&self) -> Option<Timestamp> {
        match *self {
            IdleVerdict::Idle { warn_at, .. } => Some(warn_at),
            IdleVerdict::Warn { stop_at, .. } => Some(stop_at),
            _ => None,
        }
    }

    /// An Event (always of type Warning) is due now: `(reason, message)`.
    pub fn event(&self, policy: &IdlePolicy) -> Option<(&'static str, String)> {
        let due = match *self {
            IdleVerdict::Warn { announce, .. } | IdleVerdict::WouldStop { announce, .. } => {
                announce
            }
            IdleVerdict::Stop { .. } => true,
            _ => false,
        };
        due.then(|| self.condition(policy)).flatten()
    }

    /// The reason and message of the idle condition the instance should show now; `None`
    /// when it should show none (remove one that is there).
    pub fn condition(&self, policy: &IdlePolicy) -> Option<(&'static str, String)> {
        let limit = policy.threshold_percent;
        match *self {
            IdleVerdict::Warn { since, stop_at, .. } => Some((
                REASON_WARNING,
                format!(
                    "GPU utilization has stayed under {limit}% since {}; the instance will be \
                     stopped at {} unless its GPUs are used",
                    short_utc(since),
                    short_utc(stop_at)
                ),
            )),
            IdleVerdict::Stop { since, idle_for } => Some((
                REASON_STOPPED,
                format!(
                    "GPU utilization stayed under {limit}% for {} (since {}): stopped, its \
                     GPUs freed",
                    go_duration(idle_for),
                    short_utc(since)
                ),
            )),
            IdleVerdict::WouldStop {
                since, idle_for, ..
            } => Some((
                REASON_WOULD_STOP,
                format!(
                    "GPU utilization has stayed under {limit}% for {} (since {}); it would be \
                     stopped, but idle shutdown only warns (warnOnly)",
                    go_duration(idle_for),
                    short_utc(since)
                ),
            )),
            _ => None,
        }
    }
}

/// Folds `sample` (the newest one the controller has, if any) into `state` and decides at
/// `now`. `started` is when the instance was placed: samples from before it are ignored,
/// and no instance is judged before `timeout` has passed since it started.
///
/// A sample already seen (not newer than `state.last_sample_at`) adds nothing, so calling
/// this on every reconcile with the same `status.usage` is safe; time still moves on.
pub fn observe(
    policy: &IdlePolicy,
    state: &IdleState,
    sample: Option<Sample>,
    started: Timestamp,
    now: Timestamp,
) -> (IdleState, IdleVerdict) {
    let mut st = state.clone();
    let stretch_over = |st: &mut IdleState| {
        st.idle_since = None;
        st.warned = false;
    };
    if let Some(s) = sample {
        let new = s.at >= started && st.last_sample_at.is_none_or(|last| s.at > last);
        if new {
            if st
                .last_sample_at
                .is_some_and(|last| exceeds(s.at.duration_since(last), policy.max_gap))
            {
                stretch_over(&mut st);
            }
            // NaN compares false: a broken reading counts as busy, never as idle.
            if s.utilization_percent < policy.threshold_percent {
                st.idle_since.get_or_insert(s.at);
            } else {
                stretch_over(&mut st);
            }
            st.last_sample_at = Some(s.at);
        }
    }
    let fresh = st
        .last_sample_at
        .is_some_and(|last| !exceeds(now.duration_since(last), policy.max_gap));
    if !fresh {
        stretch_over(&mut st);
        return (st, IdleVerdict::NoData);
    }
    let Some(since) = st.idle_since else {
        return (st, IdleVerdict::Active);
    };
    let stop_at = since
        .max(started)
        .saturating_add(policy.timeout)
        .unwrap_or(Timestamp::MAX);
    let idle_for = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    let verdict = if now >= stop_at {
        if policy.warn_only {
            let announce = !st.warned;
            st.warned = true;
            IdleVerdict::WouldStop {
                since,
                idle_for,
                announce,
            }
        } else {
            IdleVerdict::Stop { since, idle_for }
        }
    } else {
        let warn_at = if policy.warn_only {
            stop_at
        } else {
            stop_at
                .saturating_sub(policy.warn_before)
                .unwrap_or(Timestamp::MIN)
        };
        if now >= warn_at {
            let announce = !st.warned;
            st.warned = true;
            IdleVerdict::Warn {
                since,
                stop_at,
                announce,
            }
        } else {
            IdleVerdict::Idle { since, warn_at }
        }
    };
    (st, verdict)
}

/// [`observe`] fed from the agent's cumulative figures: derives the interval's sample from
/// `state.last_reading` (or from placement, for the first write) and remembers `reading`.
/// This is what the controller calls with `status.usage` on every reconcile.
///
/// A reading newer than the remembered one becomes the next baseline even when it gives no
/// sample: after a counter reset (the instance's usage starts again from zero, e.g. a new
/// pod) the old, larger baseline would otherwise swallow every interval until the new
/// counters passed it, and the idle rule would see no data for that long.
pub fn observe_usage(
    policy: &IdlePolicy,
    state: &IdleState,
    reading: Option<UsageReading>,
    started: Timestamp,
    now: Timestamp,
) -> (IdleState, IdleVerdict) {
    let prev = state
        .last_reading
        .filter(|p| p.at >= started)
        .unwrap_or_else(|| reading_at_placement(started));
    let reading = reading.filter(|r| r.at >= started);
    let sample = reading.and_then(|cur| interval_sample(&prev, &cur));
    let (mut next, verdict) = observe(policy, state, sample, started, now);
    if let Some(cur) = reading.filter(|cur| cur.at > prev.at) {
        next.last_reading = Some(cur);
    }
    (next, verdict)
}

/// `d` is longer than `limit` (negative durations, from clocks that disagree, are not).
fn exceeds(d: jiff::SignedDuration, limit: Duration) -> bool {
    Duration::try_from(d).is_ok_and(|d| d > limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs as i64).unwrap()
    }

    fn hour_policy() -> IdlePolicy {
        IdlePolicy::with_timeout(Duration::from_secs(3600))
    }

    /// Feeds `(seconds after start, utilization)` samples one by one, deciding at each
    /// sample's time; returns the verdicts and the final state.
    fn run(policy: &IdlePolicy, samples: &[(u64, f64)]) -> (Vec<IdleVerdict>, IdleState) {
        let mut st = IdleState::default();
        let mut out = vec![];
        for &(at, u) in samples {
            let s = Sample {
                at: t(at),
                utilization_percent: u,
            };
            let (next, v) = observe(policy, &st, Some(s), t(0), t(at));
            st = next;
            out.push(v);
        }
        (out, st)
    }

    fn every_15s(from: u64, to: u64, u: f64) -> Vec<(u64, f64)> {
        (from..=to).step_by(15).map(|s| (s, u)).collect()
    }

    #[test]
    fn idle_samples_lead_to_a_warning_then_a_stop() {
        let p = hour_policy();
        let samples = every_15s(15, 15 + 3600, 1.0);
        let (v, st) = run(&p, &samples);
        assert_eq!(
            v[0],
            IdleVerdict::Idle {
                since: t(15),
                warn_at: t(15 + 45 * MIN)
            }
        );
        let warn_idx = samples.iter().position(|s| s.0 == 15 + 45 * MIN).unwrap();
        assert!(matches!(v[warn_idx - 1], IdleVerdict::Idle { .. }));
        assert_eq!(
            v[warn_idx],
            IdleVerdict::Warn {
                since: t(15),
                stop_at: t(15 + 3600),
                announce: true
            }
        );
        assert!(matches!(
            v[warn_idx + 1],
            IdleVerdict::Warn {
                announce: false,
                ..
            }
        ));
        assert_eq!(
            *v.last().unwrap(),
            IdleVerdict::Stop {
                since: t(15),
                idle_for: Duration::from_secs(3600)
            }
        );
        assert!(st.warned);
        let (reason, msg) = v.last().unwrap().event(&p).unwrap();
        assert_eq!(reason, "Idle");
        assert!(msg.contains("under 5% for 1h (since "), "{msg}");
        let (reason, msg) = v[warn_idx].event(&p).unwrap();
        assert_eq!(reason, REASON_WARNING);
        assert!(msg.contains("will be stopped at"), "{msg}");
        assert_eq!(
            v[warn_idx + 1].event(&p),
            None,
            "the warning is published once"
        );
        assert!(
            v[warn_idx + 1].condition(&p).is_some(),
            "but its condition stays"
        );
        assert_eq!(v[0].revisit_at(), Some(t(15 + 45 * MIN)));
    }

    #[test]
    fn a_busy_sample_resets_the_idle_clock_and_withdraws_the_warning() {
        let p = hour_policy();
        let mut samples = every_15s(15, 50 * MIN, 0.0);
        samples.push((50 * MIN + 15, 80.0));
        samples.extend(every_15s(50 * MIN + 30, 70 * MIN, 0.0));
        let mut st = IdleState::default();
        // What the controller shows is `condition()`: a warning withdrawn is one shown
        // before and not now.
        let (mut withdrawn, mut shown) = (0, false);
        for &(at, u) in &samples {
            let s = Sample {
                at: t(at),
                utilization_percent: u,
            };
            let (next, v) = observe(&p, &st, Some(s), t(0), t(at));
            let now_shown = v.condition(&p).is_some();
            withdrawn += usize::from(shown && !now_shown);
            shown = now_shown;
            assert!(
                !matches!(v, IdleVerdict::Stop { .. }),
                "stopped at {at}: {v:?}"
            );
            if at == 50 * MIN + 15 {
                assert_eq!(v, IdleVerdict::Active);
            }
            st = next;
        }
        assert_eq!(withdrawn, 1);
        assert_eq!(st.idle_since, Some(t(50 * MIN + 30)));
    }

    #[test]
    fn exactly_at_the_threshold_is_busy_and_nan_is_never_idle() {
        let p = hour_policy();
        let (v, _) = run(&p, &[(15, 5.0), (30, f64::NAN)]);
        assert_eq!(v, [IdleVerdict::Active, IdleVerdict::Active]);
    }

    #[test]
    fn a_gap_in_the_samples_is_not_idleness() {
        let p = hour_policy();
        let samples = every_15s(15, 50 * MIN, 0.0);
        let (_, st) = run(&p, &samples);
        let last = Sample {
            at: t(50 * MIN),
            utilization_percent: 0.0,
        };
        // The agent goes quiet; the controller looks again at the stop time with the old
        // sample: no data, no stop, and the idle clock is dropped.
        let (st, v) = observe(&p, &st, Some(last), t(0), t(61 * MIN));
        assert_eq!(v, IdleVerdict::NoData);
        assert_eq!(st.idle_since, None);
        assert_eq!(v.condition(&p), None);
        // Samples resume (idle): the clock starts again from the first new one.
        let s = Sample {
            at: t(62 * MIN),
            utilization_percent: 0.0,
        };
        let (st, v) = observe(&p, &st, Some(s), t(0), t(62 * MIN));
        assert!(matches!(v, IdleVerdict::Idle { since, .. } if since == t(62 * MIN)));
        // Even if the controller saw nothing in between: a sample after a long gap
        // restarts the clock by itself.
        let (_, before_gap) = run(&p, &every_15s(15, 50 * MIN, 0.0));
        let (_, v) = observe(&p, &before_gap, Some(s), t(0), t(62 * MIN));
        assert!(matches!(v, IdleVerdict::Idle { since, .. } if since == t(62 * MIN)));
        assert_eq!(st.last_sample_at, Some(t(62 * MIN)));
    }

    #[test]
    fn no_sample_yet_is_no_data_and_old_samples_are_ignored() {
        let p = hour_policy();
        let (_, v) = observe(&p, &IdleState::default(), None, t(0), t(2 * 3600));
        assert_eq!(v, IdleVerdict::NoData);
        let before_start = Sample {
            at: Timestamp::from_second(1_799_000_000).unwrap(),
            utilization_percent: 0.0,
        };
        let (st, v) = observe(&p, &IdleState::default(), Some(before_start), t(0), t(30));
        assert_eq!((st.last_sample_at, v), (None, IdleVerdict::NoData));
    }

    #[test]
    fn no_instance_is_judged_before_the_timeout_since_it_started() {
        // Clocks that disagree can put the first idle sample before placement.
        let p = hour_policy();
        let st = IdleState {
            idle_since: Some(t(0).saturating_sub(Duration::from_secs(7200)).unwrap()),
            last_sample_at: Some(t(30 * MIN)),
            ..Default::default()
        };
        let (_, v) = observe(&p, &st, None, t(0), t(30 * MIN));
        assert!(matches!(v, IdleVerdict::Idle { warn_at, .. } if warn_at == t(45 * MIN)));
    }

    #[test]
    fn the_same_sample_seen_again_changes_nothing_but_time_moves_on() {
        let p = hour_policy();
        let (_, st) = run(&p, &every_15s(15, 45 * MIN, 0.0));
        let s = Sample {
            at: t(45 * MIN),
            utilization_percent: 90.0, // a different reading with the same time: ignored
        };
        let (st2, v) = observe(&p, &st, Some(s), t(0), t(45 * MIN + 30));
        assert_eq!(st2.idle_since, st.idle_since);
        assert!(matches!(v, IdleVerdict::Warn { .. }));
    }

    #[test]
    fn warn_only_tells_once_at_the_timeout_and_never_stops() {
        let p = IdlePolicy {
            warn_only: true,
            ..hour_policy()
        };
        let (v, _) = run(&p, &every_15s(15, 3 * 3600, 0.0));
        assert!(!v.iter().any(|v| matches!(v, IdleVerdict::Stop { .. })));
        assert!(!v.iter().any(|v| matches!(v, IdleVerdict::Warn { .. })));
        assert_eq!(v[0].revisit_at(), Some(t(15 + 3600)));
        let notices: Vec<_> = v.iter().filter_map(|v| v.event(&p)).collect();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].0, REASON_WOULD_STOP);
        assert!(notices[0].1.contains("for 1h (since"), "{}", notices[0].1);
        assert!(matches!(
            v.last().unwrap(),
            IdleVerdict::WouldStop { idle_for, announce: false, .. } if *idle_for == Duration::from_secs(3 * 3600 - 15)
        ));
    }

    #[test]
    fn instance_settings_override_the_user_default_field_by_field() {
        let user = IdleSettings {
            timeout: Some(Duration::from_secs(7200)),
            warn_only: Some(true),
            ..Default::default()
        };
        let inst = IdleSettings {
            timeout: Some(Duration::from_secs(1800)),
            threshold_percent: Some(10.0),
            ..Default::default()
        };
        let p = effective(Some(&inst), Some(&user)).unwrap().unwrap();
        assert_eq!(p.timeout, Duration::from_secs(1800));
        assert_eq!(p.warn_before, Duration::from_secs(450));
        assert_eq!(p.threshold_percent, 10.0);
        assert!(p.warn_only);
        assert_eq!(p.max_gap, DEFAULT_MAX_GAP);
        let p = effective(None, Some(&user)).unwrap().unwrap();
        assert_eq!(p.threshold_percent, DEFAULT_THRESHOLD_PERCENT);
        assert_eq!(effective(None, None), Ok(None));
        let off = IdleSettings {
            timeout: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(effective(Some(&off), Some(&user)), Ok(None));
    }

    #[test]
    fn bad_settings_are_refused_with_the_fields_named() {
        let base = IdleSettings {
            timeout: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let bad = IdleSettings {
            threshold_percent: Some(120.0),
            ..base.clone()
        };
        let e = effective(Some(&bad), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "idle threshold 120% must be a percentage between 0 and 100"
        );
        let nan = IdleSettings {
            threshold_percent: Some(f64::NAN),
            ..base.clone()
        };
        assert!(effective(Some(&nan), None).is_err());
        let bad = IdleSettings {
            warn_before: Some(Duration::from_secs(5400)),
            ..base.clone()
        };
        assert_eq!(
            effective(Some(&bad), None).unwrap_err().to_string(),
            "idle warnBefore (1h30m) must not be longer than idleTimeout (1h)"
        );
        let bad = IdleSettings {
            max_gap: Some(Duration::ZERO),
            ..base
        };
        assert_eq!(effective(Some(&bad), None), Err(IdlePolicyError::MaxGap));
    }

    #[test]
    fn interval_utilization_comes_from_two_cumulative_readings() {
        // Ten busy hours on 2 GPUs, then 15 s idle: the lifetime mean is still ~100%,
        // the interval's is 0.
        let busy = UsageReading {
            at: t(36_000),
            gpu_seconds: 72_000.0,
            avg_utilization: 100.0,
        };
        let then = UsageReading {
            at: t(36_015),
            gpu_seconds: 72_030.0,
            avg_utilization: 100.0 * 72_000.0 / 72_030.0,
        };
        let s = interval_sample(&busy, &then).unwrap();
        assert!(s.utilization_percent.abs() < 1e-6, "{s:?}");
        assert_eq!(interval_sample(&then, &then), None);
        assert_eq!(interval_sample(&then, &busy), None);
    }

    #[test]
    fn a_counter_reset_starts_a_new_baseline() {
        let p = IdlePolicy::with_timeout(Duration::from_secs(600));
        let before = UsageReading {
            at: t(600),
            gpu_seconds: 1200.0,
            avg_utilization: 90.0,
        };
        let st = IdleState {
            last_reading: Some(before),
            ..IdleState::default()
        };
        // The counters start again from zero: no sample, but the new baseline.
        let reset = UsageReading {
            at: t(615),
            gpu_seconds: 30.0,
            avg_utilization: 0.0,
        };
        let (st, v) = observe_usage(&p, &st, Some(reset), t(0), t(615));
        assert_eq!(v, IdleVerdict::NoData);
        assert_eq!(st.last_reading, Some(reset));
        // The next write is an interval of its own: idle.
        let next = UsageReading {
            at: t(630),
            gpu_seconds: 60.0,
            avg_utilization: 0.0,
        };
        let (st, v) = observe_usage(&p, &st, Some(next), t(0), t(630));
        assert!(matches!(v, IdleVerdict::Idle { .. }), "{v:?}");
        assert_eq!(st.last_reading, Some(next));
        // An older reading (a stale copy) never replaces a newer baseline.
        let (st2, _) = observe_usage(&p, &st, Some(reset), t(0), t(631));
        assert_eq!(st2.last_reading, Some(next));
    }

    proptest! {
        /// Against a model written from the rules: the idle stretch is the trailing run
        /// of samples under the threshold with no gap over `max_gap`; the verdict follows
        /// from its length alone.
        #[test]
        fn verdicts_follow_the_trailing_idle_run(
            steps in proptest::collection::vec((1u64..120, prop_oneof![Just(0.0), Just(4.9), Just(5.0), Just(50.0)]), 1..200),
            timeout_min in 5u64..30,
            warn_only: bool,
        ) {
            let p = IdlePolicy {
                warn_only,
                max_gap: Duration::from_secs(90),
                ..IdlePolicy::with_timeout(Duration::from_secs(timeout_min * MIN))
            };
            let mut at = 0;
            let mut samples = vec![];
            let mut st = IdleState::default();
            for (gap, u) in steps {
                at += gap;
                samples.push((at, u));
                let s = Sample { at: t(at), utilization_percent: u };
                let (next, v) = observe(&p, &st, Some(s), t(0), t(at));
                st = next;
                // The model.
                let mut since = None;
                for (i, &(sa, su)) in samples.iter().enumerate().rev() {
                    if su >= 5.0 { break; }
                    since = Some(sa);
                    if i > 0 && sa - samples[i - 1].0 > 90 { break; }
                }
                let Some(since) = since else {
                    prop_assert_eq!(v, IdleVerdict::Active);
                    continue;
                };
                let idle = at - since;
                let timeout = timeout_min * MIN;
                match v {
                    IdleVerdict::Stop { since: s, .. } => {
                        prop_assert!(!warn_only && idle >= timeout && s == t(since));
                    }
                    IdleVerdict::WouldStop { since: s, .. } => {
                        prop_assert!(warn_only && idle >= timeout && s == t(since));
                    }
                    IdleVerdict::Warn { since: s, .. } => {
                        prop_assert!(!warn_only && idle < timeout && idle >= timeout - timeout / 4);
                        prop_assert_eq!(s, t(since));
                    }
                    IdleVerdict::Idle { since: s, .. } => {
                        let due = if warn_only { timeout } else { timeout - timeout / 4 };
                        prop_assert!(idle < due);
                        prop_assert_eq!(s, t(since));
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }
}
