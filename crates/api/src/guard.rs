//! The schema guard: what a change to the Rust types would break for objects already
//! stored or clients already written against a served version. Pure; the unit test below
//! compares the current CRDs with the committed snapshot of the last released schema
//! (`tests/schema/released.json`), the review step of a classic `db migrate`.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};

/// One breaking change, said so that a developer knows what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaking {
    /// CRD name.
    pub crd: String,
    /// Version.
    pub version: String,
    /// Field path (`spec.gpu.count`), empty for the whole version.
    pub field: String,
    /// What changed.
    pub change: String,
}

impl std::fmt::Display for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.field.is_empty() {
            String::new()
        } else {
            format!(" {}", self.field)
        };
        write!(f, "{} {}{at}: {}", self.crd, self.version, self.change)
    }
}

/// Breaking changes from `released` to `current` within versions that were served.
pub fn breaking_changes(
    released: &[CustomResourceDefinition],
    current: &[CustomResourceDefinition],
) -> Vec<Breaking> {
    let mut out = Vec::new();
    for old in released {
        let name = old.metadata.name.clone().unwrap_or_default();
        let Some(new) = current
            .iter()
            .find(|c| c.metadata.name == old.metadata.name)
        else {
            out.push(Breaking {
                crd: name,
                version: String::new(),
                field: String::new(),
                change: "CRD removed".into(),
            });
            continue;
        };
        if old.spec.scope != new.spec.scope || old.spec.names.kind != new.spec.names.kind {
            out.push(Breaking {
                crd: name.clone(),
                version: String::new(),
                field: String::new(),
                change: "scope or kind changed".into(),
            });
        }
        for ov in old.spec.versions.iter().filter(|v| v.served) {
            let mut push = |field: &str, change: String| {
                out.push(Breaking {
                    crd: name.clone(),
                    version: ov.name.clone(),
                    field: field.to_owned(),
                    change,
                });
            };
            let Some(nv) = new.spec.versions.iter().find(|v| v.name == ov.name) else {
                push(
                    "",
                    "version removed while served (keep serving it, deprecated, until migrated)"
                        .into(),
                );
                continue;
            };
            if !nv.served {
                push("", "version no longer served".into());
            }
            let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
                v.schema.as_ref().and_then(|s| s.open_api_v3_schema.clone()).unwrap_or_default()
            };
            compare(&schema(ov), &schema(nv), "", &mut push);
        }
    }
    out
}

fn compare(
    old: &JSONSchemaProps,
    new: &JSONSchemaProps,
    path: &str,
    push: &mut impl FnMut(&str, String),
) {
    if old.type_ != new.type_ {
        push(path, format!("type {:?} became {:?}", old.type_, new.type_));
        return;
    }
    if old.format != new.format && new.format.is_some() {
        push(
            path,
            format!("format {:?} became {:?}", old.format, new.format),
        );
    }
    // A maximum that is just what the field's type can hold refuses nothing an object
    // could ever have carried (the controller could not have read it).
    let type_limit = |m: f64| crate::UINT_MAXIMUMS.iter().any(|(_, l)| *l == m);
    let new_max = new
        .maximum
        .filter(|m| old.maximum.is_some() || !type_limit(*m));
    narrowed(push, path, "maximum", old.maximum, new_max, |o, n| n < o);
    narrowed(push, path, "minimum", old.minimum, new.minimum, |o, n| {
        n > o
    });
    narrowed(
        push,
        path,
        "maxLength",
        old.max_length,
        new.max_length,
        |o, n| n < o,
    );
    narrowed(
        push,
        path,
        "minLength",
        old.min_length,
        new.min_length,
        |o, n| n > o,
    );
    narrowed(
        push,
        path,
        "maxItems",
        old.max_items,
        new.max_items,
        |o, n| n < o,
    );
    narrowed(
        push,
        path,
        "minItems",
        old.min_items,
        new.min_items,
        |o, n| n > o,
    );
    if let (Some(o), Some(n)) = (&old.enum_, &new.enum_) {
        let gone: Vec<_> = o
            .iter()
            .filter(|v| !n.contains(v))
            .map(|v| v.0.to_string())
            .collect();
        if !gone.is_empty() {
            push(path, format!("enum values removed: {}", gone.join(", ")));
        }
    } else if old.enum_.is_none() && new.enum_.is_some() {
        push(path, "restricted to an enum".into());
    }
    if old.pattern != new.pattern && new.pattern.is_some() {
        push(path, format!("pattern changed to {:?}", new.pattern));
    }
    let rules = |s: &JSONSchemaProps| -> BTreeSet<String> {
        s.x_kubernetes_validations
            .iter()
            .flatten()
            .map(|r| r.rule.clone())
            .collect()
    };
    // A new rule on a field that exists already is ratcheted by the apiserver (CRD
    // validation ratcheting, GA in Kubernetes 1.33, the oldest we support): an object
    // stored before that fails it can still be updated, status included, as long as that
    // field's value is unchanged; only writing a new failing value is refused, which is the
    // point. Transition rules (`oldSelf`) are not ratcheted, and stay breaking.
    for rule in rules(new)
        .difference(&rules(old))
        .filter(|r| r.contains("oldSelf"))
    {
        push(
            path,
            format!("new validation rule {rule:?} (objects stored before may fail it)"),
        );
    }
    let old_required: BTreeSet<_> = old.required.iter().flatten().collect();
    let old_props = old.properties.clone().unwrap_or_default();
    let new_props = new.properties.clone().unwrap_or_default();
    for req in new
        .required
        .iter()
        .flatten()
        .filter(|r| !old_required.contains(r))
    {
        let has_default = new_props.get(req).is_some_and(|p| p.default.is_some());
        if !has_default {
            push(&join(path, req), "newly required without a default".into());
        }
    }
    for (name, old_prop) in &old_props {
        match new_props.get(name) {
            None => push(&join(path, name), "field removed (or renamed)".into()),
            Some(new_prop) => compare(old_prop, new_prop, &join(path, name), push),
        }
    }
    if let (Some(JSONSchemaPropsOrArray::Schema(o)), Some(JSONSchemaPropsOrArray::Schema(n))) =
        (&old.items, &new.items)
    {
        compare(o, n, &format!("{path}[]"), push);
    }
}

