//! Nango's management API: providers, integrations and connections, read and written.
//!
//! [`route`] matches a method and path to an [`ApiRoute`] and the [`Scope`] it needs; the
//! router authenticates the caller and checks that scope before [`respond`] runs. Reads are
//! answered from the snapshot ([`read`]); writes ([`write`]) turn a strict JSON body into
//! records, and commit them through the store's writer, so a `2xx` means durable and visible
//! to the proxy. Shapes, statuses and error codes follow Nango's public API; errors use its
//! envelope `{"error":{"code","message","errors":[{code,message,path}]}}` and carry the
//! `Sidekey-Error` header like every response sidekey makes itself.
//!
//! Input limits: bodies above [`MAX_BODY`] are refused with 413 before they are parsed, a
//! JSON route sent another `Content-Type` gets 415, and JSON nesting is bounded by serde_json's
//! recursion limit (128), so no body can make the parser recurse without bound.

pub mod read;
pub(crate) mod validate;
pub mod write;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

use crate::auth::{Scope, Scopes};
use crate::body::ProxyBody;
use crate::config::Diagnostic;
use crate::error::{json_response, ProxyError};
use crate::store::StoreError;

/// The largest request body a management route reads.
pub const MAX_BODY: usize = 1024 * 1024;

/// A management route.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum ApiRoute<'a> {
    Providers,
    Provider(&'a str),
    Integrations,
    Integration(&'a str),
    Connections,
    Connection(&'a str),
    Metadata,
}

/// One field problem of a refused body or query, as Nango reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub code: &'static str,
    pub message: String,
    pub path: Vec<String>,
}

/// An error of a management route; its response is Nango's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Option<String>,
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: Some(message.into()),
            errors: Vec::new(),
        }
    }

    /// 400 `invalid_body` (or `invalid_query_params`) with one field problem.
    pub fn field(code: &'static str, path: &[&str], message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: Some(message.clone()),
            errors: vec![FieldError {
                code: "invalid",
                message,
                path: path.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The diagnostics of records that do not compile, with their paths split into segments
    /// (the same messages `sidekey check` prints for the vault).
    pub fn from_diagnostics(diags: &[Diagnostic]) -> Self {
        let errors: Vec<FieldError> = diags
            .iter()
            .map(|d| FieldError {
                code: "invalid",
                message: d.message.clone(),
                path: split_path(&d.path),
            })
            .collect();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_body",
            message: errors
                .first()
                .map(|e| format!("{}: {}", e.path.join("."), e.message)),
            errors,
        }
    }

    pub fn to_response(&self) -> Response<ProxyBody> {
        let mut error = json!({ "code": self.code });
        if let Some(m) = &self.message {
            error["message"] = Value::String(m.clone());
        }
        if !self.errors.is_empty() {
            error["errors"] = self
                .errors
                .iter()
                .map(|e| json!({"code": e.code, "message": e.message, "path": e.path}))
                .collect();
        }
        let body = json!({ "error": error }).to_string();
        let mut res = json_response(self.status, Bytes::from(body), Some(self.code));
        // Refused before its body was read: the connection cannot carry another request, so
        // say so rather than let the client send one into a connection about to close.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE
        ) {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        Self::new(e.status(), e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(d) => Self::from_diagnostics(&d),
            StoreError::Precondition(p) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("the state changed while this write was made ({p:?}); read and retry"),
            ),
            StoreError::ReadOnly(m) => Self::new(StatusCode::CONFLICT, "store_read_only", m),
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Unavailable(m) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", m)
            }
        }
    }
}

/// A connection the store could not be read for (a bounded connection cache): 503, as an
/// unreachable store answers a write.
impl From<crate::state::ColdError> for ApiError {
    fn from(e: crate::state::ColdError) -> Self {
        StoreError::Unavailable(e.0).into()
    }
}

/// 400 `connection_test_failed`: the provider's verification endpoints refused the
/// credential (Nango's message, which names no value).
pub(crate) fn connection_test_failed() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "connection_test_failed",
        crate::proxy::verify::Refused.to_string(),
    )
}

