//! Who may read `/metrics`: TLS (optionally requiring a client certificate
//! signed by a given CA) and bearer tokens read from a file. `/healthz` and
//! `/readyz` stay open: they say nothing but "up" and "ready", and kubelet
//! probes carry no credentials. Metrics name Services, backends and peers,
//! so an endpoint on a node address that anyone on the segment can reach
//! should be protected by one of these.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the endpoint's protection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the combination.
    #[error("TLS setup for the metrics endpoint: {0}")]
    Tls(String),
    /// Flags that do not go together.
    #[error("{0}")]
    Flags(&'static str),
}

/// The flags of the metrics endpoint's protection (both binaries' speaker modes).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessArgs {
    /// Serve /metrics, /healthz and /readyz over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "metrics_tls_key")]
    pub metrics_tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM) for --metrics-tls-cert.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    pub metrics_tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM) for every request.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    pub metrics_client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on /metrics, TOKEN one of the
    /// lines of this file (re-read on every request, so a mounted Secret
    /// rotates without a restart).
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

/// What the endpoint enforces.
#[derive(Clone, Default)]
pub struct Access {
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The bearer tokens file, when configured.
    pub tokens: Option<PathBuf>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls.is_some())
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl AccessArgs {
    /// Reads the files and builds what the endpoint enforces.
    pub fn access(&self) -> Result<Access, AccessError> {
        let tls = match (&self.metrics_tls_cert, &self.metrics_tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(tls_config(
                cert,
                key,
                self.metrics_client_ca.as_deref(),
            )?)),
            (None, None) if self.metrics_client_ca.is_some() => {
                return Err(AccessError::Flags(
                    "--metrics-client-ca needs --metrics-tls-cert and --metrics-tls-key",
                ))
            }
            (None, None) => None,
            _ => {
                return Err(AccessError::Flags(
                    "--metrics-tls-cert and --metrics-tls-key go together",
                ))
            }
        };
        if let Some(path) = &self.metrics_token_file {
            // Checked now, so a wrong path fails at start rather than on the first scrape.
            let tokens = read_tokens(path)?;
            if tokens.is_empty() {
                return Err(AccessError::Pem {
                    path: path.clone(),
                    why: "no token in the file (one per line)".into(),
                });
            }
        }
        Ok(Access {
            tls,
            tokens: self.metrics_token_file.clone(),
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, AccessError> {
    std::fs::read(path).map_err(|source| AccessError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The tokens in `path`, one per line, blank lines ignored.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, AccessError> {
    let text = read("the metrics token file", path)?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// A TLS server configuration from PEM files, requiring client
/// certificates signed by `client_ca` when given.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, AccessError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |path: &Path, why: String| AccessError::Pem {
        path: path.to_path_buf(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("the metrics certificate", cert)?)
            .collect::<Result<_, _>>()
            .map_err(|e| pem(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read("the metrics key", key)?)
        .map_err(|e| pem(key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| AccessError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read("the metrics client CA", ca)?) {
                let c = c.map_err(|e| pem(ca, format!("not a PEM certificate: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| pem(ca, format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(pem(ca, "no CA certificate in the file".into()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| AccessError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key_der)
        .map_err(|e| AccessError::Tls(e.to_string()))
}

/// Whether `header` (the request's `Authorization` value) carries one of
/// `tokens`, compared in constant time.
pub fn bearer_allowed(header: Option<&str>, tokens: &[String]) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let given = given.trim().as_bytes();
    tokens.iter().fold(false, |ok, t| {
        let t = t.as_bytes();
        let same =
            t.len() == given.len() && t.iter().zip(given).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
        ok | same
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let tokens = vec!["alpha".to_string(), "beta-2".to_string()];
        assert!(bearer_allowed(Some("Bearer alpha"), &tokens));
        assert!(bearer_allowed(Some("Bearer beta-2"), &tokens));
        for bad in [
            None,
            Some(""),
            Some("alpha"),
            Some("Basic alpha"),
            Some("Bearer alph"),
            Some("Bearer alphaa"),
            Some("Bearer "),
            Some("bearer alpha"),
        ] {
            assert!(!bearer_allowed(bad, &tokens), "{bad:?}");
        }
        assert!(!bearer_allowed(Some("Bearer alpha"), &[]));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("ferrolb-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let e = tls_config(&junk, &junk, None).unwrap_err().to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = tls_config(&dir.join("absent.pem"), &junk, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the metrics certificate"), "{e}");
        let empty = dir.join("tokens");
        std::fs::write(&empty, "\n\n").unwrap();
        let args = AccessArgs {
            metrics_token_file: Some(empty),
            ..AccessArgs::default()
        };
        assert!(args.access().unwrap_err().to_string().contains("no token"));
        let args = AccessArgs {
            metrics_client_ca: Some(junk),
            ..AccessArgs::default()
        };
        assert!(args
            .access()
            .unwrap_err()
            .to_string()
            .contains("needs --metrics-tls-cert"));
    }
}
