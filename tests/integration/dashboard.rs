//! The web dashboard against the real control plane, over HTTP with two users' own
//! tokens and an operator's: each sees their own instances, budget and cost and nothing of
//! the other's; the operator sees both; the numbers on the pages are the objects'.

use std::time::{Duration, Instant};

use gpu_cloud_api::v1::Phase;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::harness::{self, Background, phase};

/// A ServiceAccount `name` in `ns` and a token of it.
pub(crate) async fn token(client: &Client, ns: &str, name: &str) -> String {
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("ServiceAccount");
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    harness::sa_token(client, ns, name).await
}

fn get(port: u16, path: &str, token: &str) -> (String, String) {
    let auth = format!("Bearer {token}");
    harness::http_get_with(port, path, &[("Authorization", &auth)]).expect("GET the dashboard")
}

#[tokio::test]
async fn each_viewer_sees_their_own_and_operators_see_all() {
    let client = harness::operator().await;
    let kubeconfig = harness::control_plane().kubeconfig.clone();
    let model = "TEST-DASH-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-dash"), model, 2, 4).await;
    let home = harness::namespace(&client, "dash-people").await;
    let ops_ns = harness::namespace(&client, "dash-ops").await;
    let (ann, ben) = (harness::unique("ann"), harness::unique("ben"));
    let ann_token = token(&client, &home, "ann").await;
    let ben_token = token(&client, &home, "ben").await;
    let ops_token = token(&client, &ops_ns, "ops").await;
    let subject = |sa: &str| json!([{"kind": "ServiceAccount", "name": sa, "namespace": home}]);
    let ann_ns = harness::user(
        &client,
        &ann,
        json!({"subjects": subject("ann"), "quota": {"gpuHours": {"limit": 100.0}}}),
    )
    .await;
    let ben_ns = harness::user(&client, &ben, json!({"subjects": subject("ben")})).await;
    let spec =
        |n: u32| json!({"gpu": {"model": model, "count": n}, "image": "x", "duration": "1h"});
    harness::book(&client, &ann_ns, "ann-run", spec(3)).await;
    harness::book(&client, &ben_ns, "ben-run", spec(4)).await;
    harness::book(&client, &ben_ns, "ben-waits", spec(4)).await;
    for (ns, name) in [(&ann_ns, "ann-run"), (&ben_ns, "ben-run")] {
        harness::wait_instance(&client, ns, name, "Running", |i| {
            phase(i) == Some(Phase::Running)
        })
        .await;
    }

    let port = harness::free_port();
    let group = format!("system:serviceaccounts:{ops_ns}");
    let _dashboard = Background::start(
        &kubeconfig,
        &[
            "dashboard",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--operators-group",
            &group,
            "--calendar-namespace",
            harness::CONTROLLER_NAMESPACE,
        ],
    );
    harness::eventually(Duration::from_secs(30), "the dashboard serving", || async {
        harness::http_get(port, "/healthz").is_ok_and(|(s, _)| s.contains(" 200 "))
    })
    .await;

    // No token, or one the apiserver does not know: 401, saying how to get in.
    let (status, body) = harness::http_get(port, "/").expect("GET /");
    assert!(
        status.contains(" 401 ") && body.contains("kubectl gpu dashboard"),
        "{status}"
    );
    assert!(get(port, "/", "not-a-token").0.contains(" 401 "));

    // Occupancy: the model's GPUs held are the running bookings' (3 + 4), for anyone.
    let (status, body) = get(port, "/", &ann_token);
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        body.contains(&format!(
            r#"data-model="{model}" data-used="7" data-total="8""#
        )),
        "{body}"
    );

    // Ann sees her instance, budget and cost; nothing of Ben's.
    let (_, queue) = get(port, "/queue", &ann_token);
    assert!(
        !queue.contains("ben-waits") && !queue.contains(&ben_ns),
        "{queue}"
    );
    let (_, people) = get(port, "/users", &ann_token);
    assert!(
        people.contains(&format!(r#"data-user="{ann}""#)),
        "{people}"
    );
    assert!(!people.contains(&ben), "{people}");
    let (status, page) = get(port, &format!("/users/{ann}"), &ann_token);
    assert!(
        status.contains(" 200 ") && page.contains("data-budget-remaining"),
        "{page}"
    );
    assert!(page.contains(r#"data-chart="burn-down""#), "{page}");
    assert!(
        get(port, &format!("/users/{ben}"), &ann_token)
            .0
            .contains(" 404 ")
    );
    assert!(
        get(port, &format!("/instances/{ben_ns}/ben-run"), &ann_token)
            .0
            .contains(" 404 ")
    );
    let (status, inst) = get(port, &format!("/instances/{ann_ns}/ann-run"), &ann_token);
    assert!(
        status.contains(" 200 ") && inst.contains(r#"data-phase="Running""#),
        "{inst}"
    );
    assert!(
        inst.contains("Running") && inst.contains("Conditions"),
        "{inst}"
    );

    // Ben sees his queued booking with its reason and position.
    let (_, queue) = get(port, "/queue", &ben_token);
    assert!(
        queue.contains("ben-waits") && queue.contains("waiting for 4"),
        "{queue}"
    );
    assert!(!queue.contains(&ann_ns), "{queue}");

    // The operator sees both.
    let (_, people) = get(port, "/users", &ops_token);
    assert!(people.contains(&ann) && people.contains(&ben), "{people}");
    assert!(
        get(port, &format!("/instances/{ben_ns}/ben-run"), &ops_token)
            .0
            .contains(" 200 ")
    );
    let (_, page) = get(port, "/reservations", &ops_token);
    assert!(
        page.contains(&format!(r#"data-booking="{ann_ns}/ann-run""#)),
        "{page}"
    );

    // The live update: the fragment is `main` only, and it follows the cluster.
    let auth = format!("Bearer {ann_token}");
    let fragment = || {
        harness::http_get_with(port, "/", &[("Authorization", &auth), ("X-Fragment", "1")])
            .expect("GET a fragment")
            .1
    };
    assert!(!fragment().contains("<html"), "a fragment is main only");
    // In a real browser (Debian's headless Chromium, driven over the DevTools protocol by
    // tests/browser/dashboard.mjs): every page, its screenshot and its numbers.
    let shots = harness::repo_root().join("target/tmp/dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let chromium = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(chromium).exists(),
        "no {chromium}: hack/prerequisites installs Debian's chromium"
    );
    let pages = [
        ("occupancy", "/".to_owned()),
        ("queue", "/queue".to_owned()),
        ("reservations", "/reservations".to_owned()),
        ("users", "/users".to_owned()),
        ("user", format!("/users/{ann}")),
        ("instance", format!("/instances/{ann_ns}/ann-run")),
    ];
    let mut browser = std::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg(harness::repo_root().join("tests/browser/dashboard.mjs"))
        .args([chromium, &format!("http://127.0.0.1:{port}"), &ops_token])
        .arg(&shots)
        .arg(model)
        .args(pages.iter().map(|(n, p)| format!("{n}={p}")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run node tests/browser/dashboard.mjs");
    // Its errors are kept for the failure message (a CI log shows only its tail).
    let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let errors = errors.clone();
        let stderr = browser.stderr.take().expect("browser stderr");
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
            {
                eprintln!("browser: {line}");
                let mut all = errors.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
    }
    let errors_of = || {
        // The reader thread gets the last lines once the process is gone.
        std::thread::sleep(Duration::from_millis(200));
        errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        browser.stdout.take().expect("browser stdout"),
    ));
    let mut seen = std::collections::BTreeMap::new();
    let before = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| {
                let _ = browser.wait();
                panic!("the browser test ended early: {}", errors_of())
            })
            .expect("read the browser test");
        if let Some(rest) = line.strip_prefix("PAGE ") {
            let (name, json) = rest.split_once(' ').expect("PAGE name json");
            let data: Vec<serde_json::Value> = serde_json::from_str(json).expect("page data");
            seen.insert(name.to_owned(), data);
        } else if let Some(used) = line.strip_prefix("READY ") {
            break used.to_owned();
        }
    };
    let has = |page: &str, want: serde_json::Value| {
        let data = &seen[page];
        let want = want.as_object().unwrap();
        assert!(
            data.iter()
                .any(|d| want.iter().all(|(k, v)| d.get(k) == Some(v))),
            "{page} shows no {want:?}: {data:?}"
        );
    };
    has(
        "occupancy",
        json!({"model": model, "used": "7", "total": "8"}),
    );
    has("queue", json!({"instance": format!("{ben_ns}/ben-waits")}));
    has(
        "reservations",
        json!({"booking": format!("{ann_ns}/ann-run"), "phase": "Running"}),
    );
    has("users", json!({"user": ann}));
    has("users", json!({"user": ben}));
    has("user", json!({"chart": "burn-down"}));
    has(
        "instance",
        json!({"instance": format!("{ann_ns}/ann-run"), "phase": "Running"}),
    );
    for (name, _) in &pages {
        let png = shots.join(format!("dashboard-{name}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{}",
            png.display()
        );
    }
    assert_eq!(before, "7");

    // Ann's booking ends: its node frees 4 GPUs and Ben's waiting booking takes them; the
    // page in the browser shows it without a reload.
    Api::<gpu_cloud_api::v1::GpuInstance>::namespaced(client.clone(), &ann_ns)
        .delete("ann-run", &Default::default())
        .await
        .expect("delete ann-run");
    {
        use std::io::Write;
        let mut stdin = browser.stdin.take().expect("browser stdin");
        writeln!(stdin, "go").expect("tell the browser test");
    }
    let live = lines
        .next()
        .unwrap_or_else(|| panic!("no live update from the browser: {}", errors_of()))
        .expect("read the browser test");
    assert!(
        live.starts_with("LIVE "),
        "the page did not update by itself: {live}"
    );
    let ended = browser.wait().expect("the browser test ends");
    assert!(
        ended.success(),
        "the browser test ended with {ended}: {}",
        errors_of()
    );
    println!("dashboard screenshots in {}", shots.display());
    let full = format!(r#"data-model="{model}" data-used="8" data-total="8""#);
    harness::eventually(
        Duration::from_secs(60),
        "occupancy following the change",
        || async { fragment().contains(&full) },
    )
    .await;

    // A page loads quickly (watch caches, no API call but the cached TokenReview).
    let t = Instant::now();
    for _ in 0..10 {
        get(port, "/queue", &ops_token);
    }
    println!(
        "dashboard: /queue in {:.1} ms on average",
        t.elapsed().as_secs_f64() * 100.0
    );
}

/// A copy of the admin kubeconfig that signs in with `token` instead.
pub(crate) fn kubeconfig_with_token(
    admin: &std::path::Path,
    token: &str,
    who: &str,
) -> std::path::PathBuf {
    let path = admin.with_file_name(format!("kubeconfig-{who}"));
    std::fs::copy(admin, &path).expect("copy the kubeconfig");
    for args in [
        &["config", "set-credentials", who, "--token", token][..],
        &["config", "set-context", "--current", "--user", who],
    ] {
        let out = std::process::Command::new(harness::kubectl())
            .arg("--kubeconfig")
            .arg(&path)
            .args(args)
            .output()
            .expect("run kubectl config");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

/// A `kubectl gpu dashboard` process, killed when dropped.
pub(crate) struct Plugin(std::process::Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `kubectl gpu dashboard args` with `kubeconfig`: the local port it serves on, or
/// (when it exits) what it printed.
pub(crate) fn open_dashboard(
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> Result<(u16, Plugin), String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(harness::kubectl())
        .args(["gpu", "dashboard", "--port", "0"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", crate::realnode::plugin_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl gpu dashboard");
    let stdout = child.stdout.take().expect("stdout");
    let mut printed = String::new();
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        printed.push_str(&line);
        printed.push('\n');
        if let Some(port) = line
            .trim()
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.trim_end_matches('/').parse().ok())
        {
            return Ok((port, Plugin(child)));
        }
    }
    let out = child
        .wait_with_output()
        .expect("kubectl gpu dashboard ends");
    Err(format!("{printed}{}", String::from_utf8_lossy(&out.stderr)))
}
