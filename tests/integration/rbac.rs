//! The chart's RBAC, on a control plane of the test's own: each component's ServiceAccount
//! may do what its code does and nothing it should not (SubjectAccessReview), and the
//! controller and the agent really work with nothing but their ServiceAccount's token, and
//! a user reads the GPU calendar the controller publishes, and nothing else of its namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, Phase};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::harness::{self, Background, PrivateControlPlane, phase, poll};

const NS: &str = "gpu-cloud";

/// (ServiceAccount, verb, group, resource[/subresource], name, allowed?)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
);

fn sa(name: &str) -> String {
    format!("system:serviceaccount:{NS}:gpu-cloud-{name}")
}

/// May `user` do `verb` on `resource` (`group/resource[/subresource]`, optional name)?
async fn can(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    let groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{NS}"),
    ];
    can_in(
        client,
        (user, &groups),
        verb,
        (group, resource, name),
        "gpu-anyone",
    )
    .await
}

/// May `user` (a member of `groups`) do `verb` on `resource` in `namespace`? Every
/// identity that signed in is also in `system:authenticated`.
async fn can_in(
    client: &Client,
    (user, groups): (&str, &[String]),
    verb: &str,
    (group, resource, name): (&str, &str, Option<&str>),
    namespace: &str,
) -> bool {
    let (resource, subresource) = resource
        .split_once('/')
        .map_or((resource, None), |(r, s)| (r, Some(s)));
    let mut groups = groups.to_vec();
    groups.push("system:authenticated".into());
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "groups": groups,
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "subresource": subresource, "name": name, "namespace": namespace}}
    }))
    .unwrap();
    let out = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    out.status.is_some_and(|s| s.allowed)
}

/// A kubeconfig that authenticates with a token of ServiceAccount `gpu-cloud-<name>`.
async fn token_kubeconfig(client: &Client, admin: &Path, name: &str) -> PathBuf {
    let token = harness::sa_token(client, NS, &format!("gpu-cloud-{name}")).await;
    let kc = Kubeconfig::read_from(admin).expect("admin kubeconfig");
    let cluster = kc.clusters[0].cluster.clone().expect("cluster");
    let path = admin.with_file_name(format!("{name}.token.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
         users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {name}}}\ncurrent-context: c\n",
        cluster.server.expect("server"),
        cluster.certificate_authority_data.expect("CA"),
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// The published GPU calendar.
const CALENDAR: &str = gpu_cloud_api::calendar::CONFIGMAP;

/// ((user, groups), verb, ConfigMap name, namespace, allowed?)
type CalendarCase<'a> = (
    &'a (String, Vec<String>),
    &'static str,
    Option<&'static str>,
    &'static str,
    bool,
);

