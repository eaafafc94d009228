//! Generated bad input against the real apiserver: random GpuInstance, GpuUser and
//! GpuPriceList objects (wrong types, bounds, unicode, sizes near and past the limits,
//! unknown fields). Each one the apiserver refuses names the field at fault; each it
//! accepts reaches a phase, and then stays quiet (no write loop), with the controller
//! alive and not spinning. Seeded, so a failure replays.

use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, GpuUser};
use kube::api::{Api, DeleteParams};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::harness::{self, eventually};

/// A value of any JSON type, biased to the edges of what the CRDs allow.
fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![-1001i64, -1, 0, 1, 8, 64, 65, 1000, 1001, i64::MAX])
            .prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        prop::sample::select(vec![32usize, 33, 63, 64, 512, 513, 4097, 70_000])
            .prop_map(|n| Value::from("é".repeat(n))),
        prop::sample::select(vec![
            "30m",
            "0s",
            "9s",
            "10s",
            "720h",
            "721h",
            "10m1s",
            "1h30m",
            "-5m",
            "1e3h",
            "2026-12-02T10:00:00Z",
            "2999-01-01T00:00:00Z",
            "not-a-time",
            "Requeue",
            "Fail",
            "Stop",
            "Month",
            "Week",
            "EarliestAvailable",
            "TEST-BADINPUT-GPU",
            "busybox",
            "",
            "🚀",
            "a\u{0}b",
            "default",
        ])
        .prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!(["a", 1, null])),
        Just(json!({"x": {"y": [1]}})),
    ]
}

/// Sets the dotted `path` of `obj` to `v`, making objects on the way.
fn set(obj: &mut Value, path: &str, v: Value) {
    let mut at = obj;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if !at.is_object() {
            *at = json!({});
        }
        let map = at.as_object_mut().expect("an object");
        if parts.peek().is_none() {
            map.insert(p.to_owned(), v);
            return;
        }
        at = map.entry(p.to_owned()).or_insert_with(|| json!({}));
    }
}

/// `base` with one to three of `paths` set to junk.
fn mutated(base: Value, paths: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(paths), junk()), 1..4).prop_map(move |edits| {
        let mut obj = base.clone();
        for (path, v) in edits {
            set(&mut obj, path, v);
        }
        obj
    })
}

const INSTANCE_PATHS: &[&str] = &[
    "spec.gpu.model",
    "spec.gpu.count",
    "spec.gpu",
    "spec.image",
    "spec.command",
    "spec.args",
    "spec.env",
    "spec.resources",
    "spec.resources.cpu",
    "spec.resources.memory",
    "spec.duration",
    "spec.priority",
    "spec.startTime",
    "spec.startPolicy",
    "spec.idleTimeout",
    "spec.idleThresholdPercent",
    "spec.idleWarnOnly",
    "spec.preemptible",
    "spec.preemption",
    "spec.preemption.gracePeriod",
    "spec.preemption.onPreempted",
    "spec.onNodeLost",
    "spec.bogusField",
    "spec",
];
const USER_PATHS: &[&str] = &[
    "metadata.name",
    "spec.quota",
    "spec.quota.maxGpus",
    "spec.quota.borrowGpus",
    "spec.quota.maxSpotGpus",
    "spec.quota.gpuHours",
    "spec.quota.gpuHours.limit",
    "spec.quota.gpuHours.period",
    "spec.quota.gpuHours.resetDay",
    "spec.subjects",
    "spec.suspended",
    "spec.idle",
    "spec.idle.timeout",
    "spec.bogusField",
];
const PRICE_PATHS: &[&str] = &[
    "metadata.name",
    "spec.currency",
    "spec.perGpuHour",
    "spec.perGpuHour.TEST",
    "spec.defaultPerGpuHour",
    "spec.perKwh",
    "spec.spotFactor",
    "spec.bogusField",
];

