//! Errors shared by the commands. Each says what went wrong and what to do about it.

/// Everything a gpu-cloud command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster credentials were found.
    #[error(
        "cannot reach a Kubernetes cluster: {0} \
         (set KUBECONFIG, e.g. `eval \"$(hack/cluster env)\"` for the local control plane)"
    )]
    Config(String),

    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API call `{action}` failed: {source}")]
    Kube {
        /// What we were doing, in words (e.g. "list nodes").
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },

    /// Turning a value into YAML or JSON failed (a bug: please report it).
    #[error("cannot render the output: {0}")]
    Render(String),

    /// The controller stopped.
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),

    /// The node agent stopped.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),

    /// The conversion webhook could not start.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),

    /// A storage migration stopped.
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),

    /// `gpu-cloud report` could not make the report.
    #[error(transparent)]
    Report(#[from] crate::cli::report::ReportError),

    /// `kubectl gpu` could not do what was asked.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),

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