/// `connections[3].credentials.apiKey` → `["connections","3","credentials","apiKey"]`.
fn split_path(p: &str) -> Vec<String> {
    p.split(['.', '[', ']'])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Matches the management routes (`/connection` and `/config` are Nango's older spellings).
pub fn route(path: &str) -> Option<ApiRoute<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/providers" => return Some(ApiRoute::Providers),
        "/integrations" | "/config" => return Some(ApiRoute::Integrations),
        "/connections" | "/connection" => return Some(ApiRoute::Connections),
        "/connections/metadata" | "/connection/metadata" => return Some(ApiRoute::Metadata),
        _ => {}
    }
    let one = |prefix: &[&str]| {
        prefix.iter().find_map(|p| {
            path.strip_prefix(p)
                .filter(|k| !k.is_empty() && !k.contains('/'))
        })
    };
    if let Some(name) = one(&["/providers/"]) {
        return Some(ApiRoute::Provider(name));
    }
    if let Some(key) = one(&["/integrations/", "/config/"]) {
        return Some(ApiRoute::Integration(key));
    }
    one(&["/connections/", "/connection/"]).map(ApiRoute::Connection)
}

/// The scope a method on a route needs, or `None` when the method is not served there.
pub fn scope(route: &ApiRoute<'_>, method: &Method) -> Option<Scope> {
    use ApiRoute as R;
    let read = *method == Method::GET || *method == Method::HEAD;
    let s = match (route, read) {
        (R::Providers | R::Provider(_) | R::Integrations | R::Integration(_), true) => {
            Scope::IntegrationsRead
        }
        (R::Connections | R::Connection(_), true) => Scope::ConnectionsRead,
        (R::Integrations, false) if *method == Method::POST => Scope::IntegrationsWrite,
        (R::Integration(_), false) if matches!(*method, Method::PATCH | Method::DELETE) => {
            Scope::IntegrationsWrite
        }
        (R::Connections, false) if *method == Method::POST => Scope::ConnectionsWrite,
        (R::Connection(_), false) if matches!(*method, Method::PATCH | Method::DELETE) => {
            Scope::ConnectionsWrite
        }
        (R::Metadata, false) if matches!(*method, Method::POST | Method::PATCH) => {
            Scope::ConnectionsWrite
        }
        _ => return None,
    };
    Some(s)
}

/// The `Allow` value of a 405 on `route`: the methods [`scope`] knows for it, so the header
/// and the router never disagree.
pub fn allowed_methods(route: &ApiRoute<'_>) -> String {
    const METHODS: [Method; 6] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    let allowed: Vec<&str> = METHODS
        .iter()
        .filter(|m| scope(route, m).is_some())
        .map(Method::as_str)
        .collect();
    allowed.join(", ")
}

/// Nango routes sidekey does not serve: it proxies and stores credentials, and runs no syncs,
/// actions or scripts.
pub fn not_supported(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    matches!(
        first,
        "records" | "sync" | "action" | "scripts" | "webhook" | "environment" | "functions" | "mcp"
    )
}

/// The 501 for a route in [`not_supported`].
pub fn not_supported_error(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_supported",
        format!(
            "{path} is not supported: sidekey proxies requests and stores credentials, and runs no syncs, actions or scripts"
        ),
    )
}

/// A request's parts as the handlers need them.
pub struct ApiRequest<'a> {
    pub method: &'a Method,
    pub query: Option<&'a str>,
    pub scopes: Scopes,
    pub body: Option<Value>,
}

/// Reads a JSON body: refuses a non-JSON `Content-Type` (415), a body above [`MAX_BODY`]
/// (413), and text that is not JSON (400). An empty body is `None`.
pub async fn read_json(headers: &HeaderMap, body: ProxyBody) -> Result<Option<Value>, ApiError> {
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ok = ct.to_str().is_ok_and(|s| {
            s.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_content_type",
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MAX_BODY as u64 {
            return Err(too_large());
        }
    }
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::invalid_body(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::invalid_body(format!("the body is not valid JSON: {e}")))
}

/// Answers a management route.
pub async fn respond(
    app: &crate::app::App,
    route: &ApiRoute<'_>,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    if app.state.cold.get().is_some() {
        prefetch(app, route, &req).await?;
    }
    if *req.method == Method::GET || *req.method == Method::HEAD {
        return read::respond(app, route, &req).await;
    }
    write::respond(app, route, req).await
}

