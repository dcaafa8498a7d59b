//! The pooled upstream client: TCP with `--resolve` pins and the override policy, rustls with
//! the web PKI roots plus `--extra-ca`, HTTP/1.1 or HTTP/2 by ALPN.
//!
//! The pool is sidekey's own, on hyper's `client::conn` senders: a request takes the newest
//! idle connection for its scheme and authority or opens one; an HTTP/1.1 connection comes back
//! when its response body has been read to the end ([`UpstreamBody`]'s drop), HTTP/2 handles
//! are shared. This is hyper-util's legacy client without what the proxy does not need (a task
//! spawned per exchange to return the connection, per-request extras), and it was the largest
//! single cost on the request path before (BENCHMARKS.md).
//!
//! Two pools exist: one for URLs the operator configured (trusted) and one for caller
//! overrides (checked against [`crate::netpolicy`] on every resolved address before a packet
//! is sent). Keeping them apart means a connection opened for a trusted URL is never reused by
//! an override to the same host, and the reverse.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// One `--resolve HOST:PORT:ADDR` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvePin {
    pub host: String,
    pub port: u16,
    pub ip: IpAddr,
    /// A port to connect to instead of `port`.
    pub to_port: Option<u16>,
}

impl std::str::FromStr for ResolvePin {
    type Err = String;

    /// Parses `HOST:PORT:ADDR`, ADDR being `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not HOST:PORT:ADDR");
        let (host, rest) = s.split_once(':').ok_or_else(bad)?;
        let (port, addr) = rest.split_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let (ip, to_port) = if let Some(v6) = addr.strip_prefix('[') {
            let (ip, after) = v6.split_once(']').ok_or_else(bad)?;
            let to_port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().map_err(|_| bad())?),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (ip.parse().map_err(|_| bad())?, to_port)
        } else if let Some((ip, p)) = addr.split_once(':') {
            (
                ip.parse().map_err(|_| bad())?,
                Some(p.parse().map_err(|_| bad())?),
            )
        } else {
            (addr.parse().map_err(|_| bad())?, None)
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            ip,
            to_port,
        })
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Blocked(String),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot resolve `{0}`")]
    Resolve(String),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("invalid upstream URL")]
    InvalidUri,
}

/// Settings of the upstream client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub resolve: Vec<ResolvePin>,
    pub extra_ca: Vec<CertificateDer<'static>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: Duration::from_secs(90),
            resolve: Vec::new(),
            extra_ca: Vec::new(),
        }
    }
}

/// A TCP connector that honours `--resolve` pins and, when `public_only`, refuses any
/// address that [`crate::netpolicy::is_public`] refuses.
#[derive(Clone)]
pub struct Connector {
    pins: Arc<HashMap<(String, u16), SocketAddr>>,
    public_only: bool,
    timeout: Duration,
}

impl Connector {
    pub fn new(pins: &[ResolvePin], public_only: bool, timeout: Duration) -> Self {
        let pins = pins
            .iter()
            .map(|p| {
                (
                    (p.host.clone(), p.port),
                    SocketAddr::new(p.ip, p.to_port.unwrap_or(p.port)),
                )
            })
            .collect();
        Self {
            pins: Arc::new(pins),
            public_only,
            timeout,
        }
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let host = uri
            .host()
            .ok_or(ConnectError::InvalidUri)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let addrs: Vec<SocketAddr> = if let Some(pinned) = self.pins.get(&(host.clone(), port)) {
            // Operator-pinned: trusted whatever the policy.
            vec![*pinned]
        } else {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| ConnectError::Resolve(host.clone()))?
                    .collect(),
            };
            if self.public_only {
                let public: Vec<SocketAddr> = addrs
                    .iter()
                    .copied()
                    .filter(|a| crate::netpolicy::is_public(a.ip()))
                    .collect();
                if public.is_empty() {
                    return Err(ConnectError::Blocked(format!(
                        "`{host}` resolves to an address that a Base-Url-Override may not reach"
                    )));
                }
                public
            } else {
                addrs
            }
        };
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => last = Some(ConnectError::Io(addr, e)),
                Err(_) => last = Some(ConnectError::Timeout(self.timeout)),
            }
        }
        Err(last.unwrap_or(ConnectError::Resolve(host)))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// Where a pooled connection goes: scheme and authority of the upstream URL.
