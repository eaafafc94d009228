//! Idle-GPU shutdown: when an instance whose GPUs sit unused is warned, and when it stops.
//!
//! The rule has two halves, one on each side of `status`, so that it costs no status write
//! per sample:
//!
//! - **The node agent keeps the idle clock** ([`tick`]) on every sample it takes (each
//!   second): since when every sample has been under the threshold, with no silence longer
//!   than `max_gap`. It writes the clock with its usage figures (`status.usage.idle`), as
//!   often as it writes them anyway. The controller tells it the threshold and the gap in
//!   `status.idle.rule` ([`IdlePolicy::clock_rule`]).
//! - **The controller decides** ([`decide`]) from that clock and the clock alone:
//!   `warn_before` ahead of the stop the instance gets a warning (condition and Event);
//!   once the GPUs have stayed under the threshold for `timeout`, it is stopped (phase
//!   `Stopped`, reason [`REASON_STOPPED`]), or in `warn_only` mode only told so. Its own
//!   state (`status.idle`: the stretch it acted on, whether it warned) changes only on
//!   those transitions, so it writes only then, never on every usage sample.
//!
//! Missing data is never evidence of idleness: after an agent silence longer than
//! `max_gap` (agent down, node unreachable) the clock starts afresh with the next sample,
//! and while the last sample is older than that the controller decides nothing, so an
//! outage can neither stop an instance nor count towards its idle time. The clock starts
//! at the first idle *sample*, so a stop comes at most one agent write interval late,
//! never early.

use std::time::Duration;

use jiff::Timestamp;

use gpu_cloud_api::time::{go_duration, short_utc};
use gpu_cloud_api::v1::{IdleClock, IdleClockRule, IdleState};

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

/// One sample of an instance's GPUs as the node agent takes it (every second by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Timestamp,
    /// Mean utilization of the instance's GPUs then, percent.
    pub utilization_percent: f64,
}

/// What the agent applies to its samples: [`IdleClockRule`] as published by the
/// controller in `status.idle.rule`, with its duration parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockRule {
    /// Utilization, percent, under which a sample counts as idle.
    pub threshold_percent: f64,
    /// Longest time between two samples that still counts as continuous data.
    pub max_gap: Duration,
}

/// A published rule the agent cannot apply (only a controller writes it, so this is a bug
/// or a hand edit of the status).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "status.idle.rule.maxGap {0:?} is not a duration like 1m or 90s: the idle clock is not kept"
)]
pub struct ClockRuleError(pub String);

impl TryFrom<&IdleClockRule> for ClockRule {
    type Error = ClockRuleError;
    fn try_from(r: &IdleClockRule) -> Result<Self, Self::Error> {
        let max_gap = gpu_cloud_api::time::parse_duration(&r.max_gap)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ClockRuleError(r.max_gap.clone()))?;
        Ok(ClockRule {
            threshold_percent: r.threshold_percent,
            max_gap,
        })
    }
}

impl IdlePolicy {
    /// What the agent needs of this policy to keep the idle clock (`status.idle.rule`).
    pub fn clock_rule(&self) -> IdleClockRule {
        IdleClockRule {
            threshold_percent: self.threshold_percent,
            max_gap: go_duration(self.max_gap),
        }
    }
}

/// The agent's idle clock after `sample`: `clock` is the one it last kept (or found in
/// `status.usage.idle` after a restart), `last_at` the time of the sample before this one
/// (`status.usage.sampledAt`), if any.
///
/// - a sample at or above the threshold stops the clock (NaN counts as busy);
/// - a sample under it starts the clock at that sample, or keeps it running;
/// - after more than `max_gap` without a sample (agent down, node unreachable) the clock
///   starts afresh: missing data is never evidence of idleness;
/// - a clock kept for another threshold starts afresh too;
/// - a sample not newer than `last_at` changes nothing.
pub fn tick(
    rule: &ClockRule,
    clock: Option<&IdleClock>,
    last_at: Option<Timestamp>,
    sample: Sample,
) -> IdleClock {
    let mut since = clock
        .filter(|c| c.threshold_percent == rule.threshold_percent)
        .and_then(|c| c.since);
    match last_at {
        Some(last) if sample.at <= last => {}
        last => {
            if last.is_some_and(|last| exceeds(sample.at.duration_since(last), rule.max_gap)) {
                since = None;
            }
            if sample.utilization_percent < rule.threshold_percent {
                since.get_or_insert(sample.at);
            } else {
                since = None;
            }
        }
    }
    IdleClock {
        threshold_percent: rule.threshold_percent,
        since,
    }
}

/// What [`decide`] decided.
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

