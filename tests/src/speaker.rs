//! Runs the real `ferrolb-speaker standalone` binary on a config written to
//! a temporary directory, and talks to it like an operator would: signals,
//! the config file, `/metrics` and `/readyz`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running standalone speaker.
pub struct Speaker {
    child: Child,
    /// Its temporary directory (config and log).
    pub dir: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// Where `/metrics` is served.
    pub metrics: SocketAddr,
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary directory for one test process.
pub fn unique_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferrolb-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// GET `path` on `addr` with a plain HTTP/1.1 request: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The sum of every sample of metric `name` in a Prometheus text body whose
/// labels contain all of `labels` (`key="value"`).
pub fn metric_sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    metric_samples(body, name, labels).iter().sum()
}

/// Every sample of metric `name` whose labels contain all of `labels`.
pub fn metric_samples(body: &str, name: &str, labels: &[&str]) -> Vec<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

impl Speaker {
    /// Starts the speaker on `yaml` and waits until `/readyz` answers 200.
    pub async fn start(yaml: &str) -> Speaker {
        Speaker::start_with(yaml, &[]).await
    }

    /// As [`Speaker::start`], with `extra` command-line arguments. With any,
    /// readiness is the log's "ready" line (the endpoint may want TLS or a token).
    pub async fn start_with(yaml: &str, extra: &[&str]) -> Speaker {
        let dir = unique_dir();
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("speaker.log")).unwrap();
        let child = Command::new(crate::binary("ferrolb-speaker"))
            .args(["standalone", "--config"])
            .arg(&config)
            .args([
                "--metrics-address",
                &metrics.to_string(),
                "--reload-poll",
                "100ms",
                "--log-level",
                "debug",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferrolb-speaker");
        let mut s = Speaker {
            child,
            dir,
            config,
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if extra.is_empty() && s.http("/readyz").await.is_some_and(|(code, _)| code == 200) {
                return s;
            }
            if !extra.is_empty() && s.log().contains("standalone speaker ready") {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("speaker exited with {status} before ready:\n{}", s.log());
            }
            if Instant::now() > deadline {
                panic!("speaker not ready after 15 s:\n{}", s.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its metrics address.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("speaker.log")).unwrap_or_default()
    }

    /// GET on the metrics address: status and body.
    pub async fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics, path).await
    }

    /// The sum of every sample of metric `name` whose labels contain all of `labels` (`key="value"`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, body) = self
            .http("/metrics")
            .await
            .expect("metrics endpoint answers");
        metric_sum(&body, name, labels)
    }

    /// Waits until `cond` holds on the metric (or panics after `timeout`).
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[&str],
        timeout: Duration,
        cond: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels).await;
            if cond(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "metric {name}{labels:?} = {v} never met the condition; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Replaces the config file (the speaker notices within its poll interval).
    pub fn write_config(&self, yaml: &str) {
        // Write then rename so the speaker never reads half a file.
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
