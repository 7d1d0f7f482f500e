//! The speaker's metrics endpoint behind a bearer token and behind TLS with
//! client certificates, run as users run it (flags of `ferrolb-speaker
//! standalone`), checked by a real TLS client. No root needed.

use ferrolb_tests::speaker::{unique_dir, Speaker};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const CONFIG: &str = "pools: [{name: p, addresses: [127.0.50.0/28]}]\n";

/// One GET over any stream: (status code, whole response).
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

#[tokio::test]
async fn a_bearer_token_guards_metrics_and_leaves_probes_open() {
    let dir = unique_dir();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "first-token\nsecond-token\n").unwrap();
    let s = Speaker::start_with(CONFIG, &["--metrics-token-file", tokens.to_str().unwrap()]).await;
    let addr = s.metrics_address();
    let plain = || async { TcpStream::connect(addr).await.unwrap() };
    for (token, want) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("first-token"), 200),
        (Some("second-token"), 200),
    ] {
        let (code, body) = get(plain().await, "/metrics", token).await.unwrap();
        assert_eq!(code, want, "{token:?}: {body}");
        assert_eq!(body.contains("ferrolb_"), want == 200, "{body}");
    }
    // Probes need no token.
    assert_eq!(get(plain().await, "/healthz", None).await.unwrap().0, 200);
    assert_eq!(get(plain().await, "/readyz", None).await.unwrap().0, 200);
    // The file is re-read: a rotated token works at once, the old one no more.
    std::fs::write(&tokens, "third-token\n").unwrap();
    assert_eq!(
        get(plain().await, "/metrics", Some("third-token"))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        get(plain().await, "/metrics", Some("first-token"))
            .await
            .unwrap()
            .0,
        401
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    ca: rustls::pki_types::CertificateDer<'static>,
    client: (String, String),
    other_client: (String, String),
}

fn pki(dir: &std::path::Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], &issuer);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.join("server.key"), server_key).unwrap();
    let client = leaf(vec!["prometheus".into()], &issuer);
    // A client certificate from a CA the speaker does not trust.
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_issuer = Issuer::new(other_params, other_key);
    let other_client = leaf(vec!["intruder".into()], &other_issuer);
    Pki {
        ca: ca.der().clone(),
        client,
        other_client,
    }
}

fn client_config(
    ca: &rustls::pki_types::CertificateDer<'static>,
    cert: Option<&(String, String)>,
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                vec![rustls::pki_types::CertificateDer::from_pem_slice(c.as_bytes()).unwrap()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

#[tokio::test]
async fn tls_with_client_certificates_admits_only_the_trusted_client() {
    let dir = unique_dir();
    let p = pki(&dir);
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let s = Speaker::start_with(
        CONFIG,
        &[
            "--metrics-tls-cert",
            &path("server.pem"),
            "--metrics-tls-key",
            &path("server.key"),
            "--metrics-client-ca",
            &path("ca.pem"),
        ],
    )
    .await;
    let addr = s.metrics_address();
    let tls = |cert: Option<&(String, String)>| {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&p.ca, cert)));
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            match connector.connect(name, tcp).await {
                Ok(stream) => get(stream, "/metrics", None).await,
                Err(_) => None,
            }
        }
    };
    let (code, body) = tls(Some(&p.client))
        .await
        .expect("the trusted client is served");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ferrolb_"), "{body}");
    // TLS 1.3 reports a refused client certificate after the handshake: no answer either way.
    assert_eq!(tls(None).await, None, "no client certificate");
    assert_eq!(
        tls(Some(&p.other_client)).await,
        None,
        "an untrusted client certificate"
    );
    // Plain HTTP gets nothing.
    let plain = get(TcpStream::connect(addr).await.unwrap(), "/metrics", None).await;
    assert!(plain.as_ref().is_none_or(|(c, _)| *c != 200), "{plain:?}");
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[tokio::test]
async fn bad_access_flags_fail_at_start_with_the_file_named() {
    let dir = unique_dir();
    let missing = dir.join("absent.pem");
    let out = std::process::Command::new(ferrolb_tests::binary("ferrolb-speaker"))
        .args(["standalone", "--config"])
        .arg(dir.join("unused.yaml"))
        .arg("--metrics-tls-cert")
        .arg(&missing)
        .arg("--metrics-tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("absent.pem") && err.contains("certificate"),
        "{err}"
    );
}
