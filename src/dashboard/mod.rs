//! `gpu-cloud dashboard`: a read-only web dashboard of the GPU cloud, in its own Deployment
//! (its own read-only ServiceAccount: the controller, which may write, is never exposed).
//! Pages are rendered by the server ([`pages`]) from watch caches, so a page costs no API
//! request but the viewer's TokenReview (cached for a minute).
//!
//! Who sees what: every request carries the viewer's own Kubernetes token (`Authorization:
//! Bearer`, or the cookie `/login?token=` sets, which `kubectl gpu dashboard` opens); the
//! apiserver says who that is (TokenReview). A member of `--operators-group` sees
//! everything; anyone else sees the GpuUsers whose subjects name them, and their instances.
//! Node occupancy is shown to all as totals.

pub mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use gpu_cloud_api::v1::{GpuInstance, GpuUsageRecord, GpuUser};
use gpu_cloud_core::scheduler::NodeGpus;
use pages::{Viewer, World};

/// Settings of `gpu-cloud dashboard`.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardArgs {
    /// Where to serve the pages (plain HTTP: reach it through `kubectl port-forward` or
    /// `kubectl gpu dashboard`, or put a TLS ingress in front).
    #[arg(long, default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// Members of this group see every user and instance.
    #[arg(
        long,
        default_value = "gpu-cloud:operators",
        env = "GPU_CLOUD_OPERATORS_GROUP"
    )]
    pub operators_group: String,
    /// The namespace of the published GPU calendar (the controller's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpu-cloud")]
    pub calendar_namespace: String,
}

/// What the dashboard could not do.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source} (choose another --listen)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The watches never filled (the API unreachable, or no right to list).
    #[error("cannot fill the dashboard's watch caches: {0}")]
    Caches(String),
    /// Serving failed.
    #[error("serving the dashboard: {0}")]
    Serve(#[source] std::io::Error),
}

struct Shared {
    client: Client,
    args: DashboardArgs,
    nodes: Store<Node>,
    instances: Store<GpuInstance>,
    users: Store<GpuUser>,
    records: Store<GpuUsageRecord>,
    /// Token -> (viewer, when reviewed).
    viewers: Mutex<HashMap<String, (Viewer, Instant)>>,
}

/// How long a TokenReview's answer is trusted.
const REVIEW_TTL: Duration = Duration::from_secs(60);
/// The cookie holding the viewer's token.
const COOKIE: &str = "gpu-cloud-token";

fn store<K>(api: Api<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            if let Err(e) = e {
                warn!(error = %e, "dashboard watch failed; retrying");
            }
        }
    });
    reader
}

/// Serves the dashboard until SIGINT/SIGTERM.
pub async fn run(client: Client, args: DashboardArgs) -> Result<(), crate::Error> {
    let nodes = store(Api::<Node>::all(client.clone()));
    let instances = store(Api::<GpuInstance>::all(client.clone()));
    let users = store(Api::<GpuUser>::all(client.clone()));
    let records = store(Api::<GpuUsageRecord>::all(client.clone()));
    for ready in [
        nodes.wait_until_ready().await,
        instances.wait_until_ready().await,
        users.wait_until_ready().await,
        records.wait_until_ready().await,
    ] {
        ready.map_err(|e| DashboardError::Caches(e.to_string()))?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| DashboardError::Listen {
            addr: args.listen,
            source,
        })?;
    info!(addr = %args.listen, "gpu-cloud dashboard serving");
    let shared = Arc::new(Shared {
        client,
        args,
        nodes,
        instances,
        users,
        records,
        viewers: Mutex::new(HashMap::new()),
    });
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async {
            gpu_cloud_runtime::shutdown_signal().await;
        })
        .await
        .map_err(DashboardError::Serve)?;
    Ok(())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(occupancy))
        .route("/queue", get(queue))
        .route("/reservations", get(reservations))
        .route("/users", get(users))
        .route("/users/{name}", get(user))
        .route("/instances/{ns}/{name}", get(instance))
        .route("/login", get(login))
        .route("/whoami", get(whoami))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

