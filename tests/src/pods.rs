//! A kubelet for the lab: runs the Pods of `deploy/`'s Deployment and
//! DaemonSet the way a node would, so the product suites test what users
//! install. For each Pod it
//!
//! - creates the Pod object in the API (labels, `spec.nodeName`, then
//!   `status.phase`, `hostIP`, `podIP`, the `Ready` condition and each
//!   container's `restartCount` as they change);
//! - lays out each container's image from the Dockerfile ([`crate::image`])
//!   and starts it through `ferrolb-container` (a mount namespace rooted in
//!   the image, `/proc/sys` and `/sys` read-only unless privileged, the
//!   ServiceAccount volume, the manifest's user, capabilities and
//!   `allowPrivilegeEscalation`); `hostNetwork: true` runs it in the node's
//!   network namespace, otherwise in one of the Pod's own;
//! - resolves `command`/`args` against the image's `ENTRYPOINT`/`CMD` and
//!   `$(VAR)` references, and `env` with downward-API `fieldRef`s;
//! - refuses to start a container that must not run as root but would
//!   (`runAsNonRoot`), as the kubelet does;
//! - runs `initContainers` in order, each to a zero exit, then the
//!   containers; polls `livenessProbe` and `readinessProbe` (`httpGet` on
//!   the Pod IP, `periodSeconds`, `timeoutSeconds`, `failureThreshold`)
//!   from the node; restarts a container that exits or fails its liveness
//!   probe with the kubelet's back-off (at once, then 10 s doubling), and
//!   counts the restarts.
//!
//! Not emulated: resource limits (cgroups), a PID namespace, AppArmor
//! profiles, `/etc/hosts` and `/etc/resolv.conf` management. Seccomp's
//! `RuntimeDefault` is approximated by the runtime's deny list.

use crate::deploy::strings;
use crate::image::Image;
use crate::netns::Lab;
use ferrolb_kubefake::FakeApiServer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The capabilities a container runtime (containerd, CRI-O) grants by default.
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Where a Pod runs.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The node's name (`spec.nodeName`).
    pub node: String,
    /// The node's address (`status.hostIP`).
    pub host_ip: String,
    /// The lab namespace (short name) of the node.
    pub node_ns: String,
    /// For a Pod without `hostNetwork`: its own lab namespace and address.
    pub pod_net: Option<(String, String)>,
}

/// One container's state, as `kubectl get pod -o yaml` would show it.
#[derive(Debug, Clone, Default)]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// The running process (the container's init process), if any.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// The readiness probe's verdict (true without a probe once started).
    pub ready: bool,
    /// Why it last stopped, or could not start.
    pub last_state: Option<String>,
}

/// One Pod as the kubelet tracks it.
#[derive(Debug)]
pub struct PodStatus {
    /// `metadata.name`.
    pub name: String,
    /// Where it runs.
    pub placement: Placement,
    /// Its containers (init containers excluded).
    pub containers: Vec<ContainerStatus>,
    /// Init containers that completed.
    pub init_done: usize,
    /// Failed init container runs.
    pub init_failures: u32,
    /// When every container became ready, first.
    pub ready_after: Option<Duration>,
}

impl PodStatus {
    /// All containers started and ready.
    pub fn ready(&self) -> bool {
        !self.containers.is_empty() && self.containers.iter().all(|c| c.ready)
    }

    /// Restarts of all containers, and failed init runs.
    pub fn restarts(&self) -> u32 {
        self.containers.iter().map(|c| c.restarts).sum::<u32>() + self.init_failures
    }
}

/// One Pod at a glance.
#[derive(Debug, Clone)]
pub struct PodSummary {
    /// `metadata.name`.
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// The containers.
    pub containers: Vec<ContainerStatus>,
    /// Restarts, failed init runs included.
    pub restarts: u32,
    /// How long after the kubelet started it was first Ready.
    pub ready_after: Option<Duration>,
}

/// One node of a [`Kubelet::rolling_update`].
#[derive(Debug, Clone)]
pub struct Rolled {
    /// The node.
    pub node: String,
    /// The Pod deleted.
    pub old: String,
    /// The Pod that replaced it.
    pub new: String,
    /// When the deletion was asked.
    pub asked: Instant,
    /// When the new Pod was Ready.
    pub ready: Instant,
    /// The old Pod's container logs, to its last line.
    pub old_logs: String,
}