/// Creates `obj` (JSON as generated, not through our types, which would refuse it first)
/// at `url` (the collection); `Ok` with its name when accepted, `Err` with the refusal's
/// message. A refusal must name the field at fault.
async fn create(client: &kube::Client, url: &str, obj: &Value) -> Result<String, String> {
    let body = serde_json::to_vec(obj).expect("json");
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    match client.request::<Value>(req).await {
        Ok(o) => Ok(o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()),
        Err(kube::Error::Api(s)) => {
            // The apiserver's own notice that it skipped the CEL rules of an object already
            // invalid carries no field (`<nil>`); it is not a refusal of ours.
            let skipped = |c: &kube::core::response::StatusCause| {
                c.message.contains("some validation rules were not checked")
                    // The format checker names the field in its message, not its path.
                    || (c.message.contains("Checked value must be of type")
                        && c.message.contains(" in spec."))
            };
            let causes: Vec<_> = s
                .details
                .as_ref()
                .map(|d| d.causes.iter().filter(|c| !skipped(c)).cloned().collect())
                .unwrap_or_default();
            let message = s
                .message
                .replace(
                    "<nil>: Invalid value: null: some validation rules were not checked",
                    "(skipped rules)",
                )
                .replace(
                    "<nil>: Invalid value: \"\": Checked value",
                    "(format) Checked value",
                );
            let named = match s.code {
                // Invalid: every cause names its field.
                422 => {
                    !causes.is_empty()
                        && causes
                            .iter()
                            .all(|c| !c.field.is_empty() && !c.field.contains("<nil>"))
                }
                // Not even an object of the kind (a wrong type where the decoder needs one,
                // e.g. metadata), or a name already taken.
                400 | 409 => true,
                _ => false,
            };
            assert!(
                named && !message.contains("<nil>"),
                "a refusal without the field at fault for {obj}: {s:?}"
            );
            Err(s.message)
        }
        Err(e) => panic!("{obj}: {e}"),
    }
}

/// `count` objects drawn from `strategy` by a seeded runner.
fn draw(strategy: impl Strategy<Value = Value>, count: usize, seed: u8) -> Vec<Value> {
    let config = proptest::test_runner::Config::default();
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[seed; 32],
        ),
    );
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

