//! `gpu-cloud report`: the chargeback report of a month or an ISO week, per user and GPU
//! model, priced with the cluster's GpuPriceList.
//!
//! The figures are the controller's own (`gpu_cloud_core::policy::figures`): every live instance
//! not yet recorded, plus every run in the GpuUsageRecords (deleted instances, of users
//! that still exist or not). So the report, the users' `status.cost` and their budgets
//! agree.

use std::collections::BTreeMap;
use std::io::Write;

use jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use gpu_cloud_api::v1::{GpuInstance, GpuPriceList, GpuUsageRecord, GpuUser, PRICE_LIST_NAME};
use gpu_cloud_core::policy::chargeback::{self, InstanceFigures, InvalidPeriod, ReportPeriod};
use gpu_cloud_core::policy::cost::{CostError, PriceList};
use gpu_cloud_core::policy::figures;
use gpu_cloud_core::policy::records::{self, Recorded};

mod render;

/// Arguments of `gpu-cloud report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The period: a month (`2026-11`) or an ISO week (`2026-W48`), UTC. Default: the
    /// current month.
    #[arg(long, value_parser = parse_period)]
    period: Option<ReportPeriod>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

fn parse_period(s: &str) -> Result<ReportPeriod, InvalidPeriod> {
    s.parse()
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table for a terminal, amounts to the cent.
    Table,
    /// CSV for a spreadsheet or a billing system.
    Csv,
    /// JSON, unrounded, for programs.
    Json,
}

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// There is no GpuPriceList `default`.
    #[error(
        "no GpuPriceList {PRICE_LIST_NAME:?}: nothing can be priced. Apply one, e.g.\n  \
         kubectl apply -f - <<EOF\n  apiVersion: gpu-cloud.io/v1\n  kind: GpuPriceList\n  \
         metadata: {{name: {PRICE_LIST_NAME}}}\n  spec: {{currency: EUR, perGpuHour: {{NVIDIA-L4: 0.8}}, defaultPerGpuHour: 2.0}}\n  EOF\n\
         or set `prices:` in the Helm chart's values"
    )]
    NoPriceList,
    /// The period could not be worked out.
    #[error(transparent)]
    Period(#[from] InvalidPeriod),
    /// The price list or a figure is not usable.
    #[error("cannot price the report: {0}")]
    Cost(#[from] CostError),
    /// A read from the cluster failed.
    #[error("Kubernetes API call `{action}` failed: {source}")]
    Kube {
        /// What was read.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The JSON could not be written (a bug).
    #[error("cannot render the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> ReportError {
    move |source| ReportError::Kube { action, source }
}

pub(super) async fn run(args: ReportArgs) -> Result<(), crate::Error> {
    let client = gpu_cloud_runtime::client::plain().await?;
    let now = Timestamp::now();
    let period = match args.period {
        Some(p) => p,
        None => ReportPeriod::month_of(now).map_err(ReportError::from)?,
    };
    let (prices, users, instances, records) = read(&client).await?;
    let selected = select_figures(&users, &instances, &records, now);
    for (ns, name) in &selected.orphans {
        tracing::warn!(
            instance = %format!("{ns}/{name}"),
            "left out of the report: its namespace belongs to no GpuUser"
        );
    }
    let report =
        chargeback::report(&prices, &selected.figures, &period).map_err(ReportError::from)?;
    let text = match args.format {
        Format::Table => render::to_table(&report),
        Format::Csv => render::to_csv(&report),
        Format::Json => {
            let mut t = render::to_json(&report).map_err(ReportError::from)?;
            t.push('\n');
            t
        }
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

/// What a report reads.
type Read = (
    PriceList,
    Vec<GpuUser>,
    Vec<GpuInstance>,
    Vec<GpuUsageRecord>,
);

/// The price list, every user, every instance and every usage record.
async fn read(client: &Client) -> Result<Read, ReportError> {
    let prices = Api::<GpuPriceList>::all(client.clone())
        .get_opt(PRICE_LIST_NAME)
        .await
        .map_err(kube_err("get GpuPriceList"))?
        .ok_or(ReportError::NoPriceList)?;
    let users = Api::<GpuUser>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list GpuUsers"))?
        .items;
    let instances = Api::<GpuInstance>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list GpuInstances"))?
        .items;
    let records = Api::<GpuUsageRecord>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list GpuUsageRecords"))?
        .items;
    Ok((PriceList::from(&prices.spec), users, instances, records))
}

/// The figures a report sums, and the instances left out.
#[derive(Debug, Default)]
pub struct Selected {
    /// Live instances not yet folded into their user, then every user's retired ones.
    pub figures: Vec<InstanceFigures>,
    /// Instances that ran but whose namespace belongs to no GpuUser (namespace, name).
    pub orphans: Vec<(String, String)>,
}

/// The user's namespace: as its status says, else the one the operator gives it.
fn namespace_of(u: &GpuUser) -> String {
    u.status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .unwrap_or_else(|| format!("gpu-{}", u.name_any()))
}

/// Picks the figures of the report (pure): every instance that ran and is not recorded
/// yet, by the user of its namespace (else the user its status names), and every recorded
/// run (`records`, whatever became of its user).
pub fn select_figures(
    users: &[GpuUser],
    instances: &[GpuInstance],
    records: &[GpuUsageRecord],
    now: Timestamp,
) -> Selected {
    let recorded = Recorded::of(records);
    let by_namespace: BTreeMap<String, usize> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (namespace_of(u), i))
        .collect();
    let by_name: BTreeMap<String, usize> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name_any(), i))
        .collect();
    let mut theirs: Vec<Vec<&GpuInstance>> = vec![vec![]; users.len()];
    let mut out = Selected::default();
    for inst in instances {
        let ns = inst.namespace().unwrap_or_default();
        let user = by_namespace.get(&ns).or_else(|| {
            let named = inst.status.as_ref()?.user.as_deref()?;
            by_name.get(named)
        });
        match user {
            Some(&i) => theirs[i].push(inst),
            None => {
                let uid = inst.uid().unwrap_or_default();
                if !recorded.contains(&uid) && !figures::instance_figures("", inst, now).is_empty()
                {
                    out.orphans.push((ns, inst.name_any()));
                }
            }
        }
    }
    // The same selection as the controller's: live ones not yet recorded, then every
    // record.
    out.figures = records::report_figures(
        users.iter().zip(theirs.iter().map(Vec::as_slice)),
        records,
        now,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str) -> GpuUser {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": name}, "spec": {},
            "status": {"namespace": format!("gpu-{name}")}
        }))
        .unwrap()
    }

    fn record(user: &str, uid: &str, runs: serde_json::Value) -> GpuUsageRecord {
        let runs: Vec<serde_json::Value> = runs
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["uid"] = json!(uid);
                r["instance"] = json!(format!("gpu-{user}/x"));
                r
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUsageRecord",
            "metadata": {"name": format!("{user}-2026-11-0")},
            "spec": {"user": user, "period": "2026-11", "runs": runs}
        }))
        .unwrap()
    }

    fn inst(ns: &str, name: &str, uid: &str, status: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"gpu": {"model": "M", "count": 2}, "image": "x", "duration": "1h"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn figures_skip_recorded_instances_and_add_every_record_of_users_there_or_gone() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let retired = json!([{"model": "M", "gpus": 2, "startedAt": "2026-11-25T08:00:00Z",
            "endedAt": "2026-11-25T09:00:00Z", "gpuSeconds": 7000.0, "energyJoules": 5.0}]);
        let users = [user("ann"), user("ben")];
        let records = [
            record("ann", "gone", retired.clone()),
            // A user deleted since: its record still counts.
            record("cat", "c1", retired),
        ];
        let running = json!({"phase": "Running", "startedAt": "2026-11-25T11:00:00Z"});
        let instances = [
            // Recorded already (deleted, finalizer not yet let go): counted once, recorded.
            inst("gpu-ann", "old", "gone", running.clone()),
            inst("gpu-ann", "live", "u1", running.clone()),
            inst("gpu-ann", "queued", "u2", json!({"phase": "Queued"})),
            // Its namespace names no user, but its status does.
            inst(
                "elsewhere",
                "moved",
                "u3",
                json!({"phase": "Running", "user": "ben",
                "startedAt": "2026-11-25T11:30:00Z"}),
            ),
            inst("gpu-nobody", "orphan", "u4", running),
        ];
        let s = select_figures(&users, &instances, &records, now);
        let got: Vec<(&str, f64)> = s
            .figures
            .iter()
            .map(|f| (f.user.as_str(), f.gpu_seconds))
            .collect();
        assert_eq!(
            got,
            [
                ("ann", 7200.0),
                ("ben", 3600.0),
                ("ann", 7000.0),
                ("cat", 7000.0)
            ],
            "{s:?}"
        );
        assert_eq!(s.orphans, [("gpu-nobody".to_owned(), "orphan".to_owned())]);

        // The report over them sums to exactly these figures.
        let prices = PriceList {
            currency: "EUR".into(),
            default_per_gpu_hour: Some(1.0),
            ..PriceList::default()
        };
        let r = chargeback::report(&prices, &s.figures, &"2026-11".parse().unwrap()).unwrap();
        assert_eq!(r.totals.instances, 4);
        assert!((r.totals.gpu_hours - (7200.0 + 3600.0 + 14000.0) / 3600.0).abs() < 1e-9);
    }

    #[test]
    fn without_a_price_list_it_says_what_to_apply() {
        let text = ReportError::NoPriceList.to_string();
        for part in [
            "no GpuPriceList \"default\"",
            "kubectl apply",
            "kind: GpuPriceList",
            "prices:",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }
}
