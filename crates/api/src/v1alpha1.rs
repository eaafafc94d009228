//! `gpu-cloud.io/v1alpha1`: the first, flat GpuInstance schema. Still served so that old
//! clients and manifests keep working; the program itself works in [`super::v1`] only and
//! the conversion webhook translates (see [`super::conversion`]). GpuUser was introduced at
//! v1 and has no v1alpha1.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::v1::GpuInstanceStatus;

/// A GpuInstance as v1alpha1 wrote it: flat fields, the booking length in whole hours, the
/// owning user as a field.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpu-cloud.io",
    version = "v1alpha1",
    kind = "GpuInstance",
    namespaced,
    shortname = "gi",
    category = "gpu",
    status = "GpuInstanceStatus",
    deprecated = "gpu-cloud.io/v1alpha1 GpuInstance is deprecated; use gpu-cloud.io/v1",
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.gpuModel"}"#,
    printcolumn = r#"{"name":"Count","type":"integer","jsonPath":".spec.gpuCount"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GpuInstanceSpec {
    /// The GpuUser who booked it (v1 derives the user from the namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub user: Option<String>,
    /// GPU model (`nvidia.com/gpu.product`).
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.gpuModel must name a GPU model"))]
    #[schemars(length(max = 128))]
    pub gpu_model: String,
    /// Number of GPUs.
    #[schemars(range(min = 1, max = 64))]
    pub gpu_count: u32,
    /// Container image.
    #[x_kube(validation = Rule::new("size(self) > 0").message("spec.image must name a container image"))]
    #[schemars(length(max = 512))]
    pub image: String,
    /// Entrypoint.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Booking length in whole hours.
    #[schemars(range(min = 1, max = 720))]
    pub hours: u32,
}
