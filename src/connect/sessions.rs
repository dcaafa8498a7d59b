//! The session routes: `POST /connect/sessions` and `POST /connect/sessions/reconnect` (secret
//! key with `connect_sessions:write`), `GET` and `DELETE /connect/session` (the session token
//! as Bearer).
//!
//! Bodies are checked as Nango checks them: strict shapes, `end_user` required unless `tags`
//! is given, tag and end-user limits, integration keys that must exist (400 `invalid_body`
//! with `custom` issues at their paths), `overrides.*.docs_connect` refused with 403
//! `forbidden` (self-hosted Nango has no plan that allows it).

use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::write::{parse, EndUser, Organization};
use crate::api::{self, validate, ApiError, FieldError};
use crate::app::App;
use crate::body::ProxyBody;
use crate::store::sessions::{self, Found, Session, SessionError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionEndUser {
    id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    tags: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostSession {
    end_user: Option<SessionEndUser>,
    organization: Option<Organization>,
    allowed_integrations: Option<Vec<String>>,
    integrations_config_defaults: Option<Map<String, Value>>,
    overrides: Option<Map<String, Value>>,
    webhook_url_override: Option<String>,
    tags: Option<Map<String, Value>>,
    // Reconnect only.
    connection_id: Option<String>,
    integration_id: Option<String>,
}

fn issue(code: &'static str, path: &[&str], message: &str) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_body",
        message: Some(message.to_string()),
        errors: vec![FieldError {
            code,
            message: message.to_string(),
            path: path.iter().map(|s| s.to_string()).collect(),
        }],
    }
}

/// Nango's integration-key pattern `^[a-zA-Z0-9~:.@ _-]+$`, at most 255 characters.
pub(super) fn integration_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'~' | b':' | b'.' | b'@' | b' ' | b'_' | b'-')
        })
}

/// Nango's connection-id pattern for reconnect bodies.
fn connection_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ",.;:=+~[]|@${}\"'\\/_ -".contains(c))
}

/// `integrations_config_defaults.<key>`: `{user_scopes?, authorization_params?,
/// connection_config?}`, strict.
fn config_defaults(key: &str, v: &Value) -> Result<(), ApiError> {
    let Value::Object(m) = v else {
        return Err(issue(
            "invalid_type",
            &["integrations_config_defaults", key],
            "Invalid input: expected object",
        ));
    };
    for (f, val) in m {
        match (f.as_str(), val) {
            ("user_scopes", Value::String(_)) => {}
            ("authorization_params", Value::Object(p)) => {
                if let Some((k, _)) = p.iter().find(|(_, v)| !v.is_string()) {
                    return Err(issue(
                        "invalid_type",
                        &[
                            "integrations_config_defaults",
                            key,
                            "authorization_params",
                            k,
                        ],
                        "Invalid input: expected string",
                    ));
                }
            }
            ("connection_config", Value::Object(c)) => {
                if c.get("oauth_scopes_override")
                    .is_some_and(|s| !s.is_string())
                {
                    return Err(issue(
                        "invalid_type",
                        &[
                            "integrations_config_defaults",
                            key,
                            "connection_config",
                            "oauth_scopes_override",
                        ],
                        "Invalid input: expected string",
                    ));
                }
            }
            ("user_scopes" | "authorization_params" | "connection_config", _) => {
                return Err(issue(
                    "invalid_type",
                    &["integrations_config_defaults", key, f],
                    "Invalid input: wrong type",
                ))
            }
            _ => {
                return Err(issue(
                    "unrecognized_keys",
                    &["integrations_config_defaults", key],
                    &format!("Unrecognized key: \"{f}\""),
                ))
            }
        }
    }
    Ok(())
}

