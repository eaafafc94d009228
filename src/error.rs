//! What the `gpu-cloud` binary can fail with: each component's own error, converted here
//! and nowhere else. Each says what went wrong and what to do about it.

/// Everything a gpu-cloud command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No API client could be made (no kubeconfig or in-cluster credentials).
    #[error(transparent)]
    Client(#[from] gpu_cloud_runtime::client::ClientError),

    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call `{action}` failed: {source}")]
    Kube {
        /// What we were doing, in words (e.g. "list nodes").
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },

    /// The CRDs could not be rendered as YAML (a bug: please report it).
    #[error("cannot render the CRDs as YAML: {0}")]
    RenderCrds(#[from] serde_saphyr::SerializeError),

    /// The controller stopped.
    #[error(transparent)]
    Controller(#[from] gpu_cloud_controller::ControllerError),

    /// The node agent stopped.
    #[error(transparent)]
    Agent(#[from] gpu_cloud_agent::AgentError),

    /// The conversion webhook could not start.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),

    /// The dashboard could not serve.
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),

    /// A storage migration stopped.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),

    /// `gpu-cloud report` could not make the report.
    #[error(transparent)]
    Report(#[from] crate::cli::report::ReportError),

    /// Writing the command's output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl Error {
    /// Wraps a client error with the action that failed, for use with `map_err`.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}
