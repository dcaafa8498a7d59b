//! The access log: one event per request (proxy and management routes alike) under the target
//! [`ACCESS_TARGET`], plus the in-flight gauge and byte counters that go with it.
//!
//! The request path fills a [`RequestLog`] as it learns things (the integration, the connection,
//! the upstream URL, the number of attempts). The log then rides inside the response body
//! ([`AccessBody`]), which counts the bytes sent, and is written when that body ends or is
//! dropped, so the duration and byte counts cover the whole exchange, not just the head.
//! Request body bytes are counted by [`CountBody`] on the way upstream.
//!
//! Nothing secret is logged: the upstream URL's query values for the parameters sidekey injects
//! are replaced by `***`, header values are never logged, and the caller's key is never seen here.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::body::{BoxError, ProxyBody};
use crate::config::{Connection, Integration, Placement};
use crate::metrics::{InFlight, Metrics};

/// The tracing target of access log events.
pub const ACCESS_TARGET: &str = "sidekey::access";

/// The template of the proxy route `path` matches, which names the request's trace span.
fn route_template(path: &str) -> Option<&'static str> {
    match super::route::route(path)? {
        super::route::Route::Proxy { .. } => Some("/proxy/{endpoint}"),
        super::route::Route::ConnectionProxy { .. } => {
            Some("/connections/{selector}/proxy/{endpoint}")
        }
    }
}

/// What the request path learned about one request, written as one access log event.
///
/// The request path sets the public fields as it goes; everything else is measured here.
/// Retries (issue 3) report the number of upstream requests sent in `attempts`.
#[derive(Debug)]
pub struct RequestLog {
    start: Instant,
    method: Method,
    activity_log_id: Option<HeaderValue>,
    metrics: Arc<Metrics>,
    _in_flight: InFlight,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    status: Option<u16>,
    error: Option<&'static str>,
    complete: bool,
    /// The integration named by the request, once the snapshot has confirmed it exists.
    pub integration: Option<Arc<Integration>>,
    /// The connection the request resolved to.
    pub connection: Option<Arc<Connection>>,
    /// The URL sent upstream (with the injected query; masked when logged).
    pub upstream: Option<Uri>,
    /// Upstream requests sent for this request (0 when refused before forwarding).
    pub attempts: u32,
    /// The request's OpenTelemetry span (empty unless `--otlp-endpoint`), ended with the log.
    span: crate::otel::RequestSpan,
}

impl RequestLog {
    /// Starts the log of `req` and wraps its body so that the bytes read are counted.
    pub fn start(
        req: Request<hyper::body::Incoming>,
        metrics: &Arc<Metrics>,
    ) -> (Request<ProxyBody>, Self) {
        let activity_log_id = req
            .headers()
            .get(super::ACTIVITY_LOG_ID)
            .filter(|v| !v.as_bytes().trim_ascii().is_empty())
            .cloned();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let span = crate::otel::RequestSpan::start(
            req.method(),
            route_template(req.uri().path()),
            req.headers(),
        );
        let log = Self {
            start: Instant::now(),
            method: req.method().clone(),
            activity_log_id,
            metrics: metrics.clone(),
            _in_flight: metrics.in_flight(),
            bytes_in: bytes_in.clone(),
            bytes_out: 0,
            status: None,
            error: None,
            complete: false,
            integration: None,
            connection: None,
            upstream: None,
            attempts: 0,
            span,
        };
        let req = req.map(|inner| {
            CountBody {
                inner,
                count: bytes_in,
            }
            .boxed_unsync()
        });
        (req, log)
    }

    /// Whether the access log or a trace span is on: fields only they read need not be
    /// filled in otherwise.
    pub fn enabled(&self) -> bool {
        self.span.is_active() || access_log_on()
    }

    /// The OpenTelemetry context to run the request under, when it is traced.
    pub fn trace_context(&self) -> Option<opentelemetry::Context> {
        self.span.context()
    }

    /// Records that sidekey answered with its own error `code`.
    pub fn set_error(&mut self, code: &'static str) {
        self.error = Some(code);
    }

