//! `kubectl gpu`: the GPU cloud in a person's words — book, list, usage. Installed as the
//! `kubectl-gpu` binary on the PATH, so kubectl finds it as a plugin.

use std::io::Write;

use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::api::v1::{GpuInstance, GpuUser};

/// Book and watch GPUs of the gpu-cloud operator.
#[derive(Debug, Parser)]
#[command(name = "kubectl gpu", version, about)]
pub struct PluginCli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Book GPUs: `kubectl gpu book NVIDIA-L4 --count 1 --for 4h`.
    Book {
        /// GPU model (as nodes label it in nvidia.com/gpu.product).
        model: String,
        /// How many GPUs (all on one node).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Booking length (`30m`, `4h`, `1h30m`).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        /// Container image to run.
        #[arg(long, default_value = "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04")]
        image: String,
        /// Name of the instance (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// Command to run, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List instances with their usage.
    Ls {
        /// In every namespace you may read.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// GPU-hours and energy per user (lifetime and this month).
    Usage {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
}

impl PluginCli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<(), Error> {
        let client = crate::cli::client().await?;
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let mut out = std::io::stdout().lock();
        match self.command {
            PluginCommand::Book {
                model,
                count,
                duration,
                image,
                name,
                command,
            } => {
                let inst = book(
                    &client, &ns, &model, count, &duration, &image, name, command,
                )
                .await?;
                writeln!(
                    out,
                    "booked {ns}/{}: {count} x {model} for {duration}",
                    inst.name_any()
                )?;
                writeln!(
                    out,
                    "watch it: kubectl get gi -n {ns} {} -w",
                    inst.name_any()
                )?;
            }
            PluginCommand::Ls { all_namespaces } => {
                let api = if all_namespaces {
                    Api::<GpuInstance>::all(client)
                } else {
                    Api::<GpuInstance>::namespaced(client, &ns)
                };
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(Error::kube("list GpuInstances"))?;
                write!(out, "{}", instance_table(&list.items))?;
            }
            PluginCommand::Usage { user } => {
                let api = Api::<GpuUser>::all(client);
                let users = match user {
                    Some(u) => vec![api.get(&u).await.map_err(Error::kube("get GpuUser"))?],
                    None => {
                        api.list(&ListParams::default())
                            .await
                            .map_err(Error::kube("list GpuUsers"))?
                            .items
                    }
                };
                write!(out, "{}", usage_table(&users))?;
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn book(
    client: &Client,
    ns: &str,
    model: &str,
    count: u32,
    duration: &str,
    image: &str,
    name: Option<String>,
    command: Vec<String>,
) -> Result<GpuInstance, Error> {
    let metadata = match name {
        Some(n) => serde_json::json!({"name": n, "namespace": ns}),
        None => serde_json::json!({"generateName": "gi-", "namespace": ns}),
    };
    let inst: GpuInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": metadata,
        "spec": {"gpu": {"model": model, "count": count}, "image": image, "command": command, "duration": duration}
    }))
    .map_err(|e| Error::Render(e.to_string()))?;
    Api::<GpuInstance>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &inst)
        .await
        .map_err(Error::kube("book a GpuInstance"))
}

/// The `ls` table (pure).
pub fn instance_table(items: &[GpuInstance]) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "MODEL",
            "GPUS",
            "PHASE",
            "NODE",
            "GPU-HOURS",
            "UTIL%",
            "WAITING",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in items {
        let s = i.status.clone().unwrap_or_default();
        let usage = s.usage.as_ref();
        rows.push(vec![
            i.namespace().unwrap_or_default(),
            i.name_any(),
            i.spec.gpu.model.clone(),
            i.spec.gpu.count.to_string(),
            s.phase.map_or("-", |p| p.as_str()).to_owned(),
            s.node_name.clone().unwrap_or_else(|| "-".into()),
            usage.map_or("-".into(), |u| format!("{:.2}", u.gpu_seconds / 3600.0)),
            usage.map_or("-".into(), |u| format!("{:.0}", u.avg_utilization)),
            s.message.clone().unwrap_or_default(),
        ]);
    }
    render(&rows)
}

/// The `usage` table (pure).
pub fn usage_table(users: &[GpuUser]) -> String {
    let mut rows = vec![
        [
            "USER",
            "GPUS-NOW",
            "GPU-HOURS",
            "KWH",
            "PERIOD",
            "GPU-HOURS(PERIOD)",
            "KWH(PERIOD)",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in users {
        let s = u.status.clone().unwrap_or_default();
        let usage = s.usage.unwrap_or_default();
        rows.push(vec![
            u.name_any(),
            s.gpus_in_use.to_string(),
            format!("{:.2}", usage.lifetime.gpu_hours),
            format!("{:.3}", usage.lifetime.energy_kwh),
            if usage.period.is_empty() {
                "-".into()
            } else {
                usage.period.clone()
            },
            format!("{:.2}", usage.current_period.gpu_hours),
            format!("{:.3}", usage.current_period.energy_kwh),
        ]);
    }
    render(&rows)
}

fn render(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_show_phase_usage_and_reasons() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "1h"},
            "status": {"phase": "Running", "nodeName": "gpu-l4-0",
                       "usage": {"gpuSeconds": 5400.0, "avgUtilization": 42.4, "peakMemoryBytes": 0,
                                 "energyJoules": 0.0, "sampledAt": "2026-11-25T12:00:00Z", "source": "simulated"}}
        }))
        .unwrap();
        let t = instance_table(&[inst]);
        assert_eq!(
            t.lines().nth(1).unwrap(),
            "gpu-alice  train  NVIDIA-L4  1     Running  gpu-l4-0  1.50       42"
        );
        let user: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "alice"}, "spec": {},
            "status": {"gpusInUse": 1, "instances": 1, "usage": {"period": "2026-11",
                "lifetime": {"gpuHours": 12.5, "energyKwh": 3.25, "instances": 4},
                "currentPeriod": {"gpuHours": 2.0, "energyKwh": 0.5, "instances": 1}}}
        }))
        .unwrap();
        let u = usage_table(&[user]);
        assert!(
            u.lines()
                .nth(1)
                .unwrap()
                .starts_with("alice  1         12.50      3.250  2026-11  2.00"),
            "{u}"
        );
    }
}
