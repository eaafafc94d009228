//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) kept the way kstatus, `kubectl
//! wait`, Argo CD and Flux expect: one entry per type, `lastTransitionTime` only moves when
//! the status flips, `observedGeneration` on each.

use jiff::Timestamp;

use gpu_cloud_api::v1::Condition;

/// The three conditions at once, from what the object is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health<'a> {
    /// Working as asked (`Ready=True`).
    Ready { reason: &'a str, message: &'a str },
    /// Moving toward what was asked (`Reconciling=True`, `Ready=False`).
    Progressing { reason: &'a str, message: &'a str },
    /// Stuck until a person changes something (`Stalled=True`, `Ready=False`).
    Stalled { reason: &'a str, message: &'a str },
    /// Finished as booked; nothing more will happen (`Ready=True` with the phase as its
    /// reason, the others `False`). kstatus reads a `Ready=False` without `Reconciling`
    /// or `Stalled` as InProgress, so a finished booking must not say `Ready=False`, or a
    /// GitOps sync holding it (Flux, kpt) would never settle.
    Done { reason: &'a str, message: &'a str },
}

/// Returns `conditions` updated to say `health` for `generation` at `now`.
pub fn with_health(
    conditions: &[Condition],
    health: Health<'_>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let (ready, reconciling, stalled, reason, message) = match health {
        Health::Ready { reason, message } => (true, false, false, reason, message),
        Health::Progressing { reason, message } => (false, true, false, reason, message),
        Health::Stalled { reason, message } => (false, false, true, reason, message),
        Health::Done { reason, message } => (true, false, false, reason, message),
    };
    let mut out = conditions.to_vec();
    set(&mut out, "Ready", ready, reason, message, generation, now);
    set(
        &mut out,
        "Reconciling",
        reconciling,
        reason,
        message,
        generation,
        now,
    );
    set(
        &mut out, "Stalled", stalled, reason, message, generation, now,
    );
    out
}

/// Returns `conditions` with condition `type_` (one beside the three kstatus reads, e.g.
/// `NodeLost`) set to `value`.
pub fn with_condition(
    conditions: &[Condition],
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out = conditions.to_vec();
    set(&mut out, type_, value, reason, message, generation, now);
    out
}

fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if value { "True" } else { "False" };
    // A condition that is False says nothing about the reason; keep it quiet.
    let (reason, message) = if value || type_ == "Ready" {
        (reason, message)
    } else {
        (type_, "")
    };
    let reason = if reason.is_empty() { type_ } else { reason };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

/// The status of condition `type_`, if present.
pub fn status_of<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0 = Timestamp::from_second(100).unwrap();
        let t1 = Timestamp::from_second(200).unwrap();
        let c = with_health(
            &[],
            Health::Progressing {
                reason: "Queued",
                message: "x",
            },
            Some(1),
            t0,
        );
        assert_eq!(status_of(&c, "Reconciling"), Some("True"));
        assert_eq!(status_of(&c, "Ready"), Some("False"));
        let c2 = with_health(
            &c,
            Health::Progressing {
                reason: "Queued",
                message: "y",
            },
            Some(2),
            t1,
        );
        let rec = c2.iter().find(|c| c.type_ == "Reconciling").unwrap();
        assert_eq!(
            (
                rec.last_transition_time,
                rec.message.as_str(),
                rec.observed_generation
            ),
            (t0, "y", Some(2))
        );
        let c3 = with_health(
            &c2,
            Health::Ready {
                reason: "Running",
                message: "",
            },
            Some(2),
            t1,
        );
        let ready = c3.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time),
            ("True", t1)
        );
        assert_eq!(c3.len(), 3);
    }
}
