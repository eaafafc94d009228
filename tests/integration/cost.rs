//! `gpu-cloud report` on the real control plane: instances run with the simulated agent,
//! one is deleted (its figures kept in its user's GpuUsageRecord), and the report's figures
//! for the user are the sums of what the instances' own objects say, priced with the
//! GpuPriceList; then the user is deleted, and the report still bills every GPU-second.

use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, GpuUsageRecord, GpuUser, Phase, RecordedRun};
use gpu_cloud_core::policy::chargeback::ReportPeriod;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

use crate::harness::{self, phase, poll};

const MODEL: &str = "TEST-COST-GPU";

fn spec(count: u32) -> Value {
    json!({"gpu": {"model": MODEL, "count": count}, "image": "x", "duration": "1h"})
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The runs in `user`'s usage records.
async fn recorded_runs(client: &kube::Client, user: &str) -> Vec<RecordedRun> {
    Api::<GpuUsageRecord>::all(client.clone())
        .list(&ListParams::default().labels(&format!("gpu-cloud.io/user={user}")))
        .await
        .expect("list usage records")
        .items
        .into_iter()
        .flat_map(|r| r.spec.runs)
        .collect()
}

/// `user`'s row of GPU model `MODEL` in the JSON report of `period`.
fn report_row(kubeconfig: &std::path::Path, period: &str, user: &str) -> Value {
    let (ok, out, err) = harness::gpu_cloud(
        kubeconfig,
        &["report", "--period", period, "--format", "json"],
    );
    assert!(ok, "gpu-cloud report: {err}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["user"] == user && r["model"] == MODEL)
        .unwrap_or_else(|| panic!("no row for {user}: {out}"))
        .clone()
}

#[tokio::test]
async fn the_report_sums_live_and_retired_instances_as_their_objects_say() {
    let client = harness::operator().await;
    let kubeconfig = harness::control_plane().kubeconfig.clone();
    let prices = harness::prices(&client).await;
    let nodes = harness::gpu_nodes(&client, &harness::unique("t-cost"), MODEL, 1, 4).await;
    let name = harness::unique("carl");
    let ns = harness::user(&client, &name, json!({})).await;
    let agent = harness::simulated_agent(&kubeconfig, &nodes[0], harness::free_port());
    let api = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    harness::book(&client, &ns, "a", spec(2)).await;
    harness::book(&client, &ns, "b", spec(1)).await;
    for inst in ["a", "b"] {
        poll(
            Duration::from_secs(60),
            &format!("{inst} measured"),
            || async {
                let i = api.get(inst).await.map_err(|e| e.to_string())?;
                match i.status.as_ref().and_then(|s| s.usage.as_ref()) {
                    Some(u) if u.gpu_seconds > 2.0 && phase(&i) == Some(Phase::Running) => Ok(()),
                    _ => Err(format!("{:?}", i.status)),
                }
            },
        )
        .await;
    }

    // Delete b: the agent writes its final figures, its user's usage record keeps them.
    let b_uid = api.get("b").await.unwrap().uid().unwrap();
    let b_final = harness::delete_for_final_usage(&api, "b")
        .await
        .status
        .and_then(|s| s.usage)
        .expect("b's final usage");
    // Then no more figures: a's stay as they are while the report is made.
    drop(agent);
    let users = Api::<GpuUser>::all(client.clone());
    poll(Duration::from_secs(60), "b recorded", || async {
        let runs = recorded_runs(&client, &name).await;
        if runs.iter().any(|r| r.uid == b_uid) {
            Ok(())
        } else {
            Err(format!("{runs:?}"))
        }
    })
    .await;
    harness::eventually(Duration::from_secs(60), "b gone", || async {
        api.get_opt("b").await.unwrap().is_none()
    })
    .await;
    // Let a write in flight when the agent stopped land, then read a as the report will.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a_usage = api.get("a").await.unwrap().status.unwrap().usage.unwrap();

    let period = ReportPeriod::month_of(Timestamp::now()).unwrap();
    let (ok, out, err) = harness::gpu_cloud(
        &kubeconfig,
        &["report", "--period", &period.label, "--format", "json"],
    );
    assert!(ok, "gpu-cloud report: {err}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let row = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["user"] == name.as_str() && r["model"] == MODEL)
        .unwrap_or_else(|| panic!("no row for {name}: {out}"))
        .clone();

    let hours = (a_usage.gpu_seconds + b_final.gpu_seconds) / 3600.0;
    let kwh = (a_usage.energy_joules + b_final.energy_joules) / 3.6e6;
    let price = prices.per_gpu_hour[MODEL];
    let per_kwh = prices.per_kwh.unwrap();
    assert_eq!(row["instances"], 2, "{row}");
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    assert!(close(f(&row["gpuHours"]), hours), "{row} vs {hours}");
    assert!(close(f(&row["energyKwh"]), kwh), "{row} vs {kwh}");
    assert!(close(f(&row["cost"]["gpu"]), hours * price), "{row}");
    assert!(close(f(&row["cost"]["energy"]), kwh * per_kwh), "{row}");
    assert!(
        close(f(&row["cost"]["total"]), hours * price + kwh * per_kwh),
        "{row}"
    );
    assert_eq!(report["currency"], "EUR");
    assert_eq!(report["period"]["label"], period.label.as_str());

    // The totals are the sums of all rows (every user of the cluster).
    let rows = report["rows"].as_array().unwrap();
    let sum = |key: &str| rows.iter().map(|r| f(&r[key])).sum::<f64>();
    assert!(
        close(f(&report["totals"]["gpuHours"]), sum("gpuHours")),
        "{out}"
    );
    assert!(
        close(f(&report["totals"]["energyKwh"]), sum("energyKwh")),
        "{out}"
    );
    let cost_sum: f64 = rows.iter().map(|r| f(&r["cost"]["total"])).sum();
    assert!(
        close(f(&report["totals"]["cost"]["total"]), cost_sum),
        "{out}"
    );

    // The same report as a table and as CSV.
    let (ok, table, err) = harness::gpu_cloud(&kubeconfig, &["report", "--period", &period.label]);
    assert!(ok, "{err}");
    assert!(
        table.starts_with(&format!("Chargeback {}", period.label)),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        line.split_whitespace().nth(2),
        Some("2"),
        "instances column: {table}"
    );
    let (ok, csv, err) = harness::gpu_cloud(&kubeconfig, &["report", "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&format!("{name},{MODEL},2,"))),
        "{csv}"
    );
    let (ok, _, err) = harness::gpu_cloud(&kubeconfig, &["report", "--period", "2026-W54"]);
    assert!(!ok && err.contains("invalid period"), "{err}");

    // The instance's own cost: planned from its booking (2 GPUs x 1 h), actual from its
    // usage; the user's cost of the month, and its Prometheus series, agree with the report
    // to the cent (a is still running, so a little later means a little more).
    let a = api.get("a").await.unwrap().status.unwrap();
    let cost = a.cost.expect("a's status.cost");
    assert_eq!(cost.currency, "EUR");
    assert!(close(cost.planned, 2.0 * price), "{cost:?}");
    assert!(cost.actual.is_some_and(|x| x > 0.0), "{cost:?}");
    let report_total = f(&row["cost"]["total"]);
    let user_cost = poll(Duration::from_secs(30), "the user's cost", || async {
        let u = users.get(&name).await.map_err(|e| e.to_string())?;
        match u.status.and_then(|s| s.cost) {
            Some(c) if (c.current_period - report_total).abs() <= 0.02 => Ok(c),
            other => Err(format!("{other:?} vs report {report_total}")),
        }
    })
    .await;
    assert_eq!(user_cost.period, period.label);
    let port = harness::controller_metrics_port();
    let series = format!("gpu_cloud_user_cost{{user=\"{name}\",currency=\"EUR\"}} ");
    let (_, body) = harness::http_get(port, "/metrics").expect("controller /metrics");
    let value: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"));
    assert!(
        (value - report_total).abs() <= 0.02,
        "{value} vs {report_total}"
    );

    // Delete the user: a stops and is recorded too; the records outlive the user, and the
    // report still bills both instances, exactly as recorded.
    let _agent = harness::simulated_agent(&kubeconfig, &nodes[0], harness::free_port());
    users.delete(&name, &DeleteParams::default()).await.unwrap();
    harness::eventually(Duration::from_secs(90), "the user gone", || async {
        users.get_opt(&name).await.unwrap().is_none()
    })
    .await;
    let runs = recorded_runs(&client, &name).await;
    let mut uids: Vec<&str> = runs.iter().map(|r| r.uid.as_str()).collect();
    uids.dedup();
    assert_eq!(uids.len(), 2, "each instance recorded once: {runs:?}");
    let recorded_hours: f64 = runs.iter().map(|r| r.figures.gpu_seconds).sum::<f64>() / 3600.0;
    assert!(recorded_hours >= hours, "{recorded_hours} < {hours}");
    let row = report_row(&kubeconfig, &period.label, &name);
    assert_eq!(row["instances"], 2, "{row}");
    assert!(
        close(f(&row["gpuHours"]), recorded_hours),
        "{row} vs {recorded_hours}"
    );
    // A record cannot be rewritten once closed (its month over); an open one only grows.
    let records = Api::<GpuUsageRecord>::all(client.clone());
    let mut rec = records
        .list(&ListParams::default().labels(&format!("gpu-cloud.io/user={name}")))
        .await
        .unwrap()
        .items
        .remove(0);
    rec.spec.runs.clear();
    let refused = records
        .replace(&rec.name_any(), &Default::default(), &rec)
        .await
        .expect_err("runs removed from a record");
    let refused = refused.to_string();
    assert!(
        refused.contains("only added to") && refused.contains("spec.runs"),
        "{refused}"
    );
}
