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
//! A pooled HTTP/1.1 connection is kept at most `--pool-idle-timeout` (4 s by default, below
//! the 5 s keep-alive of Node and many others), or shorter when the upstream's last answer on
//! it said `Keep-Alive: timeout=N` (then a second before that, or half of it when N is 1 s).
//! An upstream can still close an idle connection just as a request goes out on it. When a
//! reused connection fails after the request was written and before a single byte of an answer
//! arrived, [`ClientError::Stale`] says so, and the caller may send the request again on a
//! fresh connection ([`HttpClient::request_fresh`]) when that is safe; each HTTP/1.1
//! connection counts the bytes it has read to tell.
//!
//! Two pools exist: one for URLs the operator configured (trusted) and one for caller
//! overrides (checked against [`crate::netpolicy`] on every resolved address before a packet
//! is sent). Keeping them apart means a connection opened for a trusted URL is never reused by
//! an override to the same host, and the reverse.

use std::collections::HashMap;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

use super::connect::{Connector, ResolvePin};
use super::tls::tls_config;
use crate::body::ProxyBody;

/// Settings of the upstream client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub resolve: Vec<ResolvePin>,
    pub extra_ca: Vec<CertificateDer<'static>>,
}

/// How long an idle upstream connection is kept by default: below the 5 s keep-alive timeout
/// of Node's HTTP server, one of the shortest common ones.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            resolve: Vec::new(),
            extra_ca: Vec::new(),
        }
    }
}

/// Where a pooled connection goes: scheme and authority of the upstream URL.
type PoolKey = (http::uri::Scheme, http::uri::Authority);

/// A connection's request handle. HTTP/1.1 handles carry one exchange at a time and leave the
/// pool while they do; an HTTP/2 handle stays in the pool and is shared.
enum Conn {
    H1(H1),
    H2(http2::SendRequest<ProxyBody>),
}

/// An HTTP/1.1 connection's handle and the count of bytes its task has read from it (after
/// TLS), which tells a request that died before any answer from one that got part of it.
struct H1 {
    tx: http1::SendRequest<ProxyBody>,
    read: Arc<AtomicU64>,
}

struct Idle {
    conn: Conn,
    /// After this, the connection is not used again.
    expires: Instant,
}

