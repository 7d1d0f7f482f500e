//! `ferrolb-speaker`: the per-node agent. Subcommands: `validate` today;
//! `standalone` and `kubernetes` arrive with their issues.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ferrolb_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// ferrolb speaker: announces load-balancer VIPs and forwards their traffic.
#[derive(Parser)]
#[command(name = "ferrolb-speaker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

fn validate(path: &PathBuf) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = match Config::from_yaml(&text) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{}: {errors}", path.display());
            return Ok(ExitCode::from(1));
        }
    };
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
    println!("{}: valid", path.display());
    print!("{}", config.summary());
    if !config.services.is_empty() {
        print!("{}", plan.describe());
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
