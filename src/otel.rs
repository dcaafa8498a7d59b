//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when `--otlp-endpoint` is set:
//! one server span per request to the proxy listener, a client span per upstream attempt and
//! one per token endpoint call, children of the request's span.
//!
//! Off unless asked: without `--otlp-endpoint`, [`init`] never runs, [`ACTIVE`] stays empty,
//! and every helper here returns after one atomic load, allocating nothing; the caller's
//! `traceparent` and `tracestate` then reach the upstream untouched, as without this module.
//! Spans are made with the OpenTelemetry API directly rather than bridged from `tracing`
//! spans, for exactly that reason: the `tracing` subscriber is always on (the access log), so
//! bridged spans would be built on every request whether anything exported them or not.
//!
//! Context: the server span continues the caller's `traceparent` (W3C trace context; the
//! sampler is the SDK's, parent-based by default, `OTEL_TRACES_SAMPLER` changes it).
//! [`crate::proxy::handle`] runs the request under that span's [`Context`]
//! (`FutureExt::with_context`), so attempt and token spans find their parent through
//! [`Context::current`] without the request path passing it down. Each attempt replaces the
//! upstream request's `traceparent` with its own span's; the caller's `tracestate` passes as
//! it came.
//!
//! Nothing secret is exported: attributes are configuration names (integration, provider),
//! the upstream host, methods, statuses, counts, sidekey's error codes and the token endpoint's
//! checked `error` code. Never a URL path or query (either may carry an injected credential),
//! never a header value, and the connection id only as `--otlp-connection-id` says (a hash by
//! default).
//!
//! Export: the SDK's batch processor (its own thread, `OTEL_BSP_*` settings) hands batches to
//! [`Transport`], which sends them through sidekey's trusted upstream pool on the tokio runtime,
//! so `--extra-ca` and `--resolve` apply to the collector too and no second HTTP or TLS stack
//! is linked. [`Exporter::shutdown`] flushes what is queued when sidekey stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt as _, Limited};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use sha2::Digest as _;

use crate::config::{Connection, Integration};
use crate::upstream::HttpClient;

/// How the connection id appears on spans (`--otlp-connection-id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConnectionIdAttr {
    /// `sidekey.connection_id`: the id itself
    Full,
    /// `sidekey.connection_id_hash`: the first 16 hex digits of the id's SHA-256
    #[default]
    Hash,
    /// No connection attribute at all
    None,
}

impl ConnectionIdAttr {
    /// The flag's value, for the startup log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Hash => "hash",
            Self::None => "none",
        }
    }
}

/// What `--otlp-*` asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The full URL batches are POSTed to (see [`traces_url`]).
    pub endpoint: Uri,
    pub connection_id: ConnectionIdAttr,
}

/// How long one export may take, response included (the OTLP default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest collector response read; a real one is a few bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The process's tracer, set once by [`init`]; empty means tracing is off.
static ACTIVE: OnceLock<Active> = OnceLock::new();

struct Active {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    connection_id: ConnectionIdAttr,
}

fn active() -> Option<&'static Active> {
    ACTIVE.get()
}

/// Parses `--otlp-endpoint`: an `http` or `https` URL of an OTLP/HTTP receiver. `/v1/traces`
/// is appended to its path unless the path already ends with it, as the OpenTelemetry
/// `OTEL_EXPORTER_OTLP_ENDPOINT` convention does (`http://collector:4318` posts to
/// `http://collector:4318/v1/traces`).
pub fn traces_url(s: &str) -> Result<Uri, EndpointError> {
    // Checked first, so that no message below repeats a URL holding a password.
    if s.contains('@') {
        return Err(EndpointError::Credentials);
    }
    let url = || s.to_string();
    let uri: Uri = s
        .trim()
        .parse()
        .map_err(|_| EndpointError::NotAUrl(url()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(EndpointError::Scheme(url()));
    }
    let Some(authority) = uri.authority() else {
        return Err(EndpointError::NoHost(url()));
    };
    if uri.query().is_some() {
        return Err(EndpointError::Query(url()));
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{path}/v1/traces")
    };
    let scheme = uri.scheme_str().unwrap_or("http");
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|_| EndpointError::Invalid(url()))
}

/// Why `--otlp-endpoint` was refused. A URL with user info is refused before anything quotes
/// it, so no variant ever holds a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("the OTLP endpoint may not carry credentials; set OTEL_EXPORTER_OTLP_HEADERS instead")]
    Credentials,
    #[error("`{0}` is not a URL like http://127.0.0.1:4318")]
    NotAUrl(String),
    #[error("`{0}` must start with http:// or https://")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` may not have a query")]
    Query(String),
    #[error("`{0}` is not a valid URL")]
    Invalid(String),
}

