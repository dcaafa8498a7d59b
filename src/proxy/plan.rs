//! The pure part of the request path: a caller's request head and the snapshot in, the
//! upstream request's head out — no I/O, no clock, no await.
//!
//! [`admit`] routes, refuses upgrades and unknown methods, authenticates the caller and reads
//! the control headers; [`target`] finds the connection and chooses the base URL and pool;
//! [`upstream_head`] filters the headers, injects the credential and rewrites the URL. The
//! service (`proxy::proxy`) calls them in that order with the OAuth token fetched between
//! the last two, and `benches/hot_path.rs` calls the same three, so the bench measures the
//! code that serves.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Method, Uri};

use super::route::{self, Route};
use super::{headers, inject, rewrite, Controls};
use crate::config::{BaseUrl, Connection, Snapshot};
use crate::error::ProxyError;
use crate::netpolicy::OverridePolicy;

/// Which upstream pool a request goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// URLs the operator configured.
    Trusted,
    /// A caller's `Base-Url-Override` under the `public` policy: every resolved address is
    /// checked before a packet is sent.
    Checked,
}

/// Where a request goes: its connection, base URL, pool and endpoint.
#[derive(Debug)]
pub struct Target<'r> {
    pub controls: Controls<'r>,
    pub conn: Arc<Connection>,
    /// The base URL when it is not the connection's own (an override, or the connection's
    /// without its path for a full-URL endpoint).
    base: Option<BaseUrl>,
    pub pool: Pool,
    /// The raw endpoint appended to the base path.
    pub endpoint: &'r str,
}

impl Target<'_> {
    /// The base URL the endpoint is joined to.
    pub fn base(&self) -> Result<&BaseUrl, ProxyError> {
        match &self.base {
            Some(b) => Ok(b),
            None => self
                .conn
                .base_url
                .as_deref()
                .ok_or_else(|| no_base(&self.conn)),
        }
    }
}

fn no_base(conn: &Connection) -> ProxyError {
    ProxyError::InvalidHeaders(format!(
        "integration `{}` has no base URL; send Base-Url-Override",
        conn.provider_config_key
    ))
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

/// Routes the request, refuses what the proxy does not serve, authenticates the caller for
/// the `proxy` scope and parses the control headers.
pub fn admit<'r>(
    parts: &'r Parts,
    snapshot: &Snapshot,
) -> Result<(Route<'r>, Controls<'r>), ProxyError> {
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
    Ok((route, controls))
}

/// Finds the connection and chooses the base URL and pool; a full-URL endpoint on
/// `/connections/{selector}/proxy` must be on the connection's own host.
pub fn target<'r>(
    snapshot: &Snapshot,
    route: Route<'r>,
    controls: Controls<'r>,
    policy: OverridePolicy,
) -> Result<Target<'r>, ProxyError> {
    let conn = find_connection(snapshot, &route, &controls)?;
    target_of(conn, route, controls, policy)
}

/// [`target`] for a connection found elsewhere (read from the store on a cache miss).
pub fn target_of<'r>(
    conn: Arc<Connection>,
    route: Route<'r>,
    controls: Controls<'r>,
    policy: OverridePolicy,
) -> Result<Target<'r>, ProxyError> {
    let (base, pool) = choose_base(&conn, &controls, policy)?;
    let (mut base, mut endpoint) = (
        base,
        match &route {
            Route::Proxy { endpoint } | Route::ConnectionProxy { endpoint, .. } => *endpoint,
        },
    );
    if let (Route::ConnectionProxy { .. }, Some(abs)) =
        (&route, rewrite::absolute_endpoint(endpoint))
    {
        let full = BaseUrl::parse(&format!("{}://{}", abs.scheme, abs.authority))
            .map_err(|e| ProxyError::InvalidEndpoint(e.to_string()))?;
        let current = match &base {
            Some(b) => b,
            None => conn.base_url.as_deref().ok_or_else(|| no_base(&conn))?,
        };
        if !full.same_host(current) || full.port != current.port || full.scheme != current.scheme {
            return Err(ProxyError::InvalidEndpoint(format!(
                "a full URL must be on the connection's host `{}`",
                current.host()
            )));
        }
        base = Some(current.with_root_path());
        endpoint = abs.path;
    }
    Ok(Target {
        controls,
        conn,
        base,
        pool,
        endpoint,
    })
}

/// The upstream request's URI and headers for `access_token` (an OAuth connection's current
/// token; `None` for the others): the caller's headers that may pass, Host, the injected
/// credential, and the rewritten URL with the injected query.
pub fn upstream_head(
    parts: &Parts,
    target: &Target<'_>,
    access_token: Option<&str>,
) -> Result<(Uri, HeaderMap), ProxyError> {
    let conn = &target.conn;
    let base = target.base()?;
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + conn.static_headers.len());
    headers::request_headers(&parts.headers, &mut headers);
    headers.insert(http::header::HOST, base.host_header.clone());
    let dynamic_query = inject::inject(conn, access_token, &mut headers)?;
    let injected: Vec<(&str, &str)> = conn
        .static_query
        .iter()
        .map(|(n, v)| (&**n, &**v))
        .chain(dynamic_query.iter().map(|(n, v)| (&**n, v.as_str())))
        .collect();
    let uri = rewrite::upstream_uri(base, target.endpoint, parts.uri.query(), &injected)?;
    Ok((uri, headers))
}

/// Finds the connection named by the route or the headers.
pub fn find_connection(
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
            .is_none_or(|p| &*c.provider_config_key == p)
            && controls
                .connection_id
                .is_none_or(|id| &*c.connection_id == id);
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

/// Chooses the base URL (`None`: the connection's own) and the pool: the caller's override
/// under `policy`, or the connection's.
fn choose_base(
    conn: &Connection,
    controls: &Controls<'_>,
    policy: OverridePolicy,
) -> Result<(Option<BaseUrl>, Pool), ProxyError> {
    let Some(o) = controls.base_url_override else {
        if conn.base_url.is_none() {
            return Err(no_base(conn));
        }
        return Ok((None, Pool::Trusted));
    };
    let refused = |why: &str| ProxyError::BaseUrlOverrideNotAllowed(why.to_string());
    if policy == OverridePolicy::Deny {
        return Err(refused("Base-Url-Override is disabled on this proxy"));
    }
    let base = BaseUrl::parse(o)
        .map_err(|e| ProxyError::InvalidHeaders(format!("Base-Url-Override: {e}")))?;
    match policy {
        OverridePolicy::Deny => Err(refused("Base-Url-Override is disabled on this proxy")),
        OverridePolicy::Any => Ok((Some(base), Pool::Trusted)),
        OverridePolicy::Public => {
            if let Ok(ip) = base.host_str().parse::<std::net::IpAddr>() {
                if !crate::netpolicy::is_public(ip) {
                    return Err(refused(
                        "Base-Url-Override may not reach loopback, private, link-local or metadata addresses",
                    ));
                }
            }
            Ok((Some(base), Pool::Checked))
        }
    }
}
