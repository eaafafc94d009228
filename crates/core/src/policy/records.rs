//! Chargeback records that outlive instances and users (pure): what to write when an
//! instance is deleted, which records to close, and what the records say of a user.
//!
//! A GpuUsageRecord holds the runs of one user's instances deleted in one calendar month
//! (UTC); past [`RECORD_RUNS_MAX`] runs a new shard is started, so nothing is capped. An
//! instance's finalizer records its runs, under its uid, before it lets the instance go,
//! and reads the records fresh before it writes (an instance is recorded once; a
//! concurrent write conflicts on the resourceVersion and is retried). Once its month is
//! over a record is closed and, by its CRD's rule, can no longer change. The user's totals,
//! budgets and `gpu-cloud report` read live instances that are not recorded, plus the
//! records: so an instance counts once, before and after its deletion, and its user's
//! deletion loses nothing.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::chargeback::InstanceFigures;
use super::figures;
use gpu_cloud_api::USER_LABEL;
use gpu_cloud_api::time::month_of;
use gpu_cloud_api::v1::{
    GpuInstance, GpuUsageRecord, GpuUsageRecordSpec, RECORD_RUNS_MAX, RecordedRun, UserUsage,
};

/// The name of shard `shard` of `user`'s record of `period`, e.g. `alice-2026-11-0`.
pub fn record_name(user: &str, period: &str, shard: u32) -> String {
    format!("{user}-{period}-{shard}")
}

