//! Credential verification: an API_KEY or BASIC credential is tested against its provider's
//! `proxy.verification` endpoints before a connection holding it is written (a Connect flow or
//! a `POST /connections` import), as Nango does.
//!
//! The candidate connection is compiled as it would be stored, so the test request carries
//! exactly what a proxied request would: the base URL (or the verification's own
//! `base_url_override`, rendered the same way), the provider's injected headers and query,
//! and the verification's literal headers under them (the credential always wins). Endpoints
//! are tried in order, with no retries; the first 2xx means valid, anything else (another
//! status, a refused connection, a timeout after `--response-timeout`) moves to the next.
//!
//! Address policy: the request goes through the proxy's own pools. When an end user shaped the
//! URL (`params[...]` of the Connect flow fill the `connectionConfig` values its base URL
//! reads), it goes through the checked pool, which refuses loopback, private, link-local and
//! metadata addresses after resolution — unless the operator allows any address for
//! overrides (`--base-url-override any`). A URL fixed by the operator's files is trusted. `--resolve` pins are operator-trusted
//! in both pools. An operator's import (`POST /connections` with a secret key) uses the
//! trusted pool, like the proxy does for that connection afterwards.

use http::{HeaderMap, Request};

use super::{inject, rewrite, Proxy};
use crate::config::{BaseUrl, Connection};
use crate::netpolicy::OverridePolicy;

/// What a test concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// An endpoint answered 2xx.
    Valid,
    /// The provider has no verification endpoints: accepted untested.
    Untested,
}

/// Every endpoint refused the credential (or could not be reached).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "The given credentials were found to be invalid. Please check the credentials and try again."
)]
pub struct Refused;

/// Tests `conn`'s credential. `end_user_input`: its `connection_config` came from an end user
/// (the Connect flow), so the URL is checked against the address policy.
pub async fn verify(
    proxy: &Proxy,
    conn: &Connection,
    end_user_input: bool,
) -> Result<Verified, Refused> {
    let Some(v) = &conn.integration.provider.verification else {
        return Ok(Verified::Untested);
    };
    let config = conn.connection_config();
    let base = match &v.base_url_override {
        Some(t) => {
            let mut values = conn.values(None);
            values.connection_config = Some(&config);
            let rendered = t.render(&values).map_err(|missing| {
                tracing::debug!(%missing, "verification base URL cannot be rendered");
                Refused
            })?;
            BaseUrl::parse(&rendered).map_err(|e| {
                tracing::debug!(error = %e, "verification base URL is not a URL");
                Refused
            })?
        }
        None => match conn.base_url.as_deref() {
            Some(b) => b.clone(),
            None => {
                tracing::debug!(
                    integration = %conn.provider_config_key,
                    "no base URL to verify the credential against"
                );
                return Err(Refused);
            }
        },
    };
    // Only a URL an end user's values went into is address-checked.
    let template = v
        .base_url_override
        .as_ref()
        .or(conn
            .integration
            .base_url
            .as_ref()
            .or(conn.integration.provider.base_url.as_ref()));
    let shaped = template.is_some_and(|t| {
        t.placeholders()
            .any(|p| matches!(p, crate::template::Placeholder::ConnectionConfig(_)))
    });
    let checked = end_user_input && shaped && proxy.options.override_policy != OverridePolicy::Any;
    let client = if checked {
        &proxy.client.checked
    } else {
        &proxy.client.trusted
    };
    let injected: Vec<(&str, &str)> = conn
        .static_query
        .iter()
        .map(|(n, v)| (&**n, &**v))
        .collect();
    for (i, endpoint) in v.endpoints.iter().enumerate() {
        let (path, query) = match endpoint.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (endpoint.as_str(), None),
        };
        let uri = match rewrite::upstream_uri(&base, path, query, &injected) {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(
                    endpoint = i,
                    code = e.code(),
                    "verification endpoint refused"
                );
                continue;
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, base.host_header.clone());
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("sidekey/", env!("CARGO_PKG_VERSION"))),
        );
        for (n, val) in &v.headers {
            headers.insert(n.clone(), val.clone());
        }
        if inject::inject(conn, None, &mut headers).is_err() {
            return Err(Refused);
        }
        let body = match (&v.data, v.method == http::Method::POST) {
            (Some(data), true) => {
                if !headers.contains_key(http::header::CONTENT_TYPE) {
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                }
                crate::body::full(data.to_string())
            }
            _ => crate::body::empty(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = v.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let sent = tokio::time::timeout(proxy.options.response_timeout, client.request(req)).await;
        match sent {
            Ok(Ok(res)) if res.status().is_success() => {
                tracing::debug!(
                    endpoint = i,
                    status = res.status().as_u16(),
                    "credential verified"
                );
                return Ok(Verified::Valid);
            }
            Ok(Ok(res)) => {
                tracing::debug!(
                    endpoint = i,
                    status = res.status().as_u16(),
                    "verification answered non-2xx"
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = i, error = %e, "verification request failed");
            }
            Err(_) => tracing::debug!(endpoint = i, "verification request timed out"),
        }
    }
    Err(Refused)
}
