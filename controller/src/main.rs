//! `ferrolb-controller`: assigns external IPs to LoadBalancer Services.
//!
//! The Kubernetes reconcile loop arrives with its own issue; today the
//! binary checks a ConfigMap's `config.yaml` the way the controller will
//! read it.

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferrolb_alloc::Allocator;
use ferrolb_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// ferrolb controller: gives LoadBalancer Services an external IP from configured pools.
#[derive(Parser)]
#[command(name = "ferrolb-controller", version, about, long_about = None)]
struct Cli {
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
}

fn validate(path: &std::path::Path) -> Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e @ ferrolb_config::LoadError::Invalid { .. }) => {
            eprint!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}: valid", path.display());
    print!("{}", config.summary());
    for s in Allocator::new(&config.pools).stats() {
        println!(
            "  {}: {} IPv4 and {} IPv6 addresses free",
            s.name, s.v4.free, s.v6.free
        );
    }
    if !config.services.is_empty() || !config.members.is_empty() {
        println!("note: `services` and `members` are standalone-mode sections; the controller ignores them");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Validate { config } => validate(config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