/// A client on the cluster of `admin` acting as user `name` (as `kubectl --as`).
async fn impersonating(admin: &Path, name: &str) -> Client {
    let kc = Kubeconfig::read_from(admin).expect("admin kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    config.auth_info.impersonate = Some(name.to_owned());
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn each_component_has_exactly_what_it_needs() {
    let cp = PrivateControlPlane::start("rbac");
    let client = cp.client().await;
    // Installs the CRDs and creates the release namespace (gpu-cloud, NS here) too.
    harness::install(&cp.kubeconfig).expect("install CRDs");
    assert!(
        Api::<Namespace>::all(client.clone())
            .get_opt(NS)
            .await
            .unwrap()
            .is_some(),
        "hack/install creates the namespace {NS}"
    );
    let rendered = harness::render_chart(NS, &["--set", "dashboard.enabled=true"]);
    let chart = cp.kubeconfig.with_file_name("chart.yaml");
    std::fs::write(&chart, &rendered).unwrap();
    let applied = Command::new(harness::kubectl())
        .env("KUBECONFIG", &cp.kubeconfig)
        .args(["apply", "--server-side", "-f"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // Allowed and refused, per ServiceAccount.
    let g = "gpu-cloud.io";
    let cases: &[Case] = &[
        // The dashboard reads, and asks who its viewers are; it writes nothing.
        ("dashboard", "list", g, "gpuinstances", None, true),
        ("dashboard", "watch", g, "gpuusers", None, true),
        ("dashboard", "list", "", "events", None, true),
        (
            "dashboard",
            "create",
            "authentication.k8s.io",
            "tokenreviews",
            None,
            true,
        ),
        ("dashboard", "patch", g, "gpuinstances", None, false),
        ("dashboard", "patch", g, "gpuinstances/status", None, false),
        ("dashboard", "get", "", "secrets", None, false),
        ("dashboard", "delete", "", "pods", None, false),
        ("agent", "patch", g, "gpuinstances/status", None, true),
        ("agent", "list", g, "gpuinstances", None, true),
        ("agent", "watch", g, "gpuinstances", None, true),
        ("agent", "watch", "", "pods", None, true),
        ("agent", "create", "", "pods", None, false),
        ("agent", "patch", g, "gpuinstances", None, false),
        ("agent", "get", "", "secrets", None, false),
        ("controller", "create", "", "pods", None, true),
        // A gang's headless Service: made, never deleted (owner references do that).
        ("controller", "create", "", "services", None, true),
        ("controller", "delete", "", "services", None, false),
        ("agent", "create", "", "services", None, false),
        ("controller", "patch", g, "gpuinstances/status", None, true),
        (
            "controller",
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            Some("gpu-cloud-user"),
            true,
        ),
        (
            "controller",
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            Some("cluster-admin"),
            false,
        ),
        ("controller", "watch", g, "gpupricelists", None, true),
        ("controller", "patch", g, "gpupricelists", None, false),
        // Usage records: added to and closed, never deleted.
        ("controller", "update", g, "gpuusagerecords", None, true),
        ("controller", "create", g, "gpuusagerecords", None, true),
        ("controller", "delete", g, "gpuusagerecords", None, false),
        // Each user's own ClusterRole and binding (to read their GpuUser): made, never
        // deleted (owner references do that).
        (
            "controller",
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            true,
        ),
        (
            "controller",
            "delete",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
            false,
        ),
        ("controller", "get", "", "secrets", None, false),
        ("controller", "list", g, "gpupricelists", None, true),
        ("controller", "delete", "", "nodes", None, false),
        (
            "webhook",
            "patch",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            Some("gpuinstances.gpu-cloud.io"),
            true,
        ),
        (
            "webhook",
            "patch",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            Some("other.example.com"),
            false,
        ),
        ("webhook", "list", g, "gpuinstances", None, false),
        (
            "migrate",
            "patch",
            "apiextensions.k8s.io",
            "customresourcedefinitions/status",
            None,
            true,
        ),
        ("migrate", "update", g, "gpuinstances", None, true),
        ("migrate", "update", g, "gpupricelists", None, true),
        ("migrate", "delete", g, "gpuinstances", None, false),
    ];
    for &(who, verb, group, resource, name, want) in cases {
        let got = can(&client, &sa(who), verb, group, resource, name).await;
        assert_eq!(got, want, "{who} {verb} {group}/{resource} {name:?}");
    }

    // The GPU calendar: the controller applies that one ConfigMap in its namespace; every
    // signed-in identity may get it, and nothing else of the namespace.
    let cal = Some(CALENDAR);
    let controller_groups = [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{NS}"),
    ];
    let controller = (sa("controller"), controller_groups.to_vec());
    let anyone = ("someone".to_owned(), vec![]);
    let calendar_cases: &[CalendarCase] = &[
        (&controller, "patch", cal, NS, true),
        (&controller, "create", cal, NS, true),
        (&controller, "create", None, NS, false),
        (&controller, "patch", Some("other"), NS, false),
        (&controller, "update", cal, NS, false),
        (&controller, "delete", cal, NS, false),
        (&controller, "create", cal, "gpu-anyone", false),
        (&anyone, "get", cal, NS, true),
        (&anyone, "list", None, NS, false),
        (&anyone, "watch", cal, NS, false),
        (&anyone, "get", Some("other"), NS, false),
        (&anyone, "patch", cal, NS, false),
        (&anyone, "get", cal, "gpu-anyone", false),
    ];
    for &(who, verb, name, namespace, want) in calendar_cases {
        let got = can_in(
            &client,
            (&who.0, &who.1),
            verb,
            ("", "configmaps", name),
            namespace,
        )
        .await;
        assert_eq!(
            got, want,
            "{} {verb} configmaps {name:?} in {namespace}",
            who.0
        );
    }

    // The controller and the agent work with only their own tokens.
    let controller_kc = token_kubeconfig(&client, &cp.kubeconfig, "controller").await;
    let agent_kc = token_kubeconfig(&client, &cp.kubeconfig, "agent").await;
    let metrics = format!("127.0.0.1:{}", harness::free_port());
    let _controller = Background::start_with_env(
        &controller_kc,
        &[
            "controller",
            "--leader-elect",
            "--lease-namespace",
            NS,
            "--metrics-addr",
            &metrics,
        ],
        &[("POD_NAME", "rbac-test")],
    );
    let nodes = harness::gpu_nodes(&client, "t-rbac", "TEST-RBAC-GPU", 1, 2).await;
    let agent_metrics = format!("127.0.0.1:{}", harness::free_port());
    let _agent = Background::start(
        &agent_kc,
        &[
            "agent",
            "--simulate",
            "--node",
            &nodes[0],
            "--write-interval",
            "1s",
            "--metrics-addr",
            &agent_metrics,
        ],
    );
    // Its ClusterRole grants are kept to the per-user names by the chart's admission
    // policy: with its own token it cannot touch any other ClusterRole.
    let as_controller = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&controller_kc).expect("controller kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("controller config"),
    )
    .expect("controller client");
    // A ClusterRole of someone else's that holds only what the controller holds itself
    // (so RBAC's escalation check would let it through): the policy still refuses.
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let other: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "someone-elses"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &other)
        .await
        .expect("admin creates a ClusterRole");
    let roles = Api::<ClusterRole>::all(as_controller.clone());
    let label = kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
    let refused = harness::poll(
        std::time::Duration::from_secs(30),
        "the admission policy refusing the controller's write to another ClusterRole",
        || async {
            match roles
                .patch("someone-elses", &kube::api::PatchParams::default(), &label)
                .await
            {
                Err(kube::Error::Api(e)) if e.message.contains("gpu-cloud-user:<user>") => Ok(e),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(matches!(refused.code, 403 | 422), "{refused:?}");
    let user_ns = harness::user(
        &client,
        "rita",
        json!({"subjects": [{"kind": "User", "name": "rita"}]}),
    )
    .await;
    harness::book(
        &client,
        &user_ns,
        "job",
        json!({"gpu": {"model": "TEST-RBAC-GPU", "count": 1}, "image": "x", "duration": "1h"}),
    )
    .await;
    harness::wait_instance(&client, &user_ns, "job", "Running", |i| {
        phase(i) == Some(Phase::Running)
    })
    .await;
    // Blast radius: the controller made rita's namespace and pod under the chart's
    // policies; with its own token it can delete no other namespace, and create pods
    // only in user namespaces and only unprivileged ones. User namespaces enforce the
    // baseline Pod Security level.
    let ns_labels = Api::<Namespace>::all(client.clone())
        .get(&user_ns)
        .await
        .expect("rita's namespace")
        .labels()
        .clone();
    assert_eq!(
        ns_labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("baseline")
    );
    let namespaces = Api::<Namespace>::all(as_controller.clone());
    namespaces
        .delete("kube-system", &Default::default())
        .await
        .expect_err("the controller deleting kube-system");
    // kube-system is kept by the apiserver itself; any other namespace by the policy.
    let other: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "someone-elses"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &other)
        .await
        .expect("admin creates a namespace");
    let refused = namespaces
        .delete("someone-elses", &Default::default())
        .await
        .expect_err("the controller deleting someone else's namespace");
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.message.contains("gpu-<user> namespaces it manages")),
        "{refused:?}"
    );
    let pod = |privileged: bool| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("fenced-{privileged}")},
            "spec": {"containers": [{"name": "c", "image": "busybox",
                     "securityContext": {"privileged": privileged}}]}
        }))
        .unwrap()
    };
    use k8s_openapi::api::core::v1::Pod;
    let refused = Api::<Pod>::namespaced(as_controller.clone(), "default")
        .create(&PostParams::default(), &pod(false))
        .await
        .expect_err("the controller creating a pod in default");
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.message.contains("pods only in the gpu-<user> namespaces")),
        "{refused:?}"
    );
    let refused = Api::<Pod>::namespaced(as_controller.clone(), &user_ns)
        .create(&PostParams::default(), &pod(true))
        .await
        .expect_err("the controller creating a privileged pod");
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.message.contains("privileged")),
        "{refused:?}"
    );
    // Services: headless ones in user namespaces only.
    use k8s_openapi::api::core::v1::Service;
    let svc = |name: &str, cluster_ip: Option<&str>, kind: &str| -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": kind, "clusterIP": cluster_ip, "ports": [{"port": 80}]}
        }))
        .unwrap()
    };
    let refused = Api::<Service>::namespaced(as_controller.clone(), "default")
        .create(
            &PostParams::default(),
            &svc("fenced", Some("None"), "ClusterIP"),
        )
        .await
        .expect_err("the controller creating a service in default");
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.message.contains("services only in the gpu-<user> namespaces")),
        "{refused:?}"
    );
    for (name, ip, kind) in [("lb", None, "LoadBalancer"), ("vip", None, "ClusterIP")] {
        let refused = Api::<Service>::namespaced(as_controller.clone(), &user_ns)
            .create(&PostParams::default(), &svc(name, ip, kind))
            .await
            .expect_err("the controller creating a service that is not headless");
        assert!(
            matches!(&refused, kube::Error::Api(e) if e.message.contains("only headless services")),
            "{name}: {refused:?}"
        );
    }
    Api::<Service>::namespaced(as_controller.clone(), &user_ns)
        .create(
            &PostParams::default(),
            &svc("headless", Some("None"), "ClusterIP"),
        )
        .await
        .expect("the controller creates a headless service in a user namespace");
    let api = Api::<GpuInstance>::namespaced(client.clone(), &user_ns);
    poll(
        Duration::from_secs(30),
        "usage written by the agent under its own token",
        || async {
            let i = api.get("job").await.map_err(|e| e.to_string())?;
            let has = i
                .status
                .as_ref()
                .and_then(|s| s.usage.as_ref())
                .is_some_and(|u| u.gpu_seconds > 0.0);
            if has {
                Ok(())
            } else {
                Err(format!("{:?}", i.status))
            }
        },
    )
    .await;
    // The migrate Job's and the webhook's tokens suffice for their work too.
    let migrate_kc = token_kubeconfig(&client, &cp.kubeconfig, "migrate").await;
    let (ok, _, err) = harness::gpu_cloud(&migrate_kc, &["migrate"]);
    assert!(ok, "migrate under its ServiceAccount: {err}");
    let webhook_kc = token_kubeconfig(&client, &cp.kubeconfig, "webhook").await;
    let port = harness::free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _webhook = Background::start(
        &webhook_kc,
        &[
            "webhook",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--url",
            &url,
        ],
    );
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(client.clone());
    poll(
        Duration::from_secs(30),
        "the webhook's CA injected under its ServiceAccount",
        || async {
            let crd = crds
                .get("gpuinstances.gpu-cloud.io")
                .await
                .map_err(|e| e.to_string())?;
            let cfg = crd
                .spec
                .conversion
                .and_then(|c| c.webhook)
                .and_then(|w| w.client_config);
            match cfg {
                Some(c)
                    if c.url.as_deref() == Some(&format!("{url}/convert"))
                        && c.ca_bundle.is_some() =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // The controller published the GPU calendar under its own token, and a user who may
    // read nothing else there reads it.
    let as_rita = impersonating(&cp.kubeconfig, "rita").await;
    let cms = Api::<ConfigMap>::namespaced(as_rita, NS);
    poll(
        Duration::from_secs(30),
        "the calendar with the node, read as a user",
        || async {
            let cm = cms.get(CALENDAR).await.map_err(|e| e.to_string())?;
            let json = cm
                .data
                .unwrap_or_default()
                .remove("calendar.json")
                .unwrap_or_default();
            if json.contains(&nodes[0]) && json.contains("TEST-RBAC-GPU") {
                Ok(())
            } else {
                Err(json)
            }
        },
    )
    .await;
    assert!(
        matches!(cms.list(&Default::default()).await, Err(kube::Error::Api(e)) if e.code == 403),
        "a user listed the ConfigMaps of {NS}"
    );

    let managers: Vec<String> = api
        .get("job")
        .await
        .unwrap()
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"gpu-cloud-agent".to_string())
            && managers.contains(&"gpu-cloud-controller".to_string()),
        "{managers:?}"
    );
}
