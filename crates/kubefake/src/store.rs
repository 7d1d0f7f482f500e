//! The object store: what etcd plus the API server's generic registry do
//! for the resources served. Pure and synchronous (the server holds it
//! behind a mutex): resource versions, optimistic concurrency, the status
//! subresource, field ownership for server-side apply, and a bounded
//! history of changes that watches resume from.

use crate::patch::{self, Owners};
use crate::resource::{self, ResourceType, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// An API error, returned to clients as a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// The `reason` field (`NotFound`, `Conflict`...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", rt.qualified()),
        }
    }

    fn conflict(message: String) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message,
        }
    }

    /// The `Status` object the API server sends for this error.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Deleted.
    Deleted,
}

/// One committed change, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resource version the change was committed at.
    pub rv: u64,
    /// Index into [`RESOURCES`].
    pub resource: usize,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for a deletion: its last state).
    pub object: Value,
    /// The object before a modification, so that watches with selectors can
    /// tell an object that moved out of their view.
    pub old: Option<Value>,
}

/// How a PATCH body is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`, applied as a merge patch.
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`: merge plus field ownership.
    Apply {
        /// `force=true`: take fields from other managers instead of 409.
        force: bool,
    },
}

struct Stored {
    object: Value,
    owners: Owners,
}

type Key = (usize, String, String);

/// A watch's starting point could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// The oldest resource version a watch may start after.
    pub oldest: u64,
}

/// The changes a new watch must replay, and the receiver of those to come.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// The store.
pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Arc<Change>>,
    capacity: usize,
    /// Every change after this resource version is in `history`.
    horizon: u64,
    uids: u64,
    tx: broadcast::Sender<Arc<Change>>,
    stack: crate::strategy::Stack,
    /// How long an Event lives (the API server's `--event-ttl`, 1 h by default).
    event_ttl: std::time::Duration,
    /// When each stored Event expires, or a Pod being deleted goes, soonest first.
    /// The value is the object's uid: a namesake created since is not touched.
    expiry: BTreeMap<(std::time::Instant, Key), String>,
}

fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

fn name_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/name").and_then(Value::as_str)
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

fn uid_of(v: &Value) -> &str {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// DELETE's `preconditions.resourceVersion`: a stale one is 409.
fn check_precondition(object: &Value, precondition: Option<&str>) -> Result<(), ApiError> {
    match precondition {
        Some(want) if rv_of(object) != Some(want) => Err(ApiError::conflict(format!(
            "Precondition failed: resourceVersion {want} does not match {}",
            rv_of(object).unwrap_or("")
        ))),
        _ => Ok(()),
    }
}

fn set_meta(v: &mut Value, key: &str, value: Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(key.to_string(), value);
    }
}

/// The object without its resource version, for "did anything change?".
fn without_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    v
}

impl Store {
    /// An empty store keeping the last `capacity` changes for watches.
    pub fn new(capacity: usize) -> Store {
        let (tx, _) = broadcast::channel(65_536);
        let mut store = Store::empty(capacity, tx);
        // The namespaces every cluster starts with.
        let ns = crate::resource::by_name("namespaces", "").expect("namespaces are served");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store
                .create(
                    ns,
                    None,
                    json!({"metadata": {"name": name}}),
                    "kube-apiserver",
                )
                .expect("a fresh store takes the system namespaces");
        }
        store
    }

    fn empty(capacity: usize, tx: broadcast::Sender<Arc<Change>>) -> Store {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            capacity: capacity.max(1),
            horizon: 1,
            uids: 0,
            tx,
            stack: crate::strategy::Stack::default(),
            event_ttl: std::time::Duration::from_secs(3600),
            expiry: BTreeMap::new(),
        }
    }

    /// The same store with Events living `ttl` (`--event-ttl`).
    pub fn with_event_ttl(mut self, ttl: std::time::Duration) -> Store {
        self.event_ttl = ttl;
        self
    }

    /// Deletes the Events whose TTL ran out, as etcd's lease expiry does
    /// (watches see them DELETED), and the Pods whose grace period ended.
    /// The server calls it on every request.
    pub fn expire_events(&mut self, now: std::time::Instant) {
        while let Some((&(at, ref key), uid)) = self.expiry.iter().next() {
            if at > now {
                break;
            }
            let (key, uid) = (key.clone(), uid.clone());
            self.expiry.remove(&(at, key.clone()));
            if let Some(stored) = self.objects.get(&key) {
                if uid_of(&stored.object) == uid {
                    let object = stored.object.clone();
                    self.commit(key, object, Owners::new(), ChangeKind::Deleted, None);
                }
            }
        }
    }

    /// The same store for a cluster with Service IP families `stack`.
    pub fn with_stack(mut self, stack: crate::strategy::Stack) -> Store {
        self.stack = stack;
        self
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn key(resource: usize, ns: Option<&str>, name: &str) -> Key {
        (resource, ns.unwrap_or("").to_string(), name.to_string())
    }

    /// A custom resource's object as its CRD's schema admits it (pruned,
    /// defaulted), or the 422 the real server gives: built-in types pass.
    fn admit_custom(&self, resource: usize, object: &mut Value) -> Result<(), ApiError> {
        let Some(crd) = resource::definition(resource) else {
            return Ok(());
        };
        let crds = resource::by_name("customresourcedefinitions", "apiextensions.k8s.io")
            .expect("CRDs are served");
        let Some(def) = self.objects.get(&Self::key(crds, None, &crd)) else {
            return Ok(());
        };
        let rt = &RESOURCES[resource];
        let Some(schema) = crate::schema::of_version(&def.object, rt.version) else {
            return Ok(());
        };
        crate::schema::admit(schema, object).map_err(|errors| ApiError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "{}.{} {:?} is invalid: {}",
                rt.kind,
                rt.group,
                name_of(object).unwrap_or_default(),
                errors.join(", ")
            ),
        })
    }

    /// Every object of one type, in every namespace, without selectors or pages.
    pub fn all(&self, resource: usize) -> Vec<Value> {
        self.list(
            resource,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
            None,
            None,
        )
        .0
    }

    /// One object.
    pub fn get(&self, resource: usize, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(resource::stored_as(resource), ns, name))
            .map(|s| resource::present(resource, s.object.clone()))
            .ok_or_else(|| ApiError::not_found(&RESOURCES[resource], name))
    }

    /// Objects of a type, in one namespace or all, sorted by namespace and
    /// name, starting after `after` (a continue token's key), at most `limit`.
    /// Returns the items and the key to continue after if more remain.
    pub fn list(
        &self,
        resource: usize,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        after: Option<(String, String)>,
        limit: Option<usize>,
    ) -> (Vec<Value>, Option<(String, String)>) {
        let view = resource;
        let resource = resource::stored_as(view);
        let start = match &after {
            Some((ns, name)) => std::ops::Bound::Excluded((resource, ns.clone(), name.clone())),
            None => std::ops::Bound::Included((resource, String::new(), String::new())),
        };
        let end = std::ops::Bound::Excluded((resource + 1, String::new(), String::new()));
        let mut items = Vec::new();
        for ((_, ons, _), stored) in self.objects.range((start, end)) {
            if ns.is_some_and(|n| n != ons) {
                continue;
            }
            // Selectors see the object as the requested API shows it.
            let object = resource::present_ref(view, &stored.object);
            if !labels.matches(&object) || !fields.matches(&object) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                // More remain: continue after the last item returned.
                let last: &Value = items.last().expect("limit is at least 1");
                let lns = last
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let lname = name_of(last).unwrap_or("").to_string();
                return (items, Some((lns, lname)));
            }
            items.push(object.into_owned());
        }
        (items, None)
    }

    fn commit(
        &mut self,
        key: Key,
        mut object: Value,
        owners: Owners,
        kind: ChangeKind,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_meta(
            &mut object,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let change = Arc::new(Change {
            rv: self.rv,
            resource: key.0,
            namespace: key.1.clone(),
            kind,
            object: object.clone(),
            old,
        });
        if kind == ChangeKind::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(
                key,
                Stored {
                    object: object.clone(),
                    owners,
                },
            );
        }
        self.history.push_back(Arc::clone(&change));
        while self.history.len() > self.capacity {
            if let Some(dropped) = self.history.pop_front() {
                self.horizon = dropped.rv;
            }
        }
        // Nobody watching is not an error.
        let _ = self.tx.send(change);
        object
    }

    /// The NamespaceLifecycle admission plugin (plugin/pkg/admission/
    /// namespace/lifecycle): nothing is created in a namespace that does not
    /// exist (404) or is being deleted (403).
    fn namespace_lifecycle(&self, ns: &str) -> Result<(), ApiError> {
        let r = crate::resource::by_name("namespaces", "").expect("namespaces are served");
        let Some(stored) = self.objects.get(&Self::key(r, None, ns)) else {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: format!("namespaces {ns:?} not found"),
            });
        };
        let o = &stored.object;
        if o.pointer("/metadata/deletionTimestamp").is_some()
            || o.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        {
            return Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            });
        }
        Ok(())
    }

    /// POST: creates an object. `manager` is the `fieldManager` parameter.
    pub fn create(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if resource::is_view(resource) {
            if body
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k != "Event")
            {
                return Err(ApiError::bad_request(
                    "kind sent to the events endpoint is not Event",
                ));
            }
            crate::strategy::event_create(&body)?;
            let stored = resource::stored_as(resource);
            return self
                .create(stored, ns, crate::events::to_core(body), manager)
                .map(|v| resource::present(resource, v));
        }
        let rt = &RESOURCES[resource];
        let mut object = body;
        if !object.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(kind) = object.get("kind").and_then(Value::as_str) {
            if kind != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "kind {kind:?} sent to the {} endpoint",
                    rt.qualified()
                )));
            }
        }
        object["kind"] = Value::String(rt.kind.to_string());
        object["apiVersion"] = Value::String(rt.api_version());
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        let body_ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        if rt.namespaced {
            let ns = ns.ok_or_else(|| {
                ApiError::bad_request("a namespaced object needs a namespace in the URL")
            })?;
            if body_ns.as_deref().is_some_and(|b| b != ns) {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the object ({}) does not match the namespace on the request ({ns})",
                    body_ns.unwrap_or_default()
                )));
            }
            self.namespace_lifecycle(ns)?;
            set_meta(&mut object, "namespace", Value::String(ns.to_string()));
        } else if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        self.uids += 1;
        let name = match name_of(&object) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) => format!("{prefix}{:05x}", self.uids & 0xfffff),
                None => return Err(ApiError::bad_request("name or generateName is required")),
            },
        };
        let key = Self::key(resource, ns.filter(|_| rt.namespaced), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} {name:?} already exists", rt.qualified()),
            });
        }
        crate::strategy::validate_name(rt.kind, rt.plural, &name)?;
        set_meta(&mut object, "name", Value::String(name));
        crate::strategy::validate_labels(rt.kind, &object)?;
        self.admit_custom(resource, &mut object)?;
        set_meta(
            &mut object,
            "uid",
            Value::String(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
        );
        set_meta(
            &mut object,
            "creationTimestamp",
            Value::String(now_rfc3339()),
        );
        set_meta(&mut object, "generation", json!(1));
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        // As the real registry strategies do: clients cannot create a Service or Pod with a status.
        if matches!(rt.plural, "services" | "pods") {
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
        }
        if rt.plural == "services" && rt.group.is_empty() {
            crate::strategy::init_ip_families(&mut object, self.stack)?;
        }
        let mut owners = Owners::new();
        patch::record_owners(&mut owners, &json!({}), &object, None, manager);
        if rt.plural == "events" {
            // Both Event APIs: the TTL starts at creation (updates do not renew it here).
            let uid = uid_of(&object).to_string();
            self.remove_after(self.event_ttl, key.clone(), uid);
        }
        Ok(self.commit(key, object, owners, ChangeKind::Added, None))
    }

    /// Turns a candidate object into the stored one (status subresource
    /// rules, immutable metadata) and commits it if anything changed.
    fn write(
        &mut self,
        key: Key,
        status_only: bool,
        candidate: Value,
        manager: &str,
        apply: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let rt = &RESOURCES[key.0];
        let stored = self.objects.get(&key).expect("caller checked existence");
        let old = stored.object.clone();
        let old_rv = rv_of(&old).unwrap_or("").to_string();
        if let Some(rv) = rv_of(&candidate) {
            if !rv.is_empty() && rv != old_rv {
                return Err(ApiError::conflict(format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    rt.qualified(),
                    key.2
                )));
            }
        }
        if !candidate.is_object() {
            return Err(ApiError::bad_request("the result must be a JSON object"));
        }
        let mut object = if rt.has_status && status_only {
            let mut o = old.clone();
            match candidate.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    o.as_object_mut()
                        .expect("stored objects are objects")
                        .remove("status");
                }
            }
            o
        } else if rt.has_status {
            let mut o = candidate;
            match old.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    o.as_object_mut().expect("checked above").remove("status");
                }
            }
            o
        } else {
            candidate
        };
        if !object.get("metadata").is_some_and(Value::is_object) {
            object["metadata"] = json!({});
        }
        object["kind"] = Value::String(rt.kind.to_string());
        object["apiVersion"] = Value::String(rt.api_version());
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            match old.pointer(&format!("/metadata/{field}")) {
                Some(v) => set_meta(&mut object, field, v.clone()),
                None => {
                    if let Some(meta) = object["metadata"].as_object_mut() {
                        meta.remove(field);
                    }
                }
            }
        }
        crate::strategy::validate_labels(rt.kind, &object)?;
        self.admit_custom(key.0, &mut object)?;
        if rt.plural == "services" && rt.group.is_empty() {
            if status_only {
                crate::strategy::service_status(&mut object)?;
            } else {
                crate::strategy::init_ip_families(&mut object, self.stack)?;
                crate::strategy::service_type_change(&old, &mut object);
            }
        }
        if !status_only && object.get("spec") != old.get("spec") {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            set_meta(&mut object, "generation", json!(generation + 1));
        }
        if without_rv(&object) == without_rv(&old) {
            // The real server does not write a no-op update either: same resource version, no event.
            return Ok(old);
        }
        let mut owners = stored.owners.clone();
        patch::record_owners(&mut owners, &old, &object, apply, manager);
        Ok(self.commit(key, object, owners, ChangeKind::Modified, Some(old)))
    }

    /// PUT on an object or its `status`.
    pub fn update(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        name: &str,
        status_only: bool,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if resource::is_view(resource) && body.is_object() {
            let stored = resource::stored_as(resource);
            return self
                .update(
                    stored,
                    ns,
                    name,
                    status_only,
                    crate::events::to_core(body),
                    manager,
                )
                .map(|v| resource::present(resource, v));
        }
        let rt = &RESOURCES[resource];
        if name_of(&body).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&body).unwrap_or_default()
            )));
        }
        let key = Self::key(resource, ns.filter(|_| rt.namespaced), name);
        if !self.objects.contains_key(&key) {
            return Err(ApiError::not_found(rt, name));
        }
        self.write(key, status_only, body, manager, None)
    }

    /// PATCH on an object or its `status`. An apply patch creates a missing object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        name: &str,
        status_only: bool,
        kind: PatchKind,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if resource::is_view(resource) {
            return self.patch_view(resource, ns, name, status_only, kind, body, manager);
        }
        let rt = &RESOURCES[resource];
        let key = Self::key(resource, ns.filter(|_| rt.namespaced), name);
        let Some(stored) = self.objects.get(&key) else {
            if let PatchKind::Apply { .. } = kind {
                if status_only {
                    return Err(ApiError::not_found(rt, name));
                }
                return self.apply_creates(resource, ns, name, body, manager);
            }
            return Err(ApiError::not_found(rt, name));
        };
        let current = &stored.object;
        let candidate = match kind {
            PatchKind::Merge | PatchKind::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                let mut c = current.clone();
                patch::merge(&mut c, &body);
                c
            }
            PatchKind::Json => patch::json_patch(current, &body).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: format!("the JSON patch could not be applied: {e}"),
            })?,
            PatchKind::Apply { force } => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("an apply patch must be an object"));
                }
                if !force {
                    let conflicts = patch::apply_conflicts(current, &body, &stored.owners, manager);
                    if !conflicts.is_empty() {
                        return Err(ApiError::conflict(format!(
                            "Apply failed with {} conflict{}: {}",
                            conflicts.len(),
                            if conflicts.len() == 1 { "" } else { "s" },
                            conflicts.join(", ")
                        )));
                    }
                }
                let mut c = current.clone();
                patch::merge(&mut c, &body);
                c
            }
        };
        let apply_body = matches!(kind, PatchKind::Apply { .. }).then_some(&body);
        self.write(key, status_only, candidate, manager, apply_body)
    }

    /// An apply patch of a missing object creates it, named as the URL says.
    fn apply_creates(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if body.is_object() {
            if !body.get("metadata").is_some_and(Value::is_object) {
                body["metadata"] = json!({});
            }
            set_meta(&mut body, "name", Value::String(name.to_string()));
        }
        self.create(resource, ns, body, manager)
    }

    /// PATCH through a view (events.k8s.io): a JSON patch's paths name the
    /// view's fields, so it is applied to the view and written back; merge and
    /// apply patches rename their top-level fields, which is all that differs.
    #[allow(clippy::too_many_arguments)]
    fn patch_view(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        name: &str,
        status_only: bool,
        kind: PatchKind,
        body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let stored = resource::stored_as(resource);
        let current = match self.get(resource, ns, name) {
            Ok(c) => c,
            Err(e) => {
                if let PatchKind::Apply { .. } = kind {
                    if !status_only && body.is_object() {
                        return self.apply_creates(resource, ns, name, body, manager);
                    }
                }
                return Err(e);
            }
        };
        if kind == PatchKind::Json {
            let candidate = patch::json_patch(&current, &body).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: format!("the JSON patch could not be applied: {e}"),
            })?;
            return self.update(resource, ns, name, status_only, candidate, manager);
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        self.patch(
            stored,
            ns,
            name,
            status_only,
            kind,
            crate::events::to_core(body),
            manager,
        )
        .map(|v| resource::present(resource, v))
    }

    /// DELETE. A `precondition` resource version must match.
    pub fn delete(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<Value, ApiError> {
        let rt = &RESOURCES[resource];
        let key = Self::key(
            resource::stored_as(resource),
            ns.filter(|_| rt.namespaced),
            name,
        );
        let Some(stored) = self.objects.get(&key) else {
            return Err(ApiError::not_found(rt, name));
        };
        check_precondition(&stored.object, precondition)?;
        let object = stored.object.clone();
        let gone = self.commit(key, object, Owners::new(), ChangeKind::Deleted, None);
        Ok(resource::present(resource, gone))
    }

    /// DELETE of a Pod, as the API server does it (`BeforeDelete` in
    /// pkg/registry/rest/delete.go with the Pod strategy's
    /// `CheckGracefulDelete`): with a grace period (the request's, else the
    /// Pod's `terminationGracePeriodSeconds`, else 30 s) the Pod gets
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` and stays, Running,
    /// until the period ends (or the kubelet removes it); grace 0 deletes at once.
    pub fn delete_pod(
        &mut self,
        resource: usize,
        ns: Option<&str>,
        name: &str,
        grace: Option<u64>,
        precondition: Option<&str>,
    ) -> Result<Value, ApiError> {
        let rt = &RESOURCES[resource];
        let key = Self::key(resource, ns.filter(|_| rt.namespaced), name);
        let Some(stored) = self.objects.get(&key) else {
            return Err(ApiError::not_found(rt, name));
        };
        let object = stored.object.clone();
        let grace = grace.unwrap_or_else(|| {
            object
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30)
        });
        if grace == 0 {
            return self.delete(resource, ns, name, precondition);
        }
        if object.pointer("/metadata/deletionTimestamp").is_some() {
            // Already going: a second DELETE changes nothing here.
            return Ok(object);
        }
        check_precondition(&object, precondition)?;
        let mut going = object;
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace as i64);
        set_meta(
            &mut going,
            "deletionTimestamp",
            Value::String(
                jiff::Timestamp::from_second(at.as_second())
                    .unwrap_or(at)
                    .to_string(),
            ),
        );
        set_meta(&mut going, "deletionGracePeriodSeconds", json!(grace));
        let owners = self.objects[&key].owners.clone();
        let old = self.objects[&key].object.clone();
        self.remove_after(
            std::time::Duration::from_secs(grace),
            key.clone(),
            uid_of(&old).to_string(),
        );
        Ok(self.commit(key, going, owners, ChangeKind::Modified, Some(old)))
    }

    /// Schedules the object at `key` (if it is still the one with `uid`) for
    /// removal after `delay`, by [`Store::expire_events`].
    fn remove_after(&mut self, delay: std::time::Duration, key: Key, uid: String) {
        self.expiry
            .insert((std::time::Instant::now() + delay, key), uid);
    }

    /// The changes after `rv` (every resource; the caller filters) and a
    /// receiver for the ones still to come, taken atomically so that a
    /// watch misses nothing and sees nothing twice.
    pub fn watch_from(&self, rv: u64) -> Result<WatchStart, Gone> {
        if rv < self.horizon {
            return Err(Gone {
                oldest: self.horizon,
            });
        }
        let past = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    /// Current objects of a type as synthetic ADDED changes plus a receiver,
    /// for a watch without a resource version.
    pub fn watch_now(
        &self,
        resource: usize,
    ) -> (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>) {
        let resource = resource::stored_as(resource);
        let past = self
            .objects
            .range(
                (resource, String::new(), String::new())
                    ..(resource + 1, String::new(), String::new()),
            )
            .map(|((r, ns, _), s)| {
                Arc::new(Change {
                    rv: self.rv,
                    resource: *r,
                    namespace: ns.clone(),
                    kind: ChangeKind::Added,
                    object: s.object.clone(),
                    old: None,
                })
            })
            .collect();
        (past, self.tx.subscribe())
    }

    /// Forgets the change history, as etcd compaction does: a watch that
    /// resumes from an older resource version then gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.horizon = self.rv;
    }

    /// Number of objects stored.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with the namespaces the tests use, its history then cleared
    /// (as if compacted) so that the tests see only their own changes.
    fn test_store(capacity: usize) -> Store {
        let mut s = Store::new(capacity);
        let ns = crate::resource::by_name("namespaces", "").unwrap();
        for n in ["ns", "a", "b"] {
            s.create(ns, None, json!({"metadata": {"name": n}}), "test")
                .unwrap();
        }
        s.history.clear();
        s.horizon = s.rv;
        s
    }
    use crate::resource::by_name;

    fn svc(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}}})
    }

    /// One store behind both Event APIs, as the registry keeps core Events
    /// and serves events.k8s.io through `pkg/apis/events/v1/conversion.go`.
    #[test]
    fn both_event_apis_see_one_store() {
        let mut s = test_store(100);
        let core = by_name("events", "").unwrap();
        let new = by_name("events", "events.k8s.io").unwrap();
        let (_, mut rx) = s.watch_now(core);
        let made = s
            .create(
                new,
                Some("default"),
                json!({"metadata": {"name": "web.1"}, "eventTime": "2026-12-02T03:00:00.000000Z",
                    "regarding": {"kind": "Service", "name": "web", "namespace": "default"},
                    "note": "assigned", "reason": "IPAllocated", "type": "Normal", "action": "Allocate",
                    "reportingController": "ferrolb.io/controller", "reportingInstance": "c-1"}),
                "test",
            )
            .unwrap();
        assert_eq!(made["apiVersion"], "events.k8s.io/v1");
        assert_eq!(made["regarding"]["name"], "web");
        let seen = s.get(core, Some("default"), "web.1").unwrap();
        assert_eq!(seen["apiVersion"], "v1");
        assert_eq!(seen["involvedObject"]["name"], "web");
        assert_eq!(seen["message"], "assigned");
        assert_eq!(seen["reportingComponent"], "ferrolb.io/controller");
        // kubectl's selector works on what the controller wrote through the other API.
        let by_object = FieldSelector::parse("involvedObject.name=web").unwrap();
        let (items, _) = s.list(
            core,
            Some("default"),
            &LabelSelector::default(),
            &by_object,
            None,
            None,
        );
        assert_eq!(items.len(), 1);
        let by_regarding = FieldSelector::parse("regarding.name=web").unwrap();
        let (items, _) = s.list(
            new,
            None,
            &LabelSelector::default(),
            &by_regarding,
            None,
            None,
        );
        assert_eq!(
            (items.len(), items[0]["note"].as_str()),
            (1, Some("assigned"))
        );
        // A series update through events.k8s.io (what kube's recorder sends) lands in the core object.
        s.patch(
            new,
            Some("default"),
            "web.1",
            false,
            PatchKind::Merge,
            json!({"series": {"count": 2, "lastObservedTime": "2026-12-02T03:00:05.000000Z"}}),
            "test",
        )
        .unwrap();
        assert_eq!(
            s.get(core, Some("default"), "web.1").unwrap()["series"]["count"],
            2
        );
        s.patch(
            new,
            Some("default"),
            "web.1",
            false,
            PatchKind::Json,
            json!([{"op": "replace", "path": "/note", "value": "moved"}]),
            "test",
        )
        .unwrap();
        assert_eq!(
            s.get(core, Some("default"), "web.1").unwrap()["message"],
            "moved"
        );
        // A core Event is an events.k8s.io Event too, and the validation of the new API is not applied to it.
        s.create(
            core,
            Some("default"),
            json!({"metadata": {"name": "old.1"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "legacy", "reason": "X"}),
            "test",
        )
        .unwrap();
        assert_eq!(
            s.get(new, Some("default"), "old.1").unwrap()["note"],
            "legacy"
        );
        s.delete(new, Some("default"), "old.1", None).unwrap();
        assert!(s.get(core, Some("default"), "old.1").is_err());
        let mut kinds = Vec::new();
        while let Ok(c) = rx.try_recv() {
            assert_eq!(
                c.resource, core,
                "one store: every change is the core type's"
            );
            kinds.push(c.kind);
        }
        assert_eq!(kinds.first(), Some(&ChangeKind::Added));
        assert_eq!(kinds.last(), Some(&ChangeKind::Deleted));
        // The events.k8s.io rules still apply to its own creates.
        let err = s
            .create(
                new,
                Some("default"),
                json!({"metadata": {"name": "bad"}, "reason": "X"}),
                "test",
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn events_expire_after_their_ttl_and_watches_see_them_go() {
        let mut s = test_store(100).with_event_ttl(std::time::Duration::from_millis(50));
        let ev = by_name("events", "").unwrap();
        s.create(
            ev,
            Some("ns"),
            json!({"metadata": {"name": "e1"}, "reason": "r"}),
            "t",
        )
        .unwrap();
        let rv = s.resource_version();
        s.expire_events(std::time::Instant::now());
        assert!(s.get(ev, Some("ns"), "e1").is_ok(), "not yet");
        s.expire_events(std::time::Instant::now() + std::time::Duration::from_millis(60));
        assert_eq!(s.get(ev, Some("ns"), "e1").unwrap_err().code, 404);
        let (changes, _) = s.watch_from(rv).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, ChangeKind::Deleted);
        // A ConfigMap never expires.
        let cms = by_name("configmaps", "").unwrap();
        s.create(cms, Some("ns"), json!({"metadata": {"name": "c"}}), "t")
            .unwrap();
        s.expire_events(std::time::Instant::now() + std::time::Duration::from_secs(86_400));
        assert!(s.get(cms, Some("ns"), "c").is_ok());
    }

    #[test]
    fn a_deleted_pod_stays_for_its_grace_period() {
        let mut s = test_store(100);
        let pods = by_name("pods", "").unwrap();
        s.create(
            pods,
            Some("ns"),
            json!({"metadata": {"name": "p"}, "spec": {"terminationGracePeriodSeconds": 1}}),
            "t",
        )
        .unwrap();
        let going = s.delete_pod(pods, Some("ns"), "p", None, None).unwrap();
        assert!(going.pointer("/metadata/deletionTimestamp").is_some());
        assert_eq!(going["metadata"]["deletionGracePeriodSeconds"], 1);
        // Still there, and a second DELETE changes nothing.
        assert!(s.get(pods, Some("ns"), "p").is_ok());
        let rv = s.resource_version();
        s.delete_pod(pods, Some("ns"), "p", None, None).unwrap();
        assert_eq!(s.resource_version(), rv);
        s.expire_events(std::time::Instant::now());
        assert!(
            s.get(pods, Some("ns"), "p").is_ok(),
            "within the grace period"
        );
        s.expire_events(std::time::Instant::now() + std::time::Duration::from_millis(1100));
        assert_eq!(s.get(pods, Some("ns"), "p").unwrap_err().code, 404);
        // Grace 0 (kubectl delete --force --grace-period=0): at once.
        s.create(pods, Some("ns"), json!({"metadata": {"name": "q"}}), "t")
            .unwrap();
        s.delete_pod(pods, Some("ns"), "q", Some(0), None).unwrap();
        assert_eq!(s.get(pods, Some("ns"), "q").unwrap_err().code, 404);
        // A namesake created after a delete is not removed by the old one's timer.
        s.create(
            pods,
            Some("ns"),
            json!({"metadata": {"name": "r"}, "spec": {"terminationGracePeriodSeconds": 1}}),
            "t",
        )
        .unwrap();
        s.delete_pod(pods, Some("ns"), "r", None, None).unwrap();
        s.delete(pods, Some("ns"), "r", None).unwrap();
        s.create(pods, Some("ns"), json!({"metadata": {"name": "r"}}), "t")
            .unwrap();
        s.expire_events(std::time::Instant::now() + std::time::Duration::from_secs(5));
        assert!(s.get(pods, Some("ns"), "r").is_ok(), "the new r stays");
    }

    #[test]
    fn namespace_lifecycle_refuses_missing_and_terminating_namespaces() {
        let mut s = test_store(100);
        let cms = by_name("configmaps", "").unwrap();
        let e = s
            .create(
                cms,
                Some("nowhere"),
                json!({"metadata": {"name": "c"}}),
                "t",
            )
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "namespaces \"nowhere\" not found")
        );
        let ns = by_name("namespaces", "").unwrap();
        s.create(ns, None, json!({"metadata": {"name": "going"}}), "t")
            .unwrap();
        s.patch(
            ns,
            None,
            "going",
            true,
            PatchKind::Merge,
            json!({"status": {"phase": "Terminating"}}),
            "namespace-controller",
        )
        .unwrap();
        let e = s
            .create(cms, Some("going"), json!({"metadata": {"name": "c"}}), "t")
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("because it is being terminated"),
            "{}",
            e.message
        );
        // A fresh store has the system namespaces.
        for n in ["default", "kube-system"] {
            s.create(cms, Some(n), json!({"metadata": {"name": "c"}}), "t")
                .unwrap();
        }
    }

    #[test]
    fn create_sets_metadata_and_drops_service_status() {
        let mut s = test_store(100);
        let svcs = by_name("services", "").unwrap();
        let base = s.resource_version();
        let o = s.create(svcs, Some("ns"), svc("a"), "t").unwrap();
        assert_eq!(o["metadata"]["namespace"], "ns");
        assert_eq!(o["metadata"]["resourceVersion"], (base + 1).to_string());
        assert_eq!(o["kind"], "Service");
        assert!(o.get("status").is_none());
        assert_eq!(
            s.create(svcs, Some("ns"), svc("a"), "t").unwrap_err().code,
            409
        );
        assert_eq!(
            s.create(
                svcs,
                Some("other"),
                json!({"metadata": {"name": "b", "namespace": "ns"}}),
                "t"
            )
            .unwrap_err()
            .code,
            400
        );
        let g = s
            .create(
                svcs,
                Some("ns"),
                json!({"metadata": {"generateName": "web-"}}),
                "t",
            )
            .unwrap();
        assert!(g["metadata"]["name"].as_str().unwrap().starts_with("web-"));
    }

    #[test]
    fn status_subresource_and_conflicts() {
        let mut s = test_store(100);
        let svcs = by_name("services", "").unwrap();
        s.create(svcs, Some("ns"), svc("a"), "t").unwrap();
        // A status write changes only the status.
        let o = s
            .patch(
                svcs,
                Some("ns"),
                "a",
                true,
                PatchKind::Merge,
                json!({"spec": {"type": "ClusterIP"}, "status": {"x": 1}}),
                "t",
            )
            .unwrap();
        assert_eq!(o["spec"]["type"], "LoadBalancer");
        assert_eq!(o["status"]["x"], 1);
        // An object write keeps the status.
        let o = s
            .patch(
                svcs,
                Some("ns"),
                "a",
                false,
                PatchKind::Merge,
                json!({"spec": {"type": "ClusterIP"}, "status": null}),
                "t",
            )
            .unwrap();
        assert_eq!(o["spec"]["type"], "ClusterIP");
        assert_eq!(o["status"]["x"], 1);
        assert_eq!(o["metadata"]["generation"], 2);
        // A stale resource version is a conflict; the current one is not.
        let mut stale = o.clone();
        stale["metadata"]["resourceVersion"] = json!("2");
        assert_eq!(
            s.update(svcs, Some("ns"), "a", false, stale, "t")
                .unwrap_err()
                .code,
            409
        );
        let rv = s.resource_version();
        let same = s
            .update(svcs, Some("ns"), "a", false, o.clone(), "t")
            .unwrap();
        assert_eq!(s.resource_version(), rv, "a no-op update writes nothing");
        assert_eq!(same, o);
        assert_eq!(
            s.update(svcs, Some("ns"), "b", false, o, "t")
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn watch_history_and_compaction() {
        let mut s = test_store(3);
        let cms = by_name("configmaps", "").unwrap();
        let b = s.resource_version();
        for i in 0..5 {
            s.create(
                cms,
                Some("ns"),
                json!({"metadata": {"name": format!("c{i}")}}),
                "t",
            )
            .unwrap();
        }
        // b+1..=b+5 committed; only the last three are kept.
        assert_eq!(s.watch_from(b).unwrap_err(), Gone { oldest: b + 2 });
        let (past, _) = s.watch_from(b + 2).unwrap();
        assert_eq!(
            past.iter().map(|c| c.rv).collect::<Vec<_>>(),
            vec![b + 3, b + 4, b + 5]
        );
        s.compact();
        assert!(s.watch_from(b + 4).is_err());
        assert!(s.watch_from(b + 5).unwrap().0.is_empty());
    }

    #[test]
    fn list_pages_and_selectors() {
        let mut s = test_store(100);
        let cms = by_name("configmaps", "").unwrap();
        for (ns, name, app) in [
            ("a", "x", "web"),
            ("a", "y", "db"),
            ("b", "x", "web"),
            ("b", "z", "web"),
        ] {
            s.create(
                cms,
                Some(ns),
                json!({"metadata": {"name": name, "labels": {"app": app}}}),
                "t",
            )
            .unwrap();
        }
        let all = LabelSelector::default();
        let web = LabelSelector::parse("app=web").unwrap();
        let none = FieldSelector::default();
        let (items, next) = s.list(cms, None, &web, &none, None, Some(2));
        assert_eq!(items.len(), 2);
        let (rest, next) = s.list(cms, None, &web, &none, next, Some(2));
        assert_eq!((rest.len(), next), (1, None));
        assert_eq!(s.list(cms, Some("a"), &all, &none, None, None).0.len(), 2);
        let by_name = FieldSelector::parse("metadata.name=x").unwrap();
        assert_eq!(s.list(cms, None, &all, &by_name, None, None).0.len(), 2);
    }

    #[test]
    fn apply_creates_then_conflicts_unless_forced() {
        let mut s = test_store(100);
        let leases = by_name("leases", "coordination.k8s.io").unwrap();
        s.patch(
            leases,
            Some("ns"),
            "l",
            false,
            PatchKind::Apply { force: false },
            json!({"spec": {"holderIdentity": "a"}}),
            "a",
        )
        .unwrap();
        let err = s
            .patch(
                leases,
                Some("ns"),
                "l",
                false,
                PatchKind::Apply { force: false },
                json!({"spec": {"holderIdentity": "b"}}),
                "b",
            )
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains(".spec.holderIdentity"),
            "{}",
            err.message
        );
        let o = s
            .patch(
                leases,
                Some("ns"),
                "l",
                false,
                PatchKind::Apply { force: true },
                json!({"spec": {"holderIdentity": "b"}}),
                "b",
            )
            .unwrap();
        assert_eq!(o["spec"]["holderIdentity"], "b");
    }
}