/// CPU seconds the shared controller has used so far (utime + stime).
fn controller_cpu_seconds() -> f64 {
    let pid = harness::controller_pid().expect("the shared controller runs");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("its /proc stat");
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test]
async fn generated_objects_are_refused_by_field_or_reach_a_phase_quietly() {
    let client = harness::operator().await;
    let model = "TEST-BADINPUT-GPU";
    harness::gpu_nodes(&client, &harness::unique("t-bad"), model, 1, 8).await;
    let owner = harness::unique("bad");
    let ns = harness::user(&client, &owner, json!({"quota": {"maxGpus": 8}})).await;
    let (mut refused, mut accepted) = (0, vec![]);

    // Instances.
    let base = json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
        "metadata": {"namespace": ns},
        "spec": {"gpu": {"model": model, "count": 1}, "image": "busybox", "duration": "1h"}});
    let url = format!("/apis/gpu-cloud.io/v1/namespaces/{ns}/gpuinstances");
    for (k, mut obj) in draw(mutated(base, INSTANCE_PATHS), 120, 1)
        .into_iter()
        .enumerate()
    {
        set(&mut obj, "metadata.name", json!(format!("gen-{k}")));
        match create(&client, &url, &obj).await {
            Ok(name) => accepted.push((name, obj)),
            Err(_) => refused += 1,
        }
    }
    // Users (their names generated too: a bad one must be refused at metadata.name).
    let base = json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser",
        "metadata": {}, "spec": {"quota": {"maxGpus": 1}}});
    let mut users = vec![];
    for (k, mut obj) in draw(mutated(base, USER_PATHS), 60, 2)
        .into_iter()
        .enumerate()
    {
        if !obj["metadata"]["name"].is_string() {
            set(&mut obj, "metadata.name", json!(format!("{owner}-u{k}")));
        }
        match create(&client, "/apis/gpu-cloud.io/v1/gpuusers", &obj).await {
            Ok(name) => users.push(name),
            Err(_) => refused += 1,
        }
    }
    // Price lists: validated only (dry run), since the one the cluster has is shared.
    let base = json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuPriceList",
        "metadata": {"name": "default"}, "spec": {"currency": "EUR"}});
    let mut prices_accepted = 0;
    for obj in draw(mutated(base, PRICE_PATHS), 60, 3) {
        // Validated, not stored: a dry run. (The name may be taken: 409 is an answer too.)
        match create(
            &client,
            "/apis/gpu-cloud.io/v1/gpupricelists?dryRun=All",
            &obj,
        )
        .await
        {
            Ok(_) => prices_accepted += 1,
            Err(_) => refused += 1,
        }
    }
    println!(
        "generated input: 240 objects, {refused} refused by field, {} instances, {} users and {prices_accepted} price lists accepted",
        accepted.len(),
        users.len()
    );
    assert!(
        refused > 60 && !accepted.is_empty(),
        "a corpus that tests both sides"
    );

    // Names point at metadata.name, never <nil>; a count no type of ours could hold is
    // refused at its field (taken, the controller could not have read the object).
    for (url, obj, field) in [
        (
            "/apis/gpu-cloud.io/v1/gpuusers",
            json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser",
                   "metadata": {"name": "x".repeat(60)}, "spec": {}}),
            "metadata.name",
        ),
        (
            "/apis/gpu-cloud.io/v1/gpupricelists?dryRun=All",
            json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuPriceList",
                   "metadata": {"name": "other"}, "spec": {"currency": "EUR"}}),
            "metadata.name",
        ),
        (
            "/apis/gpu-cloud.io/v1/gpuusers?dryRun=All",
            json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "huge"},
                   "spec": {"quota": {"maxGpus": 5_000_000_000u64}}}),
            "spec.quota.maxGpus",
        ),
    ] {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&obj).unwrap())
            .unwrap();
        match client.request::<Value>(req).await {
            Err(kube::Error::Api(s)) => {
                let fields: Vec<String> = s
                    .details
                    .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                    .unwrap_or_default();
                assert_eq!(fields, [field], "{}", s.message);
            }
            other => panic!("{obj} not refused: {other:?}"),
        }
    }

    // Every accepted one reaches a phase (users: a condition).
    let instances = Api::<GpuInstance>::namespaced(client.clone(), &ns);
    for (name, obj) in &accepted {
        eventually(
            Duration::from_secs(60),
            &format!("{name} in a phase: {obj}"),
            || async {
                instances
                    .get(name)
                    .await
                    .ok()
                    .and_then(|i| i.status)
                    .is_some_and(|s| s.phase.is_some())
            },
        )
        .await;
    }
    let user_api = Api::<GpuUser>::all(client.clone());
    for name in &users {
        eventually(
            Duration::from_secs(60),
            &format!("user {name} reconciled"),
            || async {
                user_api
                    .get(name)
                    .await
                    .ok()
                    .and_then(|u| u.status)
                    .is_some_and(|s| !s.conditions.is_empty())
            },
        )
        .await;
    }
    // Then quiet: no status written over and over, the controller not spinning.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = |list: Vec<GpuInstance>| -> Vec<(String, String)> {
        list.into_iter()
            .map(|i| {
                (
                    i.metadata.name.unwrap_or_default(),
                    i.metadata.resource_version.unwrap_or_default(),
                )
            })
            .collect()
    };
    let before = versions(instances.list(&Default::default()).await.unwrap().items);
    let cpu = controller_cpu_seconds();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = controller_cpu_seconds() - cpu;
    let after = versions(instances.list(&Default::default()).await.unwrap().items);
    assert_eq!(before, after, "instances rewritten while nothing changed");
    println!("controller CPU over 10 s after the corpus: {cpu:.2} s");
    // A loop would hold a core (10 s); the other tests running beside this one use some.
    assert!(
        cpu < 7.0,
        "the controller used {cpu:.1} s of CPU in 10 quiet seconds"
    );
    let (status, _) = harness::http_get(harness::controller_metrics_port(), "/healthz")
        .expect("controller /healthz");
    assert!(status.contains("200"), "{status}");

    for name in &users {
        let _ = user_api.delete(name, &DeleteParams::default()).await;
    }
}