/// `/login?token=...[&next=/path]`: keeps the token in a cookie for the pages (HttpOnly,
/// this site only) and goes to `next` (a path of this site; default `/`).
async fn login(uri: axum::http::Uri) -> Response {
    let query = uri.query().unwrap_or_default();
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .map(percent_decode)
    };
    let token = param("token");
    let next = param("next")
        .filter(|n| n.starts_with('/') && !n.starts_with("//"))
        .unwrap_or_else(|| "/".to_owned());
    // A bearer token is base64url and dots; anything else would not stay one cookie.
    let token_like = |t: &String| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let Some(token) = token.filter(token_like) else {
        return (
            StatusCode::BAD_REQUEST,
            "login needs ?token= with your Kubernetes token",
        )
            .into_response();
    };
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

/// `%XX` escapes and `+` decoded (what a browser's query string carries).
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn token_of(headers: &HeaderMap) -> Option<String> {
    // `kubectl gpu dashboard` sends it here (the apiserver's proxy drops Authorization).
    if let Some(token) = headers
        .get(gpu_cloud_api::DASHBOARD_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some(token.trim().to_owned());
    }
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
}

/// Who the request's token belongs to, as the apiserver says (cached for a minute).
async fn viewer(shared: &Shared, headers: &HeaderMap) -> Result<Viewer, Box<Response>> {
    let unauthorized = |why: &str| -> Box<Response> {
        Box::new((
            StatusCode::UNAUTHORIZED,
            Html(format!(
                "<!doctype html><title>gpu-cloud</title><p>{}</p><p>Open the dashboard with <code>kubectl gpu dashboard</code>, or send your Kubernetes token as <code>Authorization: Bearer</code>.</p>",
                pages::esc(why)
            )),
        )
            .into_response())
    };
    let Some(token) = token_of(headers) else {
        return Err(unauthorized("Who are you? No token came with the request."));
    };
    if let Some((v, at)) = shared
        .viewers
        .lock()
        .ok()
        .and_then(|m| m.get(&token).cloned())
        && at.elapsed() < REVIEW_TTL
    {
        return Ok(v);
    }
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.clone()),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(shared.client.clone())
        .create(&Default::default(), &review)
        .await
        .map_err(|e| {
            warn!(error = %e, "TokenReview failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check your token now",
            )
                .into_response()
        })?;
    let status = answer.status.unwrap_or_default();
    let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
        return Err(unauthorized("The apiserver does not know this token."));
    };
    let groups = user.groups.unwrap_or_default();
    let v = Viewer {
        name: user.username.unwrap_or_default(),
        operator: groups.contains(&shared.args.operators_group),
        groups,
    };
    if let Ok(mut m) = shared.viewers.lock() {
        m.retain(|_, (_, at)| at.elapsed() < REVIEW_TTL);
        m.insert(token, (v.clone(), Instant::now()));
    }
    Ok(v)
}

/// `/whoami`: who the token belongs to and whether they see everything, as JSON (what
/// `kubectl gpu dashboard` prints when it signs in).
async fn whoami(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    match viewer(&s, &h).await {
        Ok(v) => {
            axum::Json(serde_json::json!({"name": v.name, "operator": v.operator})).into_response()
        }
        Err(r) => *r,
    }
}

/// Renders `main` for `viewer`: the whole page, or only `main` for the live update.
fn respond(headers: &HeaderMap, title: &str, viewer: &Viewer, main: String) -> Response {
    if headers.contains_key("x-fragment") {
        Html(main).into_response()
    } else {
        Html(pages::page(title, viewer, &main)).into_response()
    }
}

async fn calendar(shared: &Shared) -> Option<gpu_cloud_api::calendar::Calendar> {
    let cm = Api::<ConfigMap>::namespaced(shared.client.clone(), &shared.args.calendar_namespace)
        .get_opt(gpu_cloud_api::calendar::CONFIGMAP)
        .await
        .ok()??;
    let json = cm.data?.remove(gpu_cloud_api::calendar::KEY)?;
    gpu_cloud_api::calendar::parse(&json).ok()
}

