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

mod patch;
mod path;
pub mod resource;
mod selector;
mod server;
pub mod store;

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

/// A running fake API server. Dropping it stops it and closes every
/// connection, which is how tests simulate losing the API server.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl FakeApiServer {
    /// Starts a server with default options on a free loopback port.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        FakeApiServer::start_with(Options::default()).await
    }

    /// Starts a server with `options` on a free port of `options.bind`.
    pub async fn start_with(options: Options) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(std::net::SocketAddr::new(options.bind, 0)).await?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history)),
            requests: Mutex::new(Vec::new()),
            options,
        });
        let server = FakeApiServer::serve(listener, shared)?;
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
        FakeApiServer::serve(listener, Arc::clone(&self.shared))
    }

    fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<FakeApiServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let accept_shared = Arc::clone(&shared);
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
                tokio::spawn(async move {
                    let service = service_fn(move |req| server::handle(Arc::clone(&shared), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped_conn.changed() => {}
                    }
                });
            }
        });
        Ok(FakeApiServer { addr, shared, stop })
    }

    /// Stops accepting and closes every open connection (watches included).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server, for processes started by a test.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
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

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared
            .requests
            .lock()
            .expect("request log lock")
            .clear();
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
        self.store()
            .list(
                r,
                None,
                &LabelSelector::default(),
                &FieldSelector::default(),
                None,
                None,
            )
            .0
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
