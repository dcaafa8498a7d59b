//! TLS on the proxy listener (`--tls-cert`, `--tls-key`), for deployments where callers are not
//! on loopback, with the certificate reloaded when its files change.
//!
//! One rustls `ServerConfig` (ALPN `h2`, `http/1.1`) lives for the whole process; its
//! certificate comes from a [`CertStore`], a `ResolvesServerCert` backed by an `ArcSwap`. A
//! reload swaps the certified key, so handshakes after it use the new certificate and
//! connections already open keep theirs.
//!
//! Reload rule (the same shape as the configuration files): the parent directories of both files
//! are watched with `notify` (a directory, not the file, because Kubernetes replaces a `..data`
//! symlink rather than writing the file); after an event, changes settle for
//! [`SETTLE`], then both files are re-read. As a safety net for file systems without change
//! events, they are also re-read every [`RECHECK`]. A pair that does not parse, or whose key does
//! not match the certificate (say the certificate was written but the key not yet), is refused
//! with a warning (once per content) and the previous certificate stays in use. Unchanged contents
//! are ignored.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

/// How long file events settle before the files are re-read.
pub const SETTLE: Duration = Duration::from_millis(200);
/// How often the files are re-read even without a file event.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The listener's current certificate and key, and where they come from.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 over both files as last read (whether loaded or refused), so that unchanged
    /// files are neither reloaded nor refused twice.
    seen: Mutex<[u8; 32]>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the listener's certificate and key were not loaded. Messages name the files, never
/// their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: not a PEM certificate chain: {detail}")]
    NotAChain { file: String, detail: String },
    #[error("{file}: no certificate found")]
    NoCertificate { file: String },
    #[error("{file}: no private key found")]
    NoKey { file: String },
    #[error("{file}: not a PEM private key")]
    NotAKey { file: String },
    #[error("{cert} and {key} do not form a usable pair: {source}")]
    NotAPair {
        cert: String,
        key: String,
        source: rustls::Error,
    },
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// Parses a PEM certificate chain and private key into a certified key whose key matches.
/// Errors name the file, never its contents.
pub fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotAChain {
            file: cert_name.to_string(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            file: cert_name.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        let file = key_name.to_string();
        match e {
            pem::Error::NoItemsFound => TlsError::NoKey { file },
            _ => TlsError::NotAKey { file },
        }
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::NotAPair {
        cert: cert_name.to_string(),
        key: key_name.to_string(),
        source,
    })
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// A short SHA-256 fingerprint of the leaf certificate, for logs (public information).
pub fn fingerprint(ck: &CertifiedKey) -> String {
    ck.cert
        .first()
        .map(|c| hex::encode(&Sha256::digest(c.as_ref())[..8]))
        .unwrap_or_default()
}

impl CertStore {
    /// Loads the certificate and key; an error stops startup.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        let ck = parse(
            &cert,
            &key,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            seen: Mutex::new(digest(&cert, &key)),
        }))
    }

    /// The certificate now served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-reads both files; swaps in the new pair if it changed and is valid. `Ok(true)` when
    /// a new certificate is now served, `Ok(false)` when the files are as last read.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = read_pair(&self.cert_path, &self.key_path)?;
        let d = digest(&cert, &key);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == d {
            return Ok(false);
        }
        *seen = d;
        let ck = parse(
            &cert,
            &key,
            &self.cert_path.display().to_string(),
            &self.key_path.display().to_string(),
        )?;
        self.current.store(Arc::new(ck));
        Ok(true)
    }

    fn reload_and_log(&self) {
        match self.reload() {
            Ok(true) => tracing::info!(
                cert = %self.cert_path.display(),
                fingerprint = %fingerprint(&self.current()),
                "TLS certificate reloaded"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "TLS certificate not reloaded; the previous one stays in use"
            ),
        }
    }

    /// Watches the files' directories and reloads on change, on the current tokio runtime,
    /// for as long as the process runs.
    pub fn watch(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = match self.start_watcher(tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, interval = ?RECHECK, "cannot watch the TLS files; re-reading them periodically instead");
                None
            }
        };
        let store = self.clone();
        tokio::spawn(async move {
            // Owned by the task so that watching lasts as long as it does.
            let mut watching = watcher.is_some();
            let _watcher = watcher;
            let mut tick = tokio::time::interval(RECHECK);
            tick.tick().await;
            loop {
                tokio::select! {
                    got = rx.recv(), if watching => {
                        if got.is_none() {
                            // No more events will come; the periodic re-check goes on.
                            watching = false;
                            continue;
                        }
                        tokio::time::sleep(SETTLE).await;
                        while rx.try_recv().is_ok() {}
                    }
                    _ = tick.tick() => {}
                }
                store.reload_and_log();
            }
        });
    }

    fn start_watcher(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> notify::Result<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })?;
        let mut dirs: Vec<PathBuf> = [&self.cert_path, &self.key_path]
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.dedup();
        for d in &dirs {
            watcher.watch(d, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(watcher)
    }
}

/// The proxy listener's rustls config: certificates from `store`, ALPN `h2` then `http/1.1`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_without_echoing_it() {
        let err = parse(b"not pem", b"hunter2-private", "c.pem", "k.pem").expect_err("refused");
        let err = err.to_string();
        assert!(err.contains("c.pem"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse(b"", b"", "c.pem", "k.pem").expect_err("refused");
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    fn pair(name: &str) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    #[test]
    fn reload_swaps_valid_pairs_only_and_ignores_unchanged_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, key_a, der_a) = pair("a.test");
        let (cert_b, key_b, der_b) = pair("b.test");
        std::fs::write(&c, &cert_a).expect("write");
        std::fs::write(&k, &key_a).expect("write");
        let store = CertStore::open(&c, &k).expect("open");
        assert_eq!(store.reload().ok(), Some(false));
        // Certificate B with key A: refused once, A still served.
        std::fs::write(&c, &cert_b).expect("write");
        let err = store.reload().expect_err("mismatch refused");
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
        assert_eq!(
            store.reload().ok(),
            Some(false),
            "the same refused pair is not retried"
        );
        assert_eq!(store.current().cert[0].as_ref(), der_a.as_slice());
        std::fs::write(&k, &key_b).expect("write");
        assert_eq!(store.reload().ok(), Some(true));
        assert_eq!(store.current().cert[0].as_ref(), der_b.as_slice());
        std::fs::remove_file(&k).expect("rm");
        assert!(store.reload().is_err(), "a missing key is an error");
        assert_eq!(store.current().cert[0].as_ref(), der_b.as_slice());
    }
}