/// With a bounded connection cache (the PostgreSQL store), the connections a request names
/// are brought into the snapshot first, so every route below reads and writes the snapshot
/// as it does over the whole vault. Unparsable input is left for the route to refuse.
async fn prefetch(
    app: &crate::app::App,
    route: &ApiRoute<'_>,
    req: &ApiRequest<'_>,
) -> Result<(), ApiError> {
    let mut named: Vec<(String, String)> = Vec::new();
    match route {
        ApiRoute::Connection(id) => {
            if let Some(key) = query_param(req.query, "provider_config_key") {
                named.push((key, decode(id)));
            }
        }
        ApiRoute::Connections | ApiRoute::Metadata if *req.method != Method::GET => {
            let body = req.body.as_ref();
            let key = body
                .and_then(|b| b.get("provider_config_key"))
                .and_then(Value::as_str);
            let ids: Vec<&str> = match body.and_then(|b| b.get("connection_id")) {
                Some(Value::String(id)) => vec![id.as_str()],
                Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if let Some(key) = key {
                // A metadata write names at most what its body holds; a bound keeps a huge
                // array from turning into as many reads before validation.
                named.extend(
                    ids.into_iter()
                        .take(1000)
                        .map(|id| (key.to_string(), id.to_string())),
                );
            }
        }
        _ => {}
    }
    for (key, id) in named {
        app.state.ensure_connection(&key, &id).await?;
    }
    Ok(())
}

/// A `200` JSON response.
pub(crate) fn ok(body: Value) -> Response<ProxyBody> {
    reply(StatusCode::OK, body)
}

pub(crate) fn reply(status: StatusCode, body: Value) -> Response<ProxyBody> {
    json_response(status, Bytes::from(body.to_string()), None)
}

/// The query string as `(name, value)` pairs, percent-decoded (`+` is a space).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// The value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Refuses query parameters outside `allowed` (Nango's strict queries).
pub(crate) fn strict_query(query: Option<&str>, allowed: &[&str]) -> Result<(), ApiError> {
    for (k, _) in query_pairs(query) {
        let base = k.split('[').next().unwrap_or(&k);
        if !allowed.contains(&base) {
            return Err(ApiError::field(
                "invalid_query_params",
                &[base],
                format!("Unrecognized key: \"{base}\""),
            ));
        }
    }
    Ok(())
}

pub(crate) fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Now, as the API writes timestamps: RFC 3339 UTC with milliseconds.
pub(crate) fn now() -> String {
    crate::config::vault::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/integrations"), Some(ApiRoute::Integrations));
        assert_eq!(route("/integrations/"), Some(ApiRoute::Integrations));
        assert_eq!(route("/integrations/gh"), Some(ApiRoute::Integration("gh")));
        assert_eq!(route("/connection/u1"), Some(ApiRoute::Connection("u1")));
        assert_eq!(route("/connections/u1"), Some(ApiRoute::Connection("u1")));
        assert_eq!(route("/connections/metadata"), Some(ApiRoute::Metadata));
        assert_eq!(route("/connections/u1/proxy"), None);
        assert_eq!(route("/providers"), Some(ApiRoute::Providers));
        assert_eq!(
            route("/providers/github"),
            Some(ApiRoute::Provider("github"))
        );
        assert_eq!(route("/nope"), None);
    }

    #[test]
    fn scopes_per_route() {
        let s = |r: ApiRoute<'static>, m: Method| scope(&r, &m);
        assert_eq!(
            s(ApiRoute::Integrations, Method::GET),
            Some(Scope::IntegrationsRead)
        );
        assert_eq!(
            s(ApiRoute::Integrations, Method::POST),
            Some(Scope::IntegrationsWrite)
        );
        assert_eq!(s(ApiRoute::Integrations, Method::DELETE), None);
        assert_eq!(
            s(ApiRoute::Connection("c"), Method::DELETE),
            Some(Scope::ConnectionsWrite)
        );
        assert_eq!(
            s(ApiRoute::Metadata, Method::PATCH),
            Some(Scope::ConnectionsWrite)
        );
        assert_eq!(s(ApiRoute::Metadata, Method::GET), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&integrationId=my%20gh"), "integrationId").as_deref(),
            Some("my gh")
        );
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "b"), None);
        assert!(strict_query(Some("tags[a]=1&limit=3"), &["tags", "limit"]).is_ok());
        assert_eq!(
            strict_query(Some("x=1"), &["limit"]).map_err(|e| e.code),
            Err("invalid_query_params")
        );
    }

    #[test]
    fn paths_split_like_nango() {
        assert_eq!(
            split_path("connections[3].credentials.apiKey"),
            ["connections", "3", "credentials", "apiKey"]
        );
        assert!(not_supported("/sync/trigger"));
        assert!(not_supported("/records"));
        assert!(!not_supported("/connections"));
    }
}
