//! The resource types the fake server knows: those ferrolb uses, and those
//! `deploy/` creates (RBAC, ServiceAccounts, the workloads), so the shipped
//! manifests can be applied and their RBAC enforced.

/// One API resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// The plural name used in URLs (`services`).
    pub plural: &'static str,
    /// The object kind (`Service`).
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether `status` is a subresource: writes to the object then keep the
    /// old status, and writes to `/status` change nothing else.
    pub has_status: bool,
}

impl ResourceType {
    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource name with its group, as RBAC rules and logs write it
    /// (`services`, `leases.coordination.k8s.io`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Every resource type served.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        has_status: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        kind: "ClusterRole",
        namespaced: false,
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        kind: "ClusterRoleBinding",
        namespaced: false,
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        kind: "Role",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        kind: "RoleBinding",
        namespaced: true,
        has_status: false,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition",
        namespaced: false,
        has_status: true,
    },
    // ferrolb's own custom resource (deploy/crds.yaml): served only while
    // its CustomResourceDefinition exists, as on a real server.
    ResourceType {
        group: "ferrolb.io",
        version: "v1alpha1",
        plural: "nodeannouncements",
        kind: "NodeAnnouncement",
        namespaced: true,
        has_status: false,
    },
    // MetalLB's custom resources, for `--config-source metallb` and the
    // migration tests: served only while their CRDs exist, each at one
    // version (BGPPeer at v1beta2, its storage version; the real server
    // also serves v1beta1 and converts between them).
    ResourceType {
        group: "metallb.io",
        version: "v1beta1",
        plural: "ipaddresspools",
        kind: "IPAddressPool",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "metallb.io",
        version: "v1beta1",
        plural: "l2advertisements",
        kind: "L2Advertisement",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "metallb.io",
        version: "v1beta1",
        plural: "bgpadvertisements",
        kind: "BGPAdvertisement",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "metallb.io",
        version: "v1beta2",
        plural: "bgppeers",
        kind: "BGPPeer",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "metallb.io",
        version: "v1beta1",
        plural: "communities",
        kind: "Community",
        namespaced: true,
        has_status: true,
    },
    ResourceType {
        group: "metallb.io",
        version: "v1beta1",
        plural: "bfdprofiles",
        kind: "BFDProfile",
        namespaced: true,
        has_status: true,
    },
];

/// Whether `rt` is a custom resource (defined by a CRD), not built in: a
/// group with a dot outside Kubernetes' own `*.k8s.io`.
fn is_custom(rt: &ResourceType) -> bool {
    rt.group.contains('.') && !rt.group.ends_with("k8s.io")
}

/// The name of the CustomResourceDefinition that must exist for
/// `resource` to be served, if it is a custom resource.
pub fn definition(resource: usize) -> Option<String> {
    let rt = &RESOURCES[resource];
    is_custom(rt).then(|| format!("{}.{}", rt.plural, rt.group))
}

/// Index into [`RESOURCES`] of the type served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Index into [`RESOURCES`] by plural name and group (`("leases", "coordination.k8s.io")`).
pub fn by_name(plural: &str, group: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.plural == plural)
}

/// Whether `resource` is a view of objects stored as another type: the
/// events.k8s.io Events are the core Events (crate::events).
pub fn is_view(resource: usize) -> bool {
    RESOURCES[resource].group == "events.k8s.io"
}

/// The resource whose objects `resource` shows: itself, or for a view the
/// stored type.
pub fn stored_as(resource: usize) -> usize {
    if is_view(resource) {
        by_name("events", "").expect("core events are served")
    } else {
        resource
    }
}

/// A stored object as `resource` shows it.
pub fn present(resource: usize, object: serde_json::Value) -> serde_json::Value {
    if is_view(resource) {
        crate::events::to_events(object)
    } else {
        object
    }
}

/// A stored object as `resource` shows it, copied only when a view converts it.
pub fn present_ref(
    resource: usize,
    object: &serde_json::Value,
) -> std::borrow::Cow<'_, serde_json::Value> {
    if is_view(resource) {
        std::borrow::Cow::Owned(crate::events::to_events(object.clone()))
    } else {
        std::borrow::Cow::Borrowed(object)
    }
}
