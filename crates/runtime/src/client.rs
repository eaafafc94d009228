//! The API client of the long-running components: a deliberate client-side rate limit and
//! a count of every request by verb and resource.
//!
//! kube-rs sends as fast as it is asked (client-go, by contrast, throttles to 5 requests per
//! second unless told otherwise); a scheduler that books thousands of GPUs at once should
//! neither crawl nor flood the apiserver, so the limit is a setting with a stated default.
//! The counts feed `gpu_cloud_api_requests_total`, which is how the scale benchmark measures
//! API reads and writes per booking.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{Layer, Service};

/// Client-side limits on requests to the apiserver.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Requests per second sent to the apiserver, sustained (0: no client-side limit; the
    /// apiserver's API Priority and Fairness still applies).
    #[arg(long, default_value_t = 1000)]
    pub api_qps: u32,
    /// Requests that may go at once above the sustained rate (at least --api-qps).
    #[arg(long, default_value_t = 2000)]
    pub api_burst: u32,
}

impl ApiArgs {
    /// The rate as tower applies it: `burst` requests per `burst / qps` seconds.
    fn rate(&self) -> Option<(u64, Duration)> {
        if self.api_qps == 0 {
            return None;
        }
        let burst = self.api_burst.max(self.api_qps);
        let per = Duration::from_secs_f64(f64::from(burst) / f64::from(self.api_qps));
        Some((u64::from(burst), per))
    }
}

/// Labels of one counted request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// The resource, with its subresource: `pods`, `gpuinstances/status`.
    pub resource: String,
}

/// Requests sent, by verb and resource.
pub type RequestCounts = Family<RequestLabels, Counter>;

/// Names a request the way the apiserver's audit log does (pure).
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> RequestLabels {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or(&[]);
    let rest = match rest {
        ["namespaces", _ns, kind, tail @ ..] => {
            let mut v = vec![*kind];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => (String::from("other"), false),
        [kind] => ((*kind).to_owned(), false),
        [kind, _name] => ((*kind).to_owned(), true),
        [kind, _name, sub, ..] => (format!("{kind}/{sub}"), true),
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    };
    RequestLabels { verb, resource }
}

/// Counts requests into a [`RequestCounts`] family.
#[derive(Clone)]
pub struct CountLayer(pub RequestCounts);

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;
    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            counts: self.0.clone(),
        }
    }
}

/// The service [`CountLayer`] makes.
#[derive(Clone)]
pub struct Count<S> {
    inner: S,
    counts: RequestCounts,
}

impl<S, B> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let labels = classify(req.method(), req.uri().path(), req.uri().query());
        self.counts.get_or_create(&labels).inc();
        self.inner.call(req)
    }
}

/// Why no API client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No usable kubeconfig or in-cluster credentials were found.
    #[error(
        "cannot reach a Kubernetes cluster: {0} \
         (set KUBECONFIG, e.g. `eval \"$(hack/cluster env)\"` for the local control plane)"
    )]
    Credentials(#[from] kube::config::InferConfigError),
    /// The credentials were found but a client could not be built from them (e.g. a bad
    /// certificate in the kubeconfig).
    #[error("cannot build a Kubernetes client from the kubeconfig: {0}")]
    Build(#[source] kube::Error),
}

/// A plain client (no rate limit, no counting) from KUBECONFIG, `~/.kube/config` or the
/// in-cluster service account: what the short-lived commands and the agent use.
pub async fn plain() -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer().await?;
    kube::Client::try_from(config).map_err(ClientError::Build)
}

/// A client from KUBECONFIG, `~/.kube/config` or the in-cluster service account, limited
/// by `args` and counting its requests into `counts`.
pub async fn build(args: &ApiArgs, counts: RequestCounts) -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer().await?;
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&CountLayer(counts));
    let client = match args.rate() {
        Some((num, per)) => builder
            .with_layer(&tower::limit::RateLimitLayer::new(num, per))
            .build(),
        None => builder.build(),
    };
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: Method, path: &str, q: Option<&str>) -> (&'static str, String) {
        let l = classify(&m, path, q);
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        assert_eq!(
            c(Method::GET, "/api/v1/pods", None),
            ("list", "pods".into())
        );
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/pods",
                Some("watch=true&resourceVersion=5")
            ),
            ("watch", "pods".into())
        );
        assert_eq!(
            c(Method::POST, "/api/v1/namespaces/gpu-a/pods", None),
            ("create", "pods".into())
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/gpu-a/pods/x", None),
            ("get", "pods".into())
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/gpu-cloud.io/v1/namespaces/gpu-a/gpuinstances/x/status",
                None
            ),
            ("patch", "gpuinstances/status".into())
        );
        assert_eq!(
            c(Method::PATCH, "/api/v1/namespaces/gpu-a", None),
            ("patch", "namespaces".into())
        );
        assert_eq!(
            c(Method::DELETE, "/apis/gpu-cloud.io/v1/gpuusers/alice", None),
            ("delete", "gpuusers".into())
        );
        assert_eq!(c(Method::GET, "/version", None), ("list", "other".into()));
    }

    #[test]
    fn the_rate_allows_the_burst_and_sustains_the_qps() {
        let r = ApiArgs {
            api_qps: 500,
            api_burst: 1000,
        }
        .rate();
        assert_eq!(r, Some((1000, Duration::from_secs(2))));
        assert!(
            ApiArgs {
                api_qps: 0,
                api_burst: 0
            }
            .rate()
            .is_none()
        );
    }
}
