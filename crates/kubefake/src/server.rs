//! The HTTP front: routes Kubernetes API requests to the store, streams
//! watches, records every request.

use crate::path::{self, Target};
use crate::rbac::{Attributes, Policy, User};
use crate::resource::{self, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Change, ChangeKind, PatchKind, Store};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The Kubernetes verb: get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// The resource with its group (`services`, `leases.coordination.k8s.io`).
    pub resource: String,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
    /// The namespace in the path.
    pub namespace: Option<String>,
    /// The object name in the path.
    pub name: Option<String>,
    /// The client's User-Agent header.
    pub user_agent: String,
    /// The HTTP status code answered.
    pub code: u16,
    /// When the server answered it.
    pub at: std::time::Instant,
    /// The resourceVersion of the object a successful write committed (0
    /// for reads, failures and no-op writes): orders the write among the
    /// store's changes.
    pub resource_version: u64,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Changes kept for watches to resume from; older starting points get 410 Gone.
    pub history: usize,
    /// How often an idle watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// The address to listen on (port chosen by the kernel); loopback by
    /// default, another local address to serve processes in other network
    /// namespaces.
    pub bind: std::net::IpAddr,
    /// Serve HTTPS with a certificate for `bind` signed by a CA made at
    /// start ([`crate::FakeApiServer::ca_pem`]), as every real API server does.
    pub tls: bool,
    /// Require a bearer token issued by [`crate::FakeApiServer::issue_token`]
    /// (an unknown one is a 401, none is `system:anonymous`) and authorize
    /// every request by the RBAC objects in the store.
    pub authorize: bool,
    /// The cluster's Service IP families: what `ipFamilies` defaults to and
    /// which dual-stack policies are refused.
    pub stack: crate::strategy::Stack,
    /// How long Events live (`--event-ttl`; 1 h, the real default).
    pub event_ttl: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history: 50_000,
            bookmark_interval: Duration::from_secs(1),
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            tls: false,
            authorize: false,
            stack: crate::strategy::Stack::default(),
            event_ttl: Duration::from_secs(3600),
        }
    }
}

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub requests: Mutex<Vec<RecordedRequest>>,
    pub options: Options,
    /// Bearer token -> user.
    pub tokens: Mutex<HashMap<String, User>>,
    /// User-Agent substrings whose clients are cut off (a partition).
    pub blackholed: Mutex<Vec<String>>,
}

impl Shared {
    /// Whether a client with this User-Agent is cut off now.
    pub fn cut_off(&self, user_agent: &str) -> bool {
        self.blackholed
            .lock()
            .expect("blackhole lock")
            .iter()
            .any(|b| user_agent.contains(b.as_str()))
    }
}

/// The user a request authenticates as: `Err` for an unknown token.
fn authenticate(shared: &Shared, authorization: Option<&str>) -> Result<User, ()> {
    let Some(token) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Ok(User::anonymous());
    };
    shared
        .tokens
        .lock()
        .expect("token lock")
        .get(token.trim())
        .cloned()
        .ok_or(())
}

