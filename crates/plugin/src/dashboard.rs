//! `kubectl gpu dashboard`: the web dashboard on a port of this machine, as the person
//! running it sees it.
//!
//! Each request the browser sends to the local port goes to the dashboard's Service
//! through the apiserver's service proxy, with the person's own kubeconfig credentials
//! (the chart lets every signed-in identity proxy to that one Service and nothing else:
//! not `pods/portforward`, which would reach every pod of the release). The apiserver drops
//! `Authorization` before it proxies, so the person's bearer token travels in
//! [`gpu_cloud_api::DASHBOARD_TOKEN_HEADER`], and the dashboard asks the apiserver whose it
//! is (TokenReview). The browser never holds the token: the plugin adds it to each request.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode, header};
use kube::Client;
use kube::client::Body;
use kube::config::{AuthInfo, ExecConfig};
use secrecy::ExposeSecret;

use crate::PluginError;

/// The dashboard's Service and port, as the apiserver's proxy names them (the chart's
/// `gpu-cloud-dashboard`, port `http`: a named port must be named in the path). The
/// chart's Role grants `services/proxy` on this name only.
pub const SERVICE: &str = "gpu-cloud-dashboard:http";

/// The apiserver path that proxies to the dashboard's Service in `ns`.
pub fn proxy_base(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/services/{SERVICE}/proxy")
}

/// The apiserver path to ask for `path_and_query` asked of the local port (pure). A link
/// the apiserver rewrote into its own proxy path is taken back to the dashboard's path.
pub fn upstream_path(ns: &str, path_and_query: &str) -> String {
    let base = proxy_base(ns);
    let rest = path_and_query
        .strip_prefix(base.as_str())
        .filter(|r| r.is_empty() || r.starts_with('/') || r.starts_with('?'))
        .unwrap_or(path_and_query);
    let rest = match rest {
        "" => "/",
        r if r.starts_with('?') => return format!("{base}/{r}"),
        r if !r.starts_with('/') => return format!("{base}/{r}"),
        r => r,
    };
    format!("{base}{rest}")
}

/// The bearer token the kubeconfig signs in with: a token, a token file, an exec
/// credential plugin's, or an auth provider's id-token. Client certificates prove who one
/// is to the apiserver only; the dashboard cannot check them.
pub fn bearer_token(auth: &AuthInfo) -> Result<String, PluginError> {
    if let Some(t) = &auth.token {
        return Ok(t.expose_secret().trim().to_owned());
    }
    if let Some(path) = &auth.token_file {
        return read_token_file(std::path::Path::new(path));
    }
    if let Some(exec) = &auth.exec {
        return exec_token(exec);
    }
    if let Some(t) = auth
        .auth_provider
        .as_ref()
        .and_then(|p| p.config.get("id-token"))
    {
        return Ok(t.trim().to_owned());
    }
    Err(PluginError::NoToken)
}

/// The token a file holds (a kubeconfig's `tokenFile`, or `--token-file`).
pub fn read_token_file(path: &std::path::Path) -> Result<String, PluginError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| PluginError::TokenFile {
            path: path.display().to_string(),
            source,
        })
}

/// Runs the kubeconfig's exec credential plugin, as kubectl does, for its token.
fn exec_token(exec: &ExecConfig) -> Result<String, PluginError> {
    let command = exec.command.clone().unwrap_or_default();
    let failed = |why: String| PluginError::ExecCredential {
        command: command.clone(),
        why,
    };
    let mut cmd = std::process::Command::new(&command);
    cmd.args(exec.args.iter().flatten());
    for var in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (var.get("name"), var.get("value")) {
            cmd.env(k, v);
        }
    }
    let info = serde_json::json!({
        "apiVersion": exec.api_version.clone()
            .unwrap_or_else(|| "client.authentication.k8s.io/v1".to_owned()),
        "kind": "ExecCredential",
        "spec": {"interactive": false},
    });
    cmd.env("KUBERNETES_EXEC_INFO", info.to_string());
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let cred: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(e.to_string()))?;
    match cred["status"]["token"].as_str() {
        Some(t) => Ok(t.to_owned()),
        None => Err(PluginError::NoToken),
    }
}

/// Who the dashboard says the viewer is (its `/whoami`).
#[derive(Debug, serde::Deserialize)]
pub struct Signed {
    /// Username.
    pub name: String,
    /// Sees everything.
    pub operator: bool,
}

/// Asks the dashboard through the proxy; a failure in words a person can act on.
async fn ask(client: &Client, ns: &str, path: &str, token: &str) -> Result<String, PluginError> {
    let request = Request::get(upstream_path(ns, path))
        .header(gpu_cloud_api::DASHBOARD_TOKEN_HEADER, token)
        .body(Body::empty())
        .map_err(|e| PluginError::DashboardUnreachable(e.to_string()))?;
    let response = client
        .send(request)
        .await
        .map_err(|e| PluginError::DashboardUnreachable(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect_bytes()
        .await
        .map_err(|e| PluginError::DashboardUnreachable(e.to_string()))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    match status {
        s if s.is_success() => Ok(text),
        StatusCode::FORBIDDEN => Err(PluginError::DashboardForbidden(ns.to_owned())),
        StatusCode::UNAUTHORIZED => Err(PluginError::TokenRefused),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Err(
            PluginError::DashboardDown(ns.to_owned(), server_message(&text)),
        ),
        s => Err(PluginError::DashboardUnreachable(format!(
            "{s}: {}",
            text.trim()
        ))),
    }
}

/// The message of an apiserver Status in `text`, else `text`.
fn server_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned())
}

