//! The proxy service: one request through route → authenticate → find the connection →
//! rewrite the URL → filter headers → inject the credential → forward → relay the response.
//!
//! Each step is a plain function in its own module, testable without a socket; this module
//! only strings them together. The snapshot is loaded once per request (`load_full`) and the
//! request is finished on it even if a reload swaps in a newer one meanwhile.
//!
//! OAuth connections get their token from [`State::oauth`] (refreshed first if it is about to
//! expire); after an upstream 401 the token is refreshed once and the request is sent again from
//! the replay buffer when its body fits there; if that refresh fails the upstream's 401 is what
//! the caller gets.

pub mod access_log;
pub mod decompress;
pub mod forward;
pub mod headers;
pub mod idle;
pub mod inject;
pub mod plan;
pub mod replay;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::netpolicy::OverridePolicy;
use crate::oauth::AccessToken;
use crate::state::State;
use crate::upstream::UpstreamClient;
use access_log::RequestLog;

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

/// What the request path shares across requests: the process state (snapshot, tokens,
/// metrics), the upstream pools and the command line's settings. Built by `app::AppBuilder`.
/// Cloned (cheaply: shared state and pools) where a task must own it.
#[derive(Clone)]
pub struct Proxy {
    pub state: Arc<State>,
    pub client: UpstreamClient,
    pub options: ProxyOptions,
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
pub async fn handle(app: &Proxy, req: Request<Incoming>) -> Response<ProxyBody> {
    let (req, mut log) = RequestLog::start(req, &app.state.metrics);
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

/// The connection the snapshot's cache did not hold, read from the store; `miss` when the
/// store does not have it either; 503 `store_unavailable` when the store cannot be read.
async fn cold_lookup(
    cold: &dyn crate::state::ColdStore,
    route: &route::Route<'_>,
    controls: &Controls<'_>,
    miss: ProxyError,
) -> Result<Arc<crate::config::Connection>, ProxyError> {
    let unavailable = |e: crate::state::ColdError| ProxyError::StoreUnavailable(e.0);
    match route {
        route::Route::Proxy { .. } => {
            let (Some(id), Some(integration)) =
                (controls.connection_id, controls.provider_config_key)
            else {
                return Err(miss);
            };
            cold.connection(integration, id, false)
                .await
                .map_err(unavailable)?
                .ok_or(miss)
        }
        route::Route::ConnectionProxy { selector, .. } => {
            let mut found = cold
                .selector(
                    selector,
                    controls.provider_config_key,
                    controls.connection_id,
                )
                .await
                .map_err(unavailable)?;
            match found.len() {
                0 => Err(miss),
                1 => Ok(found.remove(0)),
                _ => Err(ProxyError::AmbiguousConnection(selector.to_string())),
            }
        }
    }
}

async fn proxy(
    app: &Proxy,
    req: Request<ProxyBody>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let snapshot = app.state.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let (route, controls) = plan::admit(&parts, &snapshot)?;
    log.integration = controls
        .provider_config_key
        .and_then(|k| snapshot.integrations.get(k).cloned());
    let policy = app.options.override_policy;
    let target = match plan::find_connection(&snapshot, &route, &controls) {
        Ok(conn) => plan::target_of(conn, route, controls, policy)?,
        Err(miss @ (ProxyError::UnknownConnection { .. } | ProxyError::UnknownSelector(_))) => {
            // A bounded cache (the PostgreSQL store) may not hold it yet: one indexed read.
            let Some(cold) = app.state.cold.get() else {
                return Err(miss);
            };
            let conn = cold_lookup(cold.as_ref(), &route, &controls, miss).await?;
            plan::target_of(conn, route, controls, policy)?
        }
        Err(e) => return Err(e),
    };
    target.conn.touch();
    let conn = target.conn.clone();
    log.set_connection(&conn);
    let controls = &target.controls;
    let client = match target.pool {
        plan::Pool::Trusted => &app.client.trusted,
        plan::Pool::Checked => &app.client.checked,
    };
    let token = app.state.oauth.access_token(&conn).await?;
    // Headers and URI for a given token; built again for the one resend after a 401.
    let upstream_head = |token: Option<&AccessToken>| {
        plan::upstream_head(&parts, &target, token.map(AccessToken::expose))
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
    let mut tally = forward::Tally::new(&app.state.metrics, &conn.integration);
    let sent = forward::send(client, out, &body, &policy, &app.options, &mut tally).await;
    log.attempts = tally.attempts;
    let mut res = sent?;
    let unauthorized = res.status() == http::StatusCode::UNAUTHORIZED;
    if let Some(stale) = token.as_ref().filter(|_| unauthorized) {
        // The resend does not count against `Retries`; it needs the whole body again.
        if !body.prepare_retry() {
            // No resend (the body streamed once), but the next request gets a fresh token.
            if let Err(e) = app
                .state
                .oauth
                .refresh_after_unauthorized(&conn, stale)
                .await
            {
                tracing::debug!(code = e.code(), "refresh after 401 failed");
            }
        } else {
            match app
                .state
                .oauth
                .refresh_after_unauthorized(&conn, stale)
                .await
            {
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
    // Expired-credential detection: a relaxed flag read on a 2xx, a status compare on a 4xx.
    app.state.errors.observe(&conn, res.status().as_u16());
    let decompress = controls.decompress || provider.decompress;
    forward::relay(res, head_request, decompress, &app.options).await
}