type PoolKey = (http::uri::Scheme, http::uri::Authority);

/// A connection's request handle. HTTP/1.1 handles carry one exchange at a time and leave the
/// pool while they do; an HTTP/2 handle stays in the pool and is shared.
enum Conn {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The most an upstream HTTP/1.1 connection reads at once (hyper's default grows to about
/// 400 KiB). Streamed bodies then travel in chunks that the allocator keeps reusing, instead
/// of ever larger buffers that raise the peak RSS while a download streams.
const MAX_READ_BUF: usize = 128 * 1024;

/// At most this many idle connections are kept per upstream (scheme and authority).
const MAX_IDLE_PER_HOST: usize = 1024;

struct Pool {
    connector: HttpsConnector<Connector>,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>, foldhash::fast::RandomState>>,
    idle_timeout: Duration,
    reaper: AtomicBool,
}

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the upstream failed")]
    Connect(#[source] BoxError),
    #[error("the upstream exchange failed")]
    Http(#[source] hyper::Error),
    #[error("invalid upstream URL")]
    InvalidUri,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled upstream client: connections by scheme and authority, HTTP/1.1 or HTTP/2 by
/// ALPN. A request takes an idle connection (the newest first) or opens one; an HTTP/1.1
/// connection comes back to the pool when its response body has been read to the end, and is
/// closed instead when the body is dropped half-read.
#[derive(Clone)]
pub struct HttpClient {
    pool: Arc<Pool>,
}

impl HttpClient {
    fn new(connector: HttpsConnector<Connector>, idle_timeout: Duration) -> Self {
        Self {
            pool: Arc::new(Pool {
                connector,
                idle: Mutex::new(HashMap::default()),
                idle_timeout,
                reaper: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (an absolute URL) and returns the response head with its streaming body.
    /// A request that a reused connection refused before sending a byte (it had just been
    /// closed by the upstream) goes out again on another connection.
    pub async fn request(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let uri = req.uri();
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(ClientError::InvalidUri);
        };
        // HTTP/1.1 needs a Host header (HTTP/2 carries the authority in the URI instead).
        let host = if req.headers().contains_key(http::header::HOST) {
            None
        } else {
            Some(
                crate::config::snapshot::host_header(&scheme, &authority)
                    .ok_or(ClientError::InvalidUri)?,
            )
        };
        let key = (scheme, authority);
        let full_uri = req.uri().clone();
        let origin_form = http::uri::Uri::from(
            full_uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        loop {
            let (conn, reused) = match self.pool.checkout(&key) {
                Some(conn) => (conn, true),
                None => (self.connect(full_uri.clone()).await?, false),
            };
            match conn {
                Conn::H1(mut tx) => {
                    if reused && tx.ready().await.is_err() {
                        continue;
                    }
                    *req.uri_mut() = origin_form.clone();
                    if let Some(h) = &host {
                        req.headers_mut().insert(http::header::HOST, h.clone());
                    }
                    match tx.try_send_request(req).await {
                        Ok(res) => {
                            let ticket = Ticket {
                                tx,
                                pool: Arc::clone(&self.pool),
                                key,
                            };
                            return Ok(res.map(|body| UpstreamBody {
                                inner: body,
                                ended: false,
                                ticket: Some(ticket),
                            }));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(back) if reused => req = back,
                            _ => return Err(ClientError::Http(e.into_error())),
                        },
                    }
                }
                Conn::H2(mut tx) => {
                    *req.uri_mut() = full_uri.clone();
                    // The authority travels as `:authority`.
                    req.headers_mut().remove(http::header::HOST);
                    if !reused {
                        self.pool.put(key.clone(), Conn::H2(tx.clone()));
                    }
                    match tx.try_send_request(req).await {
                        Ok(res) => {
                            return Ok(res.map(|body| UpstreamBody {
                                inner: body,
                                ended: false,
                                ticket: None,
                            }))
                        }
                        Err(mut e) => match e.take_message() {
                            Some(back) if reused => req = back,
                            _ => return Err(ClientError::Http(e.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// Opens a connection (TCP, then TLS for https) and starts its task.
    async fn connect(&self, uri: Uri) -> Result<Conn, ClientError> {
        let mut connector = self.pool.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::<Uri>::poll_ready(&mut connector, cx))
            .await
            .map_err(ClientError::Connect)?;
        let io = tower_service::Service::call(&mut connector, uri)
            .await
            .map_err(ClientError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(ClientError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            Ok(Conn::H2(tx))
        } else {
            let (tx, conn) = http1::Builder::new()
                .max_buf_size(MAX_READ_BUF)
                .handshake(io)
                .await
                .map_err(ClientError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Conn::H1(tx))
        }
    }
}

impl Pool {
    /// The newest live idle connection for `key`. Idle connections older than the idle
    /// timeout are closed on the way.
    fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            if now.saturating_duration_since(entry.since) > self.idle_timeout {
                // Everything before it is older still.
                list.clear();
                break;
            }
            match entry.conn {
                Conn::H1(tx) if !tx.is_closed() => return Some(Conn::H1(tx)),
                Conn::H2(tx) if tx.is_ready() => {
                    list.push(Idle {
                        conn: Conn::H2(tx.clone()),
                        since: now,
                    });
                    return Some(Conn::H2(tx));
                }
                _ => {}
            }
        }
        None
    }

    fn put(self: &Arc<Self>, key: PoolKey, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        drop(idle);
        if !self.reaper.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Closes idle connections past the idle timeout, every idle timeout (at least a second),
    /// for as long as the pool exists.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let every = self.idle_timeout.max(Duration::from_secs(1));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.retain(|_, list| {
                    list.retain(|e| {
                        now.saturating_duration_since(e.since) <= pool.idle_timeout
                            && match &e.conn {
                                Conn::H1(tx) => !tx.is_closed(),
                                Conn::H2(tx) => !tx.is_closed(),
                            }
                    });
                    !list.is_empty()
                });
            }
        });
    }
}

/// Brings an HTTP/1.1 connection back to its pool.
struct Ticket {
    tx: http1::SendRequest<ProxyBody>,
    pool: Arc<Pool>,
    key: PoolKey,
}

/// A response body from upstream. Dropped after its end, it returns its HTTP/1.1 connection
/// to the pool; dropped before, it closes it.
pub struct UpstreamBody {
    inner: Incoming,
    ended: bool,
    ticket: Option<Ticket>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.is_end_stream() {
            if let Some(t) = self.ticket.take() {
                t.pool.put(t.key, Conn::H1(t.tx));
            }
        }
    }
}

/// The two upstream pools.
#[derive(Clone)]
pub struct UpstreamClient {
    pub trusted: HttpClient,
    pub checked: HttpClient,
}

/// The rustls client configuration: web PKI roots plus `extra_ca`, ALPN h2 and http/1.1.
pub fn tls_config(extra_ca: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for ca in extra_ca {
        roots
            .add(ca.clone())
            .map_err(|e| format!("--extra-ca: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

impl UpstreamClient {
    pub fn new(opts: &ClientOptions) -> Result<Self, String> {
        let tls = tls_config(&opts.extra_ca)?;
        let make = |public_only: bool| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(Connector::new(
                    &opts.resolve,
                    public_only,
                    opts.connect_timeout,
                ));
            HttpClient::new(connector, opts.pool_idle_timeout)
        };
        Ok(Self {
            trusted: make(false),
            checked: make(true),
        })
    }
}

/// Reads PEM certificates (for `--extra-ca`).
pub fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolve_pins() {
        let p: ResolvePin = "API.example.com:443:127.0.0.1".parse().expect("parses");
        assert_eq!(
            (p.host.as_str(), p.port, p.to_port),
            ("api.example.com", 443, None)
        );
        let p: ResolvePin = "h:443:127.0.0.1:8443".parse().expect("parses");
        assert_eq!(p.to_port, Some(8443));
        let p: ResolvePin = "h:443:[::1]:9".parse().expect("parses");
        assert_eq!((p.ip, p.to_port), ("::1".parse().expect("ip"), Some(9)));
        let p: ResolvePin = "h:443:[::1]".parse().expect("parses");
        assert_eq!(p.to_port, None);
        for bad in [
            "h:443",
            "h:x:127.0.0.1",
            ":443:127.0.0.1",
            "h:443:nope",
            "h:443:[::1]x",
        ] {
            assert!(bad.parse::<ResolvePin>().is_err(), "{bad}");
        }
    }
}