struct Pod {
    stop: AtomicBool,
    /// While set, containers that stop are not restarted (the node is down).
    held: AtomicBool,
    workload: Value,
    status: Mutex<PodStatus>,
    dir: PathBuf,
    ns: String,
    spec: Value,
    kill: Mutex<Vec<(String, &'static str)>>,
}

/// The running Pods.
pub struct Kubelet {
    pods: Vec<Arc<Pod>>,
    threads: Vec<(String, std::thread::JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
    started: Instant,
    env: Arc<Env>,
    dir: PathBuf,
    generation: u32,
}

/// What every Pod of one run shares: the API server and the images.
struct Env {
    api: ferrolb_kubefake::ServerHandle,
    api_addr: std::net::SocketAddr,
    ca: String,
    launcher: PathBuf,
    netns_prefix: String,
    images: BTreeMap<String, (Image, PathBuf)>,
    /// The nodes' host filesystem for `hostPath` volumes: a directory of the
    /// lab's (every node shares it, being one machine), with a bpffs of its
    /// own at `sys/fs/bpf`, as systemd mounts one on a node.
    host_root: PathBuf,
}

fn short_hash(s: &str) -> String {
    // FNV-1a, rendered in the alphabet kube uses for generated names.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|i| alphabet[((h >> (i * 6)) % alphabet.len() as u64) as usize] as char)
        .collect()
}

/// The image stage for a manifest image (`ferrolb/speaker:0.1.0` -> `speaker`).
fn stage_of(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let name = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    };
    name.rsplit('/').next().unwrap_or(name).to_string()
}

/// `$(VAR)` expansion of command and args, as the kubelet does (`$$` escapes).
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(j) if env.contains_key(&body[..j]) => {
                    out.push_str(&env[&body[..j]]);
                    rest = &body[j + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's security settings: the Pod's, overridden by the container's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    /// `runAsNonRoot`.
    pub non_root: bool,
    /// `privileged`.
    pub privileged: bool,
    /// The capability names it ends with.
    pub caps: Vec<String>,
    /// `allowPrivilegeEscalation: false` (or not privileged and unset: true, as Kubernetes).
    pub no_new_privs: bool,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `seccompProfile.type` is `RuntimeDefault` (never for a privileged container).
    pub seccomp_default: bool,
}

/// Resolves the security context of container `c` in Pod spec `pod` over `image`.
pub fn security(pod: &Value, c: &Value, image: &Image) -> Security {
    let p = &pod["securityContext"];
    let s = &c["securityContext"];
    let pick = |k: &str| {
        s.get(k)
            .filter(|v| !v.is_null())
            .or(p.get(k).filter(|v| !v.is_null()))
    };
    let uid = pick("runAsUser")
        .and_then(Value::as_u64)
        .map(|u| u as u32)
        .unwrap_or(image.user.0);
    let gid = pick("runAsGroup")
        .and_then(Value::as_u64)
        .map(|g| g as u32)
        .unwrap_or(image.user.1);
    let privileged = s["privileged"].as_bool().unwrap_or(false);
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    let drop = strings(&s["capabilities"]["drop"]);
    if drop.iter().any(|d| d == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    for a in strings(&s["capabilities"]["add"]) {
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    Security {
        uid,
        gid,
        non_root: pick("runAsNonRoot")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        privileged,
        caps,
        no_new_privs: !privileged && s["allowPrivilegeEscalation"].as_bool() == Some(false),
        read_only_root: s["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
        seccomp_default: !privileged
            && pick("seccompProfile").and_then(|p| p["type"].as_str()) == Some("RuntimeDefault"),
    }
}

impl Kubelet {
    /// Applies `objects` (rendered `deploy/`) to the API server and starts
    /// the Deployment's replicas on `controllers` (one placement each) and
    /// a DaemonSet Pod on each of `nodes`.
    pub fn start(
        lab: &Lab,
        server: &FakeApiServer,
        dir: &Path,
        objects: &[Value],
        controllers: &[Placement],
        nodes: &[Placement],
    ) -> Kubelet {
        // The cluster already holds deploy/'s RBAC and ServiceAccounts (it
        // authorises with them); the rest is applied as kubectl would.
        let access: Vec<String> = crate::deploy::access_objects()
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        crate::deploy::apply(
            server,
            &objects
                .iter()
                .filter(|o| !access.contains(&format!("{}/{}", o["kind"], o["metadata"]["name"])))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut images = BTreeMap::new();
        for stage in ["speaker", "controller"] {
            let img = Image::from_dockerfile(stage);
            let root = dir.join(format!("image-{stage}"));
            img.unpack(&root);
            images.insert(stage.to_string(), (img, root));
        }
        let host_root = dir.join("host");
        let bpffs = host_root.join("sys/fs/bpf");
        std::fs::create_dir_all(&bpffs).expect("the lab's host root");
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .output();
        if !mounted.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "lab kubelet: no bpffs at {} (not root?): the speakers will not pin",
                bpffs.display()
            );
        }
        let env = Arc::new(Env {
            host_root,
            api: server.handle(),
            api_addr: server.addr(),
            ca: server
                .ca_pem()
                .expect("the runner needs an HTTPS API server")
                .to_string(),
            launcher: crate::binary("ferrolb-container"),
            netns_prefix: lab.name(""),
            images,
        });
        let mut kubelet = Kubelet {
            pods: Vec::new(),
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            env: Arc::clone(&env),
            dir: dir.to_path_buf(),
            generation: 0,
        };
        for w in objects {
            let (placements, prefix): (&[Placement], String) = match w["kind"].as_str() {
                Some("Deployment") => {
                    let replicas = w["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
                    assert!(
                        controllers.len() >= replicas,
                        "the Deployment wants {replicas} replicas; the lab gave {} places",
                        controllers.len()
                    );
                    let name = w["metadata"]["name"].as_str().unwrap();
                    (
                        &controllers[..replicas],
                        format!("{name}-{}-", short_hash(name)),
                    )
                }
                Some("DaemonSet") => (
                    nodes,
                    format!("{}-", w["metadata"]["name"].as_str().unwrap()),
                ),
                _ => continue,
            };
            for p in placements {
                let name = format!("{prefix}{}", short_hash(&format!("{prefix}{}", p.node)));
                kubelet.spawn(w, &name, p.clone());
            }
        }
        kubelet
    }

    fn spawn(&mut self, workload: &Value, name: &str, p: Placement) {
        let (env, dir) = (&Arc::clone(&self.env), self.dir.clone());
        let ns = workload["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let template = &workload["spec"]["template"];
        let mut spec = template["spec"].clone();
        spec["nodeName"] = json!(p.node);
        let pod_dir = dir.join("pods").join(name);
        std::fs::create_dir_all(&pod_dir).unwrap();
        let containers = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| ContainerStatus {
                name: c["name"].as_str().unwrap().to_string(),
                ..Default::default()
            })
            .collect();
        let pod = Arc::new(Pod {
            stop: AtomicBool::new(false),
            held: AtomicBool::new(false),
            workload: workload.clone(),
            status: Mutex::new(PodStatus {
                name: name.to_string(),
                placement: p.clone(),
                containers,
                init_done: 0,
                init_failures: 0,
                ready_after: None,
            }),
            dir: pod_dir,
            ns: ns.clone(),
            spec: spec.clone(),
            kill: Mutex::new(Vec::new()),
        });
        let object = json!({
            "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"],
                         "annotations": template["metadata"]["annotations"]},
            "spec": spec,
        });
        let pods = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
        env.api
            .store()
            .create(pods, Some(&ns), object, "kubelet")
            .expect("create the Pod");
        let (env, pod2, stop) = (Arc::clone(env), Arc::clone(&pod), Arc::clone(&self.stop));
        let started = self.started;
        self.threads.push((
            name.to_string(),
            std::thread::Builder::new()
                .name(format!("kubelet-{name}"))
                .spawn(move || run_pod(&env, &pod2, &stop, started))
                .unwrap(),
        ));
        self.pods.push(pod);
    }

    /// `kubectl delete pod --grace-period=0 --force`: kills Pod `pod`'s
    /// containers and deletes it; its controller (DaemonSet or Deployment)
    /// creates a new Pod in the same place, with no restart back-off.
    /// Returns the new Pod's name.
    pub fn replace(&mut self, pod: &str) -> String {
        let i = self
            .pods
            .iter()
            .position(|p| p.status.lock().unwrap().name == pod)
            .unwrap_or_else(|| panic!("no Pod {pod}"));
        let old = self.pods.remove(i);
        for c in old.status.lock().unwrap().containers.iter() {
            if let Some(pid) = c.pid {
                kill(pid, "KILL");
            }
        }
        old.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.threads.iter().position(|(n, _)| n == pod) {
            let (_, t) = self.threads.remove(j);
            let _ = t.join();
        }
        let pods = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
        let _ = self.env.api.store().delete(pods, Some(&old.ns), pod, None);
        self.generation += 1;
        let placement = old.status.lock().unwrap().placement.clone();
        let base = pod.rsplit_once('-').map(|(b, _)| b).unwrap_or(pod);
        let name = format!(
            "{base}-{}",
            short_hash(&format!("{pod}/{}", self.generation))
        );
        self.spawn(&old.workload, &name, placement);
        name
    }

    /// A DaemonSet rolling update (`kubectl rollout restart ds/NAME` with
    /// the default `maxUnavailable: 1`, `maxSurge: 0`), as the DaemonSet
    /// controller does it: one node at a time, the old Pod deleted through
    /// the API (graceful: it gets a `deletionTimestamp`; this kubelet sends
    /// SIGTERM, waits for the exit and removes it), then the new Pod
    /// created, and the next node only once the new Pod is Ready. Returns
    /// (node, old Pod, new Pod, when the deletion was asked, when the new
    /// Pod was Ready, the old Pod's logs) per node.
    pub fn rolling_update(&mut self, daemonset: &str, timeout: Duration) -> Vec<Rolled> {
        let mut olds: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|p| p.workload["metadata"]["name"] == daemonset)
            .map(|p| {
                let s = p.status.lock().unwrap();
                (s.placement.node.clone(), s.name.clone())
            })
            .collect();
        olds.sort();
        let pods = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
        let mut out = Vec::new();
        for (node, old) in olds {
            let i = self
                .pods
                .iter()
                .position(|p| p.status.lock().unwrap().name == old)
                .expect("listed above");
            let ns = self.pods[i].ns.clone();
            let asked = Instant::now();
            self.env
                .api
                .store()
                .delete_pod(pods, Some(&ns), &old, None, None)
                .unwrap_or_else(|e| panic!("delete Pod {old}: {e:?}"));
            // The Pod's own thread stops it and removes the object.
            if let Some(j) = self.threads.iter().position(|(n, _)| *n == old) {
                let (_, t) = self.threads.remove(j);
                let _ = t.join();
            }
            let old_logs = self.logs(&old);
            let gone = self.pods.remove(i);
            assert!(
                self.env.api.store().get(pods, Some(&ns), &old).is_err(),
                "the kubelet removes a deleted Pod once its containers stopped"
            );
            self.generation += 1;
            let placement = gone.status.lock().unwrap().placement.clone();
            let base = old.rsplit_once('-').map(|(b, _)| b).unwrap_or(&old);
            let name = format!(
                "{base}-{}",
                short_hash(&format!("{old}/{}", self.generation))
            );
            self.spawn(&gone.workload, &name, placement);
            self.wait_ready(timeout);
            out.push(Rolled {
                node,
                old,
                new: name,
                asked,
                ready: Instant::now(),
                old_logs,
            });
        }
        out
    }

    /// A snapshot of every Pod.
    pub fn pods(&self) -> Vec<PodSummary> {
        self.pods
            .iter()
            .map(|p| {
                let s = p.status.lock().unwrap();
                PodSummary {
                    name: s.name.clone(),
                    node: s.placement.node.clone(),
                    containers: s.containers.clone(),
                    restarts: s.restarts(),
                    ready_after: s.ready_after,
                }
            })
            .collect()
    }

    fn find(&self, pred: impl Fn(&PodStatus) -> bool) -> Option<&Arc<Pod>> {
        self.pods.iter().find(|p| pred(&p.status.lock().unwrap()))
    }

    /// The DaemonSet or Deployment Pod of `workload` (`ferrolb-speaker`) on `node`.
    pub fn pod_on(&self, workload: &str, node: &str) -> String {
        self.find(|s| s.name.starts_with(workload) && s.placement.node == node)
            .map(|p| p.status.lock().unwrap().name.clone())
            .unwrap_or_else(|| panic!("no {workload} Pod on {node}"))
    }

    /// The process of container `container` of Pod `pod`.
    pub fn pid(&self, pod: &str, container: &str) -> Option<u32> {
        let p = self.find(|s| s.name == pod)?;
        let s = p.status.lock().unwrap();
        s.containers.iter().find(|c| c.name == container)?.pid
    }

    /// Restarts of Pod `pod` (containers and failed init runs).
    pub fn restarts(&self, pod: &str) -> u32 {
        self.find(|s| s.name == pod)
            .map(|p| p.status.lock().unwrap().restarts())
            .unwrap_or(0)
    }

    /// Sends `signal` (`KILL`, `TERM`) to a container, as a crash or `kill` would;
    /// the kubelet then restarts it.
    pub fn signal(&self, pod: &str, container: &str, signal: &'static str) {
        if let Some(p) = self.find(|s| s.name == pod) {
            p.kill.lock().unwrap().push((container.to_string(), signal));
        }
    }

    /// Holds (or releases) Pod `pod`: while held, a container that stops is
    /// not restarted, as when its node is down; released, the kubelet
    /// restarts it (with its back-off).
    pub fn hold(&self, pod: &str, held: bool) {
        if let Some(p) = self.find(|s| s.name == pod) {
            p.held.store(held, Ordering::SeqCst);
        }
    }

    /// A Pod's container logs (init containers first).
    pub fn logs(&self, pod: &str) -> String {
        let Some(p) = self.find(|s| s.name == pod) else {
            return String::new();
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&p.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|e| e == "log"));
        files.sort();
        files
            .iter()
            .map(|f| {
                format!(
                    "--- {pod} {}\n{}",
                    f.file_stem().unwrap().to_string_lossy(),
                    std::fs::read_to_string(f).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Every Pod's logs.
    pub fn all_logs(&self) -> String {
        self.pods()
            .iter()
            .map(|p| self.logs(&p.name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A summary line per Pod: name, node, ready, restarts, and why a container last stopped.
    pub fn describe(&self) -> String {
        self.pods
            .iter()
            .map(|p| {
                let s = p.status.lock().unwrap();
                let why: Vec<String> = s
                    .containers
                    .iter()
                    .filter_map(|c| c.last_state.as_ref().map(|w| format!("{}: {w}", c.name)))
                    .collect();
                format!(
                    "{} on {}: ready {}, restarts {}, init done {}{}",
                    s.name,
                    s.placement.node,
                    s.ready(),
                    s.restarts(),
                    s.init_done,
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every Pod is Ready; panics after `timeout` with every
    /// Pod's state and logs (a crash loop shows here).
    pub fn wait_ready(&self, timeout: Duration) {
        let t = Instant::now();
        while !self.pods.iter().all(|p| p.status.lock().unwrap().ready()) {
            assert!(
                t.elapsed() < timeout,
                "Pods not Ready after {timeout:?}:\n{}\n{}",
                self.describe(),
                self.all_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Kubelet {
    /// Deletes every Pod (`kubectl delete -k`): SIGTERM, then SIGKILL after
    /// the grace period (at most 5 s here), as the kubelet does.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (_, t) in self.threads.drain(..) {
            let _ = t.join();
        }
        let pods = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
        for p in self.pods.drain(..) {
            let name = p.status.lock().unwrap().name.clone();
            let _ = self.env.api.store().delete(pods, Some(&p.ns), &name, None);
        }
        // What the speakers pinned goes with the lab's bpffs.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.env.host_root.join("sys/fs/bpf"))
            .output();
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .output();
}

struct Running {
    child: Child,
    started: Instant,
    probes: [ProbeState; 2],
}

#[derive(Default, Clone)]
struct ProbeState {
    next: Option<Instant>,
    failures: u32,
}

fn probe_http(ip: &str, c: &Value, probe: &Value) -> bool {
    use std::io::{Read, Write};
    let g = &probe["httpGet"];
    let port = match &g["port"] {
        Value::Number(n) => n.as_u64().unwrap_or(0) as u16,
        Value::String(name) => c["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == *name.as_str()))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or(0) as u16,
        _ => 0,
    };
    let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
    let path = g["path"].as_str().unwrap_or("/");
    let Ok(addr) = format!("{ip}:{port}").parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

/// Writes the container spec for `ferrolb-container` and starts it.
fn launch(env: &Env, pod: &Pod, c: &Value, kind: &str, runs: u32) -> Result<Child, String> {
    let (placement, pod_name) = {
        let s = pod.status.lock().unwrap();
        (s.placement.clone(), s.name.clone())
    };
    let cname = c["name"].as_str().unwrap();
    let image_ref = c["image"].as_str().unwrap_or("");
    let (image, image_root) = env.images.get(&stage_of(image_ref)).ok_or_else(|| {
        format!("ErrImagePull: no image {image_ref} (the Dockerfile has no stage for it)")
    })?;
    let sec = security(&pod.spec, c, image);
    if sec.non_root && sec.uid == 0 {
        return Err(format!(
            "CreateContainerConfigError: container has runAsNonRoot and image will run as root (pod: \"{pod_name}_{}\", container: {cname})",
            pod.ns
        ));
    }
    let pod_ip = placement
        .pod_net
        .as_ref()
        .map(|(_, ip)| ip.clone())
        .unwrap_or_else(|| placement.host_ip.clone());
    // The container's own root: the image's files, fresh for every start (no layer survives a restart).
    let root = pod.dir.join(format!("{kind}-{cname}-root-{runs}"));
    let _ = std::fs::remove_dir_all(&root);
    copy_tree(image_root, &root);
    let automount = pod.spec["automountServiceAccountToken"].as_bool() != Some(false);
    let sa_dir = pod.dir.join("serviceaccount");
    if automount && !sa_dir.exists() {
        std::fs::create_dir_all(&sa_dir).unwrap();
        let sa = pod.spec["serviceAccountName"].as_str().unwrap_or("default");
        let token = env.api.service_account_token(&pod.ns, sa);
        std::fs::write(sa_dir.join("token"), token).unwrap();
        std::fs::write(sa_dir.join("ca.crt"), &env.ca).unwrap();
        std::fs::write(sa_dir.join("namespace"), &pod.ns).unwrap();
    }
    let field = |path: &str| -> String {
        match path {
            "spec.nodeName" => placement.node.clone(),
            "metadata.name" => pod_name.clone(),
            "metadata.namespace" => pod.ns.clone(),
            "status.hostIP" => placement.host_ip.clone(),
            "status.podIP" => pod_ip.clone(),
            "spec.serviceAccountName" => pod.spec["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            other => panic!("the runner does not resolve fieldRef {other}"),
        }
    };
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    vars.insert(
        "HOSTNAME".into(),
        if placement.pod_net.is_some() {
            pod_name.clone()
        } else {
            placement.node.clone()
        },
    );
    vars.insert(
        "KUBERNETES_SERVICE_HOST".into(),
        env.api_addr.ip().to_string(),
    );
    vars.insert(
        "KUBERNETES_SERVICE_PORT".into(),
        env.api_addr.port().to_string(),
    );
    vars.insert(
        "KUBERNETES_SERVICE_PORT_HTTPS".into(),
        env.api_addr.port().to_string(),
    );
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &vars)
        } else if let Some(f) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            field(f)
        } else {
            return Err(format!(
                "CreateContainerConfigError: env {name}: only value and fieldRef are supported"
            ));
        };
        vars.insert(name, value);
    }
    let command = strings(&c["command"]);
    let args = strings(&c["args"]);
    let mut argv: Vec<String> = if command.is_empty() {
        image.entrypoint.clone()
    } else {
        command.clone()
    };
    argv.extend(if command.is_empty() && args.is_empty() {
        image.cmd.clone()
    } else {
        args
    });
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &vars)).collect();
    let mut mounts = Vec::new();
    if automount {
        mounts.push(json!({"source": sa_dir, "target": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}));
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or("");
        let volume = pod.spec["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name))
            .ok_or_else(|| format!("CreateContainerConfigError: no volume {name}"))?;
        let dir = if volume.get("hostPath").is_some() {
            host_path_volume(&env.host_root, volume)?
        } else {
            secret_volume(env, pod, volume)?
        };
        mounts.push(json!({"source": dir, "target": m["mountPath"], "readOnly": m["readOnly"].as_bool().unwrap_or(false)}));
    }
    let spec = json!({
        "root": root,
        "readOnlyRoot": sec.read_only_root,
        "privileged": sec.privileged,
        "hostname": placement.pod_net.as_ref().map(|_| pod_name.clone()),
        "mounts": mounts,
        "env": vars.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "argv": argv,
        "uid": sec.uid,
        "gid": sec.gid,
        "capabilities": sec.caps,
        "noNewPrivs": sec.no_new_privs,
        "seccomp": if sec.seccomp_default { "RuntimeDefault" } else { "Unconfined" },
    });
    let spec_path = pod.dir.join(format!("{kind}-{cname}.json"));
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let netns = format!(
        "{}{}",
        env.netns_prefix,
        placement
            .pod_net
            .as_ref()
            .map(|(n, _)| n.as_str())
            .unwrap_or(&placement.node_ns)
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pod.dir.join(format!("{kind}-{cname}.log")))
        .unwrap();
    Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(&env.launcher)
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// A `hostPath` volume: the path under the lab's host root, checked as
/// the kubelet checks its `type` (`Directory`: it must exist;
/// `DirectoryOrCreate`: made if missing; unset: no check, made if missing).
fn host_path_volume(host_root: &Path, volume: &Value) -> Result<PathBuf, String> {
    let name = volume["name"].as_str().unwrap_or("");
    let hp = &volume["hostPath"];
    let path = hp["path"]
        .as_str()
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| {
            format!("CreateContainerConfigError: volume {name}: hostPath.path must be absolute")
        })?;
    let on_host = host_root.join(path.trim_start_matches('/'));
    match hp["type"].as_str().unwrap_or("") {
        "Directory" if !on_host.is_dir() => Err(format!(
            "CreateContainerConfigError: volume {name}: hostPath type check failed: {path} is not a directory"
        )),
        "Directory" => Ok(on_host),
        "" | "DirectoryOrCreate" => {
            std::fs::create_dir_all(&on_host).map_err(|e| format!("volume {name}: {path}: {e}"))?;
            Ok(on_host)
        }
        other => Err(format!(
            "CreateContainerConfigError: volume {name}: hostPath type {other} is not supported by the lab kubelet"
        )),
    }
}

/// A Secret volume as the kubelet projects it: one file per key, or an
/// empty directory for an optional Secret that does not exist.
fn secret_volume(env: &Env, pod: &Pod, volume: &Value) -> Result<PathBuf, String> {
    use base64::Engine;
    let name = volume["name"].as_str().unwrap_or("");
    let secret = volume.get("secret").ok_or_else(|| {
        format!("CreateContainerConfigError: volume {name}: only secret volumes are supported")
    })?;
    let secret_name = secret["secretName"].as_str().unwrap_or("");
    let dir = pod.dir.join(format!("volume-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = ferrolb_kubefake::resource::by_name("secrets", "").unwrap();
    let found = env
        .api
        .store()
        .get(secrets, Some(&pod.ns), secret_name)
        .ok();
    match found {
        None if secret["optional"].as_bool() == Some(true) => {}
        None => {
            return Err(format!(
                "CreateContainerConfigError: secret \"{secret_name}\" not found"
            ))
        }
        Some(s) => {
            for (k, v) in s["data"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or(""))
                    .map_err(|e| format!("secret {secret_name} key {k}: {e}"))?;
                std::fs::write(dir.join(k), bytes).unwrap();
            }
            for (k, v) in s["stringData"].as_object().into_iter().flatten() {
                std::fs::write(dir.join(k), v.as_str().unwrap_or("")).unwrap();
            }
        }
    }
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            copy_tree(&e.path(), &dest);
            std::fs::set_permissions(&dest, meta.permissions()).unwrap();
        } else if std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn update_status(env: &Env, pod: &Pod) {
    let s = pod.status.lock().unwrap();
    let pods = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
    let pod_ip = s
        .placement
        .pod_net
        .as_ref()
        .map(|(_, ip)| ip.clone())
        .unwrap_or_else(|| s.placement.host_ip.clone());
    let ready = if s.ready() { "True" } else { "False" };
    let statuses: Vec<Value> = s
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "ready": c.ready, "restartCount": c.restarts, "started": c.pid.is_some()}))
        .collect();
    let running = s.init_done == pod.spec["initContainers"].as_array().map_or(0, Vec::len);
    let _ = env.api.store().patch(
        pods,
        Some(&pod.ns),
        &s.name,
        true,
        ferrolb_kubefake::PatchKind::Merge,
        json!({"status": {
            "phase": if running { "Running" } else { "Pending" },
            "hostIP": s.placement.host_ip,
            "podIP": pod_ip,
            "conditions": [{"type": "Ready", "status": ready}, {"type": "ContainersReady", "status": ready}],
            "containerStatuses": statuses,
        }}),
        "kubelet",
    );
}

/// The kubelet's restart back-off: at once the first time, then 10 s doubling to 5 min.
pub fn backoff(restarts: u32) -> Duration {
    match restarts {
        0 => Duration::ZERO,
        n => Duration::from_secs((10u64 << (n - 1).min(5)).min(300)),
    }
}

fn run_pod(env: &Env, pod: &Pod, stop: &AtomicBool, started: Instant) {
    // The kubelet probes from the node: this thread lives in the node's network namespace.
    let node_ns = {
        let s = pod.status.lock().unwrap();
        format!("/run/netns/{}{}", env.netns_prefix, s.placement.node_ns)
    };
    let f = std::fs::File::open(&node_ns).expect("the node's network namespace");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the node's network namespace");
    update_status(env, pod);
    // Init containers: in order, each until it exits 0 (restartPolicy Always retries it).
    let inits = pod.spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, c) in inits.iter().enumerate() {
        let mut runs = 0;
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let ok = match launch(env, pod, c, "init", runs) {
                Ok(mut child) => loop {
                    if stop.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    if let Ok(Some(st)) = child.try_wait() {
                        break st.success();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                },
                Err(_) => false,
            };
            if ok {
                break;
            }
            runs += 1;
            pod.status.lock().unwrap().init_failures += 1;
            let until = Instant::now() + backoff(runs);
            while Instant::now() < until {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        pod.status.lock().unwrap().init_done = i + 1;
    }
    update_status(env, pod);
    let containers = pod.spec["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut running: Vec<Option<Running>> = containers.iter().map(|_| None).collect();
    let mut next_start: Vec<Instant> = containers.iter().map(|_| Instant::now()).collect();
    let pod_ip = {
        let s = pod.status.lock().unwrap();
        s.placement
            .pod_net
            .as_ref()
            .map(|(_, ip)| ip.clone())
            .unwrap_or_else(|| s.placement.host_ip.clone())
    };
    let grace = Duration::from_secs(
        pod.spec["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    );
    let pods_r = ferrolb_kubefake::resource::by_name("pods", "").unwrap();
    let name = pod.status.lock().unwrap().name.clone();
    // Set when the API server asked for the Pod's deletion (its
    // deletionTimestamp, or the object gone): the grace period it gave.
    let mut deleting: Option<Duration> = None;
    while !stop.load(Ordering::SeqCst) && !pod.stop.load(Ordering::SeqCst) {
        // As the kubelet's pod workers: a Pod with a deletionTimestamp is
        // stopped (SIGTERM, its grace period, SIGKILL), then removed.
        match env.api.store().get(pods_r, Some(&pod.ns), &name) {
            Ok(o) if o.pointer("/metadata/deletionTimestamp").is_some() => {
                deleting = Some(Duration::from_secs(
                    o.pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_u64)
                        .unwrap_or(30),
                ));
                break;
            }
            Ok(_) => {}
            Err(_) => {
                deleting = Some(Duration::ZERO);
                break;
            }
        }
        let mut changed = false;
        for (i, c) in containers.iter().enumerate() {
            let cname = c["name"].as_str().unwrap().to_string();
            let requested: Vec<&'static str> = {
                let mut k = pod.kill.lock().unwrap();
                let (mine, rest): (Vec<_>, Vec<_>) = k.drain(..).partition(|(n, _)| *n == cname);
                *k = rest;
                mine.into_iter().map(|(_, s)| s).collect()
            };
            if let Some(r) = running[i].as_mut() {
                for sig in requested {
                    kill(r.child.id(), sig);
                }
                let exited = r.child.try_wait().ok().flatten();
                let mut liveness_failed = false;
                for (k, key) in ["readinessProbe", "livenessProbe"].iter().enumerate() {
                    let probe = &c[*key];
                    if probe.is_null() {
                        continue;
                    }
                    let ps = &mut r.probes[k];
                    let now = Instant::now();
                    let due = ps.next.unwrap_or(
                        r.started
                            + Duration::from_secs(
                                probe["initialDelaySeconds"].as_u64().unwrap_or(0),
                            ),
                    );
                    if now < due {
                        continue;
                    }
                    ps.next = Some(
                        now + Duration::from_secs(probe["periodSeconds"].as_u64().unwrap_or(10)),
                    );
                    let ok = probe_http(&pod_ip, c, probe);
                    let threshold = probe["failureThreshold"].as_u64().unwrap_or(3) as u32;
                    ps.failures = if ok { 0 } else { ps.failures + 1 };
                    if k == 0 {
                        let mut s = pod.status.lock().unwrap();
                        let ready = if ok {
                            true
                        } else if ps.failures >= threshold {
                            false
                        } else {
                            s.containers[i].ready
                        };
                        if s.containers[i].ready != ready {
                            s.containers[i].ready = ready;
                            changed = true;
                            if s.ready() && s.ready_after.is_none() {
                                s.ready_after = Some(started.elapsed());
                            }
                        }
                    } else if ps.failures >= threshold {
                        liveness_failed = true;
                    }
                }
                if liveness_failed && exited.is_none() {
                    kill(r.child.id(), "TERM");
                    let t = Instant::now();
                    while r.child.try_wait().ok().flatten().is_none() && t.elapsed() < grace {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    pod.status.lock().unwrap().containers[i].last_state =
                        Some("killed: liveness probe failed".into());
                }
                if let Some(st) = exited.or(liveness_failed.then(|| r.child.wait().ok()).flatten())
                {
                    let mut s = pod.status.lock().unwrap();
                    let cs = &mut s.containers[i];
                    if !liveness_failed {
                        cs.last_state = Some(format!("terminated: {st}"));
                    }
                    cs.restarts += 1;
                    cs.pid = None;
                    cs.ready = false;
                    next_start[i] = Instant::now() + backoff(cs.restarts - 1);
                    running[i] = None;
                    changed = true;
                }
            } else if Instant::now() >= next_start[i] && !pod.held.load(Ordering::SeqCst) {
                let runs = pod.status.lock().unwrap().containers[i].restarts;
                match launch(env, pod, c, "container", runs) {
                    Ok(child) => {
                        let mut s = pod.status.lock().unwrap();
                        s.containers[i].pid = Some(child.id());
                        if c["readinessProbe"].is_null() {
                            s.containers[i].ready = true;
                        }
                        running[i] = Some(Running {
                            child,
                            started: Instant::now(),
                            probes: Default::default(),
                        });
                    }
                    Err(why) => {
                        let mut s = pod.status.lock().unwrap();
                        s.containers[i].last_state = Some(why);
                        s.containers[i].restarts += 1;
                        next_start[i] = Instant::now() + backoff(s.containers[i].restarts);
                    }
                }
                changed = true;
            }
        }
        if changed {
            update_status(env, pod);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Pod deletion: SIGTERM, the grace period (cut short for tests), SIGKILL.
    let grace = deleting.unwrap_or(grace).min(Duration::from_secs(5));
    for r in running.iter_mut().flatten() {
        kill(r.child.id(), "TERM");
    }
    let t = Instant::now();
    for r in running.iter_mut().flatten() {
        while r.child.try_wait().ok().flatten().is_none() && t.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    if deleting.is_some() {
        // The containers stopped: the kubelet removes the Pod for good.
        let _ = env.api.store().delete(pods_r, Some(&pod.ns), &name, None);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn host_path_volumes_are_checked_as_the_kubelet_checks_their_type() {
        let root = std::env::temp_dir().join(format!("ferrolb-hostpath-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sys/fs/bpf")).unwrap();
        let v = |path: &str, ty: &str| json!({"name": "v", "hostPath": {"path": path, "type": ty}});
        assert_eq!(
            host_path_volume(&root, &v("/sys/fs/bpf", "Directory")).unwrap(),
            root.join("sys/fs/bpf")
        );
        let e = host_path_volume(&root, &v("/nowhere", "Directory")).unwrap_err();
        assert!(
            e.contains("hostPath type check failed: /nowhere is not a directory"),
            "{e}"
        );
        assert!(host_path_volume(&root, &v("/made", "DirectoryOrCreate"))
            .unwrap()
            .is_dir());
        assert!(host_path_volume(&root, &v("/dev/sock", "Socket"))
            .unwrap_err()
            .contains("not supported"));
        assert!(host_path_volume(&root, &v("relative", ""))
            .unwrap_err()
            .contains("absolute"));
        let _ = std::fs::remove_dir_all(&root);
    }

    use super::*;

    #[test]
    fn dollar_references_expand_as_the_kubelet_does() {
        let env: BTreeMap<String, String> = [("NODE_NAME".to_string(), "n1".to_string())].into();
        assert_eq!(expand("--node=$(NODE_NAME)", &env), "--node=n1");
        assert_eq!(expand("$$(NODE_NAME)", &env), "$(NODE_NAME)");
        assert_eq!(expand("$(MISSING) $", &env), "$(MISSING) $");
    }

    #[test]
    fn security_contexts_resolve_like_the_kubelet() {
        let objects = crate::deploy::render();
        let ds = crate::deploy::find(&objects, "DaemonSet", "ferrolb-speaker");
        let pod = &ds["spec"]["template"]["spec"];
        let img = Image::from_dockerfile("speaker");
        let speaker = security(pod, &pod["containers"][0], &img);
        assert_eq!(speaker.uid, 0);
        assert_eq!(
            speaker.caps,
            vec!["NET_RAW", "NET_ADMIN", "NET_BIND_SERVICE", "BPF", "PERFMON"]
        );
        assert!(speaker.no_new_privs && speaker.read_only_root && !speaker.privileged);
        let init = security(pod, &pod["initContainers"][0], &img);
        assert!(init.privileged && !init.no_new_privs);
        let dep = crate::deploy::find(&objects, "Deployment", "ferrolb-controller");
        let pod = &dep["spec"]["template"]["spec"];
        let ctl = security(
            pod,
            &pod["containers"][0],
            &Image::from_dockerfile("controller"),
        );
        assert_eq!((ctl.uid, ctl.gid, ctl.non_root), (65532, 65532, true));
        assert!(ctl.caps.is_empty());
        assert!(
            ctl.seccomp_default,
            "the Deployment asks for RuntimeDefault"
        );
        assert!(speaker.seccomp_default && !init.seccomp_default);
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(9), Duration::from_secs(300));
    }
}
