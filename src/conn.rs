//! One caller connection, from accept to close, shared by the proxy and the admin listener:
//! protocol choice (HTTP/1.1, h2c by its preface, or ALPN after TLS), the per-listener
//! [`Limits`], and the watch that closes connections nobody uses.
//!
//! hyper enforces the header limits (size and count for HTTP/1, header list size and concurrent
//! streams for h2) and sends h2 keep-alive pings. What hyper does not have is a limit on how long
//! a connection may sit without a request: its HTTP/1 header-read timer restarts whenever the
//! connection waits for a head, so it cannot tell a slow head from an idle keep-alive
//! connection, and h2 has no idle limit at all. So each connection counts its requests in
//! flight (from the head until the response body ends or is dropped), and [`drive`] closes it
//! when none has been in flight for too long: [`Limits::header_read_timeout`] before the first
//! request (a silent or half-sent head), [`Limits::keepalive_timeout`] after one. Counting is two
//! relaxed atomic operations per request; nothing is allocated per request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::ProxyBody;

/// The connection preface every HTTP/2 client sends first; no HTTP/1 request starts with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's own header count, kept on the stack; a larger `max_headers` costs a heap
/// allocation per request in hyper's parser.
pub const HYPER_MAX_HEADERS: usize = 100;

/// After an idle connection is asked to close, how long it may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// `--max-connections` when not given (then fitted to the open-file limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// Limits on the connections of one listener. Every field has a flag (see `cli`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at most; beyond it new ones are accepted and closed at once.
    pub max_connections: usize,
    /// A new connection must complete its first request head within this.
    pub header_read_timeout: Duration,
    /// After a response ends, the next request must arrive within this (HTTP/1 keep-alive,
    /// and an h2 connection with no open stream).
    pub keepalive_timeout: Duration,
    /// h2 PING interval; `None` sends none.
    pub h2_keepalive_interval: Option<Duration>,
    /// How long an h2 PING may go unanswered before the connection is closed.
    pub h2_keepalive_timeout: Duration,
    /// Largest request head (HTTP/1: start line and headers; h2: the header list).
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Most concurrent h2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            h2_keepalive_interval: Some(Duration::from_secs(20)),
            h2_keepalive_timeout: Duration::from_secs(20),
            max_header_bytes: 64 * 1024,
            max_headers: HYPER_MAX_HEADERS,
            max_concurrent_streams: 100,
        }
    }
}

/// hyper's HTTP/1 and h2 servers, configured once per listener from its [`Limits`].
#[derive(Clone)]
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    limits: Arc<Limits>,
    /// A write to the caller blocked this long cuts the connection (`proxy::idle::WriteStall`):
    /// a caller that stops reading does not hold its upstream connection.
    write_idle: std::time::Duration,
    /// Whether HTTP/1.1 connections may be upgraded (the Connect listener's WebSocket); the
    /// proxy listener's connections never are.
    upgrades: bool,
}

impl Protocols {
    pub fn new(limits: Limits) -> Self {
        let mut h1 = http1::Builder::new();
        // The idle watch in `drive` bounds the wait for a head; hyper's own timer would also
        // cut idle keep-alive connections at the header-read timeout.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes);
        if limits.max_headers != HYPER_MAX_HEADERS {
            h1.max_headers(limits.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(limits.h2_keepalive_interval)
            .keep_alive_timeout(limits.h2_keepalive_timeout);
        Self {
            h1,
            h2,
            limits: Arc::new(limits),
            write_idle: std::time::Duration::from_secs(60),
            upgrades: false,
        }
    }

    /// Lets HTTP/1.1 connections be upgraded (101 Switching Protocols) by the service.
    pub fn with_upgrades(mut self) -> Self {
        self.upgrades = true;
        self
    }

    /// Sets how long a blocked write to the caller may last (the proxy's `--idle-timeout`).
    pub fn with_write_idle(mut self, d: std::time::Duration) -> Self {
        self.write_idle = d;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Requests in flight on one connection, and whether one started or ended since last looked at.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicU32,
    touched: AtomicBool,
}

impl Activity {
    /// True when nothing is in flight and nothing started or ended since the last call.
    fn quiet(&self) -> bool {
        let touched = self.touched.swap(false, Ordering::Relaxed);
        !touched && self.in_flight.load(Ordering::Relaxed) == 0
    }
}

/// One request in flight; dropped when its response body ends or is dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.touched.store(true, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touched.store(true, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it ends.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        busy: Option<Busy>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.busy.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The service's future, holding the request's [`Busy`] until the response head is ready,
    /// then handing it to the body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, B> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<TrackedBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match std::task::ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let busy = this.busy.take();
        Poll::Ready(Ok(res.map(|inner| TrackedBody { inner, busy })))
    }
}

/// The listener's service wrapped to count its requests in flight.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = Some(Busy::start(&self.activity));
        TrackedFuture {
            inner: self.inner.call(req),
            busy,
        }
    }
}

