//! The proxy service: one request through route → authenticate → find the connection →
//! rewrite the URL → filter headers → inject the credential → forward → relay the response.
//!
//! Each step is a plain function in its own module, testable without a socket; this module
//! only strings them together. The snapshot is loaded once per request (`load_full`) and the
//! request is finished on it even if a reload swaps in a newer one meanwhile.
//!
//! OAuth connections get their token from [`App::oauth`] (refreshed first if it is about to
//! expire); after an upstream 401 the token is refreshed once and the request is sent again from
//! the replay buffer when its body fits there; if that refresh fails the upstream's 401 is what
//! the caller gets.

pub mod client;
pub mod decompress;
pub mod forward;
pub mod headers;
pub mod idle;
pub mod inject;
pub mod replay;
pub mod retry;
pub mod rewrite;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::config::{BaseUrl, Connection, Snapshot};
use crate::credstore::CredStore;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::netpolicy::OverridePolicy;
use crate::oauth::endpoint::HttpTokenEndpoint;
use crate::oauth::{AccessToken, OAuthOptions, TokenManager};
use crate::telemetry::RequestLog;
use client::UpstreamClient;
use route::Route;

/// Request-path settings from the command line.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub override_policy: OverridePolicy,
    /// From the end of the request body to the response head.
    pub response_timeout: Duration,
    /// The longest gap between two chunks of an upstream response body.
    pub idle_timeout: Duration,
    /// Exponential backoff between attempts: base and cap (full jitter).
    pub retry_backoff_base: Duration,
    pub retry_backoff_max: Duration,
    /// An upstream asking for a longer wait gets its response returned at once.
    pub retry_max_wait: Duration,
    /// The largest request body kept for replay.
    pub retry_buffer_bytes: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            override_policy: OverridePolicy::Public,
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            retry_backoff_base: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(5),
            retry_max_wait: Duration::from_secs(30),
            retry_buffer_bytes: 64 * 1024,
        }
    }
}

/// Everything the proxy shares across requests.
pub struct App {
    pub snapshot: ArcSwap<Snapshot>,
    pub client: UpstreamClient,
    pub options: ProxyOptions,
    /// OAuth token state per connection; outlives snapshot swaps.
    pub oauth: TokenManager,
    /// Served on the admin listener; other parts record through it (retries, refreshes, reloads).
    pub metrics: Arc<Metrics>,
    /// The store's writer, once one is started (API writes go through it).
    pub writer: std::sync::OnceLock<crate::store::writer::Writer>,
}

impl App {
    /// An app whose token manager calls token endpoints through the trusted pool and keeps
    /// refreshed credentials in memory only; see [`App::with_oauth`].
    pub fn new(snapshot: Snapshot, client: UpstreamClient, options: ProxyOptions) -> Self {
        let endpoint = HttpTokenEndpoint::new(client.trusted.clone(), options.response_timeout);
        let oauth = TokenManager::new(
            Arc::new(endpoint),
            Arc::new(CredStore::memory()),
            OAuthOptions::default(),
        );
        let metrics = Arc::new(Metrics::new());
        metrics.set_generation(snapshot.generation);
        let mut oauth = oauth;
        oauth.set_metrics(metrics.clone());
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            client,
            options,
            oauth,
            metrics,
            writer: std::sync::OnceLock::new(),
        }
    }

    /// Replaces the token manager (with persistence and the command line's cool-down).
    pub fn with_oauth(mut self, mut oauth: TokenManager) -> Self {
        oauth.set_metrics(self.metrics.clone());
        self.oauth = oauth;
        self
    }
}

/// The control headers of one request.
#[derive(Debug, Default)]
pub struct Controls<'a> {
    pub connection_id: Option<&'a str>,
    pub provider_config_key: Option<&'a str>,
    pub base_url_override: Option<&'a str>,
    pub retries: u32,
    pub retry_on: Vec<u16>,
    pub decompress: bool,
    pub activity_log_id: Option<&'a str>,
}

/// The control header names as text, each written once: [`RawControls::collect`] matches on
/// them and the `HeaderName`s below are built from them.
mod control {
    pub const CONNECTION_ID: &str = "connection-id";
    pub const PROVIDER_CONFIG_KEY: &str = "provider-config-key";
    pub const RETRIES: &str = "retries";
    pub const RETRY_ON: &str = "retry-on";
    pub const DECOMPRESS: &str = "decompress";
    pub const BASE_URL_OVERRIDE: &str = "base-url-override";
    pub const ACTIVITY_LOG_ID: &str = "nango-activity-log-id";
}

