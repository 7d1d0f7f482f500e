//! Splits a Kubernetes API URL path into what it addresses.

use crate::resource;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into [`resource::RESOURCES`].
    pub resource: usize,
    /// The namespace in the path; `None` for cluster-wide paths.
    pub namespace: Option<String>,
    /// The object name; `None` for collections.
    pub name: Option<String>,
    /// `status`, if the path ends in it.
    pub subresource: Option<String>,
}

/// Why a path is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not an API path, or a resource this server does not emulate.
    NotFound(String),
}

/// Parses `/api/v1/...` and `/apis/GROUP/VERSION/...`.
pub fn parse(path: &str) -> Result<Target, PathError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || {
        PathError::NotFound(format!(
            "the server could not find the requested resource {path}"
        ))
    };
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let resource = resource::find(group, version, plural).ok_or_else(not_found)?;
    let rt = &resource::RESOURCES[resource];
    if namespace.is_some() && !rt.namespaced {
        return Err(not_found());
    }
    if name.is_some() && rt.namespaced && namespace.is_none() {
        return Err(not_found());
    }
    if let Some(s) = &sub {
        if s != "status" || !rt.has_status {
            return Err(not_found());
        }
    }
    Ok(Target {
        resource,
        namespace,
        name,
        subresource: sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plural(t: &Target) -> &'static str {
        resource::RESOURCES[t.resource].plural
    }

    #[test]
    fn core_and_group_paths() {
        let t = parse("/api/v1/namespaces/default/services/web/status").unwrap();
        assert_eq!(plural(&t), "services");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("status"));

        let t = parse("/api/v1/services").unwrap();
        assert_eq!((t.namespace, t.name), (None, None));

        let t = parse("/apis/coordination.k8s.io/v1/namespaces/x/leases/l").unwrap();
        assert_eq!(plural(&t), "leases");

        let t = parse("/api/v1/nodes/n1").unwrap();
        assert_eq!(t.name.as_deref(), Some("n1"));
        // A collection literally named like the namespaces prefix.
        let t = parse("/api/v1/namespaces/default/services").unwrap();
        assert_eq!((t.namespace.as_deref(), t.name), (Some("default"), None));
    }

    #[test]
    fn refuses_what_is_not_served() {
        for p in [
            "/api/v1/persistentvolumes",
            "/api/v1/namespaces/a/nodes/n",
            "/api/v1/services/web",
            "/api/v1/namespaces/a/configmaps/c/status",
            "/api/v1/namespaces/a/services/s/scale",
            "/healthz",
            "/apis/batch/v1/jobs",
        ] {
            assert!(parse(p).is_err(), "{p}");
        }
    }
}
