//! Authentication by bearer token and authorization by the RBAC objects in
//! the store, as the real API server does them, so that every request a
//! component makes in a test passes through the RBAC that `deploy/` ships.
//!
//! Mirrors `plugin/pkg/auth/authorizer/rbac/rbac.go` (`RBACAuthorizer.Authorize`:
//! ClusterRoleBindings everywhere, RoleBindings in their namespace, a
//! RoleBinding may point at a ClusterRole), `pkg/apis/rbac/v1/evaluation_helpers.go`
//! (`VerbMatches`, `APIGroupMatches`, `ResourceMatches` with `*` and
//! `*/subresource`, `ResourceNameMatches`), the request info of
//! `staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go` (a
//! list or watch with `fieldSelector=metadata.name=X` is a request for X),
//! `system:masters` as the superuser group, and the 403 body of
//! `apiserver/pkg/endpoints/handlers/responsewriters/errors.go` (`forbiddenMessage`).

use serde_json::{json, Value};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `system:serviceaccount:NS:NAME`, or any name.
    pub name: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
}

impl User {
    /// The user a ServiceAccount token authenticates as, with the groups
    /// the token authenticator gives it.
    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// A cluster administrator (`system:masters`), as the test's own client.
    pub fn admin() -> User {
        User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// A request without credentials.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What a resource request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// get, list, watch, create, update, patch, delete.
    pub verb: &'a str,
    /// The API group, "" for core.
    pub group: &'a str,
    /// The plural resource.
    pub resource: &'a str,
    /// `status`, or "".
    pub subresource: &'a str,
    /// The namespace, "" for cluster-scoped requests.
    pub namespace: &'a str,
    /// The object name, "" for collections.
    pub name: &'a str,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `PolicyRule` matching, as `RuleAllows` in evaluation_helpers.go.
pub fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let verbs = strings(&rule["verbs"]);
    let groups = strings(&rule["apiGroups"]);
    let resources = strings(&rule["resources"]);
    let names = strings(&rule["resourceNames"]);
    let combined = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let verb_ok = verbs.iter().any(|v| *v == "*" || *v == a.verb);
    let group_ok = groups.iter().any(|g| *g == "*" || *g == a.group);
    let resource_ok = resources.iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    let name_ok = names.is_empty() || names.contains(&a.name);
    verb_ok && group_ok && resource_ok && name_ok
}

fn subject_matches(subject: &Value, user: &User, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" => name == user.name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            // A subject without a namespace in a RoleBinding means the binding's.
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// The RBAC objects a decision is made from.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// ClusterRoles.
    pub cluster_roles: Vec<Value>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<Value>,
    /// Roles (each with its namespace in metadata).
    pub roles: Vec<Value>,
    /// RoleBindings (each with its namespace in metadata).
    pub role_bindings: Vec<Value>,
}

impl Policy {
    fn rules_of(&self, role_ref: &Value, binding_ns: &str) -> Vec<&Value> {
        let name = role_ref["name"].as_str().unwrap_or("");
        let role = match role_ref["kind"].as_str().unwrap_or("") {
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| r["metadata"]["name"] == name),
            "Role" => self.roles.iter().find(|r| {
                r["metadata"]["name"] == name && r["metadata"]["namespace"] == binding_ns
            }),
            _ => None,
        };
        role.and_then(|r| r["rules"].as_array())
            .map(|rules| rules.iter().collect())
            .unwrap_or_default()
    }

    /// Whether `user` may do `a`.
    pub fn allows(&self, user: &User, a: &Attributes<'_>) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let bound = |b: &Value, ns: &str| {
            b["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ns)))
        };
        for b in &self.cluster_role_bindings {
            if bound(b, "")
                && self
                    .rules_of(&b["roleRef"], "")
                    .iter()
                    .any(|r| rule_allows(r, a))
            {
                return true;
            }
        }
        if a.namespace.is_empty() {
            return false;
        }
        self.role_bindings.iter().any(|b| {
            let ns = b["metadata"]["namespace"].as_str().unwrap_or("");
            ns == a.namespace
                && bound(b, ns)
                && self
                    .rules_of(&b["roleRef"], ns)
                    .iter()
                    .any(|r| rule_allows(r, a))
        })
    }
}

