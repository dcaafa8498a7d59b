//! Connect: end users add their own credentials, as with Nango's Connect.
//!
//! An application's backend makes a connect session with its secret key (`POST
//! /connect/sessions`, scope `connect_sessions:write`); its frontend hands the session token to
//! `@nangohq/frontend` (or opens `connect_link`), and the end user's browser calls the auth
//! routes with it (`POST /api-auth/api-key/{key}`, `/api-auth/basic/{key}`). The credential is
//! tested against the provider's verification endpoints ([`crate::proxy::verify`]) and written
//! through the store's writer like any API write; the session's end user and tags go on the
//! connection. A reconnect session re-authorizes one existing connection instead.
//!
//! Routes ([`route`]): the session routes (secret key) are served on the main listener only;
//! the session-token routes (`GET`/`DELETE /connect/session`) and the auth routes on both the
//! main listener and the public one (`--connect-listen`, [`handle_public`]), which serves
//! nothing else: no proxy, no management route. The session-token and auth routes answer any
//! origin (CORS `*`, as Nango does): they are called from the end user's browser and carry
//! their own credential in the request, never a cookie.
//!
//! Sessions live behind [`crate::store::sessions::SessionStore`] (in memory in vault-file
//! mode, in PostgreSQL with `--store`, so that any replica serves any session and its OAuth
//! callback), stored by the SHA-256 of their token. Tokens are never logged. A WebSocket
//! (`ws.rs`) is held by one replica; an outcome for a socket that is not here is relayed
//! through the store to the one that holds it.

mod auth;
mod oauth;
mod sessions;
pub mod ui;
mod ws;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::api::ApiError;
use crate::app::App;
use crate::body::ProxyBody;
use crate::config::vault::RawConnection;
use crate::proxy::access_log::RequestLog;
use crate::store::sessions::Session;

/// A Connect route.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ConnectRoute<'a> {
    /// `POST /connect/sessions` (secret key).
    Sessions,
    /// `POST /connect/sessions/reconnect` (secret key).
    Reconnect,
    /// `GET` / `DELETE /connect/session` (session token as Bearer).
    Session,
    /// `POST /api-auth/api-key/{key}` (session token in the query).
    ApiKey(&'a str),
    /// `POST /api-auth/basic/{key}`.
    Basic(&'a str),
    /// `GET /connect/integrations` (session token as Bearer): what the Connect UI lists.
    Integrations,
    /// `GET /oauth/connect/{key}` (session token in the query): to the provider's consent.
    OAuthConnect(&'a str),
    /// `GET /oauth/callback`: back from the provider.
    OAuthCallback,
    /// The Connect UI page and its files: `/connect/` on both listeners, `/` on the public one.
    Ui(ui::Asset),
}

impl ConnectRoute<'_> {
    /// Whether the route takes a secret key (the main listener only).
    fn secret_key(self) -> bool {
        matches!(self, Self::Sessions | Self::Reconnect)
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Self::Session => &[Method::GET, Method::DELETE],
            Self::Integrations | Self::OAuthConnect(_) | Self::OAuthCallback => &[Method::GET],
            Self::Ui(_) => &[Method::GET, Method::HEAD],
            _ => &[Method::POST],
        }
    }
}

/// Matches a Connect route on `listener` (the page at `/` and its files at the root are the
/// public listener's only: on the main one those paths stay the proxy's).
pub fn route(path: &str, listener: Listener) -> Option<ConnectRoute<'_>> {
    use ui::Asset;
    match path {
        "/connect" | "/connect/" => return Some(ConnectRoute::Ui(Asset::Index)),
        "/" if listener == Listener::Public => return Some(ConnectRoute::Ui(Asset::Index)),
        _ => {}
    }
    if let Some(asset) = path.strip_prefix("/connect/").and_then(Asset::named) {
        return Some(ConnectRoute::Ui(asset));
    }
    if listener == Listener::Public {
        if let Some(asset) = path.strip_prefix('/').and_then(Asset::named) {
            return Some(ConnectRoute::Ui(asset));
        }
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/connect/sessions" => return Some(ConnectRoute::Sessions),
        "/connect/sessions/reconnect" => return Some(ConnectRoute::Reconnect),
        "/connect/session" => return Some(ConnectRoute::Session),
        "/connect/integrations" => return Some(ConnectRoute::Integrations),
        "/oauth/callback" => return Some(ConnectRoute::OAuthCallback),
        _ => {}
    }
    if let Some(k) = path
        .strip_prefix("/oauth/connect/")
        .filter(|k| !k.is_empty() && !k.contains('/'))
    {
        return Some(ConnectRoute::OAuthConnect(k));
    }
    let key = |prefix: &str| {
        path.strip_prefix(prefix)
            .filter(|k| !k.is_empty() && !k.contains('/'))
    };
    if let Some(k) = key("/api-auth/api-key/") {
        return Some(ConnectRoute::ApiKey(k));
    }
    key("/api-auth/basic/").map(ConnectRoute::Basic)
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Main,
    Public,
}

