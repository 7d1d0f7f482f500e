//! A Kubernetes "cluster" for the controller and speaker suites: the
//! in-project fake API server, a kubeconfig pointing at it, a kube client
//! for the test, and the real `ferrolb-controller` binary run against it.

use crate::speaker::{free_port, http_get, metric_samples, unique_dir};
use ferrolb_kubefake::FakeApiServer;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Namespace of the ferrolb ConfigMap and Lease.
pub const SYSTEM_NS: &str = "ferrolb-system";

/// The fake API server plus what a test needs to use it.
pub struct Cluster {
    /// The server (its store and request log are open to the test).
    pub server: FakeApiServer,
    /// A client for the test itself.
    pub client: Client,
    /// A directory for kubeconfig and logs.
    pub dir: PathBuf,
    /// A kubeconfig of the cluster administrator (for the operator's tools,
    /// such as `ferrolb-speaker status --api`).
    pub kubeconfig: PathBuf,
    /// A kubeconfig with the token of the controller's ServiceAccount:
    /// everything it does is authorised by `deploy/`'s RBAC.
    pub controller_kubeconfig: PathBuf,
    /// A kubeconfig with the token of the speaker's ServiceAccount.
    pub speaker_kubeconfig: PathBuf,
}

/// A kube client from a kubeconfig file.
pub async fn client_from(kubeconfig: &std::path::Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read the kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a client configuration");
    Client::try_from(config).expect("a kube client")
}