/// The message of the real server's 403 (`forbiddenMessage`, wrapped by `NewForbidden`).
pub fn forbidden_message(user: &User, a: &Attributes<'_>, qualified: &str) -> String {
    let resource = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let what = if a.name.is_empty() {
        qualified.to_string()
    } else {
        format!("{qualified} {:?}", a.name)
    };
    format!(
        "{what} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, a.verb, a.group
    )
}

/// The real server's 403 `Status` body.
pub fn forbidden_status(user: &User, a: &Attributes<'_>, qualified: &str) -> Value {
    let mut details = json!({"group": a.group, "kind": a.resource});
    if !a.name.is_empty() {
        details["name"] = json!(a.name);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": forbidden_message(user, a, qualified),
        "reason": "Forbidden",
        "details": details,
        "code": 403,
    })
}

/// The real server's 401 body for a token it does not know.
pub fn unauthorized_status() -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(
        verb: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource,
            subresource: sub,
            namespace: ns,
            name,
        }
    }

    fn policy() -> Policy {
        Policy {
            cluster_roles: vec![json!({"metadata": {"name": "reader"}, "rules": [
                {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["services/status"], "verbs": ["patch"]},
            ]})],
            cluster_role_bindings: vec![json!({"metadata": {"name": "reader"},
                "roleRef": {"kind": "ClusterRole", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "ctl", "namespace": "sys"}]})],
            roles: vec![
                json!({"metadata": {"name": "lease", "namespace": "sys"}, "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["get"]},
                    {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]},
                ]}),
            ],
            role_bindings: vec![json!({"metadata": {"name": "lease", "namespace": "sys"},
                "roleRef": {"kind": "Role", "name": "lease"},
                "subjects": [{"kind": "ServiceAccount", "name": "ctl"}]})],
        }
    }

    /// Table of `RuleAllows` and the binding scopes of `RBACAuthorizer.Authorize`.
    #[test]
    fn rules_and_bindings_decide_as_the_real_authorizer() {
        let p = policy();
        let ctl = User::service_account("sys", "ctl");
        let other = User::service_account("other", "ctl");
        let table: &[(Attributes<'_>, &User, bool)] = &[
            (attrs("list", "services", "", "", ""), &ctl, true),
            (attrs("watch", "services", "", "shop", ""), &ctl, true),
            (attrs("get", "services", "", "shop", "web"), &ctl, false),
            // services does not cover services/status, nor the reverse.
            (attrs("patch", "services", "", "shop", "web"), &ctl, false),
            (
                attrs("patch", "services", "status", "shop", "web"),
                &ctl,
                true,
            ),
            // resourceNames: only that name; a collection request has none.
            (attrs("get", "configmaps", "", "sys", "cfg"), &ctl, true),
            (attrs("get", "configmaps", "", "sys", "other"), &ctl, false),
            (attrs("list", "configmaps", "", "sys", ""), &ctl, false),
            // A RoleBinding applies in its namespace only; */status and * verbs.
            (attrs("update", "pods", "status", "sys", "p"), &ctl, true),
            (attrs("update", "pods", "status", "shop", "p"), &ctl, false),
            // The subject's namespace matters.
            (attrs("list", "services", "", "", ""), &other, false),
            (attrs("delete", "nodes", "", "", "n"), &User::admin(), true),
            (
                attrs("list", "services", "", "", ""),
                &User::anonymous(),
                false,
            ),
        ];
        for (a, u, want) in table {
            assert_eq!(p.allows(u, a), *want, "{} {a:?}", u.name);
        }
    }

    #[test]
    fn the_forbidden_body_is_the_real_servers() {
        let u = User::service_account("ferrolb-system", "ferrolb-speaker");
        let a = attrs("list", "services", "", "", "");
        assert_eq!(
            forbidden_message(&u, &a, "services"),
            "services is forbidden: User \"system:serviceaccount:ferrolb-system:ferrolb-speaker\" cannot list resource \"services\" in API group \"\" at the cluster scope"
        );
        let a = Attributes {
            group: "coordination.k8s.io",
            ..attrs("get", "leases", "", "ferrolb-system", "other")
        };
        let s = forbidden_status(&u, &a, "leases.coordination.k8s.io");
        assert_eq!(s["code"], 403);
        assert_eq!(s["reason"], "Forbidden");
        assert_eq!(
            s["message"],
            "leases.coordination.k8s.io \"other\" is forbidden: User \"system:serviceaccount:ferrolb-system:ferrolb-speaker\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"ferrolb-system\""
        );
    }
}
