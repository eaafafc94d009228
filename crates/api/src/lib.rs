//! The schema: gpu-cloud's custom resources, and the names and wire formats every
//! component shares (labels, the GPU resource, durations and times as people write them,
//! the published calendar). It depends on no other crate of ours.
//!
//! `v1` is the current version. The CRDs in `crds/` are what [`crds_yaml`] prints
//! (`gpu-cloud crd`); a test fails when they drift from these types.

pub mod calendar;
pub mod conversion;
pub mod guard;
pub mod names;
pub mod time;
pub mod v1;
pub mod v1alpha1;

pub use names::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
    JSONSchemaPropsOrBool, ServiceReference, WebhookClientConfig, WebhookConversion,
};
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

/// Where the apiserver reaches the conversion webhook in a cluster (the chart's Service);
/// `gpu-cloud webhook` rewrites this, with its CA, into the CRDs when it starts.
pub const WEBHOOK_SERVICE: (&str, &str, i32) = ("gpu-cloud", "gpu-cloud-webhook", 443);
/// The request header that carries a dashboard viewer's bearer token. `kubectl gpu
/// dashboard` reaches the dashboard through the apiserver's service proxy, which drops
/// `Authorization` once it has authenticated the request.
pub const DASHBOARD_TOKEN_HEADER: &str = "x-gpu-cloud-token";
/// Path of the conversion endpoint.
pub const CONVERT_PATH: &str = "/convert";

/// The GpuInstance CRD: v1alpha1 and v1 served, v1 stored, converted by the webhook.
pub fn instance_crd() -> CustomResourceDefinition {
    let versions = vec![v1alpha1::GpuInstance::crd(), v1::GpuInstance::crd()];
    // Both come from our own types; merging only fails if their names or scopes differed.
    let mut crd =
        merge_crds(versions, "v1").expect("v1alpha1 and v1 GpuInstance CRDs describe one resource");
    let (namespace, name, port) = WEBHOOK_SERVICE;
    crd.spec.conversion = Some(CustomResourceConversion {
        strategy: "Webhook".into(),
        webhook: Some(WebhookConversion {
            client_config: Some(WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.into(),
                    name: name.into(),
                    path: Some(CONVERT_PATH.into()),
                    port: Some(port),
                }),
                ..Default::default()
            }),
            conversion_review_versions: vec!["v1".into()],
        }),
    });
    // Its rules on the name (a gang's) report at `metadata.name`, which must be declared.
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            name_metadata(schema);
        }
    }
    crd
}

/// Every CRD gpu-cloud serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        v1::GpuUser::crd(),
        instance_crd(),
        v1::GpuPriceList::crd(),
        v1::GpuUsageRecord::crd(),
    ];
    for crd in &mut crds {
        // CRD versions are the migrations: Helm must upgrade them with the chart (they are
        // templates there, not crds/) and must never delete them, or every object goes.
        crd.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("helm.sh/resource-policy".into(), "keep".into());
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_unknown_formats(schema);
                name_metadata(schema);
            }
        }
    }
    crds
}

/// Declares `metadata.name` in the root schema (a CRD may describe it, as a string): a
/// rule on the name can then report its error at `metadata.name` (its `fieldPath`), not
/// at the object as a whole, which kubectl prints as `<nil>`.
fn name_metadata(schema: &mut JSONSchemaProps) {
    let Some(props) = schema.properties.as_mut() else {
        return;
    };
    let meta = props
        .entry("metadata".into())
        .or_insert_with(|| JSONSchemaProps {
            type_: Some("object".into()),
            ..JSONSchemaProps::default()
        });
    meta.properties
        .get_or_insert_with(Default::default)
        .entry("name".into())
        .or_insert_with(|| JSONSchemaProps {
            type_: Some("string".into()),
            ..JSONSchemaProps::default()
        });
}

/// The most an unsigned integer of each schemars format can hold: the `maximum` the CRD
/// gives such a field (JSON numbers are exact only up to 2^53).
pub const UINT_MAXIMUMS: [(&str, f64); 5] = [
    ("uint8", u8::MAX as f64),
    ("uint16", u16::MAX as f64),
    ("uint32", u32::MAX as f64),
    ("uint", u32::MAX as f64),
    ("uint64", 9_007_199_254_740_991.0),
];

/// schemars marks unsigned integers with formats (`uint32`) that the apiserver does not
/// know and warns about on every apply; the `minimum: 0` it also emits says the lower
/// bound, and a `maximum` says the upper one. Without it the apiserver took a value our
/// types cannot hold (`maxGpus: 5000000000`), and the controller, unable to read that
/// object, ignored it without a word.
fn drop_unknown_formats(schema: &mut JSONSchemaProps) {
    if let Some(&(_, max)) = UINT_MAXIMUMS
        .iter()
        .find(|(f, _)| schema.format.as_deref() == Some(*f))
    {
        schema.format = None;
        schema.maximum = Some(schema.maximum.map_or(max, |m| m.min(max)));
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        drop_unknown_formats(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        drop_unknown_formats(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = schema.additional_properties.as_mut() {
        drop_unknown_formats(values);
    }
}

/// The CRDs as one YAML stream (what `crds/gpu-cloud.yaml` holds).
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let body = serde_saphyr::to_string_multiple(&crds())?;
    Ok(format!(
        "# Generated by `gpu-cloud crd` from crates/api; do not edit by hand.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chart_carries_the_same_crds() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/gpu-cloud/files/crds.yaml"
        );
        let chart = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            chart == super::crds_yaml().expect("render CRDs"),
            "charts/gpu-cloud/files/crds.yaml is stale: cargo run --bin gpu-cloud -- crd > charts/gpu-cloud/files/crds.yaml"
        );
    }

    #[test]
    fn crds_folder_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds/gpu-cloud.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = super::crds_yaml().expect("render CRDs");
        assert!(
            committed == generated,
            "crds/gpu-cloud.yaml is stale: run `cargo run --bin gpu-cloud -- crd > crds/gpu-cloud.yaml` and commit it"
        );
    }
}
