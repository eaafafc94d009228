//! What `kubectl gpu` can fail with; each says what went wrong and what to do about it.

/// What `kubectl gpu` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A time that is neither RFC 3339 nor `+<duration>`.
    #[error(
        "invalid time {0:?}: write it as RFC 3339 (2026-12-01T13:00:00Z, 2026-12-01T14:00:00+01:00) or from now (+2h, +1h30m)"
    )]
    InvalidTime(String),
    /// A start in the past.
    #[error("--at {0} is in the past: leave --at out to start as soon as GPUs are free")]
    PastStart(String),
    /// A length that does not parse.
    #[error(transparent)]
    InvalidDuration(#[from] gpu_cloud_api::time::InvalidDuration),
    /// The controller has not published its calendar (or not in that namespace).
    #[error(
        "no GPU calendar in namespace {0:?} (ConfigMap gpu-cloud-calendar): is the gpu-cloud controller running there? \
         Name its namespace with --calendar-namespace or GPU_CLOUD_NAMESPACE"
    )]
    NoCalendar(String),
    /// The identity may not read the calendar.
    #[error(
        "you may not read the GPU calendar (ConfigMap gpu-cloud-calendar in {0:?}): the gpu-cloud chart's \
         Role gpu-cloud-calendar-reader lets every authenticated identity get it; is it installed?"
    )]
    CalendarForbidden(String),
    /// The calendar is not what this version of the plugin reads.
    #[error("the GPU calendar cannot be read: {0} (is the plugin as new as the controller?)")]
    BadCalendar(#[source] serde_json::Error),
    /// No usable kubeconfig or in-cluster credentials were found.
    #[error(
        "cannot reach a Kubernetes cluster: {0} (set KUBECONFIG, or run `kubectl config use-context`)"
    )]
    Credentials(#[from] kube::config::InferConfigError),
    /// The kubeconfig was found but no client could be built from it.
    #[error("cannot build a Kubernetes client from the kubeconfig: {0}")]
    Client(#[source] kube::Error),
    /// A call to the Kubernetes API failed: a refusal in kubectl's words
    /// (`Error from server (Forbidden): …`), anything else with what we were doing.
    #[error("{}", kube_words(action, source))]
    Kube {
        /// What we were doing, in words (e.g. "list GpuInstances").
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Building the object to send failed (a bug: please report it).
    #[error("cannot build the GpuInstance: {0}")]
    Render(#[source] serde_json::Error),
    /// The instance has no pod to connect to (not placed yet, starting, or finished).
    #[error(transparent)]
    NoPod(#[from] crate::connect::NoPod),
    /// kubectl, which `shell`, `forward` and `logs` hand over to, could not be started.
    #[error("cannot run {kubectl} ({source}): put kubectl on the PATH or name it in KUBECTL")]
    NoKubectl {
        kubectl: String,
        #[source]
        source: std::io::Error,
    },
    /// kubectl ran and failed; it has said why on stderr. Its exit status is ours. (On Unix
    /// kubectl takes the plugin's place instead, so its status is the process's.)
    #[error("kubectl exited with status {0}")]
    KubectlFailed(i32),
    /// The kubeconfig signs in without a bearer token (a client certificate).
    #[error(
        "your kubeconfig signs in with a client certificate, which only the apiserver can check; \
         the dashboard needs a bearer token that says who you are: pass one with --token-file \
         (an OIDC id-token, or `kubectl create token <serviceaccount>`), or use a kubeconfig \
         that signs in with a token or an exec credential plugin"
    )]
    NoToken,
    /// The kubeconfig's token file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig's exec credential plugin failed.
    #[error("the kubeconfig's credential plugin {command:?} gave no token: {why}")]
    ExecCredential { command: String, why: String },
    /// `--as` with `dashboard`: the pages show what the token may see.
    #[error(
        "the dashboard shows what your own token may see: --as and --as-group cannot be used with it"
    )]
    DashboardImpersonation,
    /// The identity may not proxy to the dashboard's Service (or there is no release there:
    /// the Role that allows it comes with the release).
    #[error(
        "you may not open a dashboard in namespace {0:?}: is gpu-cloud installed there? \
         (name the release's namespace with --release-namespace or GPU_CLOUD_NAMESPACE; its \
         Role gpu-cloud-dashboard-viewer lets every signed-in identity proxy to the Service \
         gpu-cloud-dashboard)"
    )]
    DashboardForbidden(String),
    /// The Service has no ready pod behind it.
    #[error(
        "the dashboard in namespace {0:?} is not running ({1}): is gpu-cloud installed there \
         with dashboard.enabled (the chart's default)? See \
         `kubectl -n {0} get pods -l app.kubernetes.io/component=dashboard`, or name the \
         release's namespace with --release-namespace"
    )]
    DashboardDown(String, String),
    /// The dashboard did not accept the token.
    #[error(
        "the dashboard does not accept your token (the apiserver does not know it, or it expired): \
         sign in again, or pass another with --token-file"
    )]
    TokenRefused,
    /// The dashboard answered in a way we did not expect.
    #[error("cannot reach the dashboard through the apiserver: {0}")]
    DashboardUnreachable(String),
    /// The local port could not be bound.
    #[error("cannot listen on {addr}: {source} (choose another --port)")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Writing the output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// How kubectl says it: the server's refusal as `Error from server (Reason): message`, a
/// failure on the way with what we were doing.
fn kube_words(action: &str, source: &kube::Error) -> String {
    match source {
        kube::Error::Api(e) => {
            let reason = if e.reason.is_empty() {
                e.code.to_string()
            } else {
                e.reason.clone()
            };
            format!("Error from server ({reason}): {}", e.message)
        }
        other => format!("cannot {action}: {other}"),
    }
}

impl PluginError {
    /// Wraps a client error with the action that failed, for use with `map_err`.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> PluginError {
        move |source| PluginError::Kube { action, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_like_kubectl_and_not_like_a_struct() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "gpuinstances.gpu-cloud.io is forbidden: User \"eve\" cannot list resource \"gpuinstances\""
        }))
        .unwrap();
        let e = PluginError::kube("list GpuInstances")(kube::Error::Api(Box::new(status)));
        assert_eq!(
            e.to_string(),
            "Error from server (Forbidden): gpuinstances.gpu-cloud.io is forbidden: User \"eve\" cannot list resource \"gpuinstances\""
        );
    }
}
