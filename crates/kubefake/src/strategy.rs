//! What the real registry strategies and validation do to the objects ferrolb
//! uses, on top of the generic store: defaulting and the rules a plain
//! object store would not enforce. Each rule names the real function it
//! mirrors (kubernetes/kubernetes).

use crate::store::ApiError;
use serde_json::{json, Value};

/// The cluster's Service IP families (`--service-cluster-ip-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stack {
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// Both, IPv4 primary (the usual dual-stack order).
    #[default]
    Dual,
}

impl Stack {
    fn families(self) -> &'static [&'static str] {
        match self {
            Stack::Ipv4 => &["IPv4"],
            Stack::Ipv6 => &["IPv6"],
            Stack::Dual => &["IPv4", "IPv6"],
        }
    }
}

fn invalid(kind: &str, name: &str, field: &str, detail: String) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{kind} {name:?} is invalid: {field}: {detail}"),
    }
}

fn name(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn service_type(obj: &Value) -> &str {
    obj.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

/// `initIPFamilyFields` (pkg/registry/core/service/storage/alloc.go) with the
/// checks of `ValidateService`'s `validateIPFamilies`/`validateIPFamilyPolicy`
/// (pkg/apis/core/validation/validation.go): infer RequireDualStack from two
/// families, refuse what the cluster cannot give, default SingleStack and the
/// primary family, and add the secondary family for a dual-stack policy on a
/// dual-stack cluster.
pub fn init_ip_families(obj: &mut Value, stack: Stack) -> Result<(), ApiError> {
    let n = name(obj);
    let bad = |field: &str, detail: String| invalid("Service", &n, field, detail);
    if service_type(obj) == "ExternalName" {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("ipFamilies");
            spec.remove("ipFamilyPolicy");
        }
        return Ok(());
    }
    let spec = obj.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut families: Vec<String> = Vec::new();
    if let Some(list) = spec.get("ipFamilies") {
        let Some(list) = list.as_array() else {
            return Err(bad("spec.ipFamilies", "must be a list".into()));
        };
        for (i, f) in list.iter().enumerate() {
            let f = f.as_str().unwrap_or("");
            if f != "IPv4" && f != "IPv6" {
                return Err(bad(
                    &format!("spec.ipFamilies[{i}]"),
                    format!("Unsupported value: {f:?}: supported values: \"IPv4\", \"IPv6\""),
                ));
            }
            if families.iter().any(|x| x == f) {
                return Err(bad(
                    &format!("spec.ipFamilies[{i}]"),
                    format!("Duplicate value: {f:?}"),
                ));
            }
            families.push(f.to_string());
        }
        if families.len() > 2 {
            return Err(bad(
                "spec.ipFamilies",
                "Invalid value: may specify no more than 2 ip families".into(),
            ));
        }
    }
    let mut policy = match spec.get("ipFamilyPolicy").and_then(Value::as_str) {
        None => None,
        Some(p @ ("SingleStack" | "PreferDualStack" | "RequireDualStack")) => Some(p.to_string()),
        Some(other) => {
            return Err(bad(
                "spec.ipFamilyPolicy",
                format!("Unsupported value: {other:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""),
            ))
        }
    };
    // Two families and no policy: the user wants dual stack.
    if policy.is_none() && families.len() == 2 {
        policy = Some("RequireDualStack".into());
    }
    let policy = policy.unwrap_or_else(|| "SingleStack".into());
    if policy == "SingleStack" && families.len() == 2 {
        return Err(bad(
            "spec.ipFamilyPolicy",
            "Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified".into(),
        ));
    }
    let cluster = stack.families();
    if policy == "RequireDualStack" && cluster.len() < 2 {
        return Err(bad(
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into(),
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if !cluster.contains(&f.as_str()) {
            return Err(bad(
                &format!("spec.ipFamilies[{i}]"),
                format!("Invalid value: {f:?}: not configured on this cluster"),
            ));
        }
    }
    if families.is_empty() {
        families.push(cluster[0].to_string());
    }
    if policy != "SingleStack" && cluster.len() == 2 && families.len() == 1 {
        let other = if families[0] == "IPv4" {
            "IPv6"
        } else {
            "IPv4"
        };
        families.push(other.to_string());
    }
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    obj["spec"]["ipFamilies"] = json!(families);
    obj["spec"]["ipFamilyPolicy"] = json!(policy);
    Ok(())
}

/// `SetDefaults_Service` (pkg/apis/core/v1/defaults.go) for ingress
/// `ipMode`, then `ValidateServiceStatusUpdate` (validation.go): ingress only
/// on a LoadBalancer Service, `ipMode` only with `ip`.
pub fn service_status(obj: &mut Value) -> Result<(), ApiError> {
    let n = name(obj);
    let is_lb = service_type(obj) == "LoadBalancer";
    let Some(ingress) = obj
        .pointer_mut("/status/loadBalancer/ingress")
        .and_then(Value::as_array_mut)
    else {
        return Ok(());
    };
    if !ingress.is_empty() && !is_lb {
        return Err(invalid(
            "Service",
            &n,
            "status.loadBalancer.ingress",
            "Forbidden: may only be used when `spec.type` is 'LoadBalancer'".into(),
        ));
    }
    for (i, ing) in ingress.iter_mut().enumerate() {
        let has_ip = ing
            .get("ip")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let has_mode = ing.get("ipMode").is_some_and(|m| !m.is_null());
        match (has_ip, has_mode) {
            (true, false) => ing["ipMode"] = json!("VIP"),
            (false, true) => {
                return Err(invalid(
                    "Service",
                    &n,
                    &format!("status.loadBalancer.ingress[{i}].ipMode"),
                    "Forbidden: may not be specified when `ip` is not".into(),
                ))
            }
            (true, true) => {
                let m = ing["ipMode"].as_str().unwrap_or("");
                if m != "VIP" && m != "Proxy" {
                    return Err(invalid(
                        "Service",
                        &n,
                        &format!("status.loadBalancer.ingress[{i}].ipMode"),
                        format!("Unsupported value: {m:?}: supported values: \"Proxy\", \"VIP\""),
                    ));
                }
            }
            (false, false) => {}
        }
    }
    Ok(())
}

/// `PrepareForUpdate` of the Service strategy (pkg/registry/core/service/
/// strategy.go, `dropTypeDependentFields`): a Service that stops being a
/// LoadBalancer loses its load-balancer status, and an unchanged
/// `loadBalancerClass`, in the same write.
pub fn service_type_change(old: &Value, new: &mut Value) {
    if service_type(old) != "LoadBalancer" || service_type(new) == "LoadBalancer" {
        return;
    }
    if let Some(status) = new.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("loadBalancer".into(), json!({}));
    }
    let old_class = old.pointer("/spec/loadBalancerClass");
    if old_class.is_some() && new.pointer("/spec/loadBalancerClass") == old_class {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("loadBalancerClass");
        }
    }
}

fn dns_label(s: &str, first_alpha: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (if first_alpha {
            b[0].is_ascii_lowercase()
        } else {
            b[0].is_ascii_alphanumeric()
        })
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && !s.is_empty() && s.split('.').all(|l| dns_label(l, false))
}

/// Object names as `ValidateObjectMeta` checks them with each resource's name
/// function (pkg/apis/core/validation): a DNS-1035 label for Services, a
/// DNS-1123 label for Namespaces, a path segment for RBAC objects
/// (`ValidateRBACName`), a DNS-1123 subdomain for the rest.
pub fn validate_name(kind: &str, plural: &str, name: &str) -> Result<(), ApiError> {
    let (ok, what) = match plural {
        "services" => (dns_label(name, true), "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"),
        "namespaces" => (dns_label(name, false), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
        // ValidateRBACName: any path segment (`ferrolb:controller` is fine).
        "clusterroles" | "clusterrolebindings" | "roles" | "rolebindings" => (
            !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('%'),
            "may not be '.' or '..' and may not contain '/' or '%'",
        ),
        _ => (dns_subdomain(name), "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            kind,
            name,
            "metadata.name",
            format!("Invalid value: {name:?}: {what}"),
        ))
    }
}

fn label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `ValidateLabels` (apimachinery/pkg/apis/meta/v1/validation): keys are
/// `[prefix/]name` (prefix a DNS subdomain, name at most 63 characters of
/// alphanumerics, `-`, `_`, `.`), values empty or a name.
pub fn validate_labels(kind: &str, obj: &Value) -> Result<(), ApiError> {
    let Some(labels) = obj.pointer("/metadata/labels") else {
        return Ok(());
    };
    let n = name(obj);
    let Some(labels) = labels.as_object() else {
        return Err(invalid(
            kind,
            &n,
            "metadata.labels",
            "must be a map of strings".into(),
        ));
    };
    for (k, v) in labels {
        let (prefix, key) = match k.split_once('/') {
            Some((p, k)) => (Some(p), k),
            None => (None, k.as_str()),
        };
        if prefix.is_some_and(|p| !dns_subdomain(p)) || !label_name(key) {
            return Err(invalid(kind, &n, "metadata.labels", format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (with an optional DNS subdomain prefix and '/')")));
        }
        let Some(v) = v.as_str() else {
            return Err(invalid(
                kind,
                &n,
                &format!("metadata.labels[{k}]"),
                "must be a string".into(),
            ));
        };
        if !v.is_empty() && !label_name(v) {
            return Err(invalid(kind, &n, "metadata.labels", format!("Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
        }
    }
    Ok(())
}

/// What an apply patch must carry: `apiVersion` and `kind` (the structured
/// merge refuses a body it cannot type), and a `metadata.name`, if given,
/// equal to the URL's. A body without a name takes the URL's, as the real
/// server does (kube-lease-manager's Lease patches rely on it).
pub fn apply_body(body: &Value, url_name: &str) -> Result<(), ApiError> {
    for field in ["apiVersion", "kind"] {
        if body
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "an apply patch must set {field}"
            )));
        }
    }
    if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str) {
        if n != url_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({url_name})"
            )));
        }
    }
    Ok(())
}

