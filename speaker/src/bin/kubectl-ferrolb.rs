//! `kubectl-ferrolb`: the kubectl plugin (`kubectl ferrolb status`): every
//! LoadBalancer Service's addresses and the nodes announcing them, from the
//! API, as `ferrolb-speaker status --api` prints it; `-o json` for scripts.
//! Install: put this binary on the PATH (docs/monitoring.md).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// ferrolb for kubectl: who announces which LoadBalancer address.
#[derive(Parser)]
#[command(name = "kubectl-ferrolb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every Service with an address and the nodes announcing it now
    /// (layer 2 owner, BGP speakers), with stale claims of dead nodes.
    Status {
        /// Output format: `text` (a table) or `json`.
        #[arg(long, short = 'o', value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// A kubeconfig; default: $KUBECONFIG, ~/.kube/config, in-cluster.
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Namespace of the speakers and their NodeAnnouncements.
        #[arg(
            long,
            short = 'n',
            env = "FERROLB_NAMESPACE",
            default_value = "ferrolb-system"
        )]
        namespace: String,
        /// Label selector of the speaker Pods.
        #[arg(
            long,
            default_value = "app.kubernetes.io/name=ferrolb,app.kubernetes.io/component=speaker"
        )]
        speaker_selector: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Status {
        output,
        kubeconfig,
        namespace,
        speaker_selector,
    } = cli.command;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let fetched = rt.block_on(ferrolb_speaker::cluster_status::fetch(
        kubeconfig.as_deref(),
        &namespace,
        &speaker_selector,
        concat!("kubectl-ferrolb/", env!("CARGO_PKG_VERSION")),
    ));
    match fetched {
        Ok((rows, claims)) => {
            let text = if output == "json" {
                ferrolb_speaker::status::render_cluster_json(&rows, &claims)
            } else {
                ferrolb_speaker::status::render_cluster(&rows, &claims)
            };
            ferrolb_ops::out!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
