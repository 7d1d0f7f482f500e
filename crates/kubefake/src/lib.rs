//! A watch-capable fake Kubernetes API server for ferrolb's tests.
//!
//! It serves the real Kubernetes HTTP API on loopback for the resources
//! ferrolb uses (Services, EndpointSlices, Nodes, Pods, ConfigMaps, Leases,
//! Events), so the controller and speaker are tested through the real kube
//! client: GET, LIST (selectors, pages), WATCH (ADDED, MODIFIED, DELETED,
//! BOOKMARK, 410 Gone), POST, PUT, PATCH (merge, strategic as merge, JSON
//! patch, server-side apply with field ownership), DELETE, the `status`
//! subresource and optimistic concurrency. Every request is recorded.
//! What it does not emulate is listed in its README.

mod discovery;
mod events;
mod patch;
mod path;
pub mod rbac;
pub mod resource;
pub mod schema;
mod selector;
mod server;
pub mod store;
pub mod strategy;

pub use rbac::User;
pub use selector::{FieldSelector, LabelSelector};
pub use server::{Options, RecordedRequest};
pub use store::{ApiError, PatchKind, Store};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use server::Shared;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The token of the cluster administrator (`system:masters`), always valid.
pub const ADMIN_TOKEN: &str = "fake-admin-token";

/// A running fake API server. Dropping it stops it and closes every
/// connection, which is how tests simulate losing the API server.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tls: Option<Tls>,
}