/// A webhook URL as Nango accepts it: `""`, or http(s) that is not Nango's domain nor a
/// literal loopback, private or link-local address (no DNS lookup here; delivery checks
/// resolved addresses).
fn webhook_url(url: &str) -> Result<(), ApiError> {
    if url.is_empty() {
        return Ok(());
    }
    let path = ["webhook_url_override"];
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Err(issue("invalid_format", &path, "Invalid URL"));
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(issue("invalid_format", &path, "Invalid URL"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(issue("invalid_format", &path, "Invalid URL"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host == "nango.dev" || host.ends_with(".nango.dev") {
        return Err(issue(
            "custom",
            &path,
            "Webhook URLs cannot point to Nango's domain (nango.dev).",
        ));
    }
    let literal_private = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !crate::netpolicy::is_public(ip));
    if literal_private || host == "localhost" {
        return Err(issue("custom", &path, "This webhook URL is not allowed."));
    }
    Ok(())
}

fn not_found_integration(path: &[&str]) -> ApiError {
    issue("custom", path, "Integration does not exist")
}

/// `POST /connect/sessions` and (`reconnect`) `POST /connect/sessions/reconnect`.
pub(super) async fn post_session(
    app: &App,
    req: Request<ProxyBody>,
    reconnect: bool,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = req.into_parts();
    {
        let snapshot = app.state.snapshot.load();
        let scopes = crate::auth::authenticate(&parts.headers, &snapshot.secret_keys)?;
        let needed = crate::auth::Scope::ConnectSessionsWrite;
        if !scopes.contains(needed) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("Insufficient scope. Required: {}", needed.name()),
            ));
        }
    }
    api::strict_query(parts.uri.query(), &[])?;
    let raw = api::read_json(&parts.headers, body).await?;
    // The body's shape first (strict keys), then the rules serde cannot say.
    if let Some(Value::Object(m)) = &raw {
        let allowed: &[&str] = if reconnect {
            &[
                "connection_id",
                "integration_id",
                "end_user",
                "organization",
                "integrations_config_defaults",
                "overrides",
                "webhook_url_override",
                "tags",
            ]
        } else {
            &[
                "end_user",
                "organization",
                "allowed_integrations",
                "integrations_config_defaults",
                "overrides",
                "webhook_url_override",
                "tags",
            ]
        };
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(issue(
                "unrecognized_keys",
                &[],
                &format!("Unrecognized key: \"{k}\""),
            ));
        }
        if let Some(Value::Object(eu)) = m.get("end_user") {
            validate::end_user(eu)?;
        }
        if let Some(Value::Object(t)) = m.get("tags") {
            validate::tags(t, &["tags"])?;
        }
        if let Some(Value::Object(o)) = m.get("organization") {
            for f in ["id", "display_name"] {
                if let Some(Value::String(s)) = o.get(f) {
                    validate::length(s, 0, 255, &["organization", f])?;
                }
            }
        }
        if !reconnect && !m.contains_key("end_user") && !m.contains_key("tags") {
            return Err(issue(
                "invalid_type",
                &["end_user"],
                "Invalid input: expected object, received undefined",
            ));
        }
    } else if raw.is_some() {
        return Err(issue("invalid_type", &[], "Invalid input: expected object"));
    } else if !reconnect {
        return Err(issue(
            "invalid_type",
            &["end_user"],
            "Invalid input: expected object, received undefined",
        ));
    }
    let body: PostSession = parse(raw)?;
    if let (true, Some(cid), Some(key)) = (reconnect, &body.connection_id, &body.integration_id) {
        super::ensure_connection(app, key, cid).await?;
    }
    let snapshot = app.state.snapshot.load_full();
    if let Some(list) = &body.allowed_integrations {
        for (i, k) in list.iter().enumerate() {
            let idx = i.to_string();
            if !integration_key(k) {
                return Err(issue(
                    "invalid_format",
                    &["allowed_integrations", &idx],
                    "Invalid integration key",
                ));
            }
            if !snapshot.integrations.contains_key(k.as_str()) {
                return Err(not_found_integration(&["allowed_integrations", &idx]));
            }
        }
    }
    let mut defaults = body.integrations_config_defaults.unwrap_or_default();
    for (k, v) in &defaults {
        config_defaults(k, v)?;
        if !snapshot.integrations.contains_key(k.as_str()) {
            return Err(not_found_integration(&["integrations_config_defaults", k]));
        }
    }
    // Nango's deprecated `connection_config.webhook_url`: checked like
    // `webhook_url_override`, taken out of the config, and the first non-empty one becomes the
    // override unless the body gives one (an explicit "" wins too).
    let mut webhook_url_override = body.webhook_url_override.clone();
    for (k, v) in defaults.iter_mut() {
        let Some(Value::Object(cc)) = v.get_mut("connection_config") else {
            continue;
        };
        match cc.remove("webhook_url") {
            Some(Value::String(url)) => {
                webhook_url(&url).map_err(|mut e| {
                    if let Some(first) = e.errors.first_mut() {
                        first.path = [
                            "integrations_config_defaults",
                            k,
                            "connection_config",
                            "webhook_url",
                        ]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                    }
                    e
                })?;
                if webhook_url_override.is_none() && !url.is_empty() {
                    webhook_url_override = Some(url);
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => {
                return Err(issue(
                    "invalid_type",
                    &[
                        "integrations_config_defaults",
                        k,
                        "connection_config",
                        "webhook_url",
                    ],
                    "Invalid input: expected string",
                ))
            }
        }
    }
    let overrides = body.overrides.unwrap_or_default();
    for (k, v) in &overrides {
        let Value::Object(o) = v else {
            return Err(issue(
                "invalid_type",
                &["overrides", k],
                "Invalid input: expected object",
            ));
        };
        if let Some(f) = o.keys().find(|f| *f != "docs_connect") {
            return Err(issue(
                "unrecognized_keys",
                &["overrides", k],
                &format!("Unrecognized key: \"{f}\""),
            ));
        }
        if !snapshot.integrations.contains_key(k.as_str()) {
            return Err(not_found_integration(&["overrides", k]));
        }
    }
    if overrides.values().any(|o| o.get("docs_connect").is_some()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "You are not allowed to override the docs connect url",
        ));
    }
    if let Some(url) = &body.webhook_url_override {
        webhook_url(url)?;
    }
    let end_user = body.end_user.map(|eu| EndUser {
        id: eu.id,
        email: eu.email,
        display_name: eu.display_name,
        organization: body.organization.clone(),
        tags: eu.tags,
    });
    let mut tags = end_user.as_ref().map(EndUser::tags).unwrap_or_default();
    if let Some(t) = &body.tags {
        tags.extend(t.clone());
    }
    let mut session = Session {
        expires_at: jiff::Timestamp::now(),
        end_user: end_user.as_ref().map(EndUser::to_value),
        tags,
        allowed_integrations: body.allowed_integrations.filter(|l| !l.is_empty()),
        integrations_config_defaults: defaults,
        overrides,
        webhook_url_override,
        reconnect: None,
    };
    if reconnect {
        let missing = if body.connection_id.is_none() {
            "connection_id"
        } else {
            "integration_id"
        };
        let (Some(cid), Some(key)) = (body.connection_id, body.integration_id) else {
            return Err(issue(
                "invalid_type",
                &[missing],
                "Invalid input: expected string, received undefined",
            ));
        };
        if !connection_id_ok(&cid) {
            return Err(issue(
                "invalid_format",
                &["connection_id"],
                "Invalid connection id",
            ));
        }
        if !integration_key(&key) {
            return Err(issue(
                "invalid_format",
                &["integration_id"],
                "Invalid integration key",
            ));
        }
        let Some(conn) = snapshot.connection(&key, &cid) else {
            return Err(ApiError::invalid_body(
                "ConnectionID or IntegrationId does not exists",
            ));
        };
        // Without a new end user or tags the connection keeps its own (Nango would empty the
        // tags; an application re-authorizing a key rarely means that).
        if session.end_user.is_none() && body.tags.is_none() {
            session.end_user = conn.end_user();
            session.tags = conn.tags();
        }
        session.allowed_integrations = Some(vec![key.clone()]);
        session.reconnect = Some((key, cid));
    }
    let ttl = jiff::SignedDuration::try_from(app.connect.session_ttl)
        .unwrap_or(jiff::SignedDuration::from_secs(30 * 60));
    session.expires_at = jiff::Timestamp::now().checked_add(ttl).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "Failed to create connect session",
        )
    })?;
    let expires_at = format!("{:.3}", session.expires_at);
    let token = sessions::new_token();
    app.sessions
        .insert(sessions::digest(&token), session)
        .await
        .map_err(unavailable)?;
    let link = connect_link(app, &token);
    tracing::debug!(reconnect, "connect session created");
    Ok(api::reply(
        StatusCode::CREATED,
        json!({"data": {"token": token, "connect_link": link, "expires_at": expires_at}}),
    ))
}