/// The controller's decision at `now` for an instance placed at `started`, from the agent's
/// idle clock and the time of its last sample (`status.usage.idle` and `.sampledAt`) and
/// the state it kept (`status.idle`).
///
/// The returned state differs from `state` only on a transition (the rule published or
/// changed, an idle stretch begun or ended, its warning given), so the controller writes
/// nothing for the many samples in between. A clock kept for another threshold, or a last
/// sample older than `max_gap` (or from before `started`), is no data: nothing is decided
/// and the state is kept, so that the warning of a stretch is not given twice; the agent's
/// clock starts afresh after its own gaps. No instance is judged before `timeout` has
/// passed since it started.
pub fn decide(
    policy: &IdlePolicy,
    state: &IdleState,
    clock: Option<&IdleClock>,
    sampled_at: Option<Timestamp>,
    started: Timestamp,
    now: Timestamp,
) -> (IdleState, IdleVerdict) {
    let mut st = IdleState {
        idle_since: state.idle_since,
        warned: state.warned,
        rule: Some(policy.clock_rule()),
        // What older controllers wrote on every sample: dropped with the first write.
        last_sample_at: None,
        last_reading: None,
    };
    let fresh = sampled_at
        .is_some_and(|at| at >= started && !exceeds(now.duration_since(at), policy.max_gap));
    let clock = clock.filter(|c| c.threshold_percent == policy.threshold_percent);
    let (true, Some(clock)) = (fresh, clock) else {
        return (st, IdleVerdict::NoData);
    };
    let Some(since) = clock.since else {
        st.idle_since = None;
        st.warned = false;
        return (st, IdleVerdict::Active);
    };
    if st.idle_since != Some(since) {
        st.idle_since = Some(since);
        st.warned = false;
    }
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

    /// The agent and the controller side by side, the controller seeing every write.
    #[derive(Default)]
    struct Both {
        clock: Option<IdleClock>,
        last_at: Option<Timestamp>,
        state: IdleState,
        /// How often the controller's state changed (a status write).
        writes: usize,
    }

    impl Both {
        /// The agent takes a sample at `at` (seconds after start) and writes; the
        /// controller decides then.
        fn sample(&mut self, policy: &IdlePolicy, at: u64, u: f64) -> IdleVerdict {
            let rule = ClockRule::try_from(&policy.clock_rule()).unwrap();
            let s = Sample {
                at: t(at),
                utilization_percent: u,
            };
            self.clock = Some(tick(&rule, self.clock.as_ref(), self.last_at, s));
            self.last_at = Some(self.last_at.map_or(s.at, |l| l.max(s.at)));
            self.look(policy, at)
        }

        /// The controller decides at `now` (seconds after start) with what it has.
        fn look(&mut self, policy: &IdlePolicy, now: u64) -> IdleVerdict {
            let (next, v) = decide(
                policy,
                &self.state,
                self.clock.as_ref(),
                self.last_at,
                t(0),
                t(now),
            );
            self.writes += usize::from(next != self.state);
            self.state = next;
            v
        }
    }

    /// Feeds `(seconds after start, utilization)` samples one by one, deciding at each
    /// sample's time; returns the verdicts and the final state.
    fn run(policy: &IdlePolicy, samples: &[(u64, f64)]) -> (Vec<IdleVerdict>, IdleState) {
        let mut both = Both::default();
        let out = samples
            .iter()
            .map(|&(at, u)| both.sample(policy, at, u))
            .collect();
        (out, both.state)
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
        let mut both = Both::default();
        // What the controller shows is `condition()`: a warning withdrawn is one shown
        // before and not now.
        let (mut withdrawn, mut shown) = (0, false);
        for &(at, u) in &samples {
            let v = both.sample(&p, at, u);
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
        }
        assert_eq!(withdrawn, 1);
        assert_eq!(both.state.idle_since, Some(t(50 * MIN + 30)));
        // Written for: the rule with the first stretch (the first sample), its warning,
        // its end, the second stretch. Not for any of the other 276 samples.
        assert_eq!(both.writes, 4);
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
        let mut both = Both::default();
        for (at, u) in every_15s(15, 50 * MIN, 0.0) {
            both.sample(&p, at, u);
        }
        // The agent goes quiet; the controller looks again at the stop time with the old
        // sample: no data, no stop, no condition, and its state kept as it was.
        let before = both.state.clone();
        let v = both.look(&p, 61 * MIN);
        assert_eq!(v, IdleVerdict::NoData);
        assert_eq!(v.condition(&p), None);
        assert_eq!(both.state, before);
        // Samples resume (idle): the agent's clock starts again from the first new one.
        let v = both.sample(&p, 62 * MIN, 0.0);
        assert!(
            matches!(v, IdleVerdict::Idle { since, .. } if since == t(62 * MIN)),
            "{v:?}"
        );
        assert_eq!(both.state.idle_since, Some(t(62 * MIN)));
        assert!(!both.state.warned);
    }

    #[test]
    fn no_sample_yet_is_no_data_and_old_samples_are_ignored() {
        let p = hour_policy();
        let (st, v) = decide(&p, &IdleState::default(), None, None, t(0), t(2 * 3600));
        assert_eq!(v, IdleVerdict::NoData);
        assert_eq!(
            st.rule,
            Some(p.clock_rule()),
            "the rule is published for the agent"
        );
        let before_start = Timestamp::from_second(1_799_000_000).unwrap();
        let old = IdleClock {
            threshold_percent: 5.0,
            since: Some(before_start),
        };
        let (_, v) = decide(&p, &st, Some(&old), Some(before_start), t(0), t(30));
        assert_eq!(v, IdleVerdict::NoData);
        // A clock kept for another threshold (the rule changed since) is no data either.
        let other = IdleClock {
            threshold_percent: 10.0,
            since: Some(t(10)),
        };
        let (_, v) = decide(&p, &st, Some(&other), Some(t(29)), t(0), t(30));
        assert_eq!(v, IdleVerdict::NoData);
        // ...and the agent starts its clock afresh for the new one.
        let rule = ClockRule::try_from(&p.clock_rule()).unwrap();
        let s = Sample {
            at: t(30),
            utilization_percent: 1.0,
        };
        assert_eq!(tick(&rule, Some(&other), Some(t(29)), s).since, Some(t(30)));
    }

    #[test]
    fn no_instance_is_judged_before_the_timeout_since_it_started() {
        // Clocks that disagree can put the first idle sample before placement.
        let p = hour_policy();
        let clock = IdleClock {
            threshold_percent: 5.0,
            since: Some(t(0).saturating_sub(Duration::from_secs(7200)).unwrap()),
        };
        let (_, v) = decide(
            &p,
            &IdleState::default(),
            Some(&clock),
            Some(t(30 * MIN)),
            t(0),
            t(30 * MIN),
        );
        assert!(matches!(v, IdleVerdict::Idle { warn_at, .. } if warn_at == t(45 * MIN)));
    }

    #[test]
    fn the_same_sample_seen_again_changes_nothing_but_time_moves_on() {
        let p = hour_policy();
        let mut both = Both::default();
        for (at, u) in every_15s(15, 45 * MIN, 0.0) {
            both.sample(&p, at, u);
        }
        let since = both.state.idle_since;
        // A different reading with the same time: ignored by the agent's clock.
        let v = both.sample(&p, 45 * MIN, 90.0);
        assert_eq!(both.state.idle_since, since);
        assert!(matches!(v, IdleVerdict::Idle { .. }), "{v:?}");
        // Time moves on: the warning falls due without a new sample.
        let v = both.look(&p, 45 * MIN + 30);
        assert!(
            matches!(v, IdleVerdict::Warn { announce: true, .. }),
            "{v:?}"
        );
        // The controller looking again writes nothing.
        let writes = both.writes;
        let v = both.look(&p, 45 * MIN + 40);
        assert!(
            matches!(
                v,
                IdleVerdict::Warn {
                    announce: false,
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(both.writes, writes);
    }

    #[test]
    fn a_published_rule_round_trips_and_a_broken_one_is_refused() {
        let p = IdlePolicy {
            max_gap: Duration::from_secs(90),
            threshold_percent: 7.5,
            ..hour_policy()
        };
        let rule = ClockRule::try_from(&p.clock_rule()).unwrap();
        assert_eq!(rule.max_gap, Duration::from_secs(90));
        assert_eq!(rule.threshold_percent, 7.5);
        let broken = IdleClockRule {
            threshold_percent: 5.0,
            max_gap: "soon".into(),
        };
        assert_eq!(
            ClockRule::try_from(&broken).unwrap_err().to_string(),
            "status.idle.rule.maxGap \"soon\" is not a duration like 1m or 90s: the idle clock is not kept"
        );
    }

    #[test]
    fn older_controllers_per_sample_fields_are_dropped_with_the_first_write() {
        let p = hour_policy();
        let old = IdleState {
            last_sample_at: Some(t(10)),
            last_reading: Some(gpu_cloud_api::v1::UsageReading {
                at: t(10),
                gpu_seconds: 10.0,
                avg_utilization: 1.0,
            }),
            ..Default::default()
        };
        let (st, _) = decide(&p, &old, None, None, t(0), t(20));
        assert_eq!((st.last_sample_at, st.last_reading), (None, None));
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
            let mut both = Both::default();
            for (gap, u) in steps {
                at += gap;
                samples.push((at, u));
                let v = both.sample(&p, at, u);
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

        /// The controller writes on transitions only: at most once for the rule and three
        /// times per idle stretch (begun, warned, ended), however many samples come.
        #[test]
        fn the_state_changes_only_on_transitions(
            steps in proptest::collection::vec((1u64..120, prop_oneof![Just(0.0), Just(50.0)], 1usize..40), 1..40),
            timeout_min in 5u64..30,
            warn_only: bool,
        ) {
            let p = IdlePolicy {
                warn_only,
                ..IdlePolicy::with_timeout(Duration::from_secs(timeout_min * MIN))
            };
            let mut both = Both::default();
            let (mut at, mut stretches, mut since) = (0, 0, None);
            for (gap, u, repeat) in steps {
                at += gap;
                // A run of `repeat` samples 15 s apart at the same utilization.
                for k in 0..repeat as u64 {
                    both.sample(&p, at + 15 * k, u);
                    if both.state.idle_since.is_some() && both.state.idle_since != since {
                        stretches += 1;
                    }
                    since = both.state.idle_since;
                }
                at += 15 * repeat as u64;
            }
            prop_assert!(both.writes <= 1 + 3 * stretches, "{} writes for {} stretches", both.writes, stretches);
        }
    }
}
