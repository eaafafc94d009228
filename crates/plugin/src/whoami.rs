//! Which namespace a command without `-n` works in: the caller's own user namespace, as
//! the GpuUser naming them says (pure choice; the lookup is in [`crate::actions`]).

use gpu_cloud_api::v1::GpuUser;
use kube::ResourceExt;

/// Who the API says the caller is (a SelfSubjectReview).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The username (`alice`, `system:serviceaccount:ns:name`).
    pub username: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// The namespace of the caller's own GpuUser among `users` (those they may read): the one
/// whose subjects name them, the one named as they are if several do, else none (the
/// caller then says `-n`).
pub fn own_namespace(caller: &Caller, users: &[GpuUser]) -> Option<String> {
    let theirs: Vec<&GpuUser> = users
        .iter()
        .filter(|u| u.names(&caller.username, &caller.groups))
        .collect();
    let user = match theirs.as_slice() {
        [one] => *one,
        many => many
            .iter()
            .copied()
            .find(|u| u.name_any() == caller.username)?,
    };
    Some(
        user.status
            .as_ref()
            .and_then(|s| s.namespace.clone())
            .unwrap_or_else(|| gpu_cloud_api::namespace_of(&user.name_any())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, subjects: serde_json::Value) -> GpuUser {
        serde_json::from_value(json!({"apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser",
            "metadata": {"name": name}, "spec": {"subjects": subjects}}))
        .unwrap()
    }

    #[test]
    fn the_callers_own_user_is_the_one_naming_them() {
        let alice = Caller {
            username: "alice@corp".into(),
            groups: vec!["ml-team".into()],
        };
        let users = [
            user("alice", json!([{"kind": "User", "name": "alice@corp"}])),
            user("bob", json!([{"kind": "User", "name": "bob"}])),
        ];
        assert_eq!(own_namespace(&alice, &users).as_deref(), Some("gpu-alice"));
        // Named by a group and as a user: the one named as they are wins; two others: none.
        let team = [
            user("ml", json!([{"kind": "Group", "name": "ml-team"}])),
            user(
                "alice@corp",
                json!([{"kind": "User", "name": "alice@corp"}]),
            ),
        ];
        assert_eq!(
            own_namespace(&alice, &team).as_deref(),
            Some("gpu-alice@corp")
        );
        let two = [
            user("ml", json!([{"kind": "Group", "name": "ml-team"}])),
            user("ml2", json!([{"kind": "Group", "name": "ml-team"}])),
        ];
        assert_eq!(own_namespace(&alice, &two), None);
        let sa = Caller {
            username: "system:serviceaccount:ci:runner".into(),
            groups: vec![],
        };
        let ci = [user(
            "ci",
            json!([{"kind": "ServiceAccount", "name": "runner", "namespace": "ci"}]),
        )];
        assert_eq!(own_namespace(&sa, &ci).as_deref(), Some("gpu-ci"));
        assert_eq!(own_namespace(&Caller::default(), &ci), None);
    }
}