fn new_record(user: &str, period: &str, shard: u32, runs: Vec<RecordedRun>) -> GpuUsageRecord {
    GpuUsageRecord {
        metadata: ObjectMeta {
            name: Some(record_name(user, period, shard)),
            labels: Some([(USER_LABEL.to_owned(), user.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: GpuUsageRecordSpec {
            user: user.to_owned(),
            period: period.to_owned(),
            shard,
            closed: false,
            runs,
        },
    }
}

/// What recording an instance's runs takes.
#[derive(Debug, Clone)]
pub enum RecordWrite {
    /// Nothing: it is recorded already, or it never ran.
    Nothing,
    /// Create this record (a new month, or the last shard is full or closed).
    Create(GpuUsageRecord),
    /// Replace this record (its resourceVersion kept: a concurrent write conflicts).
    Replace(GpuUsageRecord),
}

/// What to write to record the runs of `inst`, deleted at `now`, for `user`, given
/// `records` (a fresh read of the user's records: the cache may lag a write just made).
pub fn record_instance(
    records: &[GpuUsageRecord],
    user: &str,
    inst: &GpuInstance,
    now: Timestamp,
) -> RecordWrite {
    let uid = inst.uid().unwrap_or_default();
    if records
        .iter()
        .any(|r| r.spec.runs.iter().any(|x| x.uid == uid))
    {
        return RecordWrite::Nothing;
    }
    let instance = format!(
        "{}/{}",
        inst.namespace().unwrap_or_default(),
        inst.name_any()
    );
    let runs: Vec<RecordedRun> = figures::retire(inst, now)
        .into_iter()
        .map(|figures| RecordedRun {
            uid: uid.clone(),
            instance: instance.clone(),
            figures,
        })
        .collect();
    if runs.is_empty() {
        return RecordWrite::Nothing;
    }
    let period = month_of(now);
    let last = records
        .iter()
        .filter(|r| r.spec.user == user && r.spec.period == period)
        .max_by_key(|r| r.spec.shard);
    match last {
        Some(r) if !r.spec.closed && r.spec.runs.len() + runs.len() <= RECORD_RUNS_MAX => {
            let mut r = r.clone();
            r.spec.runs.extend(runs);
            RecordWrite::Replace(r)
        }
        Some(r) => RecordWrite::Create(new_record(user, &period, r.spec.shard + 1, runs)),
        None => RecordWrite::Create(new_record(user, &period, 0, runs)),
    }
}

/// The records to close at `now`: open ones of a month before now's. (Months written
/// `2026-11` order as text does.)
pub fn to_close<'a>(
    records: impl IntoIterator<Item = &'a GpuUsageRecord>,
    now: Timestamp,
) -> Vec<&'a GpuUsageRecord> {
    let month = month_of(now);
    records
        .into_iter()
        .filter(|r| !r.spec.closed && r.spec.period < month)
        .collect()
}

/// The record that carries a user's retired figures from before records existed (kept in
/// the GpuUser's status then), or `None` when there are none.
pub fn import_legacy(user: &str, usage: &UserUsage, now: Timestamp) -> Option<GpuUsageRecord> {
    if usage.retired_instances.is_empty() {
        return None;
    }
    let runs = usage
        .retired_instances
        .iter()
        .enumerate()
        .map(|(i, figures)| RecordedRun {
            uid: format!("imported-{i}"),
            instance: "(from the GpuUser's status)".into(),
            figures: figures.clone(),
        })
        .collect();
    let mut record = new_record(user, &month_of(now), 0, runs);
    record.metadata.name = Some(format!("{user}-imported"));
    Some(record)
}

/// The figures a report sums (pure): for each user and its instances (`theirs`), those
/// not yet recorded, and every recorded run in `records`, whatever became of its user.
pub fn report_figures<'a>(
    theirs: impl IntoIterator<Item = (&'a gpu_cloud_api::v1::GpuUser, &'a [&'a GpuInstance])>,
    records: &[GpuUsageRecord],
    now: Timestamp,
) -> Vec<InstanceFigures> {
    let recorded = Recorded::of(records);
    let mut out: Vec<InstanceFigures> = theirs
        .into_iter()
        .flat_map(|(u, mine)| super::objects::user_live_figures(u, mine, &recorded, now))
        .collect();
    out.extend(recorded.figures());
    out
}

/// What records say: which instances are in them, and their runs (with their user).
#[derive(Debug, Default, Clone)]
pub struct Recorded<'a> {
    uids: HashSet<&'a str>,
    runs: Vec<(&'a str, &'a RecordedRun)>,
}

impl<'a> Recorded<'a> {
    /// Everything in `records`.
    pub fn of(records: impl IntoIterator<Item = &'a GpuUsageRecord>) -> Self {
        let mut out = Recorded::default();
        for r in records {
            for run in &r.spec.runs {
                out.uids.insert(run.uid.as_str());
                out.runs.push((r.spec.user.as_str(), run));
            }
        }
        out
    }

    /// The instance with `uid` is recorded.
    pub fn contains(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }

    /// The recorded runs.
    pub fn runs(&self) -> impl Iterator<Item = &'a RecordedRun> + '_ {
        self.runs.iter().map(|(_, r)| *r)
    }

    /// The report figures of the recorded runs, each under its user.
    pub fn figures(&self) -> Vec<InstanceFigures> {
        self.runs
            .iter()
            .map(|(user, r)| figures::retired_instance_figures(user, &r.figures))
            .collect()
    }

    /// GPU-hours, kWh and instances of the recorded runs, in all and by month of their end.
    pub fn totals(
        &self,
    ) -> (
        gpu_cloud_api::v1::UsageTotals,
        BTreeMap<String, gpu_cloud_api::v1::UsageTotals>,
    ) {
        let mut all = gpu_cloud_api::v1::UsageTotals::default();
        let mut by_month: BTreeMap<String, gpu_cloud_api::v1::UsageTotals> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut seen_in_month = HashSet::new();
        for r in self.runs() {
            let f = &r.figures;
            let month = month_of(f.ended_at);
            super::rollup::add(
                &mut all,
                f.gpu_seconds,
                f.energy_joules,
                seen.insert(&r.uid),
            );
            let first_in_month = seen_in_month.insert((month.clone(), &r.uid));
            super::rollup::add(
                by_month.entry(month).or_default(),
                f.gpu_seconds,
                f.energy_joules,
                first_in_month,
            );
        }
        (all, by_month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::chargeback::{self, ReportPeriod};
    use crate::policy::cost::PriceList;
    use gpu_cloud_api::v1::GpuUser;
    use proptest::prelude::*;
    use serde_json::json;

    const USERS: [&str; 3] = ["ann", "ben", "cat"];
    /// 2026-10-01T00:00:00Z: the histories run over October to December.
    const T0: i64 = 1_790_812_800;

    fn user(name: &str) -> GpuUser {
        serde_json::from_value(json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser",
            "metadata": {"name": name}, "spec": {}}))
        .unwrap()
    }

    /// Instance `i` of user `u`: one finished run of `secs` seconds measured from `start`
    /// (seconds after T0), and a preempted one before it when `preempted`.
    fn instance(i: usize, u: usize, start: i64, secs: i64, preempted: bool) -> GpuInstance {
        let at = |s: i64| Timestamp::from_second(T0 + s).unwrap().to_string();
        let previous = if preempted {
            json!([{"model": "M", "gpus": 1, "startedAt": at(start - 7200),
                    "endedAt": at(start - 3600), "gpuSeconds": 3600.0, "node": "n"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": format!("i{i}"), "namespace": format!("gpu-{}", USERS[u]),
                         "uid": format!("uid-{i}")},
            "spec": {"gpu": {"model": "M", "count": 1}, "image": "x", "duration": "720h",
                     "preemptible": i.is_multiple_of(3)},
            "status": {"phase": "Expired", "nodeName": "n", "startedAt": at(start),
                       "finishedAt": at(start + secs), "previousRuns": previous,
                       "usage": {"gpuSeconds": secs as f64 * 0.5, "avgUtilization": 50.0,
                                 "peakMemoryBytes": 1, "energyJoules": 1000.0,
                                 "sampledAt": at(start + secs), "source": "simulated",
                                 "final": true}}
        }))
        .unwrap()
    }

    /// Applies a write as the apiserver would (create: a new name; replace: same name).
    fn apply(store: &mut Vec<GpuUsageRecord>, w: RecordWrite) {
        match w {
            RecordWrite::Nothing => {}
            RecordWrite::Create(r) => {
                assert!(
                    store.iter().all(|x| x.metadata.name != r.metadata.name),
                    "created twice: {:?}",
                    r.metadata.name
                );
                store.push(r);
            }
            RecordWrite::Replace(r) => {
                let old = store
                    .iter_mut()
                    .find(|x| x.metadata.name == r.metadata.name)
                    .expect("replaced record exists");
                assert!(!old.spec.closed, "a closed record was rewritten");
                assert!(r.spec.runs.starts_with(&old.spec.runs), "runs only added");
                *old = r;
            }
        }
    }

    /// The report's GPU-hours over October to December (the months' reports summed).
    fn reported_hours(figures: &[InstanceFigures]) -> f64 {
        let prices = PriceList {
            currency: "EUR".into(),
            default_per_gpu_hour: Some(1.0),
            ..PriceList::default()
        };
        ["2026-09", "2026-10", "2026-11", "2026-12", "2027-01"]
            .iter()
            .map(|m| {
                let p: ReportPeriod = m.parse().unwrap();
                chargeback::report(&prices, figures, &p)
                    .unwrap()
                    .totals
                    .gpu_hours
            })
            .sum()
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Delete an instance (its finalizer records it; `retry`: the write's answer was
        /// lost and the finalizer runs again).
        DeleteInstance { i: usize, retry: bool },
        /// Delete a user: each of its instances is deleted (and recorded) first.
        DeleteUser(usize),
        /// The clock moves on by days (months close).
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..12, any::<bool>()).prop_map(|(i, retry)| Op::DeleteInstance { i, retry }),
            1 => (0usize..3).prop_map(Op::DeleteUser),
            1 => (1i64..40).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Report totals equal the sum of every instance's figures whatever is deleted, in
        /// any order, with lost answers and months closing between.
        #[test]
        fn reports_total_every_instance_whatever_is_deleted(
            specs in prop::collection::vec((0usize..3, 0i64..5_000_000, 60i64..200_000, any::<bool>()), 1..12),
            ops in prop::collection::vec(op(), 0..30),
        ) {
            let all: Vec<GpuInstance> = specs
                .iter()
                .enumerate()
                .map(|(i, &(u, start, secs, pre))| instance(i, u, start + 7200, secs, pre))
                .collect();
            let users: Vec<GpuUser> = USERS.iter().map(|u| user(u)).collect();
            let expected: f64 = all
                .iter()
                .flat_map(|i| figures::instance_figures("x", i, Timestamp::MAX))
                .map(|f| f.gpu_seconds / 3600.0)
                .sum();
            let mut now = Timestamp::from_second(T0 + 6_000_000).unwrap();
            let mut live: Vec<bool> = vec![true; all.len()];
            let mut present = [true; 3];
            let mut store: Vec<GpuUsageRecord> = vec![];
            let delete = |store: &mut Vec<GpuUsageRecord>, i: usize, retry: bool, now| {
                let u = USERS[specs[i].0];
                let w = record_instance(store, u, &all[i], now);
                apply(store, w);
                if retry {
                    let again = record_instance(store, u, &all[i], now);
                    prop_assert!(matches!(again, RecordWrite::Nothing), "recorded twice");
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::DeleteInstance { i, retry } if i < all.len() && live[i] => {
                        delete(&mut store, i, retry, now)?;
                        live[i] = false;
                    }
                    Op::DeleteUser(u) if present[u] => {
                        for i in 0..all.len() {
                            if live[i] && specs[i].0 == u {
                                delete(&mut store, i, false, now)?;
                                live[i] = false;
                            }
                        }
                        present[u] = false;
                    }
                    Op::Wait(days) => {
                        now = now.checked_add(jiff::SignedDuration::from_hours(24 * days)).unwrap();
                        let names: Vec<_> = to_close(&store, now)
                            .iter()
                            .map(|r| r.metadata.name.clone())
                            .collect();
                        for r in store.iter_mut().filter(|r| names.contains(&r.metadata.name)) {
                            r.spec.closed = true;
                        }
                    }
                    _ => {}
                }
                let theirs: Vec<(usize, Vec<&GpuInstance>)> = (0..3)
                    .filter(|&u| present[u])
                    .map(|u| {
                        let mine = (0..all.len())
                            .filter(|&i| live[i] && specs[i].0 == u)
                            .map(|i| &all[i])
                            .collect();
                        (u, mine)
                    })
                    .collect();
                let figures = report_figures(
                    theirs.iter().map(|(u, mine)| (&users[*u], mine.as_slice())),
                    &store,
                    now,
                );
                let got = reported_hours(&figures);
                prop_assert!((got - expected).abs() < 1e-6 * expected.max(1.0),
                    "report {got} vs instances {expected}");
            }
        }
    }

    #[test]
    fn a_full_record_starts_a_new_shard_and_a_closed_one_is_never_written() {
        let now = Timestamp::from_second(T0 + 6_000_000).unwrap();
        let one = instance(0, 0, 7200, 100, false);
        let RecordWrite::Create(mut first) = record_instance(&[], "ann", &one, now) else {
            panic!("a first record");
        };
        assert_eq!(first.metadata.name.as_deref(), Some("ann-2026-12-0"));
        let run = first.spec.runs[0].clone();
        first.spec.runs = (0..RECORD_RUNS_MAX)
            .map(|k| RecordedRun {
                uid: format!("other-{k}"),
                ..run.clone()
            })
            .collect();
        let RecordWrite::Create(second) = record_instance(&[first.clone()], "ann", &one, now)
        else {
            panic!("a new shard");
        };
        assert_eq!(
            (second.metadata.name.as_deref(), second.spec.shard),
            (Some("ann-2026-12-1"), 1)
        );
        first.spec.runs.truncate(1);
        first.spec.runs[0].uid = "other".into();
        first.spec.closed = true;
        assert!(matches!(
            record_instance(&[first], "ann", &one, now),
            RecordWrite::Create(r) if r.spec.shard == 1
        ));
    }
}
