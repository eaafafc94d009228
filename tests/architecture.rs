//! The layering of `docs/architecture.md`, checked on the workspace's manifests: a crate
//! that depends on one it may not (the agent on the controller, the core on a Kubernetes
//! client) fails this test, so the rule cannot erode one convenient import at a time.
//!
//! Reads `cargo metadata --no-deps` (the declared dependencies, normal, dev and build).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Which of our crates each crate may depend on (any kind: normal, dev or build).
const ALLOWED: &[(&str, &[&str])] = &[
    ("gpu-cloud-api", &[]),
    ("gpu-cloud-core", &["gpu-cloud-api"]),
    ("gpu-cloud-runtime", &[]),
    ("gpu-cloud-kubelet-api", &[]),
    ("gpu-cloud-fake-gpus", &["gpu-cloud-kubelet-api"]),
    (
        "gpu-cloud-controller",
        &["gpu-cloud-api", "gpu-cloud-core", "gpu-cloud-runtime"],
    ),
    // The core for the idle clock the agent keeps on every sample (policy::idle::tick).
    (
        "gpu-cloud-agent",
        &[
            "gpu-cloud-api",
            "gpu-cloud-runtime",
            "gpu-cloud-kubelet-api",
            "gpu-cloud-core",
        ],
    ),
    ("gpu-cloud-plugin", &["gpu-cloud-api", "gpu-cloud-core"]),
    (
        "gpu-cloud",
        &[
            "gpu-cloud-api",
            "gpu-cloud-core",
            "gpu-cloud-runtime",
            "gpu-cloud-controller",
            "gpu-cloud-agent",
            "gpu-cloud-plugin",
        ],
    ),
];

/// Crates that stand for I/O or for another layer's job, and the crates of ours that must
/// not declare them: the pure ones have no async runtime, no HTTP server and no NVML; the
/// plugin (a kubectl plugin on people's laptops) no server, TLS acceptor or NVML either.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("gpu-cloud-api", PURE),
    ("gpu-cloud-core", PURE),
    (
        "gpu-cloud-plugin",
        &[
            "axum",
            "nvml-wrapper",
            "tonic",
            "tokio-rustls",
            "rcgen",
            "kube-lease-manager",
        ],
    ),
];

/// What the pure crates (api, core) never declare.
const PURE: &[&str] = &[
    "tokio",
    "axum",
    "nvml-wrapper",
    "tonic",
    "kube-runtime",
    "kube-client",
];

/// kube features that bring a client or the runtime (controllers, watchers).
const KUBE_IO_FEATURES: &[&str] = &[
    "client",
    "runtime",
    "ws",
    "oauth",
    "oidc",
    "unstable-runtime",
];

struct Dep {
    name: String,
    features: Vec<String>,
    default_features: bool,
}

fn workspace() -> BTreeMap<String, Vec<Dep>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut crates = BTreeMap::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let deps = pkg["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| Dep {
                name: d["name"].as_str().unwrap_or_default().to_owned(),
                features: d["features"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                default_features: d["uses_default_features"].as_bool().unwrap_or(true),
            })
            .collect();
        crates.insert(pkg["name"].as_str().unwrap_or_default().to_owned(), deps);
    }
    crates
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let crates = workspace();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let ours: BTreeSet<&str> = allowed.keys().copied().collect();
    assert_eq!(
        crates.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ours,
        "a crate was added or renamed: give it its place in ALLOWED and docs/architecture.md"
    );
    let mut wrong = vec![];
    for (name, deps) in &crates {
        for d in deps {
            if ours.contains(d.name.as_str()) && !allowed[name.as_str()].contains(&d.name.as_str())
            {
                wrong.push(format!("{name} -> {}", d.name));
            }
        }
    }
    assert!(wrong.is_empty(), "forbidden edges: {wrong:?}");
}

#[test]
fn the_pure_crates_and_the_plugin_declare_no_io_of_other_layers() {
    let crates = workspace();
    let mut wrong = vec![];
    for (name, forbidden) in FORBIDDEN {
        for d in &crates[*name] {
            if forbidden.contains(&d.name.as_str()) {
                wrong.push(format!("{name} -> {}", d.name));
            }
        }
    }
    // api and core may use kube's types and the CRD derive only: no client, no runtime,
    // no default features (which are the client).
    for name in ["gpu-cloud-api", "gpu-cloud-core"] {
        for d in crates[name].iter().filter(|d| d.name == "kube") {
            if d.default_features {
                wrong.push(format!("{name} -> kube with default features (the client)"));
            }
            for f in d
                .features
                .iter()
                .filter(|f| KUBE_IO_FEATURES.contains(&f.as_str()))
            {
                wrong.push(format!("{name} -> kube feature {f}"));
            }
        }
    }
    assert!(wrong.is_empty(), "forbidden dependencies: {wrong:?}");
}
