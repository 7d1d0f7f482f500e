//! The small HTTP endpoint of both binaries: `/metrics`, `/healthz`, `/readyz`.
//! Requests are read with a size and time limit and answered with
//! `Connection: close`, which is all Prometheus and kubelet probes need.

pub mod access;

pub use access::{Access, AccessArgs, AccessError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Writes to stdout, ignoring a closed pipe (`| head`): a CLI must not panic
/// because its reader went away.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// [`out!`] with a newline.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The logging flags both binaries take (`--log-format`, `--log-level`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogArgs {
    /// Installs the global subscriber, writing to stderr.
    pub fn init(&self) {
        use tracing_subscriber::EnvFilter;
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&self.log_level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// Renders the Prometheus text exposition.
pub type Render = Box<dyn Fn() -> String + Send + Sync>;

/// What the endpoint serves.
pub struct Endpoint {
    /// Renders `/metrics`.
    pub metrics: Render,
    /// `/readyz` answers 200 while this is set.
    pub ready: Arc<AtomicBool>,
    /// TLS and bearer tokens, when configured.
    pub access: Access,
}

/// Binds `address` and serves `render` (for `/metrics`) and `ready` (for
/// `/readyz`) from a spawned task; the error names the address.
pub async fn start(
    address: std::net::SocketAddr,
    render: Render,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    start_with(address, render, ready, Access::default()).await
}

/// As [`start`], enforcing `access` (TLS, bearer tokens).
pub async fn start_with(
    address: std::net::SocketAddr,
    render: Render,
    ready: Arc<AtomicBool>,
    access: Access,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve metrics on {address}: {e}"))
    })?;
    tokio::spawn(serve(
        listener,
        Arc::new(Endpoint {
            metrics: render,
            ready,
            access,
        }),
    ));
    Ok(())
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                match &endpoint.access.tls {
                    // A failed handshake (no or a wrong client certificate) ends here.
                    Some(tls) => match tokio_rustls::TlsAcceptor::from(Arc::clone(tls))
                        .accept(stream)
                        .await
                    {
                        Ok(s) => answer(s, &endpoint).await,
                        Err(_) => Ok(()),
                    },
                    None => answer(stream, &endpoint).await,
                }
            })
            .await;
        });
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    endpoint: &Endpoint,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let head_text = String::from_utf8_lossy(&head);
    let authorization = head_text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_string())
    });
    let denied = match (&endpoint.access.tokens, path) {
        (Some(file), "/metrics") => match access::read_tokens(file) {
            Ok(tokens) => !access::bearer_allowed(authorization.as_deref(), &tokens),
            // An unreadable token file denies everyone rather than nobody.
            Err(_) => true,
        },
        _ => false,
    };
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") if denied => (
            "401 Unauthorized\r\nWWW-Authenticate: Bearer",
            "text/plain",
            "a bearer token is needed for /metrics\n".to_string(),
        ),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            (endpoint.metrics)(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if endpoint.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready\n".to_string())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Lets a repeated warning through at most once per period, counting what
/// it held back, so a peer that refuses every connection is visible at the
/// default log level without a line per retry.
#[derive(Debug, Clone)]
pub struct RateLimit {
    period: std::time::Duration,
    last: Option<std::time::Instant>,
    held: u64,
}

impl RateLimit {
    /// At most one event per `period`.
    pub fn new(period: std::time::Duration) -> RateLimit {
        RateLimit {
            period,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` when this event may be logged (`n` were held back since the
    /// last one), `None` when it must be dropped.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.period => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::RateLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn one_event_per_period_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(60));
        assert_eq!(r.allow(t0), Some(0));
        for s in 1..10 {
            assert_eq!(r.allow(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(r.allow(t0 + Duration::from_secs(60)), Some(9));
        assert_eq!(r.allow(t0 + Duration::from_secs(61)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(200)), Some(1));
    }
}