/// Draws a page of the world the viewer may see.
async fn draw(
    shared: Arc<Shared>,
    headers: HeaderMap,
    title: &str,
    with_calendar: bool,
    render: impl FnOnce(&World) -> Result<String, Box<Response>>,
) -> Response {
    let v = match viewer(&shared, &headers).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let instances = shared.instances.state();
    let users = shared.users.state();
    let records = shared.records.state();
    let nodes: Vec<NodeGpus> = shared
        .nodes
        .state()
        .iter()
        .map(|n| NodeGpus::from_node(n))
        .collect();
    let cal = if with_calendar {
        calendar(&shared).await
    } else {
        None
    };
    let world = World::for_viewer(
        &v,
        nodes,
        &instances,
        &users,
        &records,
        cal,
        jiff::Timestamp::now(),
    );
    match render(&world) {
        Ok(main) => respond(&headers, title, &v, main),
        Err(r) => *r,
    }
}

async fn occupancy(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    draw(s, h, "Occupancy", false, |w| Ok(pages::occupancy(w))).await
}

async fn queue(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    draw(s, h, "Queue", false, |w| Ok(pages::queue(w))).await
}

async fn reservations(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    draw(s, h, "Reservations", true, |w| Ok(pages::reservations(w))).await
}

async fn users(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    draw(s, h, "Users", false, |w| Ok(pages::users(w))).await
}

fn not_found(what: &str) -> Box<Response> {
    Box::new(
        (
            StatusCode::NOT_FOUND,
            Html(format!("<p>No {} you may see.</p>", pages::esc(what))),
        )
            .into_response(),
    )
}

async fn user(State(s): State<Arc<Shared>>, h: HeaderMap, Path(name): Path<String>) -> Response {
    draw(s, h, &format!("User {name}"), false, |w| {
        let u = w
            .users
            .iter()
            .find(|u| u.name_any() == name)
            .ok_or_else(|| not_found("such user"))?;
        Ok(pages::user(w, u))
    })
    .await
}

async fn instance(
    State(s): State<Arc<Shared>>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    // Events are read for the page only once the viewer may see the instance.
    let v = match viewer(&s, &h).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let all = s.instances.state();
    let users = s.users.state();
    let now = jiff::Timestamp::now();
    let world = World::for_viewer(&v, vec![], &all, &users, &[], None, now);
    let Some(inst) = world
        .instances
        .iter()
        .find(|i| i.name_any() == name && i.namespace().as_deref() == Some(ns.as_str()))
    else {
        return *not_found("such instance");
    };
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let events: Vec<(String, String, String, String)> =
        Api::<Event>::namespaced(s.client.clone(), &ns)
            .list(&lp)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let at = e
                    .last_timestamp
                    .map(|t| gpu_cloud_api::time::show_time(t.0))
                    .or(e.event_time.map(|t| gpu_cloud_api::time::show_time(t.0)))
                    .unwrap_or_default();
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    at,
                )
            })
            .collect();
    respond(
        &h,
        &format!("{ns}/{name}"),
        &v,
        pages::instance(inst, &events, now),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_and_tokens_come_from_a_header_or_the_cookie() {
        assert_eq!(percent_decode("%2Fqueue%3Fx+y%"), "/queue?x y%");
        assert_eq!(percent_decode("%zz%e2%82%ac"), "%zz€");
        let mut h = HeaderMap::new();
        assert_eq!(token_of(&h), None);
        h.insert(
            header::COOKIE,
            "a=b; gpu-cloud-token=abc.def".parse().unwrap(),
        );
        assert_eq!(token_of(&h).as_deref(), Some("abc.def"));
        h.insert(header::AUTHORIZATION, "Bearer xyz".parse().unwrap());
        assert_eq!(token_of(&h).as_deref(), Some("xyz"));
        h.insert(
            gpu_cloud_api::DASHBOARD_TOKEN_HEADER,
            "from-plugin".parse().unwrap(),
        );
        assert_eq!(token_of(&h).as_deref(), Some("from-plugin"));
    }
}