/// The field selectors each resource supports: `metadata.name` and
/// `metadata.namespace` everywhere, and the resource's own
/// `AddFieldLabelConversionFunc` list (pkg/apis/core/v1/conversion.go and
/// friends); anything else is a 400, as from the real server.
pub fn field_labels(plural: &str, group: &str) -> &'static [&'static str] {
    match (plural, group) {
        ("pods", "") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("services", "") => &["spec.clusterIP", "spec.type"],
        ("nodes", "") => &["spec.unschedulable"],
        ("secrets", "") => &["type"],
        ("namespaces", "") => &["status.phase"],
        ("events", "") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events", "events.k8s.io") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        _ => &[],
    }
}

/// Refuses a field selector path `plural` does not support.
pub fn check_field_selector<'a>(
    plural: &str,
    group: &str,
    paths: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    let own = field_labels(plural, group);
    for p in paths {
        if p != "metadata.name" && p != "metadata.namespace" && !own.contains(&p) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {p}"
            )));
        }
    }
    Ok(())
}

/// `ValidateFieldManager` (staging/src/k8s.io/apimachinery/pkg/api/validation):
/// at most 128 bytes, printable characters.
pub fn field_manager(manager: &str) -> Result<(), ApiError> {
    if manager.len() > 128 {
        return Err(ApiError::bad_request(format!(
            "fieldManager: Too long: may not be more than 128 bytes (got {})",
            manager.len()
        )));
    }
    if manager.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "fieldManager: Invalid value: must only contain printable characters",
        ));
    }
    Ok(())
}