/// With a bounded connection cache (the PostgreSQL store), brings the connection a reconnect
/// names into the snapshot before the route reads it there.
async fn ensure_connection(app: &App, integration: &str, id: &str) -> Result<(), ApiError> {
    Ok(app.state.ensure_connection(integration, id).await?)
}

/// Answers a request on the public listener: Connect routes that take no secret key, and 404
/// `not_found` for everything else.
pub async fn handle_public(app: &App, req: Request<Incoming>) -> Response<ProxyBody> {
    handle(app, req, Listener::Public).await
}

/// Answers a Connect route (on the public listener, anything else is 404 `not_found`).
pub async fn handle(app: &App, req: Request<Incoming>, listener: Listener) -> Response<ProxyBody> {
    let (req, mut log) = RequestLog::start(req, &app.state.metrics);
    let path = req.uri().path().to_string();
    // The frontend SDK's WebSocket (OAuth popups) at the Connect listener's root.
    if listener == Listener::Public
        && path == "/"
        && req.method() == Method::GET
        && ws::is_upgrade(req.headers())
    {
        ws::forward_relayed(&*app.sessions);
        let res = ws::accept(req).unwrap_or_else(|e| {
            log.set_error(e.code);
            e.to_response()
        });
        return log.respond(res);
    }
    let route = match route(&path, listener) {
        Some(r) if listener == Listener::Main || !r.secret_key() => r,
        _ => {
            let e: ApiError = crate::error::ProxyError::NotFound(path.clone()).into();
            log.set_error(e.code);
            return log.respond(e.to_response());
        }
    };
    let browser = !route.secret_key();
    let res = if browser && req.method() == Method::OPTIONS {
        preflight(route)
    } else if !route.methods().contains(req.method()) {
        let mut res = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "method {} is not allowed on {}",
                req.method(),
                req.uri().path()
            ),
        )
        .to_response();
        let allow: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
            res.headers_mut().insert(http::header::ALLOW, v);
        }
        log.set_error("method_not_allowed");
        res
    } else {
        let answered = match route {
            ConnectRoute::Sessions => sessions::post_session(app, req, false).await,
            ConnectRoute::Reconnect => sessions::post_session(app, req, true).await,
            ConnectRoute::Session => sessions::session(app, req).await,
            ConnectRoute::ApiKey(key) => auth::api_auth(app, req, key, auth::Kind::ApiKey).await,
            ConnectRoute::Basic(key) => auth::api_auth(app, req, key, auth::Kind::Basic).await,
            ConnectRoute::Integrations => sessions::integrations(app, req).await,
            ConnectRoute::OAuthConnect(key) => oauth::connect(app, req, key).await,
            ConnectRoute::OAuthCallback => oauth::callback(app, req).await,
            ConnectRoute::Ui(asset) => Ok(ui::serve(asset)),
        };
        match answered {
            Ok(res) => res,
            Err(e) => {
                tracing::debug!(code = e.code, ?listener, "connect request refused");
                log.set_error(e.code);
                e.to_response()
            }
        }
    };
    let mut res = res;
    if browser {
        cors(&mut res);
    }
    log.respond(res)
}