/// The 431 for a request with more header fields than `--max-headers`. HTTP/1's count is
/// enforced by hyper (a bare 431) before a request exists; h2 has no count limit of its own,
/// so the listeners' services check `headers().len()` (a stored length) and answer this.
pub fn too_many_headers() -> Response<ProxyBody> {
    crate::error::json_response(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        Bytes::from_static(
            br#"{"error":{"code":"request_header_fields_too_large","message":"the request has more header fields than --max-headers allows"}}"#,
        ),
        Some("request_header_fields_too_large"),
    )
}
/// A hyper connection that can be asked to finish its requests and close.
trait Shutdown: Future<Output = hyper::Result<()>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, B, S> Shutdown for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S> Shutdown for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S, E> Shutdown for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` until it ends. It is asked to finish and close when `stopping` turns true (the
/// listener drains), or when no request has been in flight for the header-read timeout (before
/// the first request) or the keep-alive timeout (after one); if it has not closed
/// [`CLOSE_GRACE`] after being asked and has no request in flight, it is dropped.
async fn drive<C: Shutdown>(
    conn: C,
    activity: &Activity,
    limits: &Limits,
    stopping: &mut watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    // While requests are in flight the watch looks again every quarter of the keep-alive
    // timeout, so an idle connection is closed at most that much later than the limit.
    let recheck = (limits.keepalive_timeout / 4).max(Duration::from_millis(10));
    let mut served = false;
    let mut idle_since = Some(Instant::now());
    let mut wake = Instant::now() + limits.header_read_timeout;
    let mut closing = false;
    let mut drop_at: Option<Instant> = None;
    let ended = loop {
        let timer = tokio::time::sleep_until(drop_at.unwrap_or(wake));
        tokio::select! {
            ended = conn.as_mut() => break ended,
            _ = stopping.wait_for(|stop| *stop), if !closing => {
                // Requests in flight finish; a connection with none (a half-sent head, which
                // hyper's HTTP/1 shutdown leaves open) is dropped after the grace.
                closing = true;
                drop_at = Some(Instant::now() + CLOSE_GRACE);
                conn.as_mut().shutdown();
            }
            () = timer, if !closing || drop_at.is_some() => {
                let now = Instant::now();
                if drop_at.is_some() {
                    if activity.in_flight.load(Ordering::Relaxed) == 0 {
                        tracing::debug!("idle connection did not close; dropped");
                        return;
                    }
                    // A request slipped in while closing: let it finish.
                    drop_at = None;
                    continue;
                }
                if !activity.quiet() {
                    served = true;
                    idle_since = None;
                    wake = now + recheck;
                    continue;
                }
                let limit = if served { limits.keepalive_timeout } else { limits.header_read_timeout };
                let since = *idle_since.get_or_insert(now);
                if now >= since + limit {
                    tracing::debug!(?limit, first_request = !served, "closing idle connection");
                    closing = true;
                    drop_at = Some(now + CLOSE_GRACE);
                    conn.as_mut().shutdown();
                } else {
                    wake = since + limit;
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Serves HTTP/1.1 or h2 on `io`, counting requests through [`Tracked`].
async fn serve_io<I, S>(
    io: I,
    h2: bool,
    protocols: Arc<Protocols>,
    svc: S,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let svc = Tracked {
        inner: svc,
        activity: activity.clone(),
    };
    let io = TokioIo::new(crate::proxy::idle::WriteStall::new(
        io,
        protocols.write_idle,
    ));
    if h2 {
        let conn = protocols.h2.serve_connection(io, svc);
        drive(conn, &activity, &protocols.limits, &mut stopping).await;
    } else if protocols.upgrades {
        // An upgraded connection leaves `drive` (and its permit) once the 101 is sent; its
        // new owner bounds it.
        let conn = protocols.h1.serve_connection(io, svc).with_upgrades();
        drive(conn, &activity, &protocols.limits, &mut stopping).await;
    } else {
        let conn = protocols.h1.serve_connection(io, svc);
        drive(conn, &activity, &protocols.limits, &mut stopping).await;
    }
}

/// Serves one cleartext connection. The first bytes are peeked, not read: a connection that
/// does not open with the HTTP/2 preface goes straight to hyper's HTTP/1 server, without a
/// wrapper around every read. Only when the first bytes are the start of the preface and no
/// more (a lone `P`) are they read, until the preface is whole or ruled out, and replayed.
/// A connection that sends nothing is let go after the header-read timeout, or at once when
/// the listener closes: nothing is in flight on it yet.
pub async fn serve_plain<S>(
    mut stream: TcpStream,
    protocols: Arc<Protocols>,
    mut stopping: watch::Receiver<bool>,
    svc: S,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut first = [0u8; H2_PREFACE.len()];
    let deadline = Instant::now() + protocols.limits.header_read_timeout;
    let n = tokio::select! {
        peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => match peeked {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(n)) => n,
        },
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    if !H2_PREFACE.starts_with(&first[..n]) {
        return serve_io(stream, false, protocols, svc, stopping).await;
    }
    if n == H2_PREFACE.len() {
        return serve_io(stream, true, protocols, svc, stopping).await;
    }
    let read_head = async {
        let mut got = 0;
        while got < first.len() && H2_PREFACE.starts_with(&first[..got]) {
            match stream.read(&mut first[got..]).await {
                Ok(0) | Err(_) => return None,
                Ok(k) => got += k,
            }
        }
        Some(got)
    };
    let got = tokio::select! {
        got = tokio::time::timeout_at(deadline, read_head) => match got {
            Ok(Some(got)) => got,
            Ok(None) | Err(_) => return,
        },
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    let h2 = first[..got] == *H2_PREFACE;
    let io = Rewind {
        head: first,
        pos: 0,
        len: got,
        inner: stream,
    };
    serve_io(io, h2, protocols, svc, stopping).await;
}

/// Serves one TLS connection: `h2` when ALPN chose it, else HTTP/1.1.
pub async fn serve_tls<I, S>(
    tls: tokio_rustls::server::TlsStream<I>,
    protocols: Arc<Protocols>,
    stopping: watch::Receiver<bool>,
    svc: S,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let h2 = tls.get_ref().1.alpn_protocol() == Some(&b"h2"[..]);
    serve_io(tls, h2, protocols, svc, stopping).await;
}

/// A stream whose first bytes were already read: they are served again before the rest.
struct Rewind<T> {
    head: [u8; H2_PREFACE.len()],
    pos: usize,
    len: usize,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.len {
            let n = (self.len - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.head[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Refuses a connection over the limit: a best-effort 503 (cleartext listeners only; the
/// socket is fresh, so the short answer fits its send buffer) and close.
pub fn refuse(stream: TcpStream, plaintext: bool) {
    if plaintext {
        let _ = stream.try_write(REFUSED);
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nsidekey-error: too_many_connections\r\nconnection: close\r\ncontent-length: 90\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the listener is at --max-connections\"}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSED).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn activity_is_quiet_only_after_a_look_with_nothing_in_flight() {
        let a = Arc::new(Activity::default());
        assert!(a.quiet());
        let busy = Busy::start(&a);
        assert!(!a.quiet());
        assert!(!a.quiet(), "in flight");
        drop(busy);
        assert!(!a.quiet(), "ended since the last look");
        assert!(a.quiet());
    }
}