/// The RBAC objects now in the store.
fn policy(store: &Store) -> Policy {
    let all = |plural: &str| {
        let r =
            resource::by_name(plural, "rbac.authorization.k8s.io").expect("RBAC types are served");
        store.all(r)
    };
    Policy {
        cluster_roles: all("clusterroles"),
        cluster_role_bindings: all("clusterrolebindings"),
        roles: all("roles"),
        role_bindings: all("rolebindings"),
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static headers are valid")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let user_agent = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let served = |r: usize| match resource::definition(r) {
        None => true,
        Some(crd) => {
            let crds = resource::by_name("customresourcedefinitions", "apiextensions.k8s.io")
                .expect("CRDs are served");
            let store = shared.store.lock().expect("store lock");
            store
                .get(crds, None, &crd)
                .is_ok_and(|d| crate::schema::serves(&d, resource::RESOURCES[r].version))
        }
    };
    if let Some(doc) = crate::discovery::document(uri.path(), &served) {
        // Non-resource URLs: any authenticated user (system:discovery); /version to anyone.
        if shared.options.authorize && uri.path() != "/version" {
            let header = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if authenticate(&shared, header).is_err() {
                return Ok(json_response(401, &crate::rbac::unauthorized_status()));
            }
        }
        return Ok(json_response(200, &doc));
    }
    if shared.cut_off(&user_agent) {
        // A partition: nothing of this request reaches the store. It waits
        // (as a client's retransmissions do) and, once healed, fails
        // unprocessed, as a connection that broke meanwhile.
        while shared.cut_off(&user_agent) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return Ok(error_response(&ApiError {
            code: 503,
            reason: "ServiceUnavailable",
            message: "the connection broke during a partition; nothing was done".into(),
        }));
    }
    let query = Query::parse(uri.query());
    let target = match path::parse(uri.path()) {
        Ok(t) => t,
        Err(path::PathError::NotFound(m)) => {
            return Ok(error_response(&ApiError {
                code: 404,
                reason: "NotFound",
                message: m,
            }))
        }
    };
    if !served(target.resource) {
        if let Some(crd) = resource::definition(target.resource) {
            return Ok(error_response(&ApiError {
                code: 404,
                reason: "NotFound",
                message: format!(
                    "the server could not find the requested resource (no CustomResourceDefinition {crd})"
                ),
            }));
        }
    }
    let verb: &'static str = match (&method, target.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if query.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => {
            let e = ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: format!("{method} is not supported on {}", uri.path()),
            };
            return Ok(error_response(&e));
        }
    };
    if shared.options.authorize {
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let refused = match authenticate(&shared, header.as_deref()) {
            Err(()) => Some(json_response(401, &crate::rbac::unauthorized_status())),
            Ok(user) => {
                let rt = &RESOURCES[target.resource];
                // A list or watch of one name (fieldSelector=metadata.name=X) is a request for X.
                let selected = query
                    .get("fieldSelector")
                    .and_then(|f| {
                        f.split(',')
                            .find_map(|t| t.trim().strip_prefix("metadata.name="))
                    })
                    .filter(|_| matches!(verb, "list" | "watch"))
                    .map(str::to_string);
                let name = target.name.clone().or(selected).unwrap_or_default();
                let a = Attributes {
                    verb,
                    group: rt.group,
                    resource: rt.plural,
                    subresource: target.subresource.as_deref().unwrap_or(""),
                    namespace: target.namespace.as_deref().unwrap_or(""),
                    name: &name,
                };
                let store = shared.store.lock().expect("store lock");
                let policy = policy(&store);
                // An apply patch that would create the object needs `create`
                // too (createAuthorizerAttributes in the apiserver's patch handler).
                let creates = verb == "patch"
                    && content_type.starts_with("application/apply-patch")
                    && target.subresource.is_none()
                    && store
                        .get(target.resource, target.namespace.as_deref(), &name)
                        .is_err();
                drop(store);
                let create = Attributes {
                    verb: "create",
                    ..a.clone()
                };
                let refused = if !policy.allows(&user, &a) {
                    Some(a)
                } else if creates && !policy.allows(&user, &create) {
                    Some(create)
                } else {
                    None
                };
                refused.map(|a| {
                    json_response(
                        403,
                        &crate::rbac::forbidden_status(&user, &a, &rt.qualified()),
                    )
                })
            }
        };
        if let Some(response) = refused {
            record(
                &shared,
                verb,
                &target,
                user_agent,
                response.status().as_u16(),
                0,
            );
            return Ok(response);
        }
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading the body: {e}"
            ))))
        }
    };
    let mut written_rv = 0;
    let response = if verb == "watch" {
        watch(&shared, &target, &query, &user_agent)
    } else {
        match respond(
            &shared,
            verb,
            &target,
            &query,
            &content_type,
            &user_agent,
            &body,
        ) {
            Ok((code, v, committed)) => {
                if committed && matches!(verb, "create" | "update" | "patch") {
                    written_rv = v
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0);
                }
                json_response(code, &v)
            }
            Err(e) => error_response(&e),
        }
    };
    record(
        &shared,
        verb,
        &target,
        user_agent,
        response.status().as_u16(),
        written_rv,
    );
    Ok(response)
}

