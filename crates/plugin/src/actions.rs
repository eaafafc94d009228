//! What `kubectl gpu` asks of the API: a client as the person, booking, reading users,
//! instances and the published calendar.

use std::io::Write;

use gpu_cloud_api::calendar::{self, Calendar};
use gpu_cloud_api::v1::{GpuInstance, GpuUser, StartPolicy};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use crate::PluginError;
use crate::tables::{budget_table, cost_table, usage_table};

/// A client as the kubeconfig says, acting as `as_user` (and `as_group`) when given.
pub async fn client(as_user: Option<String>, as_group: Vec<String>) -> Result<Client, PluginError> {
    let mut config = kube::Config::infer().await?;
    if let Some(user) = as_user {
        config.auth_info.impersonate = Some(user);
    }
    if !as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(as_group);
    }
    Client::try_from(config).map_err(PluginError::Client)
}

/// The namespace of the caller's own GpuUser (see [`crate::whoami`]), if the API says
/// who they are and they may read a GpuUser that names them: the ones they may list, else
/// the one named as they are (a user may read their own GpuUser, not list the others).
pub async fn own_namespace(client: &Client) -> Option<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&Default::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    let info = review.status?.user_info?;
    let caller = crate::whoami::Caller {
        username: info.username.unwrap_or_default(),
        groups: info.groups.unwrap_or_default(),
    };
    let api = Api::<GpuUser>::all(client.clone());
    let users = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(_) => api
            .get_opt(&caller.username)
            .await
            .ok()
            .flatten()
            .into_iter()
            .collect(),
    };
    crate::whoami::own_namespace(&caller, &users)
}

/// What to book.
pub struct Booking<'a> {
    pub model: &'a str,
    pub count: u32,
    /// Nodes of a gang (1: one node).
    pub nodes: u32,
    /// A gang in one topology domain only.
    pub one_domain: bool,
    /// A slice of a GPU per unit (`1g.10gb`, `shared`).
    pub slice: Option<&'a str>,
    pub duration: &'a str,
    pub image: &'a str,
    /// Booked ahead: the start and what to do when that window is taken.
    pub ahead: Option<(Timestamp, StartPolicy)>,
}

pub async fn book(
    client: &Client,
    ns: &str,
    b: &Booking<'_>,
    name: Option<String>,
    command: Vec<String>,
) -> Result<GpuInstance, PluginError> {
    let metadata = match name {
        Some(n) => serde_json::json!({"name": n, "namespace": ns}),
        None => serde_json::json!({"generateName": "gi-", "namespace": ns}),
    };
    let mut spec = serde_json::json!({
        "gpu": {"model": b.model, "count": b.count}, "image": b.image, "command": command,
        "duration": b.duration
    });
    if let Some(s) = b.slice {
        spec["gpu"]["slice"] = serde_json::json!(s);
    }
    if b.nodes > 1 {
        spec["gpu"]["nodes"] = serde_json::json!(b.nodes);
        if b.one_domain {
            spec["gpu"]["topology"] = serde_json::json!("Required");
        }
    }
    if let Some((start, policy)) = b.ahead {
        spec["startTime"] = serde_json::json!(start);
        spec["startPolicy"] = serde_json::json!(policy);
    }
    let inst: GpuInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": metadata, "spec": spec
    }))
    .map_err(PluginError::Render)?;
    Api::<GpuInstance>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &inst)
        .await
        .map_err(PluginError::kube("book a GpuInstance"))
}

/// `kubectl gpu usage`: the users' figures, cost and budgets, then the cost of each
/// instance in the user's namespace. A person who may not read GpuUsers (a plain user)
/// still gets their instances' cost.
pub async fn usage(
    client: &Client,
    ns: &str,
    ns_given: bool,
    user: Option<String>,
    out: &mut impl Write,
) -> Result<(), PluginError> {
    let api = Api::<GpuUser>::all(client.clone());
    let users = match &user {
        Some(u) => api.get(u).await.map(|u| vec![u]),
        None => api.list(&ListParams::default()).await.map(|l| l.items),
    };
    // A plain user may not list GpuUsers, but may read their own (the one whose
    // namespace this is).
    let users = match (users, &user, gpu_cloud_api::user_of_namespace(ns)) {
        (Err(kube::Error::Api(e)), None, Some(own)) if e.code == 403 => {
            api.get(own).await.map(|u| vec![u])
        }
        (users, _, _) => users,
    };
    let users = match users {
        Ok(users) => users,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            writeln!(
                out,
                "(you may not read this GpuUser, so no budget or totals here: your own is readable once the controller has provisioned you; run this in your namespace, gpu-<you>)"
            )?;
            vec![]
        }
        Err(e) => return Err(PluginError::kube("read GpuUsers")(e)),
    };
    if !users.is_empty() {
        write!(out, "{}", usage_table(&users))?;
        if let Some(t) = budget_table(&users) {
            write!(out, "\nGPU-hour budget\n{t}")?;
        }
    }
    // Instances: of the one user asked about, else of the namespace.
    let ns = match (&user, users.first()) {
        (Some(_), Some(u)) if !ns_given => u
            .status
            .as_ref()
            .and_then(|s| s.namespace.clone())
            .unwrap_or_else(|| ns.to_owned()),
        _ => ns.to_owned(),
    };
    match Api::<GpuInstance>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) if !list.items.is_empty() => {
            write!(out, "\nInstances in {ns}\n{}", cost_table(&list.items))?;
        }
        Ok(_) | Err(kube::Error::Api(_)) if user.is_none() && !ns_given => {}
        Ok(_) => writeln!(out, "\nno instances in {ns}")?,
        Err(e) => return Err(PluginError::kube("list GpuInstances")(e)),
    }
    Ok(())
}

pub async fn read_calendar(client: &Client, ns: &str) -> Result<Calendar, PluginError> {
    let cm = match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(calendar::CONFIGMAP)
        .await
    {
        Ok(cm) => cm,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(PluginError::CalendarForbidden(ns.to_owned()));
        }
        Err(e) => return Err(PluginError::kube("get the GPU calendar")(e)),
    };
    let json = cm
        .and_then(|c| c.data)
        .and_then(|mut d| d.remove(calendar::KEY))
        .ok_or_else(|| PluginError::NoCalendar(ns.to_owned()))?;
    calendar::parse(&json).map_err(PluginError::BadCalendar)
}