/// Why the trace exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("OpenTelemetry export needs the tokio runtime")]
    NoRuntime,
    #[error("OpenTelemetry is already set up")]
    AlreadySetUp,
    #[error("--otlp-endpoint: {0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

/// The running exporter; [`Exporter::shutdown`] flushes it.
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Starts exporting to `settings.endpoint` through `client` (sidekey's trusted pool). Call once,
/// inside the tokio runtime that will carry the exports.
pub fn init(settings: &Settings, client: HttpClient) -> Result<Exporter, InitError> {
    let transport = Transport {
        client,
        runtime: tokio::runtime::Handle::try_current().map_err(|_| InitError::NoRuntime)?,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(transport)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(settings.endpoint.to_string())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(InitError::Exporter)?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let scope = InstrumentationScope::builder("sidekey")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let active = Active {
        tracer: provider.tracer_with_scope(scope),
        propagator: TraceContextPropagator::new(),
        connection_id: settings.connection_id,
    };
    ACTIVE.set(active).map_err(|_| InitError::AlreadySetUp)?;
    Ok(Exporter { provider })
}

/// `service.name` is `sidekey` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names
/// it; `service.version` is this build's.
fn resource() -> opentelemetry_sdk::Resource {
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let mut b = opentelemetry_sdk::Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named {
        b = b.with_service_name("sidekey");
    }
    b.build()
}

impl Exporter {
    /// Exports what is still queued (waiting at most 5 s for the collector) and stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The batch thread sends through the runtime, so wait for it off the runtime's threads
        // (a current-thread runtime would otherwise be blocked by its own waiter).
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match done {
            Ok(Ok(())) => tracing::debug!(target: "sidekey::otel", "spans flushed"),
            Ok(Err(e)) => {
                tracing::warn!(target: "sidekey::otel", error = %e, "spans not flushed on shutdown")
            }
            Err(e) => {
                tracing::warn!(target: "sidekey::otel", error = %e, "spans not flushed on shutdown")
            }
        }
    }
}

/// The OTLP exporter's HTTP client: sidekey's own pool, driven on the tokio runtime (the batch
/// processor calls it from its own thread).
struct Transport {
    client: HttpClient,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

type SendFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>>
            + Send
            + 'a,
    >,
>;

impl opentelemetry_http::HttpClient for Transport {
    // The trait is declared with `async_trait`; this is the signature it expands to.
    fn send_bytes<'s, 'a>(&'s self, request: http::Request<Bytes>) -> SendFuture<'a>
    where
        's: 'a,
        Self: 'a,
    {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let call = async {
                let res = client.request(request.map(crate::body::full)).await?;
                let (parts, body) = res.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, call).await {
                Ok(r) => r,
                Err(_) => {
                    Err(format!("the collector did not answer within {EXPORT_TIMEOUT:?}").into())
                }
            }
        });
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Box::new(e) as opentelemetry_http::HttpError),
            }
        })
    }
}

/// `http.request.method`: the metrics' bounded method label, with the semantic conventions'
/// `_OTHER` for the rest (which keeps span names low-cardinality).
fn method_name(m: &Method) -> &'static str {
    match crate::metrics::method_label(m) {
        "other" => "_OTHER",
        known => known,
    }
}

/// The `traceparent` value naming `cx` as the parent.
fn traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The first 16 hex digits of SHA-256 of the connection id: stable across restarts and
/// replicas, so one connection's requests can be found (`printf %s ID | sha256sum`).
fn connection_id_hash(id: &str) -> String {
    let digest = sha2::Sha256::digest(id.as_bytes());
    hex::encode(&digest[..8])
}

fn connection_attr(mode: ConnectionIdAttr, id: &str) -> Option<KeyValue> {
    match mode {
        ConnectionIdAttr::Full => Some(KeyValue::new("sidekey.connection_id", id.to_string())),
        ConnectionIdAttr::Hash => Some(KeyValue::new(
            "sidekey.connection_id_hash",
            connection_id_hash(id),
        )),
        ConnectionIdAttr::None => None,
    }
}

fn integration_attrs(integration: &Integration, out: &mut Vec<KeyValue>) {
    out.push(KeyValue::new(
        "sidekey.integration",
        integration.unique_key.clone(),
    ));
    out.push(KeyValue::new(
        "sidekey.provider",
        integration.provider.name.clone(),
    ));
}