/// `ValidateEventCreate` for events.k8s.io/v1 (pkg/apis/core/validation/
/// events.go, `legacyValidateEvent` aside): `eventTime`, `reportingController`
/// (at most 253 characters), `reportingInstance`, `action` and `reason` (each
/// required, at most 128), `regarding`, a `note` of at most 1 KiB, and `type`
/// `Normal` or `Warning`.
pub fn event_create(obj: &Value) -> Result<(), ApiError> {
    let n = name(obj);
    let bad = |field: &str, detail: String| invalid("Event", &n, field, detail);
    let text = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or("");
    if obj.get("eventTime").is_none_or(Value::is_null) {
        return Err(bad("eventTime", "Required value".into()));
    }
    for (field, max) in [
        ("reportingController", 253),
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
    ] {
        let v = text(field);
        if v.is_empty() {
            return Err(bad(field, "Required value".into()));
        }
        if v.len() > max {
            return Err(bad(
                field,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
    }
    if text("note").len() > 1024 {
        return Err(bad(
            "note",
            "Too long: may not be more than 1024 bytes".into(),
        ));
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        return Err(bad(
            "type",
            format!(
                "Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"",
                text("type")
            ),
        ));
    }
    if obj.get("regarding").is_none_or(|r| !r.is_object()) {
        return Err(bad("regarding", "Required value".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (spec, cluster stack) -> (ipFamilies, ipFamilyPolicy), or the field the 422 names.
    type FamilyCase = (Value, Stack, Result<(Value, &'static str), &'static str>);

    fn svc(spec: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn ip_families_are_defaulted_as_init_ip_family_fields_does() {
        let cases: Vec<FamilyCase> = vec![
            (
                json!({"type": "LoadBalancer"}),
                Stack::Ipv4,
                Ok((json!(["IPv4"]), "SingleStack")),
            ),
            (
                json!({"type": "LoadBalancer"}),
                Stack::Ipv6,
                Ok((json!(["IPv6"]), "SingleStack")),
            ),
            (
                json!({"type": "LoadBalancer"}),
                Stack::Dual,
                Ok((json!(["IPv4"]), "SingleStack")),
            ),
            (
                json!({"ipFamilyPolicy": "PreferDualStack"}),
                Stack::Ipv4,
                Ok((json!(["IPv4"]), "PreferDualStack")),
            ),
            (
                json!({"ipFamilyPolicy": "PreferDualStack"}),
                Stack::Dual,
                Ok((json!(["IPv4", "IPv6"]), "PreferDualStack")),
            ),
            (
                json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"]}),
                Stack::Dual,
                Ok((json!(["IPv6", "IPv4"]), "PreferDualStack")),
            ),
            (
                json!({"ipFamilies": ["IPv6", "IPv4"]}),
                Stack::Dual,
                Ok((json!(["IPv6", "IPv4"]), "RequireDualStack")),
            ),
            (
                json!({"ipFamilyPolicy": "RequireDualStack"}),
                Stack::Ipv4,
                Err("spec.ipFamilyPolicy"),
            ),
            (
                json!({"ipFamilies": ["IPv4", "IPv6"]}),
                Stack::Ipv4,
                Err("spec.ipFamilyPolicy"),
            ),
            (
                json!({"ipFamilies": ["IPv6"]}),
                Stack::Ipv4,
                Err("spec.ipFamilies[0]"),
            ),
            (
                json!({"ipFamilies": ["IPv4", "IPv4"]}),
                Stack::Dual,
                Err("spec.ipFamilies[1]"),
            ),
            (
                json!({"ipFamilies": ["IPv5"]}),
                Stack::Dual,
                Err("spec.ipFamilies[0]"),
            ),
            (
                json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}),
                Stack::Dual,
                Err("spec.ipFamilyPolicy"),
            ),
            (
                json!({"ipFamilyPolicy": "Sometimes"}),
                Stack::Dual,
                Err("spec.ipFamilyPolicy"),
            ),
        ];
        for (spec, stack, want) in cases {
            let mut o = svc(spec.clone());
            let got = init_ip_families(&mut o, stack);
            match want {
                Ok((families, policy)) => {
                    got.unwrap_or_else(|e| panic!("{spec} on {stack:?}: {e}"));
                    assert_eq!(o["spec"]["ipFamilies"], families, "{spec} on {stack:?}");
                    assert_eq!(o["spec"]["ipFamilyPolicy"], policy, "{spec} on {stack:?}");
                }
                Err(field) => {
                    let e = got.expect_err(&format!("{spec} on {stack:?} must be refused"));
                    assert_eq!(e.code, 422);
                    assert!(
                        e.message.contains(&format!("{field}:")),
                        "{spec}: {}",
                        e.message
                    );
                }
            }
        }
        let mut ext = svc(json!({"type": "ExternalName", "ipFamilies": ["IPv4"]}));
        init_ip_families(&mut ext, Stack::Dual).unwrap();
        assert!(ext["spec"].get("ipFamilies").is_none());
    }

    #[test]
    fn status_ingress_rules_of_validate_service_status_update() {
        let mut lb = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "x.example"}]}}});
        service_status(&mut lb).unwrap();
        assert_eq!(
            lb["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP",
            "defaulted"
        );
        assert!(lb["status"]["loadBalancer"]["ingress"][1]
            .get("ipMode")
            .is_none());
        let mut cluster_ip = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
        assert!(service_status(&mut cluster_ip)
            .unwrap_err()
            .message
            .contains("status.loadBalancer.ingress: Forbidden"));
        let mut mode_only = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"hostname": "x", "ipMode": "VIP"}]}}});
        assert!(service_status(&mut mode_only)
            .unwrap_err()
            .message
            .contains("ingress[0].ipMode"));
        let mut bad_mode = json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "Tunnel"}]}}});
        assert_eq!(service_status(&mut bad_mode).unwrap_err().code, 422);
        // An empty status on any type is fine.
        let mut empty = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP"}, "status": {"loadBalancer": {}}});
        service_status(&mut empty).unwrap();
    }

    #[test]
    fn names_labels_and_apply_bodies_are_validated() {
        assert!(validate_name("Service", "services", "web-1").is_ok());
        for bad in ["1web", "Web", "web_1", "web.example", &"a".repeat(64), ""] {
            assert_eq!(
                validate_name("Service", "services", bad).unwrap_err().code,
                422,
                "{bad}"
            );
        }
        assert!(validate_name("ConfigMap", "configmaps", "ferrolb.config-1").is_ok());
        assert!(validate_name("ConfigMap", "configmaps", "-x").is_err());
        assert!(validate_name("Namespace", "namespaces", "ferrolb-system").is_ok());
        assert!(validate_name("Namespace", "namespaces", "a.b").is_err());
        assert!(validate_name("ClusterRole", "clusterroles", "ferrolb:controller").is_ok());
        assert!(validate_name("ClusterRole", "clusterroles", "a/b").is_err());
        let with = |labels: Value| {
            validate_labels(
                "Service",
                &json!({"metadata": {"name": "w", "labels": labels}}),
            )
        };
        assert!(
            with(json!({"app.kubernetes.io/name": "ferrolb", "tier": "", "a_b.c-d": "x_1"}))
                .is_ok()
        );
        for bad in [
            json!({"bad key": "x"}),
            json!({"-x": "y"}),
            json!({"Bad_Prefix/x": "y"}),
            json!({"x": "has space"}),
            json!({"x": "a".repeat(64)}),
            json!({"x": 1}),
        ] {
            assert_eq!(with(bad.clone()).unwrap_err().code, 422, "{bad}");
        }
        assert!(apply_body(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            "c"
        )
        .is_ok());
        assert!(
            apply_body(&json!({"apiVersion": "v1", "kind": "ConfigMap"}), "c").is_ok(),
            "the URL names it"
        );
        assert!(apply_body(
            &json!({"kind": "ConfigMap", "metadata": {"name": "c"}}),
            "c"
        )
        .is_err());
        assert!(apply_body(&json!({"apiVersion": "v1", "metadata": {"name": "c"}}), "c").is_err());
        assert!(apply_body(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}}),
            "c"
        )
        .is_err());
    }

    #[test]
    fn field_selectors_only_on_the_fields_each_resource_supports() {
        let ok = |plural: &str, group: &str, path: &str| {
            check_field_selector(plural, group, std::iter::once(path)).is_ok()
        };
        assert!(ok("configmaps", "", "metadata.name"));
        assert!(ok("pods", "", "spec.nodeName"));
        assert!(ok("services", "", "spec.type"));
        assert!(ok("events", "events.k8s.io", "regarding.name"));
        assert!(!ok("events", "events.k8s.io", "involvedObject.name"));
        assert!(!ok("configmaps", "", "data.x"));
        assert!(!ok("services", "", "spec.loadBalancerIP"));
        let e = check_field_selector(
            "leases",
            "coordination.k8s.io",
            std::iter::once("spec.holderIdentity"),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "field label not supported: spec.holderIdentity")
        );
    }

    #[test]
    fn field_managers_and_events_are_validated_as_the_api_server_does() {
        assert!(field_manager(&"m".repeat(128)).is_ok());
        assert_eq!(field_manager(&"m".repeat(129)).unwrap_err().code, 400);
        assert!(field_manager("bad\u{7}").is_err());
        let good = json!({"metadata": {"name": "e"}, "eventTime": "2026-12-02T00:00:00.000000Z",
            "reportingController": "ferrolb-speaker", "reportingInstance": "node1",
            "action": "Announce", "reason": "IPAnnounced", "type": "Normal", "note": "n",
            "regarding": {"kind": "Service", "name": "web"}});
        event_create(&good).unwrap();
        let with = |field: &str, v: Value| {
            let mut e = good.clone();
            e[field] = v;
            event_create(&e).map_err(|e| e.message)
        };
        for (field, v, want) in [
            (
                "reportingInstance",
                json!("i".repeat(129)),
                "reportingInstance: Too long",
            ),
            ("action", json!("a".repeat(129)), "action: Too long"),
            ("reason", json!(""), "reason: Required"),
            (
                "reportingController",
                json!("c".repeat(254)),
                "reportingController: Too long",
            ),
            ("note", json!("n".repeat(1025)), "note: Too long"),
            ("type", json!("Info"), "type: Unsupported"),
            ("regarding", Value::Null, "regarding: Required"),
            ("eventTime", Value::Null, "eventTime: Required"),
        ] {
            let got = with(field, v).unwrap_err();
            assert!(got.contains(want), "{field}: {got}");
        }
    }

    #[test]
    fn leaving_load_balancer_drops_its_status_and_unchanged_class() {
        let old = json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "ferrolb.io/lb"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}});
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        service_type_change(&old, &mut new);
        assert_eq!(new["status"]["loadBalancer"], json!({}));
        assert!(new["spec"].get("loadBalancerClass").is_none());
        // Staying a LoadBalancer keeps everything.
        let mut same = old.clone();
        service_type_change(&old, &mut same);
        assert_eq!(same, old);
    }
}