/// Appends one request to the log.
fn record(
    shared: &Shared,
    verb: &'static str,
    target: &Target,
    user_agent: String,
    code: u16,
    resource_version: u64,
) {
    shared
        .requests
        .lock()
        .expect("request log lock")
        .push(RecordedRequest {
            verb,
            resource: RESOURCES[target.resource].qualified(),
            subresource: target.subresource.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            user_agent,
            code,
            at: std::time::Instant::now(),
            resource_version,
        });
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// The field manager: the parameter, or (as the real server does) the
/// client's User-Agent up to its first slash.
fn field_manager(query: &Query, user_agent: &str) -> String {
    query
        .get("fieldManager")
        .map(str::to_string)
        .unwrap_or_else(|| {
            user_agent
                .split('/')
                .next()
                .unwrap_or("unknown")
                .to_string()
        })
}

fn respond(
    shared: &Shared,
    verb: &str,
    t: &Target,
    query: &Query,
    content_type: &str,
    user_agent: &str,
    body: &Bytes,
) -> Result<(u16, Value, bool), ApiError> {
    let rt = &RESOURCES[t.resource];
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or("");
    let status_only = t.subresource.is_some();
    let manager = field_manager(query, user_agent);
    if matches!(verb, "create" | "update" | "patch") {
        crate::strategy::field_manager(&manager)?;
    }
    let mut store = shared.store.lock().expect("store lock");
    store.expire_events(std::time::Instant::now());
    // Whether this request committed anything (the lock is held throughout):
    // a no-op write answers with the object as it was.
    let before = store.resource_version();
    let mut answer = || -> Result<(u16, Value), ApiError> {
        match verb {
            "get" => store.get(t.resource, ns, name).map(|v| (200, v)),
            "list" => {
                let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
                    .map_err(ApiError::bad_request)?;
                let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))
                    .map_err(ApiError::bad_request)?;
                crate::strategy::check_field_selector(rt.plural, rt.group, fields.paths())?;
                let limit = match query.get("limit") {
                    Some(l) => Some(
                        l.parse::<usize>()
                            .map_err(|_| ApiError::bad_request("limit must be a number"))?,
                    )
                    .filter(|&l| l > 0),
                    None => None,
                };
                // The continue token carries the list's resource version and the last key returned.
                let (list_rv, after) = match query.get("continue") {
                    Some(tok) if !tok.is_empty() => {
                        let mut parts = tok.splitn(3, '/');
                        match (
                            parts.next().and_then(|r| r.parse::<u64>().ok()),
                            parts.next(),
                            parts.next(),
                        ) {
                            (Some(rv), Some(ns), Some(name)) => {
                                (rv, Some((ns.to_string(), name.to_string())))
                            }
                            _ => return Err(ApiError::bad_request("invalid continue token")),
                        }
                    }
                    _ => (store.resource_version(), None),
                };
                let (items, next) = store.list(t.resource, ns, &labels, &fields, after, limit);
                let mut meta = json!({"resourceVersion": list_rv.to_string()});
                if let Some((ns, name)) = next {
                    meta["continue"] = Value::String(format!("{list_rv}/{ns}/{name}"));
                }
                Ok((
                    200,
                    json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
                ))
            }
            "create" => store
                .create(t.resource, ns, parse_body(body)?, &manager)
                .map(|v| (201, v)),
            "update" => store
                .update(
                    t.resource,
                    ns,
                    name,
                    status_only,
                    parse_body(body)?,
                    &manager,
                )
                .map(|v| (200, v)),
            "patch" => {
                let kind = match content_type {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/json-patch+json" => PatchKind::Json,
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    if query.get("fieldManager").is_none() {
                        return Err(ApiError::bad_request("fieldManager is required for apply patches"));
                    }
                    PatchKind::Apply { force: query.flag("force") }
                }
                other => {
                    return Err(ApiError {
                        code: 415,
                        reason: "UnsupportedMediaType",
                        message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                    })
                }
            };
                // Apply bodies are YAML; every client sends JSON, which is YAML too.
                let body = parse_body(body)?;
                if let PatchKind::Apply { .. } = kind {
                    crate::strategy::apply_body(&body, name)?;
                }
                // An apply that creates answers 201 Created, as the real server does.
                let existed = store.get(t.resource, ns, name).is_ok();
                store
                    .patch(t.resource, ns, name, status_only, kind, body, &manager)
                    .map(|v| (if existed { 200 } else { 201 }, v))
            }
            "delete" => {
                let options = if body.is_empty() {
                    json!({})
                } else {
                    parse_body(body)?
                };
                let precondition = options
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if rt.plural == "pods" && rt.group.is_empty() {
                    // DeleteOptions' gracePeriodSeconds, in the query or the body.
                    let grace = query
                        .get("gracePeriodSeconds")
                        .and_then(|g| g.parse::<u64>().ok())
                        .or_else(|| options.get("gracePeriodSeconds").and_then(Value::as_u64));
                    return store
                        .delete_pod(t.resource, ns, name, grace, precondition.as_deref())
                        .map(|v| (200, v));
                }
                store
                    .delete(t.resource, ns, name, precondition.as_deref())
                    .map(|v| (200, v))
            }
            _ => unreachable!("verbs are mapped in handle"),
        }
    };
    let result = answer();
    let committed = store.resource_version() > before;
    result.map(|(code, v)| (code, v, committed))
}

struct WatchFilter {
    resource: usize,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn sees(&self, c: &Change, o: &Value) -> bool {
        self.labels.matches(o)
            && self.fields.matches(o)
            && self.namespace.as_ref().is_none_or(|n| *n == c.namespace)
    }