/// `<public url>/?session_token=<token>`: the public URL without query or fragment, with a
/// trailing slash (Nango's Connect UI loads its assets relative to it).
fn connect_link(app: &App, token: &str) -> String {
    let base = app
        .connect
        .public_url
        .get()
        .map(String::as_str)
        .unwrap_or("http://127.0.0.1:3003");
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let slash = if base.ends_with('/') { "" } else { "/" };
    format!("{base}{slash}?session_token={token}")
}

pub(super) fn unavailable(e: SessionError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        e.to_string(),
    )
}

/// 401 `invalid_connect_session_token_format`.
pub(super) fn bad_format() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_connect_session_token_format",
        "Authentication failed. The provided connect session token is not following correct format: nango_connect_session_RANDOM",
    )
}

/// 401 `unknown_connect_session_token`: unknown, expired or deleted.
pub(super) fn unknown() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unknown_connect_session_token",
        "Authentication failed. The provided connect session token does not match any account.",
    )
}

/// The live session of `token` (checked for shape first); with `count`, one auth attempt
/// more is counted.
pub(super) async fn lookup(
    app: &App,
    token: &str,
    count: bool,
) -> Result<(Found, [u8; 32]), ApiError> {
    if !sessions::well_formed(token) {
        return Err(bad_format());
    }
    let digest = sessions::digest(token);
    match app.sessions.get(digest, count).await.map_err(unavailable)? {
        Some(found) => Ok((found, digest)),
        None => Err(unknown()),
    }
}

/// The Bearer token of a session-token route.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(crate::error::ProxyError::MissingAuthHeader)?;
    let value = value
        .to_str()
        .map_err(|_| crate::error::ProxyError::MalformedAuthHeader)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(crate::error::ProxyError::MalformedAuthHeader)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(crate::error::ProxyError::MalformedAuthHeader.into());
    }
    Ok(token)
}

