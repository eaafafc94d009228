//! Publishing the GPU calendar ([`gpu_cloud_api::calendar`]) after placement passes.
//!
//! [`publish`] writes it only when it changed, and at most every [`MIN_INTERVAL`]. The
//! throttle is in memory ([`Publisher`]): a restarted controller simply writes it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gpu_cloud_api::calendar::{CONFIGMAP, Calendar, KEY};
use gpu_cloud_core::scheduler::Snapshot;
use gpu_cloud_core::scheduler::published::calendar_of;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};

/// Least time between two writes of the calendar.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Longest a write may take before it is given up (until the next pass).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Should a calendar be written now (pure)? Only when it differs from the last one written,
/// and not within [`MIN_INTERVAL`] of the last write (or attempt).
pub fn due(
    last: Option<&Calendar>,
    last_write: Option<Instant>,
    new: &Calendar,
    now: Instant,
) -> bool {
    let changed = last.is_none_or(|l| !l.same_as(new));
    let rested = last_write.is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL);
    changed && rested
}

/// The throttle of [`publish`]: what was written last, and when a write was last tried.
/// Kept in the controller's [`super::Context`]; empty after a restart, so the first pass
/// writes the calendar again.
#[derive(Debug, Default)]
pub struct Publisher {
    state: Mutex<PublishState>,
}

#[derive(Debug, Default)]
struct PublishState {
    written: Option<Calendar>,
    tried_at: Option<Instant>,
}

/// The ConfigMap holding `calendar` (pure).
pub fn config_map(namespace: &str, calendar: &Calendar) -> Result<ConfigMap, serde_json::Error> {
    let json = serde_json::to_string(calendar)?;
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "gpu-cloud", "app.kubernetes.io/component": "calendar"},
        },
        "data": {KEY: json},
    }))
}

/// Publishes the calendar of `snapshot` as the ConfigMap [`CONFIGMAP`] in the controller's
/// namespace (`--lease-namespace`, from `POD_NAMESPACE` in a pod), when it changed and at
/// most every [`MIN_INTERVAL`]. Never fails the pass: a failed write is logged and tried
/// again on a pass at least [`MIN_INTERVAL`] later.
pub async fn publish(ctx: &super::Context, snapshot: &Snapshot) {
    let now = Instant::now();
    {
        // Resting: not even worth working the calendar out (a pass runs many times a
        // second in a burst, and this is linear in the bookings).
        let state = ctx.calendar.state.lock().unwrap_or_else(|p| p.into_inner());
        if state
            .tried_at
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
        {
            return;
        }
    }
    let calendar = calendar_of(snapshot);
    {
        let mut state = ctx.calendar.state.lock().unwrap_or_else(|p| p.into_inner());
        let write = due(state.written.as_ref(), state.tried_at, &calendar, now);
        // Looked at now, written or not: the next look is a rest away.
        state.tried_at = Some(now);
        if !write {
            return;
        }
    }
    let ns = &ctx.args.lease_namespace;
    let written = write(&ctx.client, ns, &calendar).await;
    match written {
        Ok(()) => {
            let mut state = ctx.calendar.state.lock().unwrap_or_else(|p| p.into_inner());
            state.written = Some(calendar);
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, configmap = CONFIGMAP, error = %e, "cannot publish the GPU calendar")
        }
    }
}

/// Why the calendar could not be written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("cannot encode the calendar: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot apply the ConfigMap: {0}")]
    Apply(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn write(client: &kube::Client, ns: &str, calendar: &Calendar) -> Result<(), WriteError> {
    let cm = config_map(ns, calendar)?;
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let params = PatchParams::apply(super::FIELD_MANAGER).force();
    tokio::time::timeout(
        WRITE_TIMEOUT,
        api.patch(CONFIGMAP, &params, &Patch::Apply(&cm)),
    )
    .await
    .map_err(|_| WriteError::Timeout(WRITE_TIMEOUT))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_cloud_api::calendar::CalendarNode;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_795_000_000 + s).unwrap()
    }

    fn sample() -> Calendar {
        let node = CalendarNode {
            name: "h-0".into(),
            allocatable: 8,
            used: 4,
            slice: None,
            domain: None,
            eligible: true,
            releases: vec![(1_795_003_000, 2)],
            windows: vec![],
        };
        Calendar {
            generated_at: t(0),
            models: [("H100".to_owned(), vec![node])].into(),
        }
    }

    #[test]
    fn it_is_written_when_it_changed_and_not_more_often_than_every_10_s() {
        let cal = sample();
        let t0 = Instant::now();
        assert!(due(None, None, &cal, t0), "first pass after a start");
        let later = Calendar {
            generated_at: t(5),
            ..cal.clone()
        };
        assert!(
            !due(Some(&cal), Some(t0), &later, t0 + Duration::from_secs(60)),
            "only the time changed"
        );
        let mut changed = later.clone();
        changed.models.get_mut("H100").unwrap()[0].used = 8;
        assert!(!due(
            Some(&cal),
            Some(t0),
            &changed,
            t0 + Duration::from_secs(9)
        ));
        assert!(due(Some(&cal), Some(t0), &changed, t0 + MIN_INTERVAL));
        // A failed write leaves `last` as it was: tried again after the interval.
        assert!(due(None, Some(t0), &cal, t0 + MIN_INTERVAL));
    }

    #[test]
    fn the_config_map_carries_the_calendar_under_its_key() {
        let cm = config_map("gpu-cloud", &sample()).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP));
        let back = gpu_cloud_api::calendar::parse(&cm.data.unwrap()[KEY]).unwrap();
        assert_eq!(back, sample());
    }
}
