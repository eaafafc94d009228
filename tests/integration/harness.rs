//! Hands each test a `kube::Client` on one shared control plane.
//!
//! The first test to ask starts `hack/cluster up --attach` with its standard input on a
//! pipe held by this process. When the test binary exits, an `atexit` hook closes that pipe
//! and waits for the script to stop every process; if the binary dies without running
//! hooks (abort, SIGKILL), the pipe closes anyway and the script still tears down. A test
//! that panics therefore never leaks a process.
//!
//! Set `GPU_CLOUD_TEST_KUBECONFIG` to run against a cluster that is already up (for
//! example one from `hack/cluster up`) instead of starting one.
//! If the control plane cannot be built or started, every test that asks for it fails
//! with the reason; nothing is skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The shared control plane: where its admin kubeconfig is.
pub struct ControlPlane {
    /// Admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
/// The `hack/cluster up --attach` process; taken by the exit hook.
static SUPERVISOR: Mutex<Option<Child>> = Mutex::new(None);

/// The shared control plane, started on first use. Panics with the reason if it cannot
/// start, so that the asking test fails loudly.
pub fn control_plane() -> &'static ControlPlane {
    match CONTROL_PLANE.get_or_init(start) {
        Ok(cp) => cp,
        Err(why) => panic!("the test control plane is not available: {why}"),
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start() -> Result<ControlPlane, String> {
    if let Ok(path) = std::env::var("GPU_CLOUD_TEST_KUBECONFIG") {
        return Ok(ControlPlane {
            kubeconfig: PathBuf::from(path),
        });
    }
    let dir = std::env::temp_dir().join(format!("gpu-cloud-test-{}", std::process::id()));
    let nodes = std::env::var("GPU_CLOUD_TEST_NODES").unwrap_or_else(|_| "6".into());
    let mut child = Command::new(repo_root().join("hack/cluster"))
        .args(["up", "--attach", "--nodes", &nodes, "--dir"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run hack/cluster: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("no stdout pipe to hack/cluster")?;
    *SUPERVISOR.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    // SAFETY: registering a plain `extern "C"` function with the C runtime.
    unsafe { libc::atexit(stop_at_exit) };

    for line in BufReader::new(stdout).lines() {
        match line {
            Ok(l) if l.trim() == "ready" => {
                return Ok(ControlPlane {
                    kubeconfig: dir.join("admin.kubeconfig"),
                });
            }
            Ok(_) => {}
            Err(e) => return Err(format!("reading hack/cluster output: {e}")),
        }
    }
    let status = SUPERVISOR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .map(|mut c| {
            c.wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string())
        });
    Err(format!(
        "hack/cluster up exited ({}) before the control plane was ready; \
         its reason is printed above and the logs are in {}",
        status.unwrap_or_default(),
        dir.join("logs").display()
    ))
}

extern "C" fn stop_at_exit() {
    let child = SUPERVISOR.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut child) = child {
        drop(child.stdin.take()); // EOF: the script runs `down` and exits
        let _ = child.wait();
    }
}

/// A client with admin rights on the shared control plane. Each test makes its own,
/// because a client belongs to the async runtime it was created on.
pub async fn client() -> Client {
    let path = &control_plane().kubeconfig;
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    Client::try_from(config).expect("building a client from the test kubeconfig")
}

/// Creates a fresh namespace for one test (`t-<prefix>-xxxxx`) and waits until pods can be
/// created in it (its default ServiceAccount exists). Returns its name.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": format!("t-{prefix}-")}
    }))
    .expect("namespace object");
    let created = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating a test namespace");
    let name = created.metadata.name.expect("generated namespace name");
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    eventually(
        Duration::from_secs(30),
        "default ServiceAccount",
        || async { sas.get_opt("default").await.ok().flatten().is_some() },
    )
    .await;
    name
}

/// Polls `check` until it returns true; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
