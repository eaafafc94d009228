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

pub mod proxy;

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

pub fn repo_root() -> &'static Path {
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
    if let Some(mut c) = CONTROLLER.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let child = SUPERVISOR.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(mut child) = child {
        drop(child.stdin.take()); // EOF: the script runs `down` and exits
        let _ = child.wait();
    }
}

/// The controller process shared by the tests (`gpu-cloud controller`), if started.
static CONTROLLER: Mutex<Option<Child>> = Mutex::new(None);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes sure the CRDs and the `gpu-cloud-user` ClusterRole are installed and one
/// controller runs against the shared control plane. Call at the start of every test
/// that needs the operator.
pub async fn operator() -> Client {
    let client = client().await;
    let cp = control_plane();
    let installed = INSTALLED.get_or_init(|| {
        install(&cp.kubeconfig)?;
        start_controller()
    });
    if let Err(why) = installed {
        panic!("cannot install the operator: {why}");
    }
    client
}

/// Runs kubectl (admin) on the shared control plane; panics with its stderr on failure.
pub fn kubectl_out(args: &[&str]) -> String {
    let out = Command::new(kubectl())
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs the CRDs, the gpu-cloud-user ClusterRole and the finalizer policy on the
/// cluster of `kubeconfig` with `hack/install`, which waits until GpuInstances are admitted.
pub fn install(kubeconfig: &Path) -> Result<(), String> {
    let out = Command::new(repo_root().join("hack/install"))
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECTL", kubectl())
        .output()
        .map_err(|e| format!("running hack/install: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "hack/install: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The namespace the shared controller runs in (its default `--lease-namespace`), where
/// it publishes the GPU calendar, as a Helm release has it (`hack/install` creates it).
pub const CONTROLLER_NAMESPACE: &str = "gpu-cloud";

/// kubectl from the control-plane binaries.
pub fn kubectl() -> PathBuf {
    controlplane_bin("kubectl")
}

/// A binary that `hack/controlplane-build` built (kubectl, helm, kstatus, ...).
pub fn controlplane_bin(name: &str) -> PathBuf {
    let out = Command::new(repo_root().join("hack/controlplane-build"))
        .arg("--print")
        .output()
        .expect("hack/controlplane-build --print");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(name)
}

/// The `--slice-fraction` the shared controller runs with: `2g.20gb` counts as half a GPU
/// (its default is 2/7).
pub const OVERRIDDEN_SLICE_FRACTION: &str = "2g.20gb=0.5";

fn start_controller() -> Result<(), String> {
    let addr = format!("127.0.0.1:{}", controller_metrics_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"));
    cmd.args(["controller", "--resync", "2s", "--metrics-addr", &addr])
        // Node-loss tests wait this long, not the default minute.
        .args(["--node-lost-after", "5s"])
        // The cluster's own fraction for one MIG profile (tests/integration/slices.rs);
        // no other test books it.
        .args(["--slice-fraction", OVERRIDDEN_SLICE_FRACTION])
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("GPU_CLOUD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            // The controller dies with the test process, however that ends.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = on_keeper(move || cmd.spawn())
        .map_err(|e| format!("cannot start gpu-cloud controller: {e}"))?;
    *CONTROLLER.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    Ok(())
}

/// Runs `f` on a thread that lives as long as the test process. Children must be spawned
/// there: PR_SET_PDEATHSIG fires when the *thread* that forked them ends, and every test
/// runs on a thread of its own.
fn on_keeper<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for job in rx {
                job();
            }
        });
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = done_tx.send(f());
    });
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .expect("keeper thread alive");
    done_rx.recv().expect("keeper thread answered")
}

/// Port of the shared controller's /metrics, /healthz and /readyz.
pub fn controller_metrics_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(free_port)
}

/// `GET path` on 127.0.0.1:port over plain HTTP/1.0 with extra `headers`; returns
/// (status line, body).
pub fn http_get_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{extra}\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.to_owned(), body.to_owned()))
}