/// The `timeout=` of a `Keep-Alive` response header: how long the upstream keeps an idle
/// connection open.
fn keep_alive_hint(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(KEEP_ALIVE)?.to_str().ok()?;
    v.split(',').find_map(|p| {
        let (k, n) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| n.trim().parse::<u64>().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

const KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");

/// How long a connection may stay idle in the pool: the pool's limit, or less when the
/// upstream said how long it waits itself. A second is kept in hand (half the hint when the
/// hint is a second or less), since the upstream's clock started when it sent the answer.
fn idle_limit(pool: Duration, hint: Option<Duration>) -> Duration {
    match hint {
        Some(h) => pool.min(h.saturating_sub(Duration::from_secs(1)).max(h / 2)),
        None => pool,
    }
}

/// Whether a failed exchange on a reused connection looks like the upstream closed it before
/// answering: an EOF where the answer should be, or a reset.
fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        cur = s.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// A connection's stream that counts the bytes read from it.
    struct Counted<T> {
        #[pin]
        inner: T,
        read: Arc<AtomicU64>,
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
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
    /// A reused connection closed or was reset after the request was written and before any
    /// byte of an answer: most likely the upstream's keep-alive timer fired as it went out.
    #[error("the upstream closed a reused connection before answering")]
    Stale(#[source] hyper::Error),
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
    /// closed by the upstream) goes out again on another connection. One that a reused
    /// connection lost after it was written fails with [`ClientError::Stale`].
    pub async fn request(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        self.send(req, false).await
    }

    /// Sends `req` on a connection opened for it (which then joins the pool): the resend of a
    /// request that failed with [`ClientError::Stale`].
    pub async fn request_fresh(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        self.send(req, true).await
    }

    async fn send(
        &self,
        mut req: Request<ProxyBody>,
        fresh: bool,
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
            let pooled = if fresh {
                None
            } else {
                self.pool.checkout(&key)
            };
            let (conn, reused) = match pooled {
                Some(conn) => (conn, true),
                None => (self.connect(full_uri.clone()).await?, false),
            };
            match conn {
                Conn::H1(mut h1) => {
                    if reused && h1.tx.ready().await.is_err() {
                        continue;
                    }
                    *req.uri_mut() = origin_form.clone();
                    if let Some(h) = &host {
                        req.headers_mut().insert(http::header::HOST, h.clone());
                    }
                    let read_before = h1.read.load(Ordering::Relaxed);
                    match h1.tx.try_send_request(req).await {
                        Ok(res) => {
                            // A protocol switch (or any 1xx surfacing as final) ends the
                            // connection's HTTP life: it never goes back to the pool.
                            let ticket = (!res.status().is_informational()).then(|| Ticket {
                                idle: idle_limit(
                                    self.pool.idle_timeout,
                                    keep_alive_hint(res.headers()),
                                ),
                                h1,
                                pool: Arc::clone(&self.pool),
                                key,
                            });
                            return Ok(res.map(|body| UpstreamBody {
                                inner: body,
                                ended: false,
                                ticket,
                            }));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(back) if reused => req = back,
                            _ => {
                                let e = e.into_error();
                                let silent = h1.read.load(Ordering::Relaxed) == read_before;
                                if reused && silent && closed_before_answer(&e) {
                                    return Err(ClientError::Stale(e));
                                }
                                return Err(ClientError::Http(e));
                            }
                        },
                    }
                }
                Conn::H2(mut tx) => {
                    *req.uri_mut() = full_uri.clone();
                    // The authority travels as `:authority`.
                    req.headers_mut().remove(http::header::HOST);
                    if !reused {
                        let idle = self.pool.idle_timeout;
                        self.pool.put(key.clone(), Conn::H2(tx.clone()), idle);
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
            let read = Arc::new(AtomicU64::new(0));
            // hyper's IO traits to tokio's and back, so that the count sits above TLS: a
            // close_notify is not an answer.
            let io = TokioIo::new(Counted {
                inner: TokioIo::new(io),
                read: read.clone(),
            });
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
            Ok(Conn::H1(H1 { tx, read }))
        }
    }
}

impl Pool {
    /// The newest live idle connection for `key`. Idle connections past their limit are
    /// closed on the way.
    fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            if entry.expires <= now {
                // Limits differ per connection (keep-alive hints): an older one may still do.
                continue;
            }
            match entry.conn {
                Conn::H1(h1) if !h1.tx.is_closed() => return Some(Conn::H1(h1)),
                Conn::H2(tx) if tx.is_ready() => {
                    list.push(Idle {
                        conn: Conn::H2(tx.clone()),
                        expires: now + self.idle_timeout,
                    });
                    return Some(Conn::H2(tx));
                }
                _ => {}
            }
        }
        None
    }

    /// Keeps `conn` for at most `limit` (nothing is kept when that is zero).
    fn put(self: &Arc<Self>, key: PoolKey, conn: Conn, limit: Duration) {
        if limit.is_zero() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle {
                conn,
                expires: Instant::now() + limit,
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
                        e.expires > now
                            && match &e.conn {
                                Conn::H1(h1) => !h1.tx.is_closed(),
                                Conn::H2(tx) => !tx.is_closed(),
                            }
                    });
                    !list.is_empty()
                });
            }
        });
    }
}

/// Brings an HTTP/1.1 connection back to its pool, for at most `idle`.
struct Ticket {
    h1: H1,
    pool: Arc<Pool>,
    key: PoolKey,
    idle: Duration,
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
                t.pool.put(t.key, Conn::H1(t.h1), t.idle);
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

impl UpstreamClient {
    pub fn new(opts: &ClientOptions) -> Result<Self, super::tls::ClientTlsError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_hints_shorten_the_idle_limit() {
        let hint = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(KEEP_ALIVE, v.parse().expect("value"));
            keep_alive_hint(&h)
        };
        assert_eq!(hint("timeout=5, max=100"), Some(Duration::from_secs(5)));
        assert_eq!(hint("max=100,Timeout = 2"), Some(Duration::from_secs(2)));
        assert_eq!(hint("max=100"), None);
        assert_eq!(hint("timeout=soon"), None);
        assert_eq!(keep_alive_hint(&http::HeaderMap::new()), None);
        let pool = DEFAULT_POOL_IDLE_TIMEOUT;
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(idle_limit(pool, None), pool);
        assert_eq!(idle_limit(pool, secs(60)), pool);
        assert_eq!(idle_limit(pool, secs(5)), Duration::from_secs(4));
        assert_eq!(idle_limit(pool, secs(3)), Duration::from_secs(2));
        assert_eq!(idle_limit(pool, secs(1)), Duration::from_millis(500));
        assert_eq!(idle_limit(pool, secs(0)), Duration::ZERO);
    }
}
