//! `ferrolb-controller`: assigns external IPs to LoadBalancer Services.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrolb_alloc::Allocator;
use ferrolb_config::Config;
use ferrolb_controller::metrics::Metrics;
use ferrolb_controller::run::{self, Settings, Shared};
use ferrolb_controller::service::{ClassFilter, DEFAULT_CLASS};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ferrolb_ops::{out, outln};

/// ferrolb controller: gives LoadBalancer Services an external IP from configured pools.
#[derive(Parser)]
#[command(name = "ferrolb-controller", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: ferrolb_ops::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the `config.yaml` of the ferrolb ConfigMap; print every error,
    /// or the pools with their exact capacity. Exits 1 on errors.
    Validate {
        /// The YAML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Convert MetalLB's configuration (`kubectl get ipaddresspools,
    /// l2advertisements,bgpadvertisements,bgppeers,communities,bfdprofiles -A
    /// -o yaml`, or its legacy ConfigMap) to ferrolb's: the configuration on
    /// standard output, the report of every field's fate on standard error.
    /// Exits 1 if the input cannot be read or the result does not validate;
    /// with --strict, 3 if a field was dropped or unknown.
    ImportMetallb {
        /// The MetalLB objects (`-`: standard input).
        #[arg(value_name = "FILE", required_unless_present = "fields")]
        file: Option<PathBuf>,
        /// Exit 3 when any field did not carry over.
        #[arg(long)]
        strict: bool,
        /// Print the converter's field table (Markdown) instead.
        #[arg(long)]
        fields: bool,
    },
    /// Run the controller against the cluster (in-cluster credentials, or
    /// KUBECONFIG / --kubeconfig).
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    cluster: ferrolb_kube::ClusterArgs,
    /// The spec.loadBalancerClass handled (besides Services without a class).
    #[arg(long, default_value = DEFAULT_CLASS)]
    load_balancer_class: String,
    /// Leave Services without a loadBalancerClass to another controller.
    #[arg(long)]
    ignore_classless: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "ferrolb-controller")]
    lease_name: String,
    /// This replica's identity in the Lease; default: $POD_NAME, else hostname-pid.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration in seconds: how long a dead leader goes unreplaced at most.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_seconds: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:7472")]
    metrics_address: SocketAddr,
    /// Status writes in flight at once.
    #[arg(long, default_value_t = 16)]
    write_concurrency: usize,
}

fn import_metallb(file: Option<&std::path::Path>, strict: bool, fields: bool) -> Result<ExitCode> {
    use std::io::Read;
    if fields {
        print!("{}", ferrolb_metallb::fields::markdown());
        return Ok(ExitCode::SUCCESS);
    }
    let file = file.expect("clap requires FILE without --fields");
    let mut text = String::new();
    let read = if file == std::path::Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| ())
            .context("reading standard input")
    } else {
        std::fs::read_to_string(file)
            .map(|t| text = t)
            .with_context(|| format!("reading {}", file.display()))
    };
    if let Err(e) = read {
        eprintln!("{e:#}");
        return Ok(ExitCode::from(1));
    }
    let import = match ferrolb_metallb::import(&text) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    print!("{}", import.config);
    eprintln!("{}", import.report);
    if !import.errors.is_empty() {
        eprintln!(
            "the converted configuration does not validate (fix the MetalLB input or the output):\n{}",
            import.errors.join("\n")
        );
        return Ok(ExitCode::from(1));
    }
    eprintln!("the converted configuration validates");
    if strict && import.report.lost().next().is_some() {
        return Ok(ExitCode::from(3));
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
    outln!("{}: valid", path.display());
    out!("{}", config.summary());
    for s in Allocator::new(&config.pools).stats() {
        outln!(
            "  {}: {} IPv4 and {} IPv6 addresses free",
            s.name,
            s.v4.free,
            s.v6.free
        );
    }
    if !config.services.is_empty() || !config.members.is_empty() {
        outln!("note: `services` and `members` are standalone-mode sections; the controller ignores them");
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

async fn run_controller(args: RunArgs) -> Result<ExitCode> {
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_else(|_| "ferrolb".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let settings = Settings {
        config: args.cluster.config_source(),
        metallb: (args.cluster.config_source == ferrolb_kube::SourceKind::Metallb)
            .then(|| args.cluster.metallb_namespace.clone()),
        classes: ClassFilter {
            class: args.load_balancer_class,
            ignore_classless: args.ignore_classless,
        },
        lease_name: args.lease_name,
        identity,
        lease_seconds: args.lease_seconds,
        write_concurrency: args.write_concurrency,
    };
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let render = Arc::clone(&metrics);
    ferrolb_ops::start(
        args.metrics_address,
        Box::new(move || render.encode()),
        Arc::clone(&ready),
    )
    .await?;
    // The identity in the User-Agent: an API server's audit log then says
    // which replica made each request.
    let client = ferrolb_kube::client(
        args.cluster.kubeconfig.as_deref(),
        &format!(
            "ferrolb-controller/{} ({})",
            env!("CARGO_PKG_VERSION"),
            ferrolb_kube::bounded(&settings.identity, 128)
        ),
    )
    .await?;
    tracing::info!(
        identity = %settings.identity,
        config = %settings.config.display(),
        class = %settings.classes.class,
        metrics = %args.metrics_address,
        "ferrolb-controller starting"
    );
    run::run(
        client,
        settings,
        Arc::new(Shared { metrics, ready }),
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::ImportMetallb {
            file,
            strict,
            fields,
        } => import_metallb(file.as_deref(), strict, fields),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run_controller(*args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
