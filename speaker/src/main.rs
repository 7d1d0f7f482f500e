//! `ferrolb-speaker`: the per-node agent. Subcommands: `validate`,
//! `standalone` (a YAML file, no Kubernetes), `kubernetes` (a DaemonSet),
//! and host setup (`prepare-node`, `prepare-backend`, `cleanup-node`).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrolb_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

use ferrolb_ops::{out, outln};

/// ferrolb speaker: announces load-balancer VIPs and forwards their traffic.
#[derive(Parser)]
#[command(name = "ferrolb-speaker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: ferrolb_ops::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration file; print every error, or a summary of pools
    /// and the VIP each standalone service would get. Exits 1 on errors.
    Validate {
        /// The YAML configuration (standalone file or a ConfigMap's config.yaml).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run without Kubernetes: allocate VIPs for the file's services, forward
    /// their traffic to healthy backends, serve /metrics, /healthz and
    /// /readyz. Reloads on SIGHUP or when the file changes; drains on SIGTERM.
    Standalone {
        /// The YAML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// This host's name (matched against `members`).
        #[arg(long, value_name = "NAME", default_value = "standalone")]
        node: String,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9470")]
        metrics_address: std::net::SocketAddr,
        /// TLS and bearer tokens for the metrics endpoint.
        #[command(flatten)]
        access: ferrolb_ops::AccessArgs,
        /// How often the file is checked for changes, e.g. 1s.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        reload_poll: std::time::Duration,
        /// Forwarder worker threads (default: one per CPU).
        #[arg(long, value_name = "N")]
        worker_threads: Option<usize>,
        /// How long the local route of a VIP no service uses any more stays
        /// (connections draining through the forwarder keep working), e.g. 60s.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        local_route_linger: std::time::Duration,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Run as the Kubernetes DaemonSet: announce the addresses the controller
    /// wrote into Services' status (layer 2 or BGP, as the ConfigMap says),
    /// from this node when it is eligible, and forward Services annotated
    /// `ferrolb.io/forward: "true"` to their ready endpoints.
    Kubernetes(KubeArgs),
    /// Set the ARP sysctls layer 2 mode needs (arp_ignore=1, arp_announce=2
    /// on all interfaces) and exit: for a privileged init container, since
    /// /proc/sys is read-only in the unprivileged speaker container.
    PrepareNode,
    /// Prepare this host as a backend of `mode: kernel-dsr` services: make
    /// the VIPs local (routes on lo), keep it from answering ARP for them,
    /// and install the tc programs that unwrap the load balancer's IPIP /
    /// IPv6-in-IPv6 packets and fit SYN-ACKs' MSS to the tunnel. No tunnel
    /// device or kernel module is needed. Stays in place after exit (as `ip`
    /// and `tc` settings do, until reboot); run again to change the VIPs,
    /// with --undo to take it off. Needs root.
    PrepareBackend {
        /// A VIP this host serves (repeat for several).
        #[arg(long = "vip", value_name = "IP", required_unless_present = "undo")]
        vips: Vec<std::net::IpAddr>,
        /// An interface the load balancers' packets arrive on (repeat;
        /// default: every interface that is up, except lo).
        #[arg(long = "interface", value_name = "NAME")]
        interfaces: Vec<String>,
        /// Only these load balancer addresses (ADDR or CIDR, repeat) may
        /// tunnel to this host; default: any.
        #[arg(long = "from", value_name = "CIDR")]
        from: Vec<String>,
        /// Take it off instead: the programs from the interfaces and the
        /// VIPs' local routes (those given, else every one ferrolb made).
        #[arg(long)]
        undo: bool,
    },
    /// Undo what the speakers did to this node, after an uninstall: remove
    /// every local route ferrolb made (protocol 249 in table local), every
    /// virtual-MAC link (a killed speaker leaves them) and the kernel data
    /// path a killed speaker left pinned, and put the ARP
    /// sysctls back to the kernel's defaults. Needs root (a
    /// privileged container: deploy/uninstall/cleanup.yaml).
    CleanupNode {
        /// Leave arp_ignore and arp_announce as they are.
        #[arg(long)]
        keep_arp_sysctls: bool,
        /// Then wait for SIGTERM (the DaemonSet's container, which must keep running).
        #[arg(long)]
        wait: bool,
        /// Where the speakers pinned the kernel data path.
        #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/ferrolb")]
        datapath_pin_dir: PathBuf,
    },
    /// Show what a running speaker announces (layer 2 owner or BGP) and the
    /// health of the backends it forwards to, from its /metrics; with --api,
    /// every Service's address and the nodes announcing it, cluster-wide.
    Status {
        /// The speaker's metrics address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7474")]
        address: std::net::SocketAddr,
        /// Ask the API instead: every node's NodeAnnouncement (deploy/crds.yaml).
        #[arg(long)]
        api: bool,
        /// A kubeconfig for --api; default: in-cluster, then $KUBECONFIG.
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Namespace of the speakers and their NodeAnnouncements (--api).
        #[arg(long, env = "FERROLB_NAMESPACE", default_value = "ferrolb-system")]
        namespace: String,
        /// Output format of --api: `text` (a table) or `json` (for scripts).
        #[arg(long, short = 'o', value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Label selector of the speaker Pods (--api): a node whose speaker
        /// is not running has a stale claim.
        #[arg(
            long,
            default_value = "app.kubernetes.io/name=ferrolb,app.kubernetes.io/component=speaker"
        )]
        speaker_selector: String,
    },
}

