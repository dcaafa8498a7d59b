//! The rustls client configuration every upstream connection uses (proxied requests, token
//! endpoints, the OTLP exporter): the web PKI roots plus `--extra-ca`, ALPN h2 and http/1.1.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

/// Why the upstream TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("--extra-ca: {0}")]
    ExtraCa(rustls::Error),
    #[error("{0}")]
    Setup(rustls::Error),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    NotPem { path: String, detail: String },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
}

/// The rustls client configuration: web PKI roots plus `extra_ca`, ALPN h2 and http/1.1.
pub fn tls_config(
    extra_ca: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for ca in extra_ca {
        roots.add(ca.clone()).map_err(ClientTlsError::ExtraCa)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientTlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

/// Reads PEM certificates (for `--extra-ca`); anything between them that is not a certificate
/// (a key, comments) is skipped.
pub fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let name = || path.display().to_string();
    let data = std::fs::read(path).map_err(|source| ClientTlsError::Read {
        path: name(),
        source,
    })?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&data).collect();
    let certs = certs.map_err(|e| ClientTlsError::NotPem {
        path: name(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(ClientTlsError::NoCertificate { path: name() });
    }
    Ok(certs)
}
