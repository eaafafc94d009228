//! `gpu-cloud webhook`: serves CRD conversion (ConversionReview) over TLS.
//!
//! Certificates: either self-generated at start (a CA and a serving certificate, rcgen),
//! with the CA and the webhook's address written into the GpuInstance CRD so that the
//! apiserver trusts and finds it; or, with `--cert-dir`, files managed by cert-manager,
//! whose CA injector fills in the caBundle (nothing is patched then).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use base64::Engine;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use gpu_cloud_api::{CONVERT_PATH, WEBHOOK_SERVICE, conversion};

/// Name of the CRD whose conversion the webhook serves.
pub const INSTANCE_CRD: &str = "gpuinstances.gpu-cloud.io";

/// Arguments of `gpu-cloud webhook`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Directory with `tls.crt` and `tls.key` (e.g. a cert-manager Secret). Without it a
    /// CA and certificate are generated and the CA is injected into the CRD.
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Namespace of the webhook's Service (names in the generated certificate).
    #[arg(long, default_value = WEBHOOK_SERVICE.0)]
    pub service_namespace: String,
    /// Name of the webhook's Service.
    #[arg(long, default_value = WEBHOOK_SERVICE.1)]
    pub service_name: String,
    /// Reach the webhook at this URL instead of through the Service (a webhook running
    /// outside the cluster, as in local development and the tests), e.g.
    /// `https://127.0.0.1:8443`.
    #[arg(long)]
    pub url: Option<String>,
    /// Leave the CRD alone (someone else keeps its conversion settings).
    #[arg(long)]
    pub no_inject: bool,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Generating the certificate failed.
    #[error("generating the webhook certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The certificate files could not be read.
    #[error("reading {path}: {message} (expected tls.crt and tls.key in --cert-dir)")]
    CertFiles {
        /// which file
        path: PathBuf,
        /// what went wrong
        message: String,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// the address
        addr: SocketAddr,
        /// the error
        #[source]
        source: std::io::Error,
    },
    /// Writing the CA into the CRD failed.
    #[error(
        "injecting the CA into CRD {INSTANCE_CRD}: {0} (install the CRDs first, or pass --no-inject)"
    )]
    Inject(#[source] kube::Error),
}

/// A serving certificate, its key, and the CA to trust it by (PEM).
pub struct Certs {
    /// Serving certificate chain.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA that signed it, for the CRD's caBundle.
    pub ca_pem: String,
}

/// Generates a CA and a serving certificate for the Service's DNS names (and for the host
/// of `url`, if given).
pub fn generate_certs(args: &WebhookArgs) -> Result<Certs, WebhookError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gpu-cloud webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let (ns, svc) = (&args.service_namespace, &args.service_name);
    let mut names = vec![
        svc.clone(),
        format!("{svc}.{ns}"),
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
    ];
    if let Some(host) = args.url.as_deref().and_then(url_host) {
        names.push(host);
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{svc}.{ns}.svc"));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Certs {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    })
}

/// The host part of `https://host:port/path`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

fn read_certs(dir: &std::path::Path) -> Result<Certs, WebhookError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| WebhookError::CertFiles {
            path,
            message: e.to_string(),
        })
    };
    let cert_pem = read("tls.crt")?;
    let ca_pem = read("ca.crt").unwrap_or_default();
    Ok(Certs {
        key_pem: read("tls.key")?,
        cert_pem,
        ca_pem,
    })
}