/// `GET /connect/session` (what a Connect UI reads) and `DELETE /connect/session`.
pub(super) async fn session(
    app: &App,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = req.into_parts();
    let token = bearer(&parts.headers)?;
    let (found, digest) = lookup(app, token, false).await?;
    api::strict_query(parts.uri.query(), &[])?;
    if api::read_json(&parts.headers, body).await?.is_some() {
        return Err(issue("unrecognized_keys", &[], "this route takes no body"));
    }
    if parts.method == Method::DELETE {
        app.sessions.delete(digest).await.map_err(unavailable)?;
        tracing::debug!("connect session deleted");
        let mut res = Response::new(crate::body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        return Ok(res);
    }
    Ok(api::ok(json!({ "data": session_json(&found.session) })))
}

/// `GET /connect/integrations`: the integrations the session may connect through the Connect
/// UI (API_KEY, BASIC, and OAUTH2 ones with a client and an authorization URL), by display
/// name, with the fields each needs.
pub(super) async fn integrations(
    app: &App,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, _) = req.into_parts();
    let token = bearer(&parts.headers)?;
    let (found, _) = lookup(app, token, false).await?;
    api::strict_query(parts.uri.query(), &[])?;
    let session = &found.session;
    let snapshot = app.state.snapshot.load_full();
    let mut list: Vec<Value> = snapshot
        .integrations
        .values()
        .filter(|int| {
            session
                .allowed_integrations
                .as_ref()
                .is_none_or(|a| a.contains(&int.unique_key))
        })
        .filter(|int| {
            use crate::config::providers::AuthMode;
            match int.provider.auth_mode {
                AuthMode::ApiKey | AuthMode::Basic => true,
                // Only an OAuth2 integration that can start the flow.
                AuthMode::OAuth2 => {
                    int.oauth_client_id.is_some()
                        && int.oauth_client_secret.is_some()
                        && int.provider.authorization_url.is_some()
                }
                AuthMode::OAuth2Cc => false,
            }
        })
        .map(|int| super::ui::integration_json(int, session))
        .collect();
    list.sort_by(|a, b| {
        let name = |v: &Value| {
            v["display_name"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
        };
        name(a).cmp(&name(b))
    });
    Ok(api::ok(json!({ "data": list })))
}

/// A session as `GET /connect/session` shows it (Nango's camel-case `endUser`; config
/// defaults without `user_scopes`).
fn session_json(s: &Session) -> Value {
    let mut data = json!({
        "endUser": s.end_user.as_ref().map(|eu| json!({
            "id": eu.get("id"),
            "display_name": eu.get("display_name"),
            "email": eu.get("email"),
            "tags": eu.get("tags").cloned().unwrap_or(Value::Null),
            "organization": eu.get("organization").cloned().unwrap_or(Value::Null),
        })),
        "connectUISettings": {
            "showWatermark": false,
            "defaultTheme": "system",
            "theme": {"light": {"primary": "#00B2E3"}, "dark": {"primary": "#00B2E3"}},
        },
        "isReconnecting": s.reconnect.is_some(),
        "websocketsPath": "/",
    });
    if let Some(list) = &s.allowed_integrations {
        data["allowed_integrations"] = json!(list);
    }
    if !s.integrations_config_defaults.is_empty() {
        let shown: Map<String, Value> = s
            .integrations_config_defaults
            .iter()
            .map(|(k, v)| {
                let mut e = Map::new();
                for f in ["connection_config", "authorization_params"] {
                    if let Some(x) = v.get(f) {
                        e.insert(f.to_string(), x.clone());
                    }
                }
                (k.clone(), Value::Object(e))
            })
            .collect();
        data["integrations_config_defaults"] = Value::Object(shown);
    }
    if !s.overrides.is_empty() {
        data["overrides"] = Value::Object(s.overrides.clone());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        assert!(webhook_url("").is_ok());
        assert!(webhook_url("https://hooks.example.com/x").is_ok());
        for bad in [
            "ftp://x.example.com",
            "https://api.nango.dev/x",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/",
            "not a url",
        ] {
            assert!(webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_and_ids() {
        assert!(integration_key("my github~1:@x.y"));
        assert!(!integration_key("a/b"));
        assert!(!integration_key(""));
        assert!(connection_id_ok("user-1 {x}"));
        assert!(!connection_id_ok("a\u{e9}"));
        assert!(config_defaults(
            "k",
            &json!({"user_scopes": "a", "connection_config": {"x": 1}})
        )
        .is_ok());
        assert!(config_defaults("k", &json!({"nope": 1})).is_err());
        assert!(config_defaults("k", &json!({"authorization_params": {"a": 1}})).is_err());
    }
}