/// `GET path` on 127.0.0.1:port over plain HTTP/1.0; returns (status line, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// The process id of the shared controller, while it runs.
pub fn controller_pid() -> Option<u32> {
    CONTROLLER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(Child::id)
}

/// SIGKILLs the shared controller and starts a new one (a crash and a restart).
pub fn kill_and_restart_controller() {
    if let Some(mut c) = CONTROLLER.lock().unwrap_or_else(|p| p.into_inner()).take() {
        c.kill().expect("SIGKILL the controller");
        c.wait().expect("reap the controller");
    }
    start_controller().expect("restart the controller");
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

/// Polls `probe` every 200 ms until it gives `Ok(value)`; after `limit` panics naming
/// `what` and the last state seen (the `Err`).
pub async fn poll<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` until it returns true; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let probe = || {
        let fut = check();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        }
    };
    poll(limit, what, probe).await
}

/// Creates `count` fake GPU nodes (kwok) with `gpus` GPUs of `model` each, named
/// `<prefix>-<i>`, and waits until they are Ready and untainted. A test that books a model
/// of its own never competes with other tests for GPUs.
pub async fn gpu_nodes(
    client: &Client,
    prefix: &str,
    model: &str,
    count: usize,
    gpus: u32,
) -> Vec<String> {
    gpu_nodes_labelled(client, prefix, model, count, gpus, serde_json::json!({})).await
}

/// [`gpu_nodes`] with `labels` (a JSON object) on each node too, e.g. a topology zone.
pub async fn gpu_nodes_labelled(
    client: &Client,
    prefix: &str,
    model: &str,
    count: usize,
    gpus: u32,
    labels: serde_json::Value,
) -> Vec<String> {
    let resources = serde_json::json!({"nvidia.com/gpu": gpus.to_string()});
    gpu_nodes_with(client, prefix, model, count, labels, resources).await
}

/// Fake GPU nodes of `model` with `labels` and the extended `resources` (a JSON object of
/// resource → count: MIG profiles, time-sliced shares, whole GPUs).
pub async fn gpu_nodes_with(
    client: &Client,
    prefix: &str,
    model: &str,
    count: usize,
    labels: serde_json::Value,
    resources: serde_json::Value,
) -> Vec<String> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let mut names = vec![];
    for i in 0..count {
        let name = format!("{prefix}-{i}");
        let mut all = serde_json::json!({"type": "kwok", "kubernetes.io/hostname": name,
                           "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": model});
        if let (Some(all), Some(extra)) = (all.as_object_mut(), labels.as_object()) {
            all.extend(extra.clone());
        }
        let mut have = serde_json::json!({"cpu": "64", "memory": "512Gi", "pods": "110"});
        if let (Some(have), Some(extra)) = (have.as_object_mut(), resources.as_object()) {
            have.extend(extra.clone());
        }
        let node = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": all
            },
            "status": {"capacity": have, "allocatable": have}
        }))
        .expect("node object");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create fake GPU node");
        names.push(name);
    }
    for name in &names {
        eventually(
            Duration::from_secs(60),
            &format!("node {name} Ready and untainted"),
            || async {
                let n = nodes.get(name).await.expect("get node");
                let g = gpu_cloud_core::scheduler::NodeGpus::from_node(&n);
                let tainted = n.spec.and_then(|s| s.taints).is_some_and(|t| !t.is_empty());
                g.ready && !tainted
            },
        )
        .await;
    }
    names
}

/// Registers GpuUser `name` with `spec` (JSON) and waits until it is Ready; returns its
/// namespace.
pub async fn user(client: &Client, name: &str, spec: serde_json::Value) -> String {
    use gpu_cloud_api::v1::GpuUser;
    let users = Api::<GpuUser>::all(client.clone());
    let user: GpuUser = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("GpuUser object");
    users
        .create(&PostParams::default(), &user)
        .await
        .expect("create GpuUser");
    poll(
        Duration::from_secs(30),
        &format!("GpuUser {name} Ready"),
        || async {
            let status = users
                .get(name)
                .await
                .expect("get GpuUser")
                .status
                .unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            status
                .namespace
                .clone()
                .filter(|_| ready)
                .ok_or_else(|| format!("{status:?}"))
        },
    )
    .await
}

/// Books a GpuInstance `name` in `ns` with `spec` (JSON).
pub async fn book(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> gpu_cloud_api::v1::GpuInstance {
    use gpu_cloud_api::v1::GpuInstance;
    let inst: GpuInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .expect("GpuInstance object");
    Api::<GpuInstance>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &inst)
        .await
        .unwrap_or_else(|e| panic!("booking {ns}/{name}: {e}"))
}

/// Waits until instance `ns/name` satisfies `check`, and returns it.
pub async fn wait_instance(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&gpu_cloud_api::v1::GpuInstance) -> bool,
) -> gpu_cloud_api::v1::GpuInstance {
    use gpu_cloud_api::v1::GpuInstance;
    let api = Api::<GpuInstance>::namespaced(client.clone(), ns);
    poll(
        Duration::from_secs(60),
        &format!("{ns}/{name} to be {what}"),
        || async {
            let inst = api
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("get {ns}/{name}: {e}"));
            if check(&inst) {
                Ok(inst)
            } else {
                Err(format!("status {:?}", inst.status))
            }
        },
    )
    .await
}

/// The phase of an instance, for `wait_instance` checks.
pub fn phase(inst: &gpu_cloud_api::v1::GpuInstance) -> Option<gpu_cloud_api::v1::Phase> {
    inst.status.as_ref().and_then(|s| s.phase)
}

/// `prefix-xxxxxx`: a name no other test (or earlier run on a reused cluster) has taken.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

/// A client that acts as user `name` (impersonation), as `kubectl --as` does.
pub async fn client_as(name: &str) -> Client {
    let path = &control_plane().kubeconfig;
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    config.auth_info.impersonate = Some(name.to_owned());
    Client::try_from(config).expect("impersonating client")
}

/// A control plane of one test's own, for tests that change cluster-wide things (CRD
/// versions) that the other tests rely on. Stopped when dropped.
pub struct PrivateControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Its state directory (`hack/cluster --dir`).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl PrivateControlPlane {
    /// Starts one (no GPU nodes) and waits until it is ready.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// [`Self::start`] with extra kube-apiserver flags.
    pub fn start_with(name: &str, apiserver_args: &[&str]) -> Self {
        let mut cmd = Command::new(repo_root().join("hack/cluster"));
        cmd.env("GPU_CLOUD_APISERVER_ARGS", apiserver_args.join(" "));
        Self::start_cluster(name, cmd, &[])
    }

    /// [`Self::start`] with a real node (`hack/real-node`: kubelet, containerd, fake GPUs;
    /// needs root) that has the docker-archive `images` imported. Its fake device plugin
    /// is the one built beside this test binary.
    pub fn start_real_node(name: &str, images: &[&Path]) -> Self {
        let mut cmd = Command::new(repo_root().join("hack/cluster"));
        let fake_gpus =
            Path::new(env!("CARGO_BIN_EXE_gpu-cloud")).with_file_name("gpu-cloud-fake-gpus");
        assert!(
            fake_gpus.is_file(),
            "no {}: build it with `cargo build --workspace --bins` (hack/test does)",
            fake_gpus.display()
        );
        let args: Vec<String> = images
            .iter()
            .map(|i| format!("--image {}", i.display()))
            .collect();
        cmd.env("GPU_CLOUD_REAL_NODE_ARGS", args.join(" "))
            .env("GPU_CLOUD_FAKE_GPUS", fake_gpus);
        Self::start_cluster(name, cmd, &["--real-node"])
    }

    fn start_cluster(name: &str, mut cmd: Command, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("gpu-cloud-test-{}-{name}", std::process::id()));
        cmd.args(["up", "--attach", "--nodes", "0", "--dir"])
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = on_keeper(move || cmd.spawn()).expect("run hack/cluster");
        let stdout = child.stdout.take().expect("stdout pipe");
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.trim() == "ready");
        assert!(
            ready,
            "private control plane {name} did not start; logs in {}",
            dir.join("logs").display()
        );
        PrivateControlPlane {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            child: Some(child),
        }
    }

    /// `hack/cluster kill|revive NAME` on it: a component crashed, or started again.
    pub fn component(&self, action: &str, name: &str) {
        let out = Command::new(repo_root().join("hack/cluster"))
            .args([action, name, "--dir"])
            .arg(&self.dir)
            .output()
            .expect("run hack/cluster");
        assert!(
            out.status.success(),
            "hack/cluster {action} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The port etcd serves clients on.
    pub fn etcd_port(&self) -> u16 {
        let cmd = std::fs::read_to_string(self.dir.join("cmd/kube-apiserver"))
            .expect("the apiserver's command");
        cmd.split("--etcd-servers=http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("etcd's port in the apiserver's command")
    }

    /// An admin client on it.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take()); // EOF: the script tears the cluster down
            let _ = child.wait();
        }
    }
}

/// Runs the gpu-cloud binary with `args` against `kubeconfig`; returns (success, stdout,
/// stderr).
pub fn gpu_cloud(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run gpu-cloud");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A background `gpu-cloud` process (e.g. the webhook), killed when dropped.
pub struct Background(Child);

impl Background {
    /// Starts `gpu-cloud args...` against `kubeconfig`.
    pub fn start(kubeconfig: &Path, args: &[&str]) -> Self {
        Self::start_with_env(kubeconfig, args, &[])
    }

    /// Starts `gpu-cloud args...` against `kubeconfig` with extra environment variables.
    pub fn start_with_env(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpu-cloud"));
        cmd.args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: prctl only sets a flag on the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Background(on_keeper(move || cmd.spawn()).expect("start gpu-cloud"))
    }
}

impl Background {
    /// The process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1, below the ephemeral range (where outgoing connections
/// could take it before our process binds it) and apart from hack/cluster's ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 5000 + (std::process::id() % 2000) as u16 * 2;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 1000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The price list every test that needs one uses (one object, cluster-wide, shared by the
/// tests: they must agree on it). Applied with server-side apply; returns its spec.
pub async fn prices(client: &Client) -> gpu_cloud_api::v1::GpuPriceListSpec {
    use gpu_cloud_api::v1::GpuPriceList;
    let spec = serde_json::json!({
        "currency": "EUR",
        "perGpuHour": {"TEST-COST-GPU": 2.5, "NVIDIA-L4": 0.6},
        "defaultPerGpuHour": 1.0,
        "perKwh": 0.3
    });
    let body = serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuPriceList",
        "metadata": {"name": "default"}, "spec": spec
    });
    Api::<GpuPriceList>::all(client.clone())
        .patch(
            "default",
            &kube::api::PatchParams::apply("gpu-cloud-tests").force(),
            &kube::api::Patch::Apply(&body),
        )
        .await
        .expect("apply the GpuPriceList default")
        .spec
}

/// The usage agent in simulated mode for `node`, sampling and writing every second, its
/// metrics on `metrics_port`; it stops (SIGKILL) when dropped.
pub fn simulated_agent(kubeconfig: &Path, node: &str, metrics_port: u16) -> Background {
    simulated_agent_with(kubeconfig, node, metrics_port, &[])
}

/// [`simulated_agent`] with `extra` flags.
pub fn simulated_agent_with(
    kubeconfig: &Path,
    node: &str,
    metrics_port: u16,
    extra: &[&str],
) -> Background {
    let addr = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "agent",
        "--simulate",
        "--node",
        node,
        "--sample-interval",
        "1s",
        "--write-interval",
        "1s",
        "--metrics-addr",
        &addr,
    ];
    args.extend_from_slice(extra);
    Background::start(kubeconfig, &args)
}

/// Waits until the agent's `status.usage` of `ns/name` grows at `rate` GPU-seconds a
/// second (within `tolerance`, over more than 2 s since its start); panics after 60 s.
pub async fn wait_gpu_seconds_rate(
    client: &Client,
    ns: &str,
    name: &str,
    rate: f64,
    tolerance: f64,
) {
    let api = Api::<gpu_cloud_api::v1::GpuInstance>::namespaced(client.clone(), ns);
    poll(
        Duration::from_secs(60),
        &format!("{rate} GPU-seconds a second"),
        || async {
            let i = api.get(name).await.map_err(|e| e.to_string())?;
            let s = i.status.unwrap_or_default();
            let u = s.usage.as_ref().ok_or("no usage yet")?;
            let since = s.started_at.ok_or("no start")?;
            let secs = u.sampled_at.duration_since(since).as_secs_f64();
            let per_second = u.gpu_seconds / secs.max(1e-3);
            if secs > 2.0 && (per_second - rate).abs() < tolerance {
                Ok(())
            } else {
                Err(format!("{} GPU-s over {secs:.1} s", u.gpu_seconds))
            }
        },
    )
    .await;
}

/// The chart rendered by `helm template` for namespace `ns` (`extra`: e.g. `--show-only
/// templates/x.yaml`); panics with helm's message if it fails.
pub fn render_chart(ns: &str, extra: &[&str]) -> Vec<u8> {
    let out = Command::new(kubectl().with_file_name("helm"))
        .args(["template", "gpu-cloud"])
        .arg(repo_root().join("charts/gpu-cloud"))
        .args(["--namespace", ns])
        .args(extra)
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Deletes instance `name` and returns it as it was with its final usage (the agent's
/// last figures, written before its finalizer lets it go). Watched from before the
/// deletion: the finalizer may remove it a moment after that write, before a poll sees it.
pub async fn delete_for_final_usage(
    api: &Api<gpu_cloud_api::v1::GpuInstance>,
    name: &str,
) -> gpu_cloud_api::v1::GpuInstance {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher(api.clone(), config));
    // The initial list first, so that nothing after the deletion is missed.
    loop {
        match events.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("watch {name}: {e}"),
            None => panic!("watch of {name} ended"),
        }
    }
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(i) | watcher::Event::Delete(i)) = event
                && i.status
                    .as_ref()
                    .and_then(|s| s.usage.as_ref())
                    .is_some_and(|u| u.final_)
            {
                return i;
            }
        }
        panic!("watch of {name} ended before its final usage")
    })
    .await;
    found.unwrap_or_else(|_| panic!("no final usage of {name} within 60 s of its deletion"))
}