/// The CA and the serving configuration of an HTTPS server.
#[derive(Clone)]
struct Tls {
    ca_pem: String,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// A CA, and a serving certificate it signs for `ip`, `localhost` and
    /// `kubernetes.default.svc` (what in-cluster clients verify).
    fn make(ip: std::net::IpAddr) -> std::io::Result<Tls> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let bad = |e: rcgen::Error| std::io::Error::other(format!("certificate: {e}"));
        let ca_key = KeyPair::generate().map_err(bad)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ferrolb-kubefake-ca");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(bad)?;
        let key = KeyPair::generate().map_err(bad)?;
        let mut leaf = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .map_err(bad)?;
        leaf.subject_alt_names.push(SanType::IpAddress(ip));
        leaf.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_params(&ca, &ca_key);
        let cert = leaf.signed_by(&key, &issuer).map_err(bad)?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(std::io::Error::other)?;
        Ok(Tls {
            ca_pem: ca_cert.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl FakeApiServer {
    /// Starts a server with default options on a free loopback port.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        FakeApiServer::start_with(Options::default()).await
    }

    /// Starts a server with `options` on a free port of `options.bind`.
    pub async fn start_with(options: Options) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(std::net::SocketAddr::new(options.bind, 0)).await?;
        let tls = if options.tls {
            Some(Tls::make(options.bind)?)
        } else {
            None
        };
        let mut tokens = std::collections::HashMap::new();
        tokens.insert(ADMIN_TOKEN.to_string(), User::admin());
        let shared = Arc::new(Shared {
            store: Mutex::new(
                Store::new(options.history)
                    .with_stack(options.stack)
                    .with_event_ttl(options.event_ttl),
            ),
            requests: Mutex::new(Vec::new()),
            options,
            tokens: Mutex::new(tokens),
            blackholed: Mutex::new(Vec::new()),
        });
        let server = FakeApiServer::serve(listener, shared, tls)?;
        Ok(server)
    }

    /// Starts again on the address of a server that was stopped, with the
    /// same objects: the API server came back.
    pub async fn restart(&self) -> std::io::Result<FakeApiServer> {
        self.stop();
        // The old accept task lets go of the port when it next runs.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        FakeApiServer::serve(listener, Arc::clone(&self.shared), self.tls.clone())
    }

    fn serve(
        listener: TcpListener,
        shared: Arc<Shared>,
        tls: Option<Tls>,
    ) -> std::io::Result<FakeApiServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let accept_shared = Arc::clone(&shared);
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped_accept.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&accept_shared);
                let mut stopped_conn = stopped.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| server::handle(Arc::clone(&shared), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let served = async move {
                        match acceptor {
                            Some(a) => {
                                // A client that fails the handshake (wrong CA) is just dropped.
                                if let Ok(tls) = a.accept(stream).await {
                                    let _ = http.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = served => {}
                        _ = stopped_conn.changed() => {}
                    }
                });
            }
        });
        Ok(FakeApiServer {
            addr,
            shared,
            stop,
            tls,
        })
    }

    /// Stops accepting and closes every open connection (watches included).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR:PORT`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed the serving certificate: what
    /// goes into a ServiceAccount's `ca.crt`. `None` without TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A new bearer token that authenticates as `user`.
    pub fn issue_token(&self, user: User) -> String {
        self.handle().issue_token(user)
    }

    /// A token for ServiceAccount `namespace/name`.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.handle().service_account_token(namespace, name)
    }

    /// A handle on the store and the tokens that other threads can keep
    /// (the lab's kubelet writes Pod status through it).
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A kubeconfig pointing at this server as the cluster administrator,
    /// for processes started by a test.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with_token(ADMIN_TOKEN)
    }

    /// A kubeconfig pointing at this server with `token`, and the CA with TLS.
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        use base64::Engine;
        let ca = self
            .ca_pem()
            .map(|pem| {
                format!(
                    "\n    certificate-authority-data: {}",
                    base64::engine::general_purpose::STANDARD.encode(pem)
                )
            })
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}{ca}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: {token}\n",
            self.url()
        )
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .expect("request log lock")
            .clone()
    }

    /// Cuts off (or, with `false`, reconnects) every client whose
    /// User-Agent contains `agent`: a network partition between them and
    /// the API server. Their requests wait and, once healed, fail without
    /// having been processed; their watches go silent, then end.
    pub fn partition(&self, agent: &str, cut: bool) {
        let mut b = self.shared.blackholed.lock().expect("blackhole lock");
        b.retain(|a| a != agent);
        if cut {
            b.push(agent.to_string());
        }
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .expect("request log lock")
            .clear();
    }

    /// Creates namespace `name` if it does not exist (`kubectl create namespace`):
    /// objects can only be created in namespaces that exist.
    pub fn create_namespace(&self, name: &str) {
        let r = resource::by_name("namespaces", "").expect("namespaces are served");
        let mut store = self.store();
        if store.get(r, None, name).is_err() {
            store
                .create(
                    r,
                    None,
                    serde_json::json!({"metadata": {"name": name}}),
                    "kubectl",
                )
                .expect("a namespace name the tests chose");
        }
    }

    /// Direct access to the objects, bypassing HTTP (and the request log):
    /// for seeding thousands of objects quickly and for reading state.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().expect("store lock")
    }

    /// One object by plural resource name and group ("" for core).
    pub fn get(&self, plural: &str, group: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let r = resource::by_name(plural, group)?;
        self.store().get(r, ns, name).ok()
    }

    /// All objects of a type, in every namespace.
    pub fn list(&self, plural: &str, group: &str) -> Vec<Value> {
        let Some(r) = resource::by_name(plural, group) else {
            return Vec::new();
        };
        self.store().all(r)
    }
}

/// Shared access to a server's objects and tokens, `Send` and cloneable.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// The objects, bypassing HTTP (as [`FakeApiServer::store`]).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().expect("store lock")
    }

    /// A new bearer token that authenticates as `user`.
    pub fn issue_token(&self, user: User) -> String {
        use std::hash::{BuildHasher, Hasher};
        let mut tokens = self.shared.tokens.lock().expect("token lock");
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(tokens.len());
        h.write(user.name.as_bytes());
        let token = format!("fake-{:016x}{:04x}", h.finish(), tokens.len());
        tokens.insert(token.clone(), user);
        token
    }

    /// A token for ServiceAccount `namespace/name`.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.issue_token(User::service_account(namespace, name))
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