/// The server span of one request, held by its [`crate::proxy::access_log::RequestLog`] and ended
/// with it, when the response body has ended or was dropped. Empty when tracing is off.
#[derive(Debug, Default)]
pub struct RequestSpan(Option<Context>);

/// What the request path learned, set on the server span as it ends.
pub struct RequestEnd<'a> {
    pub integration: Option<&'a Integration>,
    pub connection: Option<&'a Connection>,
    pub upstream_host: Option<&'a str>,
    pub status: Option<u16>,
    /// sidekey's own error code, when it answered itself.
    pub error: Option<&'static str>,
    pub attempts: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// False when the caller went away before the response body ended.
    pub complete: bool,
}

impl RequestSpan {
    /// Starts the server span of a request, continuing the caller's `traceparent`.
    /// `route` is the matched route's template (`/proxy/{endpoint}`), which names the span.
    pub fn start(method: &Method, route: Option<&'static str>, headers: &HeaderMap) -> Self {
        let Some(t) = active() else {
            return Self(None);
        };
        let parent = t
            .propagator
            .extract(&opentelemetry_http::HeaderExtractor(headers));
        let method = method_name(method);
        let mut attrs = vec![KeyValue::new("http.request.method", method)];
        let name = match route {
            Some(r) => {
                attrs.push(KeyValue::new("http.route", r));
                format!("{method} {r}")
            }
            None => method.to_string(),
        };
        let span = t
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&t.tracer, &parent);
        Self(Some(parent.with_span(span)))
    }

    /// Whether a span is being recorded for this request.
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The context the request runs under, so its attempt and token spans become children.
    pub fn context(&self) -> Option<Context> {
        self.0.clone()
    }

    /// Sets what the request came to and ends the span.
    pub fn end(&mut self, e: RequestEnd<'_>) {
        let (Some(cx), Some(t)) = (self.0.take(), active()) else {
            return;
        };
        let span = cx.span();
        let mut attrs = Vec::with_capacity(12);
        if let Some(i) = e.integration {
            integration_attrs(i, &mut attrs);
        }
        if let Some(c) = e.connection {
            attrs.extend(connection_attr(t.connection_id, &c.connection_id));
        }
        if let Some(h) = e.upstream_host {
            attrs.push(KeyValue::new("sidekey.upstream.host", h.to_string()));
        }
        if let Some(s) = e.status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        if let Some(code) = e.error {
            attrs.push(KeyValue::new("sidekey.error.code", code));
        }
        attrs.push(KeyValue::new("sidekey.attempts", i64::from(e.attempts)));
        attrs.push(KeyValue::new("http.request.body.size", e.bytes_in as i64));
        attrs.push(KeyValue::new("http.response.body.size", e.bytes_out as i64));
        attrs.push(KeyValue::new("sidekey.complete", e.complete));
        // A server span fails on 5xx only; a 4xx is the caller's mistake (semantic conventions).
        if let Some(s) = e.status.filter(|s| *s >= 500) {
            let kind = e.error.map_or_else(|| s.to_string(), str::to_string);
            attrs.push(KeyValue::new("error.type", kind.clone()));
            span.set_status(Status::error(kind));
        }
        span.set_attributes(attrs);
        span.end();
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        // Normally ended with its outcome; this covers a log dropped without one.
        if let Some(cx) = self.0.take() {
            cx.span().end();
        }
    }
}

/// The client span of one upstream attempt; ends with [`AttemptSpan::end`] (or when dropped).
pub struct AttemptSpan(Option<Box<opentelemetry_sdk::trace::Span>>);

impl AttemptSpan {
    /// Starts the span of attempt number `attempt` (1 for the first, counted across the resend
    /// after a token refresh) and names it in `headers`' `traceparent`.
    pub fn start(method: &Method, uri: &Uri, attempt: u32, headers: &mut HeaderMap) -> Self {
        let Some(t) = active() else {
            return Self(None);
        };
        let method = method_name(method);
        let mut attrs = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("sidekey.attempt", i64::from(attempt)),
        ];
        if let Some(host) = uri.host() {
            attrs.push(KeyValue::new("server.address", host.to_string()));
        }
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
        if attempt > 1 {
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        let span = t
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&t.tracer, &Context::current());
        let cx = span.span_context();
        if cx.is_valid() {
            if let Ok(v) = HeaderValue::from_str(&traceparent(cx)) {
                headers.insert(TRACEPARENT, v);
            }
        }
        Self(Some(Box::new(span)))
    }

    /// Ends the span with the upstream's status, or sidekey's error code when no response came
    /// (`outcome` is only called when the span is recorded).
    pub fn end(self, outcome: impl FnOnce() -> Result<http::StatusCode, &'static str>) {
        let Some(mut span) = self.0 else {
            return;
        };
        match outcome() {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                // A client span fails on any 4xx or 5xx (semantic conventions).
                if status.as_u16() >= 400 {
                    span.set_attribute(KeyValue::new("error.type", status.as_str().to_string()));
                    span.set_status(Status::error(status.as_str().to_string()));
                }
            }
            Err(code) => {
                span.set_attribute(KeyValue::new("error.type", code));
                span.set_attribute(KeyValue::new("sidekey.error.code", code));
                span.set_status(Status::error(code));
            }
        }
        span.end();
    }
}

