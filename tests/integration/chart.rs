//! The Helm chart on a control plane of the test's own: lint, install the previous chart
//! version (kwok runs the pods, the post-install migrate Job completes), upgrade to this one
//! (the new CRD version carried, the hook runs again, `prices:` become the GpuPriceList),
//! uninstall (CRDs and user data kept).

use std::path::Path;
use std::process::Command;

use gpu_cloud_api::v1::{GpuPriceList, GpuUser};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

use crate::harness::{self, PrivateControlPlane};

pub(crate) fn helm(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(harness::kubectl().with_file_name("helm"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm-cache"))
        .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm-config"))
        .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm-data"))
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {args:?}:\n{text}");
    text
}

/// Applies a rendered manifest to namespace pss-check with a server-side dry-run; asserts
/// it is accepted and returns kubectl's warnings.
fn dry_run(kubeconfig: &Path, name: &str, manifest: &str) -> String {
    let path = kubeconfig.with_file_name(format!("pss-{name}.yaml"));
    std::fs::write(&path, manifest).unwrap();
    let out = Command::new(harness::kubectl())
        .env("KUBECONFIG", kubeconfig)
        .args(["apply", "--dry-run=server", "-n", "pss-check", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{name}: {stderr}");
    stderr
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn install_the_previous_version_upgrade_uninstall() {
    let cp = PrivateControlPlane::start("chart");
    let client = cp.client().await;
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/gpu-cloud");
    let chart = chart.to_str().expect("utf-8 path");
    let kc = &cp.kubeconfig;
    assert!(helm(kc, &["lint", chart]).contains("0 chart(s) failed"));
    let gpu_nodes = harness::gpu_nodes(&client, "t-chart", "NVIDIA-L4", 2, 1).await;

    // The previous chart version: this chart as it was when GpuInstance had only v1alpha1.
    let previous = kc.with_file_name("chart-previous");
    copy_dir(Path::new(chart), &previous);
    let chart_yaml = std::fs::read_to_string(previous.join("Chart.yaml"))
        .unwrap()
        .replace("version: 0.1.0", "version: 0.0.1");
    std::fs::write(previous.join("Chart.yaml"), chart_yaml).unwrap();
    let mut old_crd = serde_json::to_value(gpu_cloud_api::v1alpha1::GpuInstance::crd()).unwrap();
    old_crd["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
    let user_crd = serde_json::to_value(&gpu_cloud_api::crds()[0]).unwrap();
    std::fs::write(
        previous.join("files/crds.yaml"),
        format!("{user_crd}\n---\n{old_crd}\n"),
    )
    .unwrap();
    let previous = previous.to_str().expect("utf-8 path").to_owned();
    let out = helm(
        kc,
        &[
            "install",
            "gpu-cloud",
            &previous,
            "-n",
            "gpu-cloud",
            "--create-namespace",
            "--set",
            "agent.simulate=true",
            "--wait-for-jobs",
            "--timeout",
            "120s",
        ],
    );
    assert!(
        out.contains("STATUS: deployed") && out.contains("Register a user"),
        "{out}"
    );
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let inst_crd = crds
        .get("gpuinstances.gpu-cloud.io")
        .await
        .expect("CRD installed by the chart");
    assert_eq!(
        inst_crd
            .annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    assert_eq!(
        inst_crd.spec.versions.len(),
        1,
        "the previous chart serves v1alpha1 only"
    );
    let deploys = Api::<Deployment>::namespaced(client.clone(), "gpu-cloud");
    let controller = deploys
        .get("gpu-cloud-controller")
        .await
        .expect("controller Deployment");
    assert_eq!(controller.spec.and_then(|s| s.replicas), Some(2));
    harness::eventually(
        std::time::Duration::from_secs(60),
        "agent on every GPU node",
        || async {
            let ds = Api::<DaemonSet>::namespaced(client.clone(), "gpu-cloud")
                .get("gpu-cloud-agent")
                .await
                .unwrap();
            ds.status
                .is_some_and(|s| s.desired_number_scheduled == gpu_nodes.len() as i32)
        },
    )
    .await;

    // The restricted Pod Security profile holds for every pod but the agent's.
    let pss: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({"metadata": {
        "name": "pss-check", "labels": {"pod-security.kubernetes.io/warn": "restricted"}}}))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &pss)
        .await
        .unwrap();
    for (template, restricted) in [
        ("controller", true),
        ("webhook", true),
        ("migrate-job", true),
        ("dashboard", true),
        ("agent", false),
    ] {
        let rendered = helm(
            kc,
            &[
                "template",
                "gpu-cloud",
                chart,
                "-n",
                "pss-check",
                "--show-only",
                &format!("templates/{template}.yaml"),
            ],
        );
        let stderr = dry_run(kc, template, &rendered);
        assert_eq!(
            !stderr.contains("would violate PodSecurity"),
            restricted,
            "{template}: {stderr}"
        );
    }

    // The agent with the host's driver mounted (GPU operator layout) is accepted too.
    let rendered = helm(
        kc,
        &[
            "template",
            "gpu-cloud",
            chart,
            "-n",
            "pss-check",
            "--show-only",
            "templates/agent.yaml",
            "--set",
            "agent.driverHostPath=/run/nvidia/driver",
        ],
    );
    assert!(rendered.contains("path: /run/nvidia/driver"), "{rendered}");
    dry_run(kc, "agent-driver", &rendered);

    // User data that must survive everything below.
    let user: GpuUser = serde_json::from_value(json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "keeper"}, "spec": {"quota": {"maxGpus": 2}}
    }))
    .unwrap();
    Api::<GpuUser>::all(client.clone())
        .create(&PostParams::default(), &user)
        .await
        .unwrap();

    let out = helm(
        kc,
        &[
            "upgrade",
            "gpu-cloud",
            chart,
            "-n",
            "gpu-cloud",
            "--set",
            "agent.simulate=true",
            "--set",
            "controller.replicas=3",
            "--set-json",
            r#"prices={"currency":"EUR","perGpuHour":{"NVIDIA-L4":0.6},"perKwh":0.3}"#,
            "--wait-for-jobs",
            "--timeout",
            "120s",
        ],
    );
    assert!(
        out.contains("STATUS: deployed") && out.contains("REVISION: 2"),
        "{out}"
    );
    // The upgrade carried the new CRD version (v1 stored). The migrate Job is its hook (helm
    // waits for it and fails the upgrade if it fails).
    let hooks = helm(kc, &["get", "hooks", "gpu-cloud", "-n", "gpu-cloud"]);
    assert!(
        hooks.contains("name: gpu-cloud-migrate") && hooks.contains("post-install,post-upgrade"),
        "{hooks}"
    );
    let inst_crd = crds.get("gpuinstances.gpu-cloud.io").await.unwrap();
    let versions: Vec<(String, bool)> = inst_crd
        .spec
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.storage))
        .collect();
    assert_eq!(
        versions,
        [("v1".to_string(), true), ("v1alpha1".to_string(), false)]
    );
    let controller = deploys.get("gpu-cloud-controller").await.unwrap();
    assert_eq!(controller.spec.and_then(|s| s.replicas), Some(3));
    // `prices:` became the GpuPriceList `default`, although its CRD came with this very
    // upgrade (a hook: Helm could not map the kind before).
    let prices = Api::<GpuPriceList>::all(client.clone())
        .get("default")
        .await
        .expect("the GpuPriceList from the values");
    assert_eq!(prices.spec.currency, "EUR");
    assert_eq!(prices.spec.per_gpu_hour.get("NVIDIA-L4"), Some(&0.6));
    assert_eq!(prices.spec.per_kwh, Some(0.3));
    assert_eq!(prices.spec.default_per_gpu_hour, None);
    let history = helm(kc, &["history", "gpu-cloud", "-n", "gpu-cloud"]);
    assert!(history.contains("Upgrade complete"), "{history}");

    helm(
        kc,
        &[
            "uninstall",
            "gpu-cloud",
            "-n",
            "gpu-cloud",
            "--timeout",
            "60s",
        ],
    );
    assert!(
        deploys
            .get_opt("gpu-cloud-controller")
            .await
            .unwrap()
            .is_none(),
        "workloads removed"
    );
    assert!(
        crds.get_opt("gpuinstances.gpu-cloud.io")
            .await
            .unwrap()
            .is_some(),
        "CRDs kept"
    );
    assert!(
        crds.get_opt("gpuusers.gpu-cloud.io")
            .await
            .unwrap()
            .is_some(),
        "CRDs kept"
    );
    assert!(
        Api::<GpuUser>::all(client)
            .get_opt("keeper")
            .await
            .unwrap()
            .is_some(),
        "user data kept"
    );
}
