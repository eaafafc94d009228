//! Cost of one sampling-and-attribution cycle of the agent on an 8-GPU node with 16 pods
//! (two per GPU, sharing it): cgroup look-ups for 32 processes, attribution, and the
//! accumulation of 16 instances' totals. NVML calls themselves are not included (no GPU
//! here); `hack/bench-agent` measures the whole agent's CPU and RSS on a live cluster.
//!
//!   cargo bench --bench agent_cycle

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gpu_cloud_agent::accumulate::{Sample, advance};
use gpu_cloud_agent::attribution::attribute;
use gpu_cloud_agent::cgroup::pod_uid;
use gpu_cloud_agent::nvml::DeviceReading;
use gpu_cloud_api::v1::{Usage, UsageSource};
use jiff::Timestamp;

fn main() {
    let dir = std::env::temp_dir().join(format!("gpu-cloud-bench-proc-{}", std::process::id()));
    let uid = |p: u32| format!("0f3c2d1e-aaaa-4bbb-8ccc-{p:012x}");
    let mut devices = Vec::new();
    for gpu in 0..8u32 {
        let mut processes = BTreeMap::new();
        for k in 0..2u32 {
            let pod = gpu * 2 + k;
            for proc_ in 0..2u32 {
                let pid = 1000 + pod * 10 + proc_;
                let path = dir.join(pid.to_string());
                std::fs::create_dir_all(&path).expect("bench proc dir");
                let line = format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{pid:064x}.scope\n",
                    uid(pod).replace('-', "_")
                );
                std::fs::write(path.join("cgroup"), line).expect("bench cgroup file");
                processes.insert(pid, (1u64 << 30, Some(20.0 + f64::from(k) * 10.0)));
            }
        }
        devices.push(DeviceReading {
            index: gpu,
            uuid: format!("GPU-{gpu:08x}-0000-0000-0000-000000000000"),
            name: "NVIDIA H100 80GB HBM3".into(),
            utilization: 70.0,
            memory_used: 4 << 30,
            memory_total: 80 << 30,
            power_watts: 450.0,
            energy_millijoules: 1_000_000,
            processes,
            mig_parent: None,
        });
    }
    let started = Timestamp::from_second(1_700_000_000).expect("timestamp");
    let mut totals: BTreeMap<String, Usage> = BTreeMap::new();
    let iterations = 2000u32;
    let mut elapsed = Duration::ZERO;
    for i in 0..iterations {
        let t0 = Instant::now();
        let pid_pods: BTreeMap<u32, String> = devices
            .iter()
            .flat_map(|d| d.processes.keys())
            .filter_map(|pid| {
                let text =
                    std::fs::read_to_string(dir.join(pid.to_string()).join("cgroup")).ok()?;
                Some((*pid, pod_uid(&text)?))
            })
            .collect();
        let shares = attribute(&devices, &BTreeMap::new(), &pid_pods);
        let at = started
            .checked_add(jiff::SignedDuration::from_secs(i64::from(i) + 1))
            .expect("time");
        for (pod, share) in &shares {
            let sample = Sample {
                at,
                gpus: 1.0,
                utilization: share.utilization_sum,
                memory_bytes: share.memory_bytes,
                power_watts: share.power_watts,
                devices: share.counters.clone(),
            };
            let next = advance(totals.get(pod), started, &sample, UsageSource::Nvml);
            totals.insert(pod.clone(), next);
        }
        elapsed += t0.elapsed();
        assert_eq!(shares.len(), 16);
    }
    let per_cycle = elapsed / iterations;
    println!(
        "agent cycle (8 GPUs, 16 pods, 32 processes): {per_cycle:?} per cycle over {iterations} cycles; \
         at 1 s sampling that is {:.4}% of one core",
        per_cycle.as_secs_f64() * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
