//! The one error type of the request path and its one mapping to an HTTP response.
//!
//! Every response that sidekey makes itself (as opposed to one relayed from an upstream) comes
//! from [`ProxyError::to_response`]: a JSON body `{"error":{"code","message"}}` and a
//! `Sidekey-Error: <code>` header, so a caller can tell sidekey's 404 from the upstream's.
//! Messages are written for the caller and never carry a secret: variants hold only names the
//! caller sent or that the operator configured, never credential values.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// Where an error came from, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The caller sent something we refuse.
    Caller,
    /// The upstream (or the way to it) failed.
    Upstream,
    /// Something inside sidekey failed.
    Internal,
}

/// Everything that can stop a request before an upstream response is relayed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request has no Authorization header")]
    MissingAuthHeader,
    #[error("the Authorization header is not of the form `Bearer <secret key>`")]
    MalformedAuthHeader,
    #[error("the secret key is not known")]
    UnknownAccount,
    #[error("{0}")]
    InvalidHeaders(String),
    #[error("no integration with unique key `{0}`")]
    UnknownProviderConfig(String),
    #[error("no connection `{connection_id}` for integration `{provider_config_key}`")]
    UnknownConnection {
        connection_id: String,
        provider_config_key: String,
    },
    #[error("no connection or integration matches the selector `{0}`")]
    UnknownSelector(String),
    #[error("the selector `{0}` matches several connections; use a connection id")]
    AmbiguousConnection(String),
    #[error("{0}")]
    InvalidEndpoint(String),
    #[error("{0}")]
    BaseUrlOverrideNotAllowed(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("Insufficient scope. Required: {0}")]
    Forbidden(&'static str),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("protocol upgrades (WebSocket) are not supported by the proxy")]
    UpgradeNotSupported,
    #[error("could not reach the upstream: {0}")]
    UpstreamUnreachable(String),
    #[error("TLS with the upstream failed: {0}")]
    UpstreamTls(String),
    #[error("the upstream did not answer in time: {0}")]
    UpstreamTimeout(String),
    /// The upstream answered something sidekey cannot relay (a protocol switch).
    #[error("the upstream's answer cannot be relayed: {0}")]
    UpstreamProtocol(String),
    #[error("refreshing the connection's credentials failed{}", provider_error.as_ref().map(|c| format!(" (provider error `{c}`)")).unwrap_or_default())]
    CredentialsRefreshFailed { provider_error: Option<String> },
    #[error("the request body could not be read: {0}")]
    BadRequestBody(String),
    #[error("{0}")]
    Internal(String),
    /// The connection is not in this replica's cache and the store cannot be read (the
    /// PostgreSQL store with a bounded connection cache, while the database is down).
    #[error("{0}")]
    StoreUnavailable(String),
}

impl ProxyError {
    /// The stable machine-readable code, as sent in `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingAuthHeader => "missing_auth_header",
            Self::MalformedAuthHeader => "malformed_auth_header",
            Self::UnknownAccount => "unknown_account",
            Self::InvalidHeaders(_) => "invalid_headers",
            Self::UnknownProviderConfig(_) => "unknown_provider_config",
            Self::UnknownConnection { .. } | Self::UnknownSelector(_) => "unknown_connection",
            Self::AmbiguousConnection(_) => "ambiguous_connection",
            Self::InvalidEndpoint(_) => "invalid_endpoint",
            Self::BaseUrlOverrideNotAllowed(_) => "base_url_override_not_allowed",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::UpgradeNotSupported => "upgrade_not_supported",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTls(_) => "upstream_tls_error",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::UpstreamProtocol(_) => "upstream_protocol_error",
            Self::CredentialsRefreshFailed { .. } => "credentials_refresh_failed",
            Self::BadRequestBody(_) => "invalid_body",
            Self::Internal(_) => "internal_error",
            Self::StoreUnavailable(_) => "store_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingAuthHeader
            | Self::MalformedAuthHeader
            | Self::UnknownAccount
            | Self::CredentialsRefreshFailed { .. } => StatusCode::UNAUTHORIZED,
            Self::InvalidHeaders(_)
            | Self::AmbiguousConnection(_)
            | Self::InvalidEndpoint(_)
            | Self::BaseUrlOverrideNotAllowed(_)
            | Self::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            Self::UnknownProviderConfig(_)
            | Self::UnknownConnection { .. }
            | Self::UnknownSelector(_)
            | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UpgradeNotSupported => StatusCode::NOT_IMPLEMENTED,
            Self::UpstreamUnreachable(_) | Self::UpstreamTls(_) | Self::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            Self::UpstreamUnreachable(_)
            | Self::UpstreamTls(_)
            | Self::UpstreamTimeout(_)
            | Self::UpstreamProtocol(_)
            | Self::CredentialsRefreshFailed { .. } => Origin::Upstream,
            Self::Internal(_) | Self::StoreUnavailable(_) => Origin::Internal,
            _ => Origin::Caller,
        }
    }

    /// The response sidekey sends for this error.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut error = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        if let Self::CredentialsRefreshFailed {
            provider_error: Some(p),
        } = self
        {
            error["provider_error"] = serde_json::Value::String(p.clone());
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut res = json_response(self.status(), Bytes::from(body), Some(self.code()));
        if let Self::MethodNotAllowed(_) = self {
            // Every 405 says which methods the route has (RFC 9110 §15.5.6).
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(PROXY_METHODS));
        }
        res
    }
}

/// The methods the proxy routes forward (the `Allow` of their 405).
pub const PROXY_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// A JSON response made by sidekey; `error_code` adds the `Sidekey-Error` marker.
pub fn json_response(
    status: StatusCode,
    body: Bytes,
    error_code: Option<&'static str>,
) -> Response<ProxyBody> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(code) = error_code {
        headers.insert("sidekey-error", HeaderValue::from_static(code));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_match_the_contract() {
        let cases = [
            (ProxyError::MissingAuthHeader, 401, "missing_auth_header"),
            (
                ProxyError::MalformedAuthHeader,
                401,
                "malformed_auth_header",
            ),
            (ProxyError::UnknownAccount, 401, "unknown_account"),
            (
                ProxyError::InvalidHeaders("x".into()),
                400,
                "invalid_headers",
            ),
            (
                ProxyError::UnknownProviderConfig("x".into()),
                404,
                "unknown_provider_config",
            ),
            (
                ProxyError::UpgradeNotSupported,
                501,
                "upgrade_not_supported",
            ),
            (
                ProxyError::UpstreamTimeout("x".into()),
                504,
                "upstream_timeout",
            ),
            (
                ProxyError::UpstreamTls("x".into()),
                502,
                "upstream_tls_error",
            ),
            (
                ProxyError::UpstreamProtocol("x".into()),
                502,
                "upstream_protocol_error",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{code}");
            assert_eq!(err.code(), code);
            let res = err.to_response();
            assert_eq!(res.headers()["sidekey-error"], code);
        }
    }
}
