//! Conversion between GpuInstance versions, v1 being the hub: pure functions, lossless both
//! ways. What v1alpha1 cannot hold rides in an annotation on the v1alpha1 object, and the
//! other way round, so that v1 → v1alpha1 → v1 and v1alpha1 → v1 → v1alpha1 give back
//! exactly what went in. The webhook (`gpu-cloud webhook`) wraps [`review`].

use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use kube::core::response::Status;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::v1::{ContainerResources, EnvVar, GpuRequest};
use super::{time, v1, v1alpha1};

/// On a v1alpha1 object: the v1 fields it cannot hold, as JSON.
pub const V1_FIELDS_ANNOTATION: &str = "conversion.gpu-cloud.io/v1-fields";
/// On a v1 object: the v1alpha1 fields it cannot hold, as JSON.
pub const V1ALPHA1_FIELDS_ANNOTATION: &str = "conversion.gpu-cloud.io/v1alpha1-fields";

/// `apiVersion` of v1.
pub const V1: &str = "gpu-cloud.io/v1";
/// `apiVersion` of v1alpha1.
pub const V1ALPHA1: &str = "gpu-cloud.io/v1alpha1";

/// Why an object could not be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    /// The object is not one of ours, or not in a version we know.
    #[error(
        "cannot convert {kind} {from} to {to}: only GpuInstance converts between {V1ALPHA1} and {V1}"
    )]
    Unsupported {
        /// kind of the object
        kind: String,
        /// its apiVersion
        from: String,
        /// the wanted apiVersion
        to: String,
    },
    /// The object does not match its version's schema.
    #[error("malformed {what}: {message}")]
    Malformed {
        /// what was being read
        what: &'static str,
        /// the parser's message
        message: String,
    },
}

/// v1 fields that v1alpha1 has no place for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct V1Fields {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "is_default")]
    resources: ContainerResources,
    duration: String,
    #[serde(default, skip_serializing_if = "is_default")]
    priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_time: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_policy: Option<v1::StartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_threshold_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_warn_only: Option<bool>,
    #[serde(default, skip_serializing_if = "is_default")]
    preemptible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preemption: Option<v1::PreemptionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_node_lost: Option<v1::OnNodeLost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart_policy: Option<v1::RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpu_nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpu_topology: Option<v1::TopologyPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpu_slice: Option<String>,
    /// The `hours` written next to this note: if a v1alpha1 client changed `hours`
    /// since, its value wins over `duration`.
    hours: u32,
}

/// v1alpha1 fields that v1 has no place for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct V1alpha1Fields {
    user: String,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn malformed(what: &'static str) -> impl FnOnce(serde_json::Error) -> ConversionError {
    move |e| ConversionError::Malformed {
        what,
        message: e.to_string(),
    }
}