/// Where the kernel data path pins its maps and links.
#[derive(clap::Args)]
struct PinArgs {
    /// A bpffs directory where the kernel data path pins its maps and links
    /// (one directory per network namespace under it): a speaker that dies
    /// leaves the program forwarding, and the next one adopts it with its
    /// flows. Not a bpffs (or not writable): nothing is pinned and flows
    /// end with the process.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/ferrolb")]
    datapath_pin_dir: PathBuf,
    /// Never pin the kernel data path.
    #[arg(long)]
    no_datapath_pins: bool,
}

impl PinArgs {
    fn apply(&self) {
        ferrolb_speaker::forwarder::kernel::set_pin_base(
            (!self.no_datapath_pins).then(|| self.datapath_pin_dir.clone()),
        );
    }
}

#[derive(clap::Args)]
struct KubeArgs {
    #[command(flatten)]
    pins: PinArgs,
    /// This node's name (downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node: String,
    #[command(flatten)]
    cluster: ferrolb_kube::ClusterArgs,
    /// Label selector of the speaker Pods, whose nodes are the failover members.
    #[arg(
        long,
        default_value = "app.kubernetes.io/name=ferrolb,app.kubernetes.io/component=speaker"
    )]
    speaker_selector: String,
    /// UDP port of the membership heartbeats (the same on every node).
    #[arg(long, default_value_t = ferrolb_config::DEFAULT_MEMBER_PORT)]
    member_port: u16,
    /// The spec.loadBalancerClass handled (besides Services without a class).
    #[arg(long, default_value = "ferrolb.io/lb")]
    load_balancer_class: String,
    /// Leave Services without a loadBalancerClass alone.
    #[arg(long)]
    ignore_classless: bool,
    /// Announce from nodes labelled node.kubernetes.io/exclude-from-external-load-balancers too.
    #[arg(long)]
    ignore_exclude_lb: bool,
    /// Re-derive every Service on every change, as the speaker did before
    /// it kept an incremental index: the reference of
    /// `tests/bench/speaker_scale.sh`, not for production.
    #[arg(long, hide = true)]
    full_recompute: bool,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7474")]
    metrics_address: std::net::SocketAddr,
    /// TLS and bearer tokens for the metrics endpoint.
    #[command(flatten)]
    access: ferrolb_ops::AccessArgs,
    /// How long the local route of a VIP no Service uses any more stays
    /// (connections draining through the forwarder keep working), e.g. 60s.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    local_route_linger: std::time::Duration,
    /// On SIGTERM, keep running this long before stopping: when the Pod's
    /// deletion was seen, the other nodes have taken the announcements and
    /// this one keeps forwarding while clients and routers move to them
    /// (counted from when the deletion was seen).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    handover_delay: std::time::Duration,
    /// Layer 2 heartbeat keys, one per line (the first signs, all verify):
    /// the `ferrolb-memberlist` Secret's `keys`, mounted here. Absent: heartbeats
    /// are not authenticated (a warning at start).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/ferrolb/memberlist/keys"
    )]
    member_keys_file: PathBuf,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    ferrolb_config::duration::parse_duration(s)
}

fn standalone(
    opts: ferrolb_speaker::standalone::Options,
    workers: Option<usize>,
) -> Result<ExitCode> {
    // One worker: a current-thread runtime skips the work-stealing machinery.
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(ferrolb_speaker::standalone::run(opts))?;
    Ok(ExitCode::SUCCESS)
}