    /// Records the connection the request resolved to (and so its integration).
    pub fn set_connection(&mut self, conn: &Arc<Connection>) {
        self.integration = Some(conn.integration.clone());
        self.connection = Some(conn.clone());
    }

    /// Counts the response and hands back one whose body carries this log to its end.
    pub fn respond(mut self, res: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = res.status().as_u16();
        self.status = Some(status);
        self.metrics
            .request_of(self.integration.as_deref(), &self.method, status);
        res.map(|inner| AccessBody { inner, log: self }.boxed_unsync())
    }

    fn emit(&mut self) {
        // Asked once: the filter check costs a few hundred instructions per request.
        let log_on = access_log_on();
        if !log_on && !self.span.is_active() {
            return;
        }
        let conn = self.connection.as_deref();
        let upstream_host = self
            .upstream
            .as_ref()
            .and_then(Uri::authority)
            .map(|a| a.as_str());
        if self.span.is_active() {
            self.span.end(crate::otel::RequestEnd {
                integration: self.integration.as_deref(),
                connection: conn,
                upstream_host,
                status: self.status,
                error: self.error,
                attempts: self.attempts,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: self.bytes_out,
                complete: self.complete,
            });
        }
        if !log_on {
            return;
        }
        let upstream_path = self.upstream.as_ref().map(|u| masked_path(u, conn));
        let duration_ms = self.start.elapsed().as_micros() as f64 / 1000.0;
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            integration = self.integration.as_deref().map(|i| i.unique_key.as_str()),
            connection_id = conn.map(|c| &*c.connection_id),
            upstream_host,
            upstream_path = upstream_path.as_deref(),
            status = self.status,
            error = self.error,
            attempts = self.attempts,
            duration_ms,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            complete = self.complete,
            activity_log_id = self.activity_log_id.as_ref().and_then(|v| v.to_str().ok()),
            "request"
        );
    }
}

fn access_log_on() -> bool {
    tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.emit();
    }
}

/// The path and query of `uri`, with the values of `conn`'s injected query parameters masked.
pub fn masked_path(uri: &Uri, conn: Option<&Connection>) -> String {
    mask_query(uri.path(), uri.query(), |name| {
        conn.is_some_and(|c| {
            c.static_query.iter().any(|(n, _)| &**n == name)
                || c.dynamic()
                    .iter()
                    .any(|d| matches!(&d.placement, Placement::Query(n) if &**n == name))
        })
    })
}

/// `path?query` with the value of every parameter whose (raw) name is `injected` replaced by
/// `***`; everything else is kept byte for byte.
pub fn mask_query(path: &str, query: Option<&str>, injected: impl Fn(&str) -> bool) -> String {
    let Some(query) = query else {
        return path.to_string();
    };
    let mut out = String::with_capacity(path.len() + 1 + query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if injected(name) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// A request body that counts the bytes passing through it.
struct CountBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Body for CountBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes sent and writes the access log when it goes away.
struct AccessBody {
    inner: ProxyBody,
    log: RequestLog,
}

impl Body for AccessBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.log.complete = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AccessBody {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` says so; a body dropped at its end is complete.
        if self.inner.is_end_stream() {
            self.log.complete = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_injected_names_and_keeps_the_rest_byte_for_byte() {
        let q = Some("q=1&api_key=s3cr3t&x=&api_key=again&flag&api_keyx=1");
        assert_eq!(
            mask_query("/p/a%2Fb", q, |_| false),
            "/p/a%2Fb?q=1&api_key=s3cr3t&x=&api_key=again&flag&api_keyx=1"
        );
        assert_eq!(
            mask_query("/p/a%2Fb", q, |n| n == "api_key"),
            "/p/a%2Fb?q=1&api_key=***&x=&api_key=***&flag&api_keyx=1"
        );
        assert_eq!(mask_query("/only/path", None, |_| true), "/only/path");
        let uri: Uri = "http://h/a?token=t&b=2".parse().expect("uri");
        assert_eq!(masked_path(&uri, None), "/a?token=t&b=2");
    }
}