/// Merges `patch` into `base` (objects recursively, anything else replaced).
pub fn merged(mut base: Value, patch: &Value) -> Value {
    fn merge(a: &mut Value, b: &Value) {
        match (a.as_object_mut(), b.as_object()) {
            (Some(a), Some(b)) => {
                for (k, v) in b {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            _ => *a = b.clone(),
        }
    }
    merge(&mut base, patch);
    base
}

impl Cluster {
    /// Starts an empty cluster.
    pub async fn start() -> Cluster {
        Cluster::start_with(ferrolb_kubefake::Options::default()).await
    }

    /// Starts a cluster with server options: HTTPS with a CA of its own,
    /// bearer tokens, and `deploy/`'s RBAC (with its ServiceAccounts)
    /// deciding every request, as a real API server would.
    pub async fn start_with(options: ferrolb_kubefake::Options) -> Cluster {
        let server = FakeApiServer::start_with(ferrolb_kubefake::Options {
            tls: true,
            authorize: true,
            ..options
        })
        .await
        .expect("start the fake API server");
        crate::deploy::apply(&server, &crate::deploy::access_objects());
        let dir = unique_dir();
        let write = |file: &str, text: String| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        let kubeconfig = write("kubeconfig", server.kubeconfig());
        let controller_kubeconfig = write(
            "kubeconfig-controller",
            server.kubeconfig_with_token(
                &server.service_account_token(SYSTEM_NS, "ferrolb-controller"),
            ),
        );
        let speaker_kubeconfig = write(
            "kubeconfig-speaker",
            server
                .kubeconfig_with_token(&server.service_account_token(SYSTEM_NS, "ferrolb-speaker")),
        );
        let client = client_from(&kubeconfig).await;
        Cluster {
            server,
            client,
            dir,
            kubeconfig,
            controller_kubeconfig,
            speaker_kubeconfig,
        }
    }

    /// Creates Secret `ns/name` with `data` (as `kubectl create secret generic --from-literal`).
    pub fn create_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        use base64::Engine;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        self.server.create_namespace(ns);
        let secrets = ferrolb_kubefake::resource::by_name("secrets", "").unwrap();
        self.server
            .store()
            .create(
                secrets,
                Some(ns),
                json!({"metadata": {"name": name}, "type": "Opaque", "data": data}),
                "kubectl",
            )
            .expect("create the Secret");
    }

    /// Creates or replaces the ferrolb ConfigMap with `yaml` under `config.yaml`.
    pub async fn set_config(&self, yaml: &str) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NS);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ferrolb-config"}, "data": {"config.yaml": yaml}});
        api.patch(
            "ferrolb-config",
            &PatchParams::apply("test").force(),
            &Patch::Apply(cm),
        )
        .await
        .expect("write the ConfigMap");
    }

    /// Creates a LoadBalancer Service `ns/name` exposing TCP 80, with `extra` merged in.
    pub async fn create_service(&self, ns: &str, name: &str, extra: Value) -> Service {
        let base = json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}}
        });
        let svc: Service = serde_json::from_value(merged(base, &extra)).unwrap();
        // As a user would have: the namespace exists before its Services.
        self.server.create_namespace(ns);
        Api::<Service>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"))
    }

    /// The `extra` of [`Cluster::create_service`] for a Service the
    /// speaker forwards (`ferrolb.io/forward`), port `port` (named `http`)
    /// to its endpoints' `target`.
    pub fn forwarded(port: u16, target: u16) -> Value {
        json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}},
               "spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": target}]}})
    }

    /// Merge-patches a Service.
    pub async fn patch_service(&self, ns: &str, name: &str, patch: Value) {
        Api::<Service>::namespaced(self.client.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap_or_else(|e| panic!("patch {ns}/{name}: {e}"));
    }

    /// Deletes a Service.
    pub async fn delete_service(&self, ns: &str, name: &str) {
        Api::<Service>::namespaced(self.client.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {ns}/{name}: {e}"));
    }

    /// The IPs in a Service's `status.loadBalancer.ingress`, read from the store.
    pub fn ingress(&self, ns: &str, name: &str) -> Vec<String> {
        self.server
            .get("services", "", Some(ns), name)
            .and_then(|s| s.pointer("/status/loadBalancer/ingress").cloned())
            .and_then(|i| i.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.get("ip").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// One Service as stored.
    pub fn service(&self, ns: &str, name: &str) -> Value {
        self.server
            .get("services", "", Some(ns), name)
            .unwrap_or_else(|| panic!("{ns}/{name} does not exist"))
    }

    /// Waits until `ns/name` has `count` ingress IPs; returns them.
    pub async fn wait_ingress(
        &self,
        ns: &str,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ips = self.ingress(ns, name);
            if ips.len() == count {
                return ips;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/{name} has {ips:?} after {timeout:?}, wanted {count} address(es); events: {:#?}",
                self.events_for(ns, name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every events.k8s.io Event as (regarding `ns/name`, type, reason, note).
    pub fn events(&self) -> Vec<(String, String, String, String)> {
        self.server
            .list("events", "events.k8s.io")
            .iter()
            .map(|e| {
                let s = |p: &str| {
                    e.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                (
                    format!("{}/{}", s("/regarding/namespace"), s("/regarding/name")),
                    s("/type"),
                    s("/reason"),
                    s("/note"),
                )
            })
            .collect()
    }

    /// Events about one object as (type, reason, note).
    pub fn events_for(&self, ns: &str, name: &str) -> Vec<(String, String, String)> {
        let who = format!("{ns}/{name}");
        self.events()
            .into_iter()
            .filter(|(r, ..)| *r == who)
            .map(|(_, t, r, n)| (t, r, n))
            .collect()
    }

    /// Waits for an Event with `reason` about `ns/name`; returns its note.
    pub async fn wait_event(
        &self,
        ns: &str,
        name: &str,
        reason: &str,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, _, note)) = self
                .events_for(ns, name)
                .into_iter()
                .find(|(_, r, _)| r == reason)
            {
                return note;
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} Event about {ns}/{name} after {timeout:?}; events: {:#?}",
                self.events_for(ns, name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates a Node with an InternalIP and `labels`, as the kubelet would.
    pub fn create_node(&self, name: &str, ip: &str, labels: Value) {
        let nodes = ferrolb_kubefake::resource::by_name("nodes", "").unwrap();
        let mut l = json!({"kubernetes.io/hostname": name});
        if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
            l.extend(extra.clone());
        }
        self.server
            .store()
            .create(
                nodes,
                None,
                json!({"metadata": {"name": name, "labels": l},
                       "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                                  "conditions": [{"type": "Ready", "status": "True"}]}}),
                "kubelet",
            )
            .expect("create node");
    }

    /// Creates a running speaker Pod on `node` (host IP `ip`), as the DaemonSet would.
    pub fn create_speaker_pod(&self, node: &str, ip: &str) {
        let pods = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
        let mut store = self.server.store();
        let name = format!("speaker-{node}");
        store
            .create(
                pods,
                Some(SYSTEM_NS),
                json!({"metadata": {"name": name, "labels": {"app.kubernetes.io/name": "ferrolb", "app.kubernetes.io/component": "speaker"}},
                       "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "speaker", "image": "ferrolb"}]}}),
                "kubelet",
            )
            .expect("create pod");
        store
            .patch(
                pods,
                Some(SYSTEM_NS),
                &name,
                true,
                ferrolb_kubefake::PatchKind::Merge,
                json!({"status": {"phase": "Running", "hostIP": ip, "podIP": ip}}),
                "kubelet",
            )
            .expect("pod status");
    }

    /// Creates or replaces the EndpointSlice of Service `ns/service` with
    /// endpoints `(ip, node, ready)` on port `port` named `http`.
    pub fn set_endpoints(
        &self,
        ns: &str,
        service: &str,
        port: u16,
        endpoints: &[(&str, &str, bool)],
    ) {
        let slices =
            ferrolb_kubefake::resource::by_name("endpointslices", "discovery.k8s.io").unwrap();
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|(ip, node, ready)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        let body = json!({"metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
                          "addressType": "IPv4", "endpoints": eps,
                          "ports": [{"name": "http", "port": port, "protocol": "TCP"}]});
        self.server.create_namespace(ns);
        let mut store = self.server.store();
        let name = format!("{service}-1");
        if store.get(slices, Some(ns), &name).is_ok() {
            store
                .patch(
                    slices,
                    Some(ns),
                    &name,
                    false,
                    ferrolb_kubefake::PatchKind::Merge,
                    json!({"endpoints": body["endpoints"]}),
                    "endpointslice-controller",
                )
                .expect("update slice");
        } else {
            store
                .create(slices, Some(ns), body, "endpointslice-controller")
                .expect("create slice");
        }
    }

    /// The identity holding the controller Lease, if any.
    pub fn leader(&self) -> Option<String> {
        self.server
            .get(
                "leases",
                "coordination.k8s.io",
                Some(SYSTEM_NS),
                "ferrolb-controller",
            )
            .and_then(|l| {
                l.pointer("/spec/holderIdentity")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
    }
}

/// A running `ferrolb-speaker kubernetes`.
pub struct KubeSpeaker {
    child: Child,
    /// The node it runs as.
    pub node: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl KubeSpeaker {
    /// Starts the speaker for `node` against the cluster; waits until it is ready.
    pub async fn start(cluster: &Cluster, node: &str, extra: &[&str]) -> KubeSpeaker {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = cluster.dir.join(format!("speaker-{node}.log"));
        let child = Command::new(crate::binary("ferrolb-speaker"))
            .arg("kubernetes")
            .arg("--kubeconfig")
            .arg(&cluster.speaker_kubeconfig)
            .args([
                "--node",
                node,
                "--metrics-address",
                &metrics.to_string(),
                "--log-level",
                "debug",
            ])
            .args(extra)
            .env_remove("NODE_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ferrolb-speaker kubernetes");
        let s = KubeSpeaker {
            child,
            node: node.to_string(),
            metrics,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while http_get(s.metrics, "/readyz").await.map(|(c, _)| c) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "speaker {node} not ready:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its metrics address.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics
    }

    /// Stops it as the kubelet does (SIGTERM) and waits for it to exit
    /// (at most 10 s, then SIGKILL).
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kept when the test failed (its logs explain it); gone otherwise:
        // the product tests put two Pod images (~400 MB) in it.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for KubeSpeaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `ferrolb-controller run`.
pub struct Controller {
    child: Child,
    /// Its identity in the Lease.
    pub identity: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Controller {
    /// Starts the controller with a 2-second Lease and `extra` flags; does not wait.
    pub fn spawn(cluster: &Cluster, identity: &str, extra: &[&str]) -> Controller {
        Controller::spawn_with(
            &cluster.controller_kubeconfig,
            &cluster.dir,
            identity,
            extra,
        )
    }

    /// Starts the controller against any kubeconfig (a real cluster too), logging into `dir`.
    pub fn spawn_with(
        kubeconfig: &std::path::Path,
        dir: &std::path::Path,
        identity: &str,
        extra: &[&str],
    ) -> Controller {
        Controller::spawn_with_env(kubeconfig, dir, identity, extra, &[])
    }

    /// Starts the controller with its wall clock `offset` off (`+60s`,
    /// `-60s`; the content of `clock_file`, which the test may rewrite to
    /// make the clock jump), through Debian's libfaketime. The monotonic
    /// clock is left alone, as NTP steps leave it on a real node.
    pub fn spawn_skewed(
        cluster: &Cluster,
        identity: &str,
        clock_file: &std::path::Path,
    ) -> Controller {
        let lib = clock_file_lib();
        Controller::spawn_with_env(
            &cluster.controller_kubeconfig,
            &cluster.dir,
            identity,
            &[],
            &[
                ("LD_PRELOAD", lib.as_str()),
                ("FAKETIME_TIMESTAMP_FILE", clock_file.to_str().unwrap()),
                ("FAKETIME_NO_CACHE", "1"),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        )
    }

    /// [`Controller::spawn_with`] with environment variables added.
    pub fn spawn_with_env(
        kubeconfig: &std::path::Path,
        dir: &std::path::Path,
        identity: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Controller {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // A file name has at most 255 bytes; an identity may have 253.
        let short: String = identity.chars().take(64).collect();
        let log = dir.join(format!("controller-{short}-{}.log", identity.len()));
        let child = Command::new(crate::binary("ferrolb-controller"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--identity",
                identity,
                "--lease-seconds",
                "2",
                "--metrics-address",
                &metrics.to_string(),
            ])
            .args(extra)
            .env_remove("POD_NAME")
            .env("RUST_LOG", "info,ferrolb_controller=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ferrolb-controller");
        Controller {
            child,
            identity: identity.to_string(),
            metrics,
            log,
        }
    }

    /// Starts the controller and waits until it leads and has synced.
    pub async fn start(cluster: &Cluster, identity: &str, extra: &[&str]) -> Controller {
        let c = Controller::spawn(cluster, identity, extra);
        c.wait_leading(Duration::from_secs(15)).await;
        c
    }

    /// Waits until this replica holds the Lease and is ready (synced).
    pub async fn wait_leading(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_metric("ferrolb_controller_leader", &[]).await == Some(1.0)
                && http_get(self.metrics, "/readyz")
                    .await
                    .is_some_and(|(c, _)| c == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not lead within {timeout:?}:\n{}",
                self.identity,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A metric's value (summed over matching label sets); `None` if the
    /// endpoint does not answer or has no such sample.
    pub async fn try_metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        match http_get(self.metrics, "/metrics").await {
            Some((200, body)) => {
                let samples = metric_samples(&body, name, labels);
                (!samples.is_empty()).then(|| samples.iter().sum())
            }
            _ => None,
        }
    }

    /// A metric's value; panics if the controller does not export it, so
    /// that a misspelt name cannot pass as zero.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.try_metric(name, labels)
            .await
            .unwrap_or_else(|| panic!("{} exports no sample {name}{labels:?}", self.identity))
    }

    /// Waits until a metric has `value` (the controller publishes metrics
    /// just after its writes, so a test that saw a write may be early).
    pub async fn wait_metric(&self, name: &str, labels: &[&str], value: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.try_metric(name, labels).await;
            if v == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {v:?}, wanted {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident set size in KiB (0 once it has exited).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`KILL`, `TERM`) and waits for the process to end.
    pub fn kill(&mut self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// libfaketime's multithreaded library (Debian's `faketime` package).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn clock_file_lib() -> String {
    LIBFAKETIME.to_string()
}

impl Controller {
    /// Stops (SIGSTOP) or resumes (SIGCONT) the process: a pause as a long
    /// garbage collection, a frozen VM or a swapping node makes one.
    pub fn pause(&self, paused: bool) {
        let _ = Command::new("kill")
            .args([
                if paused { "-STOP" } else { "-CONT" },
                &self.child.id().to_string(),
            ])
            .status();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
