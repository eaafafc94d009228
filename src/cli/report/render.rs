//! How the chargeback report is printed: a table for a terminal, CSV for a spreadsheet or
//! a billing system, JSON for programs. The figures themselves are the core's
//! (`gpu_cloud_core::policy::chargeback`).

use std::fmt::Write as _;

use gpu_cloud_api::time::short_utc;
use gpu_cloud_core::policy::chargeback::Report;
use gpu_cloud_core::policy::cost::Cost;
use gpu_cloud_plugin::table::render;

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
            &model_label(row),
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
    let mut out = format!(
        "Chargeback {} ({} to {})\n",
        r.period.label,
        short_utc(r.period.bounds.start),
        short_utc(r.period.bounds.end)
    );
    let rows: Vec<Vec<String>> = lines.into_iter().map(Vec::from).collect();
    // Names left-aligned, numbers right-aligned.
    out.push_str(&render(&rows, &[2, 3, 4, 5]));
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
            &model_label(row),
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

/// A row's model as printed: spot rows say so (`NVIDIA-L4 (spot)`).
fn model_label(row: &gpu_cloud_core::policy::chargeback::ReportRow) -> String {
    if row.spot {
        format!("{} (spot)", row.model)
    } else {
        row.model.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_cloud_core::policy::chargeback::{InstanceFigures, report};
    use gpu_cloud_core::policy::cost::PriceList;

    fn sample_report() -> Report {
        let prices = PriceList {
            currency: "EUR".into(),
            per_gpu_hour: [
                ("NVIDIA-H100-80GB-HBM3".to_owned(), 2.5),
                ("NVIDIA-L4".to_owned(), 0.5),
            ]
            .into(),
            default_per_gpu_hour: None,
            per_kwh: Some(0.3),
            spot_factor: None,
        };
        let at = |s: &str| s.parse().unwrap();
        let f = |user: &str, model: &str, from: &str, to: &str, gpu_seconds, energy_joules| {
            InstanceFigures {
                user: user.into(),
                model: model.into(),
                started: at(from),
                sampled_at: at(to),
                gpu_seconds,
                energy_joules,
                spot: false,
            }
        };
        let (h100, l4) = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-L4");
        let figures = [
            f(
                "bob",
                l4,
                "2026-11-03T00:00:00Z",
                "2026-11-03T02:00:00Z",
                7200.0,
                3.6e6,
            ),
            f(
                "alice",
                h100,
                "2026-11-10T00:00:00Z",
                "2026-11-10T04:00:00Z",
                28800.0,
                7.2e6,
            ),
            f(
                "alice",
                h100,
                "2026-11-11T00:00:00Z",
                "2026-11-11T01:00:00Z",
                3600.0,
                0.0,
            ),
            f(
                "alice",
                l4,
                "2026-10-31T23:00:00Z",
                "2026-11-01T01:00:00Z",
                7200.0,
                3.6e6,
            ),
        ];
        report(&prices, &figures, &"2026-11".parse().unwrap()).unwrap()
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
}