fn status(address: std::net::SocketAddr) -> Result<ExitCode> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(3))
        .with_context(|| {
        format!("cannot reach the speaker's metrics at {address} (is it running? --address)")
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: ferrolb\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let metrics = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    out!("{}", ferrolb_speaker::status::render(metrics));
    Ok(ExitCode::SUCCESS)
}

async fn cluster_status(
    kubeconfig: Option<PathBuf>,
    namespace: &str,
    speaker_selector: &str,
    json: bool,
) -> Result<ExitCode> {
    let (rows, claims) = ferrolb_speaker::cluster_status::fetch(
        kubeconfig.as_deref(),
        namespace,
        speaker_selector,
        concat!("ferrolb-speaker/", env!("CARGO_PKG_VERSION")),
    )
    .await?;
    if json {
        out!(
            "{}",
            ferrolb_speaker::status::render_cluster_json(&rows, &claims)
        );
    } else {
        out!(
            "{}",
            ferrolb_speaker::status::render_cluster(&rows, &claims)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn prepare_backend(
    vips: &[std::net::IpAddr],
    interfaces: &[String],
    from: &[String],
    undo: bool,
) -> Result<ExitCode> {
    use ferrolb_speaker::dsr_backend;
    if undo {
        let (ifaces, vips) = dsr_backend::undo(vips, interfaces)?;
        outln!(
            "removed the DSR programs from {} interface(s){}{}",
            ifaces.len(),
            if ifaces.is_empty() { "" } else { ": " },
            ifaces.join(", ")
        );
        outln!("removed {} local route(s) of VIPs", vips.len());
        return Ok(ExitCode::SUCCESS);
    }
    let p = dsr_backend::prepare(vips, interfaces, from)?;
    let ifaces: Vec<String> = p
        .interfaces
        .iter()
        .map(|(n, m)| format!("{n} (mtu {m})"))
        .collect();
    outln!("prepared for direct server return on {}", ifaces.join(", "));
    for v in &p.vips {
        outln!(
            "  {}: local on lo, unwrapped from the load balancers, SYN-ACK MSS at most {}",
            v.addr,
            v.mss
        );
    }
    if from.is_empty() {
        outln!("  tunnelled packets accepted from any address (restrict with --from)");
    } else {
        outln!("  tunnelled packets accepted only from {}", from.join(", "));
    }
    outln!("  UDP servers must bind the VIP itself (or answer with IP_PKTINFO) so replies leave from it");
    Ok(ExitCode::SUCCESS)
}

fn cleanup_node(keep_arp_sysctls: bool, wait: bool, pins: &std::path::Path) -> Result<ExitCode> {
    let removed = ferrolb_speaker::host::remove_all_local_routes()?;
    outln!("removed {} local route(s) of ferrolb's VIPs", removed.len());
    let links = ferrolb_speaker::l2::vmac::remove_all()
        .context("cannot list or remove the virtual MAC links")?;
    outln!("removed {} virtual MAC link(s)", links.len());
    if let Some(dir) = ferrolb_speaker::forwarder::kernel::pin_dir_under(pins) {
        let gone = ferrolb_sys::bpf::remove_pins(&dir);
        outln!(
            "detached the kernel data path a speaker left from {} interface(s)",
            gone.len()
        );
    }
    if !keep_arp_sysctls {
        ferrolb_speaker::host::reset_arp()?;
        outln!("net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0 (the kernel's defaults)");
    }
    if wait {
        outln!("done; waiting for SIGTERM");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                term.recv().await;
                Ok::<(), std::io::Error>(())
            })?;
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &std::path::Path) -> Result<ExitCode> {
    let config = match Config::load_file_or_configmap(path) {
        Ok(c) => c,
        Err(e @ ferrolb_config::LoadError::Invalid { .. }) => {
            eprint!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(why) = config.refusal() {
        eprintln!("{}: {why}", path.display());
        return Ok(ExitCode::from(1));
    }
    let plan = match ferrolb_speaker::plan::plan(&config) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!(
                "{}: configuration is valid, but not every service gets an address:",
                path.display()
            );
            for e in errors {
                eprintln!("  {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    outln!("{}: valid", path.display());
    out!("{}", config.summary());
    if !config.services.is_empty() {
        out!("{}", plan.describe());
    }
    out!("{}", kernel_report(&config, &plan));
    Ok(ExitCode::SUCCESS)
}

/// Which ports ask for the kernel data path and whether this host can
/// load it (tried: loaded and freed again, attached nowhere), so the
/// operator learns before starting which mode each port will get here.
fn kernel_report(config: &Config, plan: &ferrolb_speaker::plan::Plan) -> String {
    use ferrolb_config::ForwardMode;
    use std::fmt::Write;
    let mut kernel = Vec::new();
    for p in &plan.services {
        for port in &p.service.ports {
            let mode = port.effective_mode(config.forwarder.mode);
            if mode.is_kernel() {
                kernel.push(format!(
                    "{} {}/{}{}",
                    p.service.name,
                    port.port,
                    port.protocol,
                    if mode == ForwardMode::KernelDsr {
                        " (DSR: its backends need `ferrolb-speaker prepare-backend`)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    let mut out = String::new();
    let default = config.forwarder.mode;
    if kernel.is_empty() {
        if default.is_kernel() {
            let _ = writeln!(out, "forwarder mode: {default} (no port here uses it)");
        }
        return out;
    }
    let _ = writeln!(
        out,
        "forwarder mode: {default}; in kernel mode: {}",
        kernel.join(", ")
    );
    match ferrolb_sys::bpf::Datapath::load() {
        Ok(_) => {
            let _ = writeln!(
                out,
                "  kernel data path: loads on this host; those ports are forwarded by it (Maglev on the client address), clients on this host by the user-space listener"
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "  kernel data path: cannot load here ({e}); as this user, those ports would run in user space"
            );
        }
    }
    out
}

/// Raises the soft open-files limit to the hard one: every forwarded TCP
/// connection holds two descriptors, and the usual soft default (1,024)
/// would refuse connections long before `maxConnections`.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "open files limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    raise_open_files_limit();
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Standalone {
            config,
            node,
            metrics_address,
            reload_poll,
            worker_threads,
            local_route_linger,
            access,
            pins,
        } => access
            .access()
            .map_err(anyhow::Error::from)
            .and_then(|metrics_access| {
                pins.apply();
                standalone(
                    ferrolb_speaker::standalone::Options {
                        config,
                        node,
                        metrics_address,
                        metrics_access,
                        poll: reload_poll,
                        route_linger: local_route_linger,
                    },
                    worker_threads,
                )
            }),
        Command::Status {
            api: true,
            kubeconfig,
            namespace,
            speaker_selector,
            output,
            ..
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| {
                rt.block_on(cluster_status(
                    kubeconfig,
                    &namespace,
                    &speaker_selector,
                    output == "json",
                ))
            }),
        Command::Status { address, .. } => status(address),
        Command::PrepareNode => ferrolb_speaker::host::prepare_arp(&[])
            .map(|()| {
                outln!("net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
        Command::CleanupNode {
            keep_arp_sysctls,
            wait,
            datapath_pin_dir,
        } => cleanup_node(keep_arp_sysctls, wait, &datapath_pin_dir),
        Command::PrepareBackend {
            vips,
            interfaces,
            from,
            undo,
        } => prepare_backend(&vips, &interfaces, &from, undo),
        Command::Kubernetes(a) => {
            a.pins.apply();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")
                .and_then(|rt| Ok((rt, a.access.access()?)))
                .and_then(|(rt, metrics_access)| {
                    rt.block_on(ferrolb_speaker::kubernetes::run(
                        ferrolb_speaker::kubernetes::Options {
                            node: a.node,
                            config: a.cluster.config_source(),
                            metallb: (a.cluster.config_source == ferrolb_kube::SourceKind::Metallb)
                                .then(|| a.cluster.metallb_namespace.clone()),
                            kubeconfig: a.cluster.kubeconfig,
                            namespace: a.cluster.namespace,
                            speaker_selector: a.speaker_selector,
                            member_port: a.member_port,
                            route_linger: a.local_route_linger,
                            handover_delay: a.handover_delay,
                            member_keys_file: Some(a.member_keys_file),
                            filter: ferrolb_speaker::kubernetes::model::Filter {
                                class: a.load_balancer_class,
                                ignore_classless: a.ignore_classless,
                                ignore_exclude_label: a.ignore_exclude_lb,
                            },
                            metrics_address: a.metrics_address,
                            metrics_access,
                            recompute: if a.full_recompute {
                                ferrolb_speaker::kubernetes::index::Recompute::Full
                            } else {
                                ferrolb_speaker::kubernetes::index::Recompute::Incremental
                            },
                        },
                    ))
                    .map(|()| ExitCode::SUCCESS)
                })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
