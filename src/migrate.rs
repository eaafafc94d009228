//! `gpu-cloud migrate`: storage-version migration of gpu-cloud's CRDs.
//!
//! Every object is written back unchanged through the storage version, so the apiserver
//! stores it in that version (an object already stored that way is a no-op write: etcd is
//! not touched); when every object of a CRD went through, the CRD's `status.storedVersions`
//! is trimmed to the storage version, after which older versions can stop being served.
//! Safe to re-run and to interrupt: a re-run finishes what is left.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tracing::info;

use gpu_cloud_api::GROUP;

/// Arguments of `gpu-cloud migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    command: Option<MigrateCommand>,
    /// Objects fetched per list request.
    #[arg(long, default_value_t = 500)]
    page_size: u32,
    /// Objects rewritten at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum MigrateCommand {
    /// Print served, storage and stored versions and the number of objects of each CRD.
    Status,
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// what we tried
        action: String,
        /// the client error
        #[source]
        source: kube::Error,
    },
    /// Some objects could not be rewritten; storedVersions was left alone.
    #[error(
        "{crd}: {} object(s) could not be rewritten, so status.storedVersions was not trimmed; \
         fix them and run `gpu-cloud migrate` again:\n{}",
        failed.len(),
        failed.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    )]
    Failed {
        /// the CRD
        crd: String,
        /// each object that failed, with why
        failed: Vec<RewriteFailed>,
    },
    /// A CRD names no storage version (cannot happen on a valid CRD).
    #[error("{0} has no storage version")]
    NoStorageVersion(String),
}

/// One object that could not be written back at the storage version.
#[derive(Debug, thiserror::Error)]
pub enum RewriteFailed {
    /// The apiserver refused the write or the re-read.
    #[error("{object}: {source}")]
    Api {
        /// `namespace/name` (cluster-scoped: `/name`).
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Other writers kept changing it.
    #[error("{object}: still conflicting after {attempts} attempts")]
    Conflicts {
        /// `namespace/name`.
        object: String,
        /// How often it was tried.
        attempts: u64,
    },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> MigrateError {
    let action = action.into();
    move |source| MigrateError::Kube { action, source }
}

/// What `migrate status` shows for one CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdVersions {
    /// CRD name.
    pub name: String,
    /// Served versions.
    pub served: Vec<String>,
    /// The storage version.
    pub storage: String,
    /// `status.storedVersions`.
    pub stored: Vec<String>,
}

impl CrdVersions {
    /// Reads the versions of a CRD.
    pub fn of(crd: &CustomResourceDefinition) -> Result<Self, MigrateError> {
        let versions = &crd.spec.versions;
        let storage = versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.clone())
            .ok_or_else(|| MigrateError::NoStorageVersion(crd.name_any()))?;
        Ok(CrdVersions {
            name: crd.name_any(),
            served: versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.clone())
                .collect(),
            storage,
            stored: crd
                .status
                .as_ref()
                .and_then(|s| s.stored_versions.clone())
                .unwrap_or_default(),
        })
    }

    /// Nothing left to migrate.
    pub fn migrated(&self) -> bool {
        self.stored == [self.storage.clone()]
    }
}

/// Runs `gpu-cloud migrate [status]`.
pub async fn run(client: Client, args: MigrateArgs) -> Result<(), crate::Error> {
    let crds = our_crds(&client).await?;
    match args.command {
        Some(MigrateCommand::Status) => status(&client, &crds).await,
        None => {
            for crd in &crds {
                migrate_crd(&client, crd, &args).await?;
            }
            Ok(())
        }
    }
}

async fn our_crds(client: &Client) -> Result<Vec<CustomResourceDefinition>, MigrateError> {
    let all = Api::<CustomResourceDefinition>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list CRDs"))?;
    let mut ours: Vec<_> = all
        .items
        .into_iter()
        .filter(|c| c.spec.group == GROUP)
        .collect();
    ours.sort_by_key(|c| c.name_any());
    Ok(ours)
}

fn api_resource(crd: &CustomResourceDefinition, version: &str) -> ApiResource {
    ApiResource {
        group: crd.spec.group.clone(),
        version: version.to_owned(),
        api_version: format!("{}/{version}", crd.spec.group),
        kind: crd.spec.names.kind.clone(),
        plural: crd.spec.names.plural.clone(),
    }
}

