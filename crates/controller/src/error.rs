//! What a reconcile can fail with.

use kube::runtime::finalizer;

/// A reconcile error; the object is retried after a back-off.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What we tried, in words.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Adding or running a finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<ReconcileError>>),
    /// A write took too long; retried by the next pass.
    #[error("{0}: no answer within {1:?}")]
    Timeout(&'static str, std::time::Duration),
    /// Deletion waits for something (e.g. a user's instances to stop); retried shortly.
    #[error("waiting: {0}")]
    Waiting(String),
    /// An object came back without a field the API always sets.
    #[error("object has no {0}")]
    Missing(&'static str),
    /// Building an object failed (a bug).
    #[error("building {0}: {1}")]
    Build(&'static str, #[source] serde_json::Error),
}

impl ReconcileError {
    /// The reconcile only waits for something to finish (not a failure worth a warning).
    pub fn is_waiting(&self) -> bool {
        match self {
            ReconcileError::Waiting(_) => true,
            ReconcileError::Finalizer(e) => match &**e {
                finalizer::Error::CleanupFailed(ReconcileError::Waiting(_)) => true,
                // The finalizer patch tests the finalizer list it read from the cache; a
                // cache a moment behind (our own earlier write not seen yet) fails the test.
                // The next try reads a newer cache.
                finalizer::Error::AddFinalizer(kube::Error::Api(a))
                | finalizer::Error::RemoveFinalizer(kube::Error::Api(a)) => {
                    a.code == 422 || a.code == 409
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Wraps a client error with what we tried, for `map_err`.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
        let action = action.into();
        move |source| ReconcileError::Kube { action, source }
    }
}

/// The outcome of a reconcile run through kube's `finalizer`. Removing our finalizer from
/// an object that is gone already is no failure: a second reconcile queued before the
/// first removed it finds nothing left to do (this was a warning per deleted object).
pub fn finalized(
    r: Result<kube::runtime::controller::Action, finalizer::Error<ReconcileError>>,
) -> Result<kube::runtime::controller::Action, ReconcileError> {
    match r {
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(a))) if a.code == 404 => {
            Ok(kube::runtime::controller::Action::await_change())
        }
        r => r.map_err(|e| ReconcileError::Finalizer(Box::new(e))),
    }
}

/// `Ok(None)` for a 404, so that deleting something already gone is not an error.
pub fn ignore_not_found<T>(r: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