/// The headers every answer to the browser routes carries.
fn cors(res: &mut Response<ProxyBody>) {
    res.headers_mut().insert(
        http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// A CORS preflight: Nango's allowed headers, cached for 10 minutes.
fn preflight(route: ConnectRoute<'_>) -> Response<ProxyBody> {
    let mut res = Response::new(crate::body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    let methods: Vec<&str> = route.methods().iter().map(Method::as_str).collect();
    if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
        h.insert(http::header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    h.insert(
        http::header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Authorization, Content-Type, Accept, Origin, X-Requested-With, Nango-Activity-Log-Id, Nango-Is-Dry-Run, Nango-Is-Sync, Provider-Config-Key, Connection-Id, Sentry-Trace, Baggage",
        ),
    );
    h.insert(
        http::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    res
}

/// Whether the Connect flow created a connection or re-authorized one (Nango's webhook
/// `operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Creation,
    Override,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creation => "creation",
            Self::Override => "override",
        }
    }
}

/// The record a Connect flow writes for `key`: a new connection (fresh id) or, on a
/// reconnect, `existing` re-authorized. It keeps the existing id, metadata and creation time;
/// the session gives the end user, tags and webhook URL (its `""` clears one; without one a
/// reconnect keeps the connection's, as Nango's reconnect does).
pub(crate) fn session_record(
    existing: Option<&crate::config::Connection>,
    key: &str,
    credentials: crate::config::vault::RawCredentials,
    connection_config: serde_json::Map<String, serde_json::Value>,
    session: &Session,
) -> RawConnection {
    let now = crate::api::now();
    RawConnection {
        connection_id: existing
            .map(|c| c.connection_id.to_string())
            .unwrap_or_else(crate::api::write::new_id),
        provider_config_key: key.to_string(),
        credentials,
        connection_config,
        metadata: existing.map(|c| c.metadata()).unwrap_or_default(),
        end_user: session.end_user.clone(),
        tags: session.tags.clone(),
        webhook_url_override: match &session.webhook_url_override {
            Some(u) => Some(u.clone()).filter(|u| !u.is_empty()),
            None => existing.and_then(|c| c.extra().webhook_url_override),
        },
        created_at: Some(
            existing
                .and_then(|c| c.created_at())
                .unwrap_or_else(|| now.clone()),
        ),
        updated_at: Some(now),
    }
}

/// Called once a connection made or re-authorized by the Connect flow is durable and serving.
/// The one place that announces it: a debug line (never the credential), and the auth webhook
/// (`creation` or `override`, with the session's end user, to its `webhook_url_override` or
/// `--webhook-url`) through [`App::announce`], which also clears a recorded auth error.
pub fn created(app: &App, record: &RawConnection, operation: Operation, session: &Session) {
    tracing::debug!(
        provider_config_key = %record.provider_config_key,
        connection_id = %record.connection_id,
        operation = operation.as_str(),
        auth_mode = record.credentials.type_name(),
        end_user = session.end_user.is_some(),
        "connection made through Connect"
    );
    let snapshot = app.state.snapshot.load();
    let Some(conn) = snapshot.connection(&record.provider_config_key, &record.connection_id) else {
        // Deleted again between its write and here: nothing left to announce.
        return;
    };
    let operation = match operation {
        Operation::Creation => crate::webhooks::Operation::Creation,
        Operation::Override => crate::webhooks::Operation::Override,
    };
    let mut ev = crate::webhooks::AuthEvent::about(conn, operation, true);
    ev.end_user = session.end_user.as_ref().and_then(end_user);
    ev.webhook_url_override = session.webhook_url_override.clone();
    app.announce(ev);
}

/// The webhook's `endUser` from a session's end user (`{id, email, organization:{id}, tags}`).
fn end_user(v: &serde_json::Value) -> Option<crate::webhooks::EndUser> {
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    Some(crate::webhooks::EndUser {
        id: text(v.get("id"))?,
        email: text(v.get("email")),
        organization_id: text(v.get("organization").and_then(|o| o.get("id"))),
        tags: v.get("tags").and_then(|t| t.as_object()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let route = |p| route(p, Listener::Main);
        assert_eq!(route("/connect/sessions"), Some(ConnectRoute::Sessions));
        assert_eq!(
            route("/connect/sessions/reconnect"),
            Some(ConnectRoute::Reconnect)
        );
        assert_eq!(route("/connect/session/"), Some(ConnectRoute::Session));
        assert_eq!(
            route("/api-auth/api-key/my%20key"),
            Some(ConnectRoute::ApiKey("my%20key"))
        );
        assert_eq!(route("/api-auth/basic/b"), Some(ConnectRoute::Basic("b")));
        assert_eq!(route("/api-auth/basic/"), None);
        assert_eq!(route("/api-auth/basic/a/b"), None);
        assert_eq!(route("/proxy/x"), None);
        assert_eq!(route("/"), None, "the main listener's root is the proxy's");
        assert_eq!(
            super::route("/", Listener::Public),
            Some(ConnectRoute::Ui(ui::Asset::Index))
        );
        assert_eq!(route("/connect/"), Some(ConnectRoute::Ui(ui::Asset::Index)));
        assert_eq!(
            route("/connect/ui.js"),
            Some(ConnectRoute::Ui(ui::Asset::Script))
        );
        assert_eq!(route("/ui.js"), None);
        assert!(ConnectRoute::Sessions.secret_key());
        assert!(!ConnectRoute::Session.secret_key());
    }
}