    /// How a change looks through this watch's API and selectors: the line
    /// to send, if any. An object that starts matching is ADDED, one that
    /// stops matching is DELETED.
    fn view(&self, c: &Change) -> Option<Bytes> {
        if c.resource != resource::stored_as(self.resource) {
            return None;
        }
        let object = resource::present_ref(self.resource, &c.object);
        let now = self.sees(c, &object);
        let ty = match c.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => now.then_some("DELETED"),
            ChangeKind::Modified => {
                let before = c
                    .old
                    .as_ref()
                    .is_some_and(|o| self.sees(c, &resource::present_ref(self.resource, o)));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some(line(ty, &object))
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

struct WatchState {
    queue: VecDeque<Bytes>,
    rx: Option<broadcast::Receiver<Arc<Change>>>,
    filter: WatchFilter,
    /// Every change up to here has been looked at: a bookmark may carry it.
    seen_rv: u64,
    bookmarks: bool,
    bookmark_interval: Duration,
    deadline: tokio::time::Instant,
}

fn watch(shared: &Arc<Shared>, t: &Target, query: &Query, user_agent: &str) -> Response<Body> {
    let rt = &RESOURCES[t.resource];
    let labels = match LabelSelector::parse(query.get("labelSelector").unwrap_or("")) {
        Ok(l) => l,
        Err(e) => return error_response(&ApiError::bad_request(e)),
    };
    let fields = match FieldSelector::parse(query.get("fieldSelector").unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return error_response(&ApiError::bad_request(e)),
    };
    {
        let rt = &RESOURCES[t.resource];
        if let Err(e) = crate::strategy::check_field_selector(rt.plural, rt.group, fields.paths()) {
            return error_response(&e);
        }
    }
    let filter = WatchFilter {
        resource: t.resource,
        namespace: t.namespace.clone(),
        labels,
        fields,
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let store = shared.store.lock().expect("store lock");
    let rv_param = query.get("resourceVersion").unwrap_or("");
    let (past, rx, start_rv) = if rv_param.is_empty() || rv_param == "0" {
        let (past, rx) = store.watch_now(t.resource);
        (past, rx, store.resource_version())
    } else {
        let Ok(rv) = rv_param.parse::<u64>() else {
            return error_response(&ApiError::bad_request(format!(
                "invalid resourceVersion {rv_param:?}"
            )));
        };
        match store.watch_from(rv) {
            Ok((past, rx)) => (past, rx, rv),
            Err(gone) => {
                // As the real server: 200, then one ERROR event with 410 Gone, then the end.
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", gone.oldest), "reason": "Expired", "code": 410});
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(line("ERROR", &status)).boxed())
                    .expect("static headers are valid");
            }
        }
    };
    drop(store);
    let mut state = WatchState {
        queue: VecDeque::new(),
        rx: Some(rx),
        filter,
        seen_rv: start_rv,
        bookmarks: query.flag("allowWatchBookmarks"),
        bookmark_interval: shared.options.bookmark_interval,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
    };
    for c in past {
        state.seen_rv = state.seen_rv.max(c.rv);
        if let Some(l) = state.filter.view(&c) {
            state.queue.push_back(l);
        }
    }
    let kind = rt.kind;
    let api_version = rt.api_version();
    let (cut, agent) = (Arc::clone(shared), user_agent.to_string());
    let stream = futures::stream::unfold(state, move |mut st| {
        let api_version = api_version.clone();
        let (cut, agent) = (Arc::clone(&cut), agent.clone());
        async move {
            loop {
                if cut.cut_off(&agent) {
                    // Partitioned: nothing more arrives; once healed the
                    // stream is over and the client watches again.
                    while cut.cut_off(&agent) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    return None;
                }
                if let Some(b) = st.queue.pop_front() {
                    return Some((b, st));
                }
                let rx = st.rx.as_mut()?;
                let tick = tokio::time::sleep(st.bookmark_interval);
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(c) => {
                            st.seen_rv = st.seen_rv.max(c.rv);
                            if let Some(l) = st.filter.view(&c) {
                                st.queue.push_back(l);
                            }
                        }
                        // A watcher too slow to keep up is closed; it resumes from its last resource version.
                        Err(_) => return None,
                    },
                    _ = tick, if st.bookmarks => {
                        let bm = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": st.seen_rv.to_string()}});
                        st.queue.push_back(line("BOOKMARK", &bm));
                    }
                    _ = tokio::time::sleep_until(st.deadline) => return None,
                }
            }
        }
    });
    let body = StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("static headers are valid")
}
