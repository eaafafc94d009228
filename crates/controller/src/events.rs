//! The Kubernetes Events the controller publishes: how one is built, and how many a second
//! may go out.
//!
//! Events are best-effort in Kubernetes, and each one is a write the apiserver and etcd
//! pay for like any object. The status and its conditions are the record of an object;
//! an Event tells people watching that something happened. So Normal events share a
//! token bucket (`--event-qps`, `--event-burst`, as the kubelet's flags of the same
//! names): in a burst of thousands of bookings the ones over the rate are dropped and
//! counted (`gpu_cloud_events_dropped_total`), while a booking made on a quiet cluster
//! always gets its event. Warnings are never dropped: they are rare and they are the ones
//! a person must see.

use std::sync::Mutex;
use std::time::Instant;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::runtime::events::{EventType, Reporter};

/// How many Normal events may be published.
#[derive(Debug, Clone, clap::Args)]
pub struct EventArgs {
    /// Normal Events published per second, sustained; the ones over it are dropped and
    /// counted (0: no limit). Warnings are never limited.
    #[arg(long, default_value_t = 10.0)]
    pub event_qps: f64,
    /// Normal Events that may go at once above the sustained rate.
    #[arg(long, default_value_t = 100)]
    pub event_burst: u32,
}

/// A token bucket (pure: the caller passes the time).
#[derive(Debug, Clone)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket; `qps` of 0 (or less) lets everything through.
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket {
            qps,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.qps <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The controller's event budget: Normal events take a token, Warnings pass.
#[derive(Debug)]
pub struct Limiter(Mutex<Bucket>);

impl Limiter {
    /// A limiter with the given settings.
    pub fn new(args: &EventArgs) -> Self {
        Limiter(Mutex::new(Bucket::new(
            args.event_qps,
            args.event_burst,
            Instant::now(),
        )))
    }

    /// Whether an event of this type may be published now.
    pub fn admit(&self, type_: EventType) -> bool {
        match type_ {
            EventType::Warning => true,
            EventType::Normal => self.0.lock().map_or(true, |mut b| b.take(Instant::now())),
        }
    }
}

/// An Event (events.k8s.io/v1) on `regarding` (pure).
///
/// Our own rather than kube's `Recorder`: that one keeps every event it published for six
/// minutes to count repeats, and scans them all on every publish; in a burst of 10,000
/// bookings that was 10,000 events held and a quadratic scan. The controller publishes on
/// transitions only, so there is nothing to count.
pub fn new_event(
    reporter: &Reporter,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    now: Timestamp,
) -> K8sEvent {
    // The API refuses notes over 1 kB.
    let mut note = note;
    if note.len() > 1024 {
        let mut end = 1021;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    K8sEvent {
        action: Some(reason.to_owned()),
        reason: Some(reason.to_owned()),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        note: Some(note),
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn an_event_names_its_object_its_reporter_and_fits_the_api() {
        let reporter = Reporter {
            controller: "gpu-cloud".into(),
            instance: None,
        };
        let regarding = ObjectReference {
            name: Some("a".into()),
            namespace: Some("gpu-u".into()),
            ..Default::default()
        };
        let now = jiff::Timestamp::from_second(1).unwrap();
        let long = "é".repeat(700);
        let ev = new_event(&reporter, &regarding, EventType::Warning, "Idle", long, now);
        assert_eq!(ev.metadata.name.as_deref(), Some("a.3b9aca00"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("gpu-u"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reporting_instance.as_deref(), Some("gpu-cloud"));
        let note = ev.note.unwrap();
        assert!(
            note.len() <= 1024 && note.ends_with("..."),
            "{}",
            note.len()
        );
    }

    proptest! {
        /// Over any stretch of time, a bucket lets through at most its burst plus what the
        /// rate refills, and never refuses while it holds a token.
        #[test]
        fn a_bucket_never_admits_more_than_burst_plus_rate(
            qps in 0.5f64..50.0,
            burst in 1u32..50,
            gaps_ms in proptest::collection::vec(0u64..500, 1..300),
        ) {
            let t0 = Instant::now();
            let mut b = Bucket::new(qps, burst, t0);
            let mut now = t0;
            let mut admitted = 0u32;
            for g in gaps_ms {
                now += Duration::from_millis(g);
                if b.take(now) {
                    admitted += 1;
                }
            }
            let allowed = f64::from(burst) + now.duration_since(t0).as_secs_f64() * qps;
            prop_assert!(f64::from(admitted) <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }

    #[test]
    fn a_quiet_stretch_refills_and_no_rate_means_no_limit() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3, t0);
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3);
        assert!(b.take(t0 + Duration::from_millis(600)));
        assert!(!b.take(t0 + Duration::from_millis(700)));
        assert!(b.take(t0 + Duration::from_secs(60)));
        let mut free = Bucket::new(0.0, 1, t0);
        assert!((0..1000).all(|_| free.take(t0)));
    }
}