// Control header names, built once: looking up by `&str` would parse the name every time.
const CONNECTION_ID: HeaderName = HeaderName::from_static(control::CONNECTION_ID);
const PROVIDER_CONFIG_KEY: HeaderName = HeaderName::from_static(control::PROVIDER_CONFIG_KEY);
const RETRIES: HeaderName = HeaderName::from_static(control::RETRIES);
const RETRY_ON: HeaderName = HeaderName::from_static(control::RETRY_ON);
const DECOMPRESS: HeaderName = HeaderName::from_static(control::DECOMPRESS);
const BASE_URL_OVERRIDE: HeaderName = HeaderName::from_static(control::BASE_URL_OVERRIDE);
pub(crate) const ACTIVITY_LOG_ID: HeaderName = HeaderName::from_static(control::ACTIVITY_LOG_ID);

/// A header's value as trimmed text; anything but visible ASCII is refused.
fn header_text<'a>(name: &HeaderName, v: &'a HeaderValue) -> Result<&'a str, ProxyError> {
    v.to_str()
        .map(str::trim)
        .map_err(|_| ProxyError::InvalidHeaders(format!("{name} is not valid ASCII")))
}

/// The raw control header values: the first of each name, as hyper's `get` would return.
#[derive(Default)]
struct RawControls<'a> {
    connection_id: Option<&'a HeaderValue>,
    provider_config_key: Option<&'a HeaderValue>,
    retries: Option<&'a HeaderValue>,
    retry_on: Option<&'a HeaderValue>,
    decompress: Option<&'a HeaderValue>,
    base_url_override: Option<&'a HeaderValue>,
    activity_log_id: Option<&'a HeaderValue>,
}

impl<'a> RawControls<'a> {
    /// One pass over the headers instead of a hashed lookup per control header.
    fn collect(headers: &'a HeaderMap) -> Self {
        let mut c = Self::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                control::CONNECTION_ID => &mut c.connection_id,
                control::PROVIDER_CONFIG_KEY => &mut c.provider_config_key,
                control::RETRIES => &mut c.retries,
                control::RETRY_ON => &mut c.retry_on,
                control::DECOMPRESS => &mut c.decompress,
                control::BASE_URL_OVERRIDE => &mut c.base_url_override,
                control::ACTIVITY_LOG_ID => &mut c.activity_log_id,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        c
    }
}

impl<'a> Controls<'a> {
    /// Parses the control headers; `need_ids` for the `/proxy` form, where the connection is
    /// named by headers.
    pub fn parse(headers: &'a HeaderMap, need_ids: bool) -> Result<Self, ProxyError> {
        let raw = RawControls::collect(headers);
        // Present and not blank, or absent; a blank value counts as absent.
        let optional = |name: &HeaderName, v: Option<&'a HeaderValue>| match v {
            None => Ok(None),
            Some(v) => header_text(name, v).map(|s| Some(s).filter(|s| !s.is_empty())),
        };
        let required = |name: &HeaderName, v: Option<&'a HeaderValue>| match v {
            Some(v) => match header_text(name, v)? {
                "" => Err(ProxyError::InvalidHeaders(format!("{name} is empty"))),
                s => Ok(Some(s)),
            },
            None if need_ids => Err(ProxyError::InvalidHeaders(format!(
                "the {name} header is required"
            ))),
            None => Ok(None),
        };
        let connection_id = required(&CONNECTION_ID, raw.connection_id)?;
        let provider_config_key = required(&PROVIDER_CONFIG_KEY, raw.provider_config_key)?;
        let retries = match optional(&RETRIES, raw.retries)? {
            None => 0,
            // Any whole number is accepted; above 10 counts as 10 (even past u64).
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u64>().map_or(10, |n| n.min(10)) as u32
            }
            Some(_) => {
                return Err(ProxyError::InvalidHeaders(
                    "Retries must be a whole number".into(),
                ))
            }
        };
        let retry_on = match optional(&RETRY_ON, raw.retry_on)? {
            None => Vec::new(),
            Some(s) => s
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|n| (100..=599).contains(n))
                })
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| {
                    ProxyError::InvalidHeaders(
                        "Retry-On must be a comma-separated list of HTTP statuses".into(),
                    )
                })?,
        };
        let decompress =
            optional(&DECOMPRESS, raw.decompress)?.is_some_and(|s| s.eq_ignore_ascii_case("true"));
        Ok(Self {
            connection_id,
            provider_config_key,
            base_url_override: optional(&BASE_URL_OVERRIDE, raw.base_url_override)?,
            retries,
            retry_on,
            decompress,
            activity_log_id: optional(&ACTIVITY_LOG_ID, raw.activity_log_id)?,
        })
    }
}