/// The Events on object `name` in `ns`: (type, reason, message) each.
pub async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::core::v1::Event;
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

/// GPUs requested per node by the pods of `pods` that have not finished (terminating
/// ones included: they still hold their GPUs).
pub fn gpus_held_per_node(
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    for p in pods {
        let done = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        if done {
            continue;
        }
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        *out.entry(node.unwrap_or_default()).or_default() +=
            gpu_cloud_core::scheduler::pod_gpu_request(p);
    }
    out
}

/// A controller replica with leader election (Lease in `default`) as identity `id`,
/// against `kubeconfig`, with `extra` arguments.
pub fn leader_replica(kubeconfig: &Path, id: &str, extra: &[&str]) -> Background {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "controller",
        "--leader-elect",
        "--lease-namespace",
        "default",
        "--resync",
        "2s",
        "--metrics-addr",
        &addr,
    ];
    args.extend_from_slice(extra);
    Background::start_with_env(kubeconfig, &args, &[("POD_NAME", id)])
}

/// Who holds the controllers' Lease (in `default`, as [`leader_replica`]s use it).
pub async fn lease_holder(client: &Client) -> Option<String> {
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "default")
            .get_opt("gpu-cloud-controller")
            .await
            .ok()??;
    lease.spec?.holder_identity
}

/// A token (an hour) of ServiceAccount `name` in `ns` (TokenRequest).
pub async fn sa_token(client: &Client, ns: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let req: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )
    .expect("TokenRequest");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"))
        .status
        .expect("token")
        .token
}