fn narrowed<T: Copy + std::fmt::Debug>(
    push: &mut impl FnMut(&str, String),
    path: &str,
    what: &str,
    old: Option<T>,
    new: Option<T>,
    tighter: impl Fn(T, T) -> bool,
) {
    match (old, new) {
        (Some(o), Some(n)) if tighter(o, n) => {
            push(path, format!("{what} narrowed from {o:?} to {n:?}"))
        }
        (None, Some(n)) => push(path, format!("{what} {n:?} added")),
        _ => {}
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds;

    const SNAPSHOT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/schema/released.json"
    );

    #[test]
    fn no_served_version_breaks_against_the_last_release() {
        if std::env::var_os("UPDATE_RELEASED_SCHEMA").is_some() {
            let json = serde_json::to_string_pretty(&crds()).expect("CRDs as JSON") + "\n";
            std::fs::write(SNAPSHOT, json).expect("write snapshot");
        }
        let text = std::fs::read_to_string(SNAPSHOT).expect("tests/schema/released.json");
        let released: Vec<CustomResourceDefinition> =
            serde_json::from_str(&text).expect("snapshot parses");
        let broken = breaking_changes(&released, &crds());
        assert!(
            broken.is_empty(),
            "breaking schema changes inside served versions:\n  {}\n\
             Add a new version with a conversion instead (README: Schema migrations). At a release, \
             refresh the snapshot with UPDATE_RELEASED_SCHEMA=1 cargo test --lib guard.",
            broken
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    fn mutate(f: impl Fn(&mut serde_json::Value)) -> Vec<Breaking> {
        let released = crds();
        let mut value = serde_json::to_value(&released).unwrap();
        f(&mut value);
        breaking_changes(
            &released,
            &serde_json::from_value::<Vec<CustomResourceDefinition>>(value).unwrap(),
        )
    }

    const SPEC: &str = "/1/spec/versions/0/schema/openAPIV3Schema/properties/spec";

    #[test]
    fn a_maximum_at_the_types_limit_is_no_narrowing_and_any_other_is() {
        let path = "/0/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/quota/properties/maxGpus";
        let now = serde_json::to_value(crds()).unwrap();
        assert_eq!(
            now.pointer(&format!("{path}/maximum")),
            Some(&serde_json::json!(4294967295.0))
        );
        let mut before = now.clone();
        before
            .pointer_mut(path)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("maximum");
        let read = |v: &serde_json::Value| {
            serde_json::from_value::<Vec<CustomResourceDefinition>>(v.clone()).unwrap()
        };
        assert!(breaking_changes(&read(&before), &read(&now)).is_empty());
        let mut tighter = now.clone();
        *tighter.pointer_mut(&format!("{path}/maximum")).unwrap() = 100.0.into();
        let found = breaking_changes(&read(&before), &read(&tighter));
        assert_eq!(found[0].change, "maximum 100.0 added");
    }

    #[test]
    fn a_new_rule_is_ratcheted_unless_it_is_a_transition_rule() {
        let add = |rule: &'static str| {
            mutate(move |v| {
                let field = v
                    .pointer_mut(&format!("{SPEC}/properties/priority"))
                    .unwrap();
                field["x-kubernetes-validations"] = serde_json::json!([{"rule": rule}]);
            })
        };
        assert!(add("self >= 0").is_empty());
        let broken = add("self >= oldSelf");
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0].change.contains("new validation rule"),
            "{}",
            broken[0]
        );
    }

    #[test]
    fn removals_narrowing_and_new_requirements_are_caught() {
        let removed = mutate(|v| {
            v.pointer_mut(&format!("{SPEC}/properties"))
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove("priority");
        });
        assert_eq!(
            removed[0].to_string(),
            "gpuinstances.gpu-cloud.io v1 spec.priority: field removed (or renamed)"
        );
        let narrowed = mutate(|v| {
            *v.pointer_mut(&format!("{SPEC}/properties/gpu/properties/count/maximum"))
                .unwrap() = 8.into();
        });
        assert_eq!(narrowed[0].change, "maximum narrowed from 64.0 to 8.0");
        let retyped = mutate(|v| {
            *v.pointer_mut(&format!("{SPEC}/properties/priority/type"))
                .unwrap() = "string".into();
        });
        assert_eq!(retyped[0].field, "spec.priority");
        let required = mutate(|v| {
            let spec = v.pointer_mut(SPEC).unwrap();
            spec["properties"]["team"] = serde_json::json!({"type": "string"});
            spec["required"].as_array_mut().unwrap().push("team".into());
        });
        assert_eq!(required[0].change, "newly required without a default");
        let served = mutate(|v| {
            v.pointer_mut("/1/spec/versions")
                .unwrap()
                .as_array_mut()
                .unwrap()
                .remove(1);
        });
        assert!(
            served[0].change.starts_with("version removed while served"),
            "{served:?}"
        );
    }

    #[test]
    fn additions_that_old_objects_satisfy_are_fine() {
        let added = mutate(|v| {
            v.pointer_mut(SPEC).unwrap()["properties"]["team"] =
                serde_json::json!({"type": "string"});
        });
        assert!(added.is_empty(), "{added:?}");
    }
}