/// Handles one proxy request; errors become sidekey's JSON responses. The request is counted
/// in the metrics and written to the access log when its response body is done.
pub async fn handle(app: &App, req: Request<Incoming>) -> Response<ProxyBody> {
    let (req, mut log) = RequestLog::start(req, &app.metrics);
    // Traced requests run under their span, so attempt and token spans become its children.
    let res = match log.trace_context() {
        None => proxy(app, req, &mut log).await,
        Some(cx) => {
            opentelemetry::context::FutureExt::with_context(proxy(app, req, &mut log), cx).await
        }
    };
    let res = match res {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(code = e.code(), "request refused");
            log.set_error(e.code());
            e.to_response()
        }
    };
    log.respond(res)
}

fn allowed_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS
    )
}

/// Finds the connection named by the route or the headers.
fn find_connection(
    snapshot: &Snapshot,
    route: &Route<'_>,
    controls: &Controls<'_>,
) -> Result<Arc<Connection>, ProxyError> {
    // On `/connections/{selector}/proxy` the path names the connection; headers only narrow.
    let by_headers = matches!(route, Route::Proxy { .. });
    if let (true, Some(cid), Some(pck)) = (
        by_headers,
        controls.connection_id,
        controls.provider_config_key,
    ) {
        let found = snapshot
            .connections
            .get(pck)
            .and_then(|per_int| per_int.get(cid));
        return match found {
            Some(conn) => Ok(conn.clone()),
            // An integration with no (such) connection is known; an unknown key is not.
            None if snapshot.integrations.contains_key(pck) => Err(ProxyError::UnknownConnection {
                connection_id: cid.to_string(),
                provider_config_key: pck.to_string(),
            }),
            None => Err(ProxyError::UnknownProviderConfig(pck.to_string())),
        };
    }
    let Route::ConnectionProxy { selector, .. } = route else {
        return Err(ProxyError::InvalidHeaders(
            "Connection-Id and Provider-Config-Key are required".into(),
        ));
    };
    let by_id = snapshot.by_connection_id.get(selector.as_ref());
    let by_int = snapshot.connections.get(selector.as_ref());
    let mut candidates: Vec<&Arc<Connection>> = Vec::new();
    for c in by_id.chain(by_int.into_iter().flat_map(|m| m.values())) {
        let wanted = controls
            .provider_config_key
            .is_none_or(|p| c.provider_config_key == p)
            && controls
                .connection_id
                .is_none_or(|id| c.connection_id == id);
        // A connection whose id is also its integration's key is found both ways: once is enough.
        if wanted && !candidates.iter().any(|k| Arc::ptr_eq(k, c)) {
            candidates.push(c);
        }
    }
    match candidates.as_slice() {
        [] => Err(ProxyError::UnknownSelector(selector.to_string())),
        [one] => Ok((*one).clone()),
        _ => Err(ProxyError::AmbiguousConnection(selector.to_string())),
    }
}

/// Chooses the base URL and the pool: the caller's override (per policy) or the connection's.
fn choose_base<'a>(
    app: &'a App,
    conn: &'a Connection,
    controls: &Controls<'_>,
) -> Result<(std::borrow::Cow<'a, BaseUrl>, &'a client::HttpClient), ProxyError> {
    let Some(o) = controls.base_url_override else {
        let base = conn.base_url.as_ref().ok_or_else(|| {
            ProxyError::InvalidHeaders(format!(
                "integration `{}` has no base URL; send Base-Url-Override",
                conn.provider_config_key
            ))
        })?;
        return Ok((std::borrow::Cow::Borrowed(base), &app.client.trusted));
    };
    let refused = |why: &str| ProxyError::BaseUrlOverrideNotAllowed(why.to_string());
    if app.options.override_policy == OverridePolicy::Deny {
        return Err(refused("Base-Url-Override is disabled on this proxy"));
    }
    let base = BaseUrl::parse(o)
        .map_err(|e| ProxyError::InvalidHeaders(format!("Base-Url-Override: {e}")))?;
    match app.options.override_policy {
        OverridePolicy::Deny => Err(refused("Base-Url-Override is disabled on this proxy")),
        OverridePolicy::Any => Ok((std::borrow::Cow::Owned(base), &app.client.trusted)),
        OverridePolicy::Public => {
            if let Ok(ip) = base.host.parse::<std::net::IpAddr>() {
                if !crate::netpolicy::is_public(ip) {
                    return Err(refused(
                        "Base-Url-Override may not reach loopback, private, link-local or metadata addresses",
                    ));
                }
            }
            Ok((std::borrow::Cow::Owned(base), &app.client.checked))
        }
    }
}

