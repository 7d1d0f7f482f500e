//! `ferrolb-echo`: the example backends of the README's demo. Starts HTTP
//! backends (`--http NAME@ADDR`) that answer every request with their name,
//! and UDP echo backends (`--udp NAME@ADDR`), until interrupted.

use ferrolb_tests::backend::{self, Proxy};
use std::net::SocketAddr;

fn parse(spec: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = spec
        .split_once('@')
        .ok_or_else(|| format!("{spec:?}: write NAME@IP:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{spec:?}: {addr:?} is not IP:PORT"))?;
    Ok((name.to_string(), addr))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: ferrolb-echo [--http NAME@IP:PORT]... [--udp NAME@IP:PORT]...");
        println!("HTTP backends answer every request with 200 and their name; UDP backends echo with their name.");
        return std::process::ExitCode::SUCCESS;
    }
    let mut running = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(spec) = it.next() else {
            eprintln!("{flag} needs NAME@IP:PORT");
            return std::process::ExitCode::from(2);
        };
        let (name, addr) = match parse(spec) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        };
        let started = match flag.as_str() {
            "--http" => backend::http(&name, addr, Proxy::None).await,
            "--udp" => backend::udp_echo(&name, addr).await,
            other => {
                eprintln!("unknown flag {other}; use --http or --udp");
                return std::process::ExitCode::from(2);
            }
        };
        let b = match started {
            Ok(b) => b,
            Err(e) => {
                eprintln!("ferrolb-echo: cannot listen on {addr} for {name}: {e}");
                return std::process::ExitCode::from(1);
            }
        };
        eprintln!("ferrolb-echo: {flag} backend {name} on {}", b.addr);
        running.push(b);
    }
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