/// The client span of one token endpoint call.
pub struct TokenSpan(Option<Box<opentelemetry_sdk::trace::Span>>);

impl TokenSpan {
    /// Starts the span of a token call for `conn` (`grant_type`: `refresh_token` or
    /// `client_credentials`; `trigger`: `expiry` or `unauthorized`).
    pub fn start(conn: &Connection, grant_type: &'static str, trigger: &'static str) -> Self {
        let Some(t) = active() else {
            return Self(None);
        };
        let mut attrs = Vec::with_capacity(6);
        integration_attrs(&conn.integration, &mut attrs);
        attrs.extend(connection_attr(t.connection_id, &conn.connection_id));
        attrs.push(KeyValue::new("sidekey.oauth.grant_type", grant_type));
        attrs.push(KeyValue::new("sidekey.oauth.trigger", trigger));
        let span = t
            .tracer
            .span_builder("oauth token")
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&t.tracer, &Context::current());
        Self(Some(Box::new(span)))
    }

    /// Ends the span: success, or the failure with the endpoint's (checked) `error` code.
    pub fn end(self, failure: Option<Option<&str>>) {
        let Some(mut span) = self.0 else {
            return;
        };
        match failure {
            None => span.set_attribute(KeyValue::new("sidekey.oauth.result", "ok")),
            Some(provider_error) => {
                span.set_attribute(KeyValue::new("sidekey.oauth.result", "error"));
                if let Some(code) = provider_error {
                    span.set_attribute(KeyValue::new(
                        "sidekey.oauth.provider_error",
                        code.to_string(),
                    ));
                }
                span.set_attribute(KeyValue::new("error.type", "credentials_refresh_failed"));
                span.set_status(Status::error("credentials_refresh_failed"));
            }
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_gets_the_traces_path_once() {
        let u = |s: &str| traces_url(s).map(|u| u.to_string());
        assert_eq!(
            u("http://127.0.0.1:4318").as_deref(),
            Ok("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            u("https://otel.example/otlp/").as_deref(),
            Ok("https://otel.example/otlp/v1/traces")
        );
        assert_eq!(
            u("http://c:4318/v1/traces").as_deref(),
            Ok("http://c:4318/v1/traces")
        );
        for bad in [
            "127.0.0.1:4318",
            "ftp://c/",
            "http://user:pw@c:4318",
            "http://c/?a=1",
            "",
        ] {
            let err = traces_url(bad).expect_err(bad).to_string();
            assert!(!err.contains("pw"), "{err}");
        }
    }

    #[test]
    fn traceparent_and_hash_formats() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let cx = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(
            traceparent(&cx),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        // printf %s user-123 | sha256sum | cut -c1-16
        assert_eq!(connection_id_hash("user-123"), "fcdec6df4d44dbc6");
        assert_eq!(connection_id_hash("user-123").len(), 16);
    }

    #[test]
    fn everything_is_a_no_op_while_tracing_is_off() {
        // ACTIVE is only set by `init`, which no unit test calls.
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-abc-def-01"));
        let mut span = RequestSpan::start(&Method::GET, Some("/proxy/{endpoint}"), &headers);
        assert!(!span.is_active() && span.context().is_none());
        let uri: Uri = "http://h/x".parse().expect("uri");
        let attempt = AttemptSpan::start(&Method::GET, &uri, 1, &mut headers);
        assert!(attempt.0.is_none());
        attempt.end(|| unreachable!("not called while tracing is off"));
        assert_eq!(
            headers[TRACEPARENT], "00-abc-def-01",
            "caller's header untouched"
        );
        span.end(RequestEnd {
            integration: None,
            connection: None,
            upstream_host: None,
            status: Some(200),
            error: None,
            attempts: 1,
            bytes_in: 0,
            bytes_out: 0,
            complete: true,
        });
    }
}