fn tls_config(certs: &Certs) -> Result<rustls::ServerConfig, WebhookError> {
    let bad = |what: &str, e: rustls::pki_types::pem::Error| {
        WebhookError::Tls(rustls::Error::General(format!("{what}: {e}")))
    };
    let chain = CertificateDer::pem_slice_iter(certs.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(certs.key_pem.as_bytes())
        .map_err(|e| bad("private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Points the GpuInstance CRD's conversion at this webhook and makes it trust `ca_pem`.
pub async fn inject(client: Client, args: &WebhookArgs, ca_pem: &str) -> Result<(), WebhookError> {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let client_config = match &args.url {
        Some(url) => {
            serde_json::json!({"url": format!("{}{CONVERT_PATH}", url.trim_end_matches('/')), "caBundle": ca_bundle, "service": null})
        }
        None => {
            serde_json::json!({"service": {"namespace": args.service_namespace, "name": args.service_name,
                                               "path": CONVERT_PATH, "port": WEBHOOK_SERVICE.2},
                                   "caBundle": ca_bundle, "url": null})
        }
    };
    let patch = serde_json::json!({"spec": {"conversion": {"strategy": "Webhook", "webhook": {
        "clientConfig": client_config, "conversionReviewVersions": ["v1"]}}}});
    Api::<CustomResourceDefinition>::all(client)
        .patch(INSTANCE_CRD, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(WebhookError::Inject)?;
    info!(
        crd = INSTANCE_CRD,
        "conversion webhook and CA written into the CRD"
    );
    Ok(())
}

/// The HTTP routes: `POST /convert`, `GET /healthz`.
pub fn router() -> Router {
    Router::new()
        .route(
            CONVERT_PATH,
            post(|body: Bytes| async move {
                let (code, review) = conversion::answer(&body);
                let code = axum::http::StatusCode::from_u16(code)
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                (code, axum::Json(review))
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        // A conversion of a whole list carries every object in it.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
}

/// Runs the webhook until SIGINT/SIGTERM.
pub async fn run(client: Client, args: WebhookArgs) -> Result<(), crate::Error> {
    let certs = match &args.cert_dir {
        Some(dir) => read_certs(dir)?,
        None => generate_certs(&args)?,
    };
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&certs)?));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: args.listen,
            source,
        })?;
    if args.cert_dir.is_none() && !args.no_inject {
        inject(client, &args, &certs.ca_pem).await?;
    }
    info!(addr = %args.listen, "conversion webhook serving");
    let app = router();
    let shutdown = gpu_cloud_runtime::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { warn!(error = %e, "accept failed"); continue; }
            },
            _ = &mut shutdown => break,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => return warn!(%peer, error = %e, "TLS handshake failed"),
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                warn!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("conversion webhook stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://127.0.0.1:8443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://webhook.example").as_deref(),
            Some("webhook.example")
        );
        assert_eq!(url_host("http://x"), None);
    }

    #[test]
    fn generated_certificates_make_a_tls_config() {
        let args = WebhookArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_dir: None,
            service_namespace: "gpu-cloud".into(),
            service_name: "gpu-cloud-webhook".into(),
            url: Some("https://127.0.0.1:9443".into()),
            no_inject: true,
        };
        let certs = generate_certs(&args).unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        tls_config(&certs).unwrap();

        // The cert-manager layout: tls.crt and tls.key in a directory (a mounted Secret).
        let dir = std::env::temp_dir().join(format!("gpu-cloud-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &certs.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &certs.key_pem).unwrap();
        let read = read_certs(&dir).unwrap();
        tls_config(&read).unwrap();
        std::fs::remove_file(dir.join("tls.key")).unwrap();
        let err = read_certs(&dir).err().unwrap().to_string();
        assert!(
            err.contains("tls.key") && err.contains("--cert-dir"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        /// Random bodies to the served route: never a panic; 400 for anything that is not
        /// a ConversionReview request, 200 with a failure for one whose objects are bad.
        #[test]
        fn random_bodies_get_a_review_and_malformed_ones_a_400(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            junk in ".{0,64}",
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let post = |body: Vec<u8>| {
                rt.block_on(async {
                    use tower::ServiceExt;
                    let req = axum::http::Request::post(CONVERT_PATH)
                        .body(axum::body::Body::from(body))
                        .unwrap();
                    let resp = router().oneshot(req).await.unwrap();
                    let code = resp.status().as_u16();
                    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
                    let review: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    (code, review)
                })
            };
            let (code, review) = post(body.clone());
            if serde_json::from_slice::<kube::core::conversion::ConversionReview>(&body).is_err() {
                proptest::prop_assert_eq!(code, 400);
            }
            proptest::prop_assert_eq!(&review["kind"], "ConversionReview");
            let wellformed = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1",
                "kind": "ConversionReview", "request": {"uid": "u1",
                "desiredAPIVersion": "gpu-cloud.io/v1",
                "objects": [{"apiVersion": "gpu-cloud.io/v1alpha1", "kind": "GpuInstance",
                             "metadata": {"name": junk}, "spec": junk}]}});
            let (code, review) = post(serde_json::to_vec(&wellformed).unwrap());
            proptest::prop_assert_eq!(code, 200);
            proptest::prop_assert_eq!(&review["response"]["uid"], "u1");
            proptest::prop_assert_eq!(&review["response"]["result"]["status"], "Failure");
        }
    }
}