async fn proxy(
    app: &App,
    req: Request<ProxyBody>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let snapshot = app.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let Some(route) = route::route(parts.uri.path()) else {
        return Err(ProxyError::NotFound(parts.uri.path().to_string()));
    };
    if parts.method == Method::CONNECT || parts.headers.contains_key(http::header::UPGRADE) {
        return Err(ProxyError::UpgradeNotSupported);
    }
    if !allowed_method(&parts.method) {
        return Err(ProxyError::MethodNotAllowed(parts.method.to_string()));
    }
    let scopes = crate::auth::authenticate(&parts.headers, &snapshot.secret_keys)?;
    if !scopes.contains(crate::auth::Scope::Proxy) {
        return Err(ProxyError::Forbidden(crate::auth::Scope::Proxy.name()));
    }
    let controls = Controls::parse(&parts.headers, matches!(route, Route::Proxy { .. }))?;
    log.integration = controls
        .provider_config_key
        .and_then(|k| snapshot.integrations.get(k).cloned());
    let conn = find_connection(&snapshot, &route, &controls)?;
    log.set_connection(&conn);
    let (mut base, client) = choose_base(app, &conn, &controls)?;
    let mut endpoint = match &route {
        Route::Proxy { endpoint } | Route::ConnectionProxy { endpoint, .. } => *endpoint,
    };
    if let (Route::ConnectionProxy { .. }, Some(abs)) =
        (&route, rewrite::absolute_endpoint(endpoint))
    {
        let full = BaseUrl::parse(&format!("{}://{}", abs.scheme, abs.authority))
            .map_err(ProxyError::InvalidEndpoint)?;
        if full.host != base.host || full.port != base.port || full.scheme != base.scheme {
            return Err(ProxyError::InvalidEndpoint(format!(
                "a full URL must be on the connection's host `{}`",
                base.host
            )));
        }
        let b = base.to_mut();
        b.path.clear();
        endpoint = abs.path;
    }
    let token = app.oauth.access_token(&conn).await?;
    // Headers and URI for a given token; built again for the one resend after a 401.
    let upstream_head =
        |token: Option<&AccessToken>| -> Result<(http::Uri, HeaderMap), ProxyError> {
            let mut headers =
                HeaderMap::with_capacity(parts.headers.len() + conn.static_headers.len());
            headers::request_headers(&parts.headers, &mut headers);
            headers.insert(http::header::HOST, base.host_header.clone());
            let dynamic_query =
                inject::inject(&conn, token.map(AccessToken::expose), &mut headers)?;
            let injected: Vec<(&str, &str)> = conn
                .static_query
                .iter()
                .chain(dynamic_query.iter())
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let uri = rewrite::upstream_uri(&base, endpoint, parts.uri.query(), &injected)?;
            Ok((uri, headers))
        };
    let (uri, headers) = upstream_head(token.as_ref())?;
    // OAuth connections keep the body even without retries, for the one resend after a 401.
    let keep = controls.retries > 0 || token.is_some();
    let cap = if keep {
        app.options.retry_buffer_bytes
    } else {
        0
    };
    let body = replay::Replay::new(body, cap);
    let head_request = parts.method == Method::HEAD;
    let provider = &conn.integration.provider;
    let policy = retry::Policy {
        retries: controls.retries,
        retry_on: &controls.retry_on,
        hints: &provider.retry,
    };
    if log.enabled() {
        log.upstream = Some(uri.clone());
    }
    let rebuild = || upstream_head(token.as_ref()).ok().map(|(_, h)| h);
    let out = forward::Outbound {
        method: parts.method.clone(),
        uri,
        headers,
        rebuild: &rebuild,
    };
    let mut tally = forward::Tally::new(&app.metrics, &conn.integration);
    let sent = forward::send(client, out, &body, &policy, &app.options, &mut tally).await;
    log.attempts = tally.attempts;
    let mut res = sent?;
    let unauthorized = res.status() == http::StatusCode::UNAUTHORIZED;
    if let Some(stale) = token.as_ref().filter(|_| unauthorized) {
        // The resend does not count against `Retries`; it needs the whole body again.
        if !body.prepare_retry() {
            // No resend (the body streamed once), but the next request gets a fresh token.
            if let Err(e) = app.oauth.refresh_after_unauthorized(&conn, stale).await {
                tracing::debug!(code = e.code(), "refresh after 401 failed");
            }
        } else {
            match app.oauth.refresh_after_unauthorized(&conn, stale).await {
                Ok(fresh) => {
                    let (uri, headers) = upstream_head(Some(&fresh))?;
                    let rebuild = || upstream_head(Some(&fresh)).ok().map(|(_, h)| h);
                    let out = forward::Outbound {
                        method: parts.method.clone(),
                        uri,
                        headers,
                        rebuild: &rebuild,
                    };
                    let sent =
                        forward::send(client, out, &body, &policy, &app.options, &mut tally).await;
                    log.attempts = tally.attempts;
                    res = sent?;
                }
                // The refresh failed: the upstream's own 401 goes back to the caller.
                Err(e) => tracing::debug!(code = e.code(), "no resend after 401"),
            }
        }
    }
    let decompress = controls.decompress || provider.decompress;
    forward::relay(res, head_request, decompress, &app.options).await
}
