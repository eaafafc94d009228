//! `gpu-cloud nodes`: the GPU inventory of the cluster, as the scheduler sees it.

use std::io::Write;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;

use crate::Error;
use gpu_cloud_api::GPU_PRESENT_LABEL;
use gpu_cloud_core::scheduler::{NodeGpus, gpus_in_use};
use gpu_cloud_plugin::table::render;

/// Arguments of `gpu-cloud nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Also list nodes without GPUs.
    #[arg(long)]
    all: bool,
}

/// One printed row.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    gpus: NodeGpus,
    used: u32,
    /// Its slice pools (MIG profiles, shares): slice, held, allocatable.
    slices: Vec<(String, u32, u32)>,
}

pub(super) async fn run(args: NodesArgs) -> Result<(), Error> {
    let client = gpu_cloud_runtime::client::plain().await?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("list nodes"))?;
    // Only pods that hold resources matter; finished ones are filtered server-side.
    let pods = Api::<Pod>::all(client)
        .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
        .await
        .map_err(Error::kube("list pods"))?;
    let rows = rows(&nodes.items, &pods.items, args.all);
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &rows)?;
    Ok(())
}

fn rows(nodes: &[Node], pods: &[Pod], all: bool) -> Vec<Row> {
    let used = gpus_in_use(pods);
    let used_slices = gpu_cloud_core::scheduler::capacity::slices_in_use(pods);
    let mut rows: Vec<Row> = nodes
        .iter()
        .filter(|n| {
            let present = n
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get(GPU_PRESENT_LABEL).is_some_and(|v| v == "true"));
            all || present || NodeGpus::from_node(n).allocatable > 0
        })
        .map(|n| {
            let gpus = NodeGpus::from_node(n);
            let used = used.get(&gpus.name).copied().unwrap_or(0);
            let slices = NodeGpus::pools(n, &[] as &[&str])
                .into_iter()
                .filter_map(|p| {
                    let s = p.slice?;
                    let held = used_slices
                        .get(&(p.name.clone(), s.clone()))
                        .copied()
                        .unwrap_or(0);
                    Some((s, held, p.allocatable))
                })
                .collect();
            Row { gpus, used, slices }
        })
        .collect();
    rows.sort_by(|a, b| a.gpus.name.cmp(&b.gpus.name));
    rows
}

fn write_table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    let mut table = vec![
        [
            "NODE",
            "MODEL",
            "GPUS",
            "USED",
            "FREE",
            "READY",
            "SCHEDULABLE",
            "SLICES (USED/ALL)",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let (mut total, mut used) = (0u32, 0u32);
    for r in rows {
        let g = &r.gpus;
        table.push(vec![
            g.name.clone(),
            g.model.clone().unwrap_or_else(|| "-".into()),
            g.allocatable.to_string(),
            r.used.to_string(),
            g.allocatable.saturating_sub(r.used).to_string(),
            g.ready.to_string(),
            g.schedulable.to_string(),
            if r.slices.is_empty() {
                "-".to_owned()
            } else {
                r.slices
                    .iter()
                    .map(|(s, held, all)| format!("{s} {held}/{all}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ]);
        total = total.saturating_add(g.allocatable);
        used = used.saturating_add(r.used);
    }
    // GPU counts right-aligned.
    out.write_all(render(&table, &[2, 3, 4]).as_bytes())?;
    writeln!(out, "{} nodes, {total} GPUs, {used} in use", rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_gpu_nodes_with_usage_and_skips_cpu_nodes() {
        let nodes: Vec<Node> = serde_json::from_value(json!([
            {"metadata": {"name": "l4-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L4",
                                                     "nvidia.com/gpu.present": "true"}},
             "status": {"allocatable": {"nvidia.com/gpu": "1"},
                        "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "cpu-0"}, "status": {"allocatable": {"cpu": "8"}}}
        ]))
        .unwrap();
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"spec": {"nodeName": "l4-0", "containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
        ]))
        .unwrap();
        let r = rows(&nodes, &pods, false);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].gpus.name.as_str(), r[0].used), ("l4-0", 1));
        assert_eq!(rows(&nodes, &pods, true).len(), 2);

        let mut out = Vec::new();
        write_table(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("l4-0  NVIDIA-L4     1     1     0  true   true"),
            "{text}"
        );
        assert!(text.ends_with("1 nodes, 1 GPUs, 1 in use\n"), "{text}");
    }

    #[test]
    fn a_mig_node_shows_its_slices_used_of_all() {
        let nodes: Vec<Node> = serde_json::from_value(json!([
            {"metadata": {"name": "mig-0", "labels": {"nvidia.com/gpu.product": "A100",
                                                      "nvidia.com/gpu.present": "true"}},
             "status": {"allocatable": {"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "28",
                                        "nvidia.com/mig-3g.40gb": "8"},
                        "conditions": [{"type": "Ready", "status": "True"}]}}
        ]))
        .unwrap();
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"spec": {"nodeName": "mig-0", "containers": [
                {"name": "a", "resources": {"limits": {"nvidia.com/mig-1g.10gb": "2"}}}]}}
        ]))
        .unwrap();
        let mut out = Vec::new();
        write_table(&mut out, &rows(&nodes, &pods, false)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("1g.10gb 2/28, 3g.40gb 0/8"), "{text}");
    }
}