async fn status(client: &Client, crds: &[CustomResourceDefinition]) -> Result<(), crate::Error> {
    println!(
        "{:<28} {:<14} {:<8} {:<14} {:>8}  STATE",
        "CRD", "SERVED", "STORAGE", "STORED", "OBJECTS"
    );
    for crd in crds {
        let v = CrdVersions::of(crd)?;
        let api = Api::<DynamicObject>::all_with(client.clone(), &api_resource(crd, &v.storage));
        let count = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(kube_err("count objects"))?
            .items
            .len();
        let state = if v.migrated() {
            "migrated"
        } else {
            "needs `gpu-cloud migrate`"
        };
        println!(
            "{:<28} {:<14} {:<8} {:<14} {:>8}  {state}",
            v.name,
            v.served.join(","),
            v.storage,
            v.stored.join(","),
            count
        );
    }
    Ok(())
}

/// Reports progress on a terminal with a bar, elsewhere with a log line per page.
struct Progress {
    bar: Option<ProgressBar>,
    done: u64,
}

impl Progress {
    fn new(crd: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(crd.to_owned());
            bar
        });
        Progress { bar, done: 0 }
    }

    fn page(&mut self, crd: &str, objects: u64, remaining: Option<i64>) {
        self.done += objects;
        let total = self.done + remaining.and_then(|r| u64::try_from(r).ok()).unwrap_or(0);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(self.done);
            }
            None => info!(crd, rewritten = self.done, of = total, "migrating"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Migrates one CRD; returns the number of objects rewritten.
async fn migrate_crd(
    client: &Client,
    crd: &CustomResourceDefinition,
    args: &MigrateArgs,
) -> Result<u64, MigrateError> {
    let versions = CrdVersions::of(crd)?;
    let name = versions.name.clone();
    let started = Instant::now();
    let ar = api_resource(crd, &versions.storage);
    let all = Api::<DynamicObject>::all_with(client.clone(), &ar);
    let mut progress = Progress::new(&name);
    let mut failed = Vec::new();
    let mut lp = ListParams::default().limit(args.page_size);
    loop {
        let page = all
            .list(&lp)
            .await
            .map_err(kube_err(format!("list {name}")))?;
        let count = page.items.len() as u64;
        let results: Vec<Result<(), RewriteFailed>> = stream::iter(page.items)
            .map(|obj| rewrite(client, &ar, obj))
            .buffer_unordered(args.concurrency.max(1))
            .collect()
            .await;
        failed.extend(results.into_iter().filter_map(Result::err));
        progress.page(&name, count, page.metadata.remaining_item_count);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    progress.finish();
    if !failed.is_empty() {
        return Err(MigrateError::Failed { crd: name, failed });
    }
    if !versions.migrated() {
        let patch = serde_json::json!({"status": {"storedVersions": [versions.storage]}});
        Api::<CustomResourceDefinition>::all(client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_err(format!("trim storedVersions of {name}")))?;
    }
    info!(
        crd = %name,
        objects = progress.done,
        storage = %versions.storage,
        seconds = started.elapsed().as_secs_f64(),
        "migrated; storedVersions = [{}]",
        versions.storage
    );
    Ok(progress.done)
}

/// Writes one object back unchanged at the storage version; retries on conflict; an
/// object deleted meanwhile needs nothing.
async fn rewrite(
    client: &Client,
    ar: &ApiResource,
    obj: DynamicObject,
) -> Result<(), RewriteFailed> {
    let name = obj.name_any();
    let ns = obj.namespace();
    let id = format!("{}/{name}", ns.as_deref().unwrap_or(""));
    let api = match &ns {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar),
        None => Api::<DynamicObject>::all_with(client.clone(), ar),
    };
    let failed = |source| RewriteFailed::Api {
        object: id.clone(),
        source,
    };
    const ATTEMPTS: u64 = 5;
    let mut current = obj;
    for attempt in 0..ATTEMPTS {
        match api.replace(&name, &PostParams::default(), &current).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
                match api.get_opt(&name).await {
                    Ok(Some(fresh)) => current = fresh,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(failed(e)),
                }
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Err(RewriteFailed::Conflicts {
        object: id,
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_a_crd_mid_migration() {
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gpuinstances.gpu-cloud.io"},
            "spec": {"group": "gpu-cloud.io", "scope": "Namespaced",
                     "names": {"kind": "GpuInstance", "plural": "gpuinstances"},
                     "versions": [{"name": "v1alpha1", "served": true, "storage": false},
                                  {"name": "v1", "served": true, "storage": true}]},
            "status": {"storedVersions": ["v1alpha1", "v1"]}
        }))
        .unwrap();
        let v = CrdVersions::of(&crd).unwrap();
        assert_eq!(v.served, ["v1alpha1", "v1"]);
        assert_eq!(v.storage, "v1");
        assert!(!v.migrated());
        let ar = api_resource(&crd, "v1");
        assert_eq!(
            (ar.api_version.as_str(), ar.plural.as_str()),
            ("gpu-cloud.io/v1", "gpuinstances")
        );
    }
}