/// Whole hours covering `d` (at least 1): what v1alpha1 can say about a v1 duration.
fn hours_of(d: &str) -> u32 {
    let secs = time::parse_duration(d).map(|d| d.as_secs()).unwrap_or(3600);
    u32::try_from(secs.div_ceil(3600))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// v1alpha1 → v1.
pub fn to_v1(old: &v1alpha1::GpuInstance) -> Result<v1::GpuInstance, ConversionError> {
    let mut metadata = old.metadata.clone();
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    let spec = &old.spec;
    let extra = match annotations.remove(V1_FIELDS_ANNOTATION) {
        Some(json) => {
            serde_json::from_str::<V1Fields>(&json).map_err(malformed(V1_FIELDS_ANNOTATION))?
        }
        None => V1Fields {
            duration: format!("{}h", spec.hours),
            hours: spec.hours,
            ..Default::default()
        },
    };
    let duration = if extra.hours == spec.hours {
        extra.duration
    } else {
        format!("{}h", spec.hours)
    };
    if let Some(user) = &spec.user {
        let note = V1alpha1Fields { user: user.clone() };
        let json = serde_json::to_string(&note).map_err(malformed("user"))?;
        annotations.insert(V1ALPHA1_FIELDS_ANNOTATION.into(), json);
    }
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Ok(v1::GpuInstance {
        metadata,
        spec: v1::GpuInstanceSpec {
            gpu: GpuRequest {
                model: spec.gpu_model.clone(),
                count: spec.gpu_count,
                nodes: extra.gpu_nodes,
                topology: extra.gpu_topology,
                slice: extra.gpu_slice,
            },
            image: spec.image.clone(),
            command: spec.command.clone(),
            args: extra.args,
            env: extra.env,
            resources: extra.resources,
            duration,
            priority: extra.priority,
            start_time: extra.start_time,
            start_policy: extra.start_policy,
            idle_timeout: extra.idle_timeout,
            idle_threshold_percent: extra.idle_threshold_percent,
            idle_warn_only: extra.idle_warn_only,
            preemptible: extra.preemptible,
            preemption: extra.preemption,
            on_node_lost: extra.on_node_lost,
            restart_policy: extra.restart_policy,
        },
        status: old.status.clone(),
    })
}

/// v1 → v1alpha1.
pub fn to_v1alpha1(new: &v1::GpuInstance) -> Result<v1alpha1::GpuInstance, ConversionError> {
    let mut metadata = new.metadata.clone();
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    let spec = &new.spec;
    let user = match annotations.remove(V1ALPHA1_FIELDS_ANNOTATION) {
        Some(json) => Some(
            serde_json::from_str::<V1alpha1Fields>(&json)
                .map_err(malformed(V1ALPHA1_FIELDS_ANNOTATION))?
                .user,
        ),
        None => None,
    };
    let hours = hours_of(&spec.duration);
    let extra = V1Fields {
        args: spec.args.clone(),
        env: spec.env.clone(),
        resources: spec.resources.clone(),
        duration: spec.duration.clone(),
        priority: spec.priority,
        start_time: spec.start_time,
        start_policy: spec.start_policy,
        idle_timeout: spec.idle_timeout.clone(),
        idle_threshold_percent: spec.idle_threshold_percent,
        idle_warn_only: spec.idle_warn_only,
        preemptible: spec.preemptible,
        preemption: spec.preemption.clone(),
        on_node_lost: spec.on_node_lost,
        restart_policy: spec.restart_policy,
        gpu_nodes: spec.gpu.nodes,
        gpu_topology: spec.gpu.topology,
        gpu_slice: spec.gpu.slice.clone(),
        hours,
    };
    // Only what hours alone cannot say needs the note.
    let derived = V1Fields {
        duration: format!("{hours}h"),
        hours,
        ..Default::default()
    };
    if extra != derived {
        let json = serde_json::to_string(&extra).map_err(malformed("v1 fields"))?;
        annotations.insert(V1_FIELDS_ANNOTATION.into(), json);
    }
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Ok(v1alpha1::GpuInstance {
        metadata,
        spec: v1alpha1::GpuInstanceSpec {
            user,
            gpu_model: spec.gpu.model.clone(),
            gpu_count: spec.gpu.count,
            image: spec.image.clone(),
            command: spec.command.clone(),
            hours,
        },
        status: new.status.clone(),
    })
}

/// Converts one object (as the apiserver sends it) to `desired` apiVersion.
pub fn convert(object: &Value, desired: &str) -> Result<Value, ConversionError> {
    let from = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let unsupported = || ConversionError::Unsupported {
        kind: kind.into(),
        from: from.into(),
        to: desired.into(),
    };
    let known = [V1, V1ALPHA1];
    if !known.contains(&from) || !known.contains(&desired) {
        return Err(unsupported());
    }
    if from == desired {
        return Ok(object.clone());
    }
    if kind != "GpuInstance" {
        return Err(unsupported());
    }
    let out = if desired == V1 {
        let old: v1alpha1::GpuInstance =
            serde_json::from_value(object.clone()).map_err(malformed("v1alpha1 GpuInstance"))?;
        serde_json::to_value(to_v1(&old)?)
    } else {
        let new: v1::GpuInstance =
            serde_json::from_value(object.clone()).map_err(malformed("v1 GpuInstance"))?;
        serde_json::to_value(to_v1alpha1(&new)?)
    };
    out.map_err(malformed("converted object"))
}

/// Answers a ConversionReview (the request body as bytes) with its HTTP status: 400 for a
/// body that is no ConversionReview request (never sent by an apiserver), else 200, a
/// conversion that failed included (the apiserver reads the failure from the response).
pub fn answer(body: &[u8]) -> (u16, ConversionReview) {
    let out = review(body);
    let malformed = out
        .response
        .as_ref()
        .is_some_and(|r| r.result.reason == "BadRequest");
    (if malformed { 400 } else { 200 }, out)
}

/// Answers a ConversionReview (the request body as bytes). Never panics: anything
/// malformed gets a failure response, and the request's uid is echoed whenever it can be
/// read at all.
pub fn review(body: &[u8]) -> ConversionReview {
    let review: ConversionReview = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let uid = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| {
                    v.pointer("/request/uid")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let status = Status::failure(&format!("malformed ConversionReview: {e}"), "BadRequest");
            let mut response = ConversionResponse::invalid(status);
            response.uid = uid;
            return response.into_review();
        }
    };
    let request = match ConversionRequest::from_review(review) {
        Ok(r) => r,
        Err(_) => {
            let status = Status::failure("ConversionReview has no request", "BadRequest");
            return ConversionResponse::invalid(status).into_review();
        }
    };
    let desired = request.desired_api_version.clone();
    let converted: Result<Vec<Value>, ConversionError> = request
        .objects
        .iter()
        .map(|o| convert(o, &desired))
        .collect();
    let response = ConversionResponse::for_request(request);
    match converted {
        Ok(objects) => response.success(objects),
        Err(e) => response.failure(Status::failure(&e.to_string(), "ConversionFailed")),
    }
    .into_review()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn meta(
        annotations: Option<BTreeMap<String, String>>,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("train".into()),
            namespace: Some("gpu-alice".into()),
            // Kubernetes does not tell an empty annotation map from none.
            annotations: annotations.filter(|a| !a.is_empty()),
            ..Default::default()
        }
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-z0-9./-]{1,12}"
    }

    fn duration() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u32..720).prop_map(|h| format!("{h}h")),
            (10u32..43200).prop_map(|m| format!("{m}m")),
            (1u32..100, 1u32..59).prop_map(|(h, m)| format!("{h}h{m}m")),
            (10u32..100_000).prop_map(|s| format!("{s}s")),
        ]
    }

    fn v1_instance() -> impl Strategy<Value = v1::GpuInstance> {
        (
            (
                word(),
                1u32..64,
                word(),
                prop::option::of(1u32..8),
                prop::option::of(prop::bool::ANY),
                prop::option::of(1u8..8),
            ),
            prop::collection::vec(word(), 0..3),
            prop::collection::vec(word(), 0..3),
            prop::collection::vec((word(), ".{0,8}"), 0..3),
            (
                prop::option::of("[1-9][0-9]{0,2}m?"),
                prop::option::of("[1-9][0-9]{0,2}Gi"),
            ),
            duration(),
            -1000i32..1000,
            prop::option::of(prop::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..2)),
            (
                prop::option::of(0i64..4_000_000_000),
                prop::option::of(prop::bool::ANY),
                prop::option::of(duration()),
                prop::option::of(0u8..=100),
                prop::option::of(prop::bool::ANY),
            ),
            (
                prop::bool::ANY,
                prop::option::of((
                    prop::option::of(duration()),
                    prop::option::of(prop::bool::ANY),
                )),
                prop::option::of(prop::bool::ANY),
                prop::option::of(prop::bool::ANY),
            ),
        )
            .prop_map(
                |(
                    (model, count, image, nodes, required, slice),
                    command,
                    args,
                    env,
                    (cpu, memory),
                    duration,
                    priority,
                    ann,
                    (start, earliest, idle_timeout, threshold, warn_only),
                    (preemptible, preemption, node_lost, restart),
                )| {
                    v1::GpuInstance {
                        metadata: meta(ann),
                        spec: v1::GpuInstanceSpec {
                            gpu: GpuRequest {
                                model,
                                count,
                                nodes,
                                topology: required.map(|r| {
                                    if r {
                                        v1::TopologyPolicy::Required
                                    } else {
                                        v1::TopologyPolicy::Preferred
                                    }
                                }),
                                slice: slice.map(|s| format!("{s}g.10gb")),
                            },
                            image,
                            command,
                            args,
                            env: env
                                .into_iter()
                                .map(|(name, value)| EnvVar { name, value })
                                .collect(),
                            resources: ContainerResources { cpu, memory },
                            duration,
                            priority,
                            start_time: start.and_then(|s| jiff::Timestamp::from_second(s).ok()),
                            start_policy: earliest.map(|e| {
                                if e {
                                    v1::StartPolicy::EarliestAvailable
                                } else {
                                    v1::StartPolicy::Exact
                                }
                            }),
                            idle_timeout,
                            idle_threshold_percent: threshold.map(f64::from),
                            idle_warn_only: warn_only,
                            preemptible,
                            preemption: preemption.map(|(grace_period, stop)| {
                                v1::PreemptionPolicy {
                                    grace_period,
                                    on_preempted: stop.map(|s| {
                                        if s {
                                            v1::OnPreempted::Stop
                                        } else {
                                            v1::OnPreempted::Requeue
                                        }
                                    }),
                                }
                            }),
                            on_node_lost: node_lost.map(|fail| {
                                if fail {
                                    v1::OnNodeLost::Fail
                                } else {
                                    v1::OnNodeLost::Requeue
                                }
                            }),
                            restart_policy: restart.map(|r| {
                                if r {
                                    v1::RestartPolicy::OnFailure
                                } else {
                                    v1::RestartPolicy::Never
                                }
                            }),
                        },
                        status: None,
                    }
                },
            )
    }

    fn v1alpha1_instance() -> impl Strategy<Value = v1alpha1::GpuInstance> {
        (
            prop::option::of(word()),
            (word(), 1u32..64, word()),
            prop::collection::vec(word(), 0..3),
            1u32..720,
            prop::option::of(prop::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..2)),
        )
            .prop_map(
                |(user, (gpu_model, gpu_count, image), command, hours, ann)| {
                    v1alpha1::GpuInstance {
                        metadata: meta(ann),
                        spec: v1alpha1::GpuInstanceSpec {
                            user,
                            gpu_model,
                            gpu_count,
                            image,
                            command,
                            hours,
                        },
                        status: None,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn v1_to_v1alpha1_and_back_is_the_identity(inst in v1_instance()) {
            let back = to_v1(&to_v1alpha1(&inst).unwrap()).unwrap();
            prop_assert_eq!(serde_json::to_value(back).unwrap(), serde_json::to_value(inst).unwrap());
        }

        #[test]
        fn v1alpha1_to_v1_and_back_is_the_identity(inst in v1alpha1_instance()) {
            let back = to_v1alpha1(&to_v1(&inst).unwrap()).unwrap();
            prop_assert_eq!(serde_json::to_value(back).unwrap(), serde_json::to_value(inst).unwrap());
        }

        #[test]
        fn review_never_panics_and_echoes_the_uid(body in prop::collection::vec(any::<u8>(), 0..256), uid in "[a-f0-9-]{1,36}") {
            let _ = review(&body);
            // A well-formed envelope around garbage objects: failure, uid echoed.
            let req = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                "request": {"uid": uid, "desiredAPIVersion": V1,
                            "objects": [{"apiVersion": V1ALPHA1, "kind": "GpuInstance", "spec": String::from_utf8_lossy(&body)}]}});
            let out = review(&serde_json::to_vec(&req).unwrap());
            let resp = out.response.unwrap();
            prop_assert_eq!(resp.uid, uid);
            prop_assert!(resp.converted_objects.is_empty());
        }
    }

    #[test]
    fn an_hours_edit_by_a_v1alpha1_client_wins_over_the_old_duration() {
        let inst = v1::GpuInstance {
            metadata: meta(None),
            spec: serde_json::from_value(
                json!({"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "90m"}),
            )
            .unwrap(),
            status: None,
        };
        let mut old = to_v1alpha1(&inst).unwrap();
        assert_eq!(old.spec.hours, 2);
        assert_eq!(to_v1(&old).unwrap().spec.duration, "90m");
        old.spec.hours = 5;
        assert_eq!(to_v1(&old).unwrap().spec.duration, "5h");
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/conversion/{name}",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
        ))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn snapshot(name: &str, review: &ConversionReview) {
        let got = serde_json::to_string_pretty(review).unwrap() + "\n";
        let path = format!(
            "{}/tests/fixtures/conversion/{name}",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
        );
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = String::from_utf8(fixture(name)).unwrap();
        assert!(
            got == want,
            "{name} differs from the recorded response (UPDATE_SNAPSHOTS=1 rewrites it):\n{got}"
        );
    }

    #[test]
    fn recorded_reviews_give_the_recorded_responses() {
        for case in [
            "to-v1",
            "to-v1alpha1",
            "unknown-version",
            "malformed-object",
        ] {
            let out = review(&fixture(&format!("{case}.request.json")));
            snapshot(&format!("{case}.response.json"), &out);
        }
    }
}