/// Checks that the dashboard answers and takes the token: who it says the viewer is.
pub async fn sign_in(client: &Client, ns: &str, token: &str) -> Result<Signed, PluginError> {
    ask(client, ns, "/healthz", token).await?;
    let who = ask(client, ns, "/whoami", token).await?;
    serde_json::from_str(&who).map_err(|e| PluginError::DashboardUnreachable(e.to_string()))
}

/// The request headers passed on: what the pages need. Not the browser's cookies (another
/// site on this port may have set them) nor anything naming a credential.
const PASSED: [&str; 4] = ["accept", "accept-language", "x-fragment", "user-agent"];

/// One browser request, sent on through the proxy.
async fn forward(
    client: Client,
    ns: String,
    token: String,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let reply = |status: StatusCode, text: String| {
        let mut r = Response::new(Body::from(text.into_bytes()));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if !matches!(request.method(), &http::Method::GET | &http::Method::HEAD) {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard is read-only".into(),
        ));
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = Request::builder()
        .method(request.method().clone())
        .uri(upstream_path(&ns, &path));
    for name in PASSED {
        if let Some(v) = request.headers().get(name) {
            upstream = upstream.header(name, v);
        }
    }
    let upstream = match upstream
        .header(gpu_cloud_api::DASHBOARD_TOKEN_HEADER, token)
        .body(Body::empty())
    {
        Ok(r) => r,
        Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, e.to_string())),
    };
    match client.send(upstream).await {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            let mut out = Response::new(body);
            *out.status_mut() = parts.status;
            for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
                if let Some(v) = parts.headers.get(&name) {
                    out.headers_mut().insert(name, v.clone());
                }
            }
            Ok(out)
        }
        Err(e) => Ok(reply(
            StatusCode::BAD_GATEWAY,
            format!("cannot reach the dashboard through the apiserver: {e}"),
        )),
    }
}

/// Serves the dashboard on `listen` until Ctrl-C; `ready` is told the address once bound.
pub async fn serve(
    client: Client,
    ns: String,
    token: String,
    listen: SocketAddr,
    ready: impl FnOnce(SocketAddr) -> Result<(), PluginError>,
) -> Result<(), PluginError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| PluginError::Listen {
            addr: listen,
            source,
        })?;
    ready(listener.local_addr().unwrap_or(listen))?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let stream = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let (client, ns, token) = (client.clone(), ns.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |r| {
                forward(client.clone(), ns.clone(), token.clone(), r)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "a browser connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig's `users[].user` entry as [`AuthInfo`] reads it.
    fn auth_info(value: serde_json::Value) -> Result<AuthInfo, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn local_paths_map_to_the_service_proxy_and_rewritten_links_map_back() {
        let base = "/api/v1/namespaces/gpu-cloud/services/gpu-cloud-dashboard:http/proxy";
        for (local, up) in [
            ("/", "/"),
            ("", "/"),
            ("/queue", "/queue"),
            ("/users/ann?x=1", "/users/ann?x=1"),
            ("?x=1", "/?x=1"),
            (&format!("{base}/queue") as &str, "/queue"),
            (base, "/"),
            (&format!("{base}?a=b") as &str, "/?a=b"),
            // Not the proxy's prefix, only alike: left as it is.
            (
                &format!("{base}x/queue") as &str,
                &format!("{base}x/queue") as &str,
            ),
        ] {
            assert_eq!(
                upstream_path("gpu-cloud", local),
                format!("{base}{up}"),
                "{local}"
            );
        }
    }

    #[test]
    fn the_token_comes_from_the_kubeconfig_and_certificates_say_what_to_do() {
        let t = auth_info(serde_json::json!({"token": " abc.def \n"})).unwrap();
        assert_eq!(bearer_token(&t).unwrap(), "abc.def");
        let dir = std::env::temp_dir().join(format!("plugin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let t = auth_info(serde_json::json!({"tokenFile": file})).unwrap();
        assert_eq!(bearer_token(&t).unwrap(), "from-file");
        let t = auth_info(serde_json::json!({"tokenFile": dir.join("missing")})).unwrap();
        assert!(matches!(
            bearer_token(&t),
            Err(PluginError::TokenFile { .. })
        ));
        let t = auth_info(serde_json::json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "/bin/sh",
            "args": ["-c", "echo \"{\\\"status\\\":{\\\"token\\\":\\\"$T\\\"}}\""],
            "env": [{"name": "T", "value": "from-exec"}],
        }}))
        .unwrap();
        assert_eq!(bearer_token(&t).unwrap(), "from-exec");
        let t = auth_info(serde_json::json!({"exec": {"command": "/bin/false"}})).unwrap();
        assert!(matches!(
            bearer_token(&t),
            Err(PluginError::ExecCredential { .. })
        ));
        let t = auth_info(serde_json::json!({"client-certificate-data": "Zm9v"})).unwrap();
        let e = bearer_token(&t).unwrap_err();
        assert!(matches!(e, PluginError::NoToken), "{e}");
        assert!(e.to_string().contains("--token-file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
