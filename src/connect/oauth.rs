//! The OAuth2 authorization-code flow of the Connect flow: `GET /oauth/connect/{key}` sends
//! the end user's browser to the provider, `GET /oauth/callback` takes the code back, exchanges
//! it at the provider's token endpoint and writes the connection.
//!
//! `/oauth/connect/{key}` takes the session token and `params[...]` in the query like the other
//! auth routes (the same 401/400 JSON errors for the session, `connection_id`,
//! `integration_not_allowed` and a reconnect whose connection is gone), resolves the
//! connection config (a reconnect's own, then `params`, then the session's defaults), renders
//! the provider's `authorization_url` with it, and redirects (302) with `response_type=code`,
//! `client_id`, `redirect_uri` (`--public-url` + `/oauth/callback`), `scope` (the session's
//! `oauth_scopes_override`, else the integration's scopes, else the provider's
//! `default_scopes`, joined by its `scope_separator`), a fresh `state`, PKCE S256 unless the
//! provider sets `disable_pkce` (a 48-character hex verifier, as Nango makes it), the
//! provider's `authorization_params`, then the request's `authorization_params[...]` (the
//! session's `authorization_params` replace the request's; a value `undefined` removes one).
//! Problems found there answer an HTML page with status 400, as Nango does.
//!
//! The `state` is 32 random bytes, kept (hashed) for ten minutes or until its session ends, and
//! taken out by the first callback that presents it: a second use, an unknown or an expired
//! state is refused (`state_err`). The session must still be live at the callback. The token
//! request is a form POST (`grant_type=authorization_code`, `code`, `redirect_uri`,
//! `code_verifier`, the provider's `token_params`) with the client credentials in the body or
//! in HTTP Basic (`token_request_auth_method: basic`), sent through the proxy's pools: the
//! checked pool when the token URL is rendered from an end user's values. The provider's
//! `token_response_metadata` fields of the answer go into `connection_config`.
//!
//! The callback answers an HTML page that posts the outcome to the window that opened it
//! (`nango_oauth_callback_success` with `{connectionId, providerConfigKey}`, or
//! `nango_oauth_callback_error` with `{message, errorType}`), also on the `BroadcastChannel`
//! `nango-oauth-callback`, and closes itself, like Nango's. When the flow was started with the
//! frontend SDK's `ws_client_id`, the outcome also goes to that WebSocket ([`super::ws`]), which
//! is what `nango.auth()` waits for; failures before the redirect are sent there too.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::sessions::{lookup, unavailable};
use super::Operation;
use crate::api::write::commit;
use crate::api::{self, ApiError, FieldError};
use crate::app::App;
use crate::body::ProxyBody;
use crate::config::providers::AuthMode;
use crate::config::snapshot::encode_query_component;
use crate::config::vault::RawCredentials;
use crate::config::Change;
use crate::netpolicy::OverridePolicy;
use crate::store::sessions::{self, OAuthState};
use crate::store::{Expect, Write};
use crate::template::{Placeholder, Template, Values};

/// How long a `state` may wait for its callback.
const STATE_TTL_SECS: i64 = 600;
/// The largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// An error answered as the callback page (status 400), and sent to the opener.
struct PageError {
    kind: &'static str,
    message: String,
}

/// The session store failed (the PostgreSQL store is unreachable): a 503 page, so the
/// browser's opener learns `store_unavailable` as the JSON routes answer it.
fn store_unavailable(e: crate::store::sessions::SessionError) -> PageError {
    page_error("store_unavailable", e.to_string())
}

fn page_error(kind: &'static str, message: impl Into<String>) -> PageError {
    PageError {
        kind,
        message: message.into(),
    }
}

/// `&`, `<`, `>`, `"`, `'` escaped for an HTML attribute or text.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page the provider's redirect lands on. Its script (`connect/oauth-callback.js`, the only
/// script its CSP allows) reads the outcome from the body's data attributes.
fn page(outcome: Result<(String, String), PageError>) -> Response<ProxyBody> {
    let (status, attrs, text) = match &outcome {
        Ok((cid, key)) => (
            StatusCode::OK,
            format!(
                r#"data-outcome="success" data-connection-id="{}" data-provider-config-key="{}""#,
                escape(cid),
                escape(key)
            ),
            "Connected. You can close this window.".to_string(),
        ),
        Err(e) => (
            if e.kind == "store_unavailable" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_REQUEST
            },
            format!(
                r#"data-outcome="error" data-error-type="{}" data-message="{}""#,
                escape(e.kind),
                escape(&e.message)
            ),
            format!("Authorization failed: {}", e.message),
        ),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\"><title>Authorization</title><script src=\"../connect/oauth-callback.js\" defer></script></head><body {attrs}><p>{}</p></body></html>",
        escape(&text)
    );
    let mut res = super::ui::uncached(
        status,
        Bytes::from(html),
        "text/html; charset=utf-8",
        "default-src 'none'; script-src 'self'; base-uri 'none'",
    );
    let h = res.headers_mut();
    if let Err(e) = &outcome {
        if let Ok(v) = HeaderValue::from_str(e.kind) {
            h.insert("sidekey-error", v);
        }
    }
    res
}

/// Values for rendering a template with `config` as `connectionConfig`.
fn values(config: &Map<String, Value>) -> Values<'_> {
    Values {
        connection_config: Some(config),
        ..Values::default()
    }
}

fn reads_config<'a>(mut placeholders: impl Iterator<Item = &'a Placeholder>) -> bool {
    placeholders.any(|p| matches!(p, Placeholder::ConnectionConfig(_)))
}

/// `name[inner]=value` pairs of the query as a map.
fn nested(pairs: &[(String, String)], name: &str) -> Map<String, Value> {
    let prefix = format!("{name}[");
    pairs
        .iter()
        .filter_map(|(k, v)| {
            let inner = k.strip_prefix(&prefix)?.strip_suffix(']')?;
            (!inner.is_empty() && !inner.contains(['[', ']']))
                .then(|| (inner.to_string(), Value::String(v.clone())))
        })
        .collect()
}

/// `GET /oauth/connect/{key}`.
pub(super) async fn connect(
    app: &App,
    req: Request<ProxyBody>,
    raw_key: &str,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, _) = req.into_parts();
    let pairs = api::query_pairs(parts.uri.query());
    let find = |name: &str| {
        pairs
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    };
    let token = super::auth::session_token(find("connect_session_token"), find("public_key"))?;
    let (found, digest) = lookup(app, token, true).await?;
    if found.attempts > app.connect.max_attempts {
        return Err(super::auth::too_many_attempts());
    }
    let session = found.session;
    let key = api::decode(raw_key);
    // The SDK's socket, when it opened one: told of failures here, of the outcome later.
    let ws_client_id = find("ws_client_id")
        .filter(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .map(str::to_string);
    let fail = |e: PageError| {
        if let Some(ws) = &ws_client_id {
            super::ws::error(&*app.sessions, ws, &key, e.kind, &e.message);
        }
        Ok(page(Err(e)))
    };
    if !super::sessions::integration_key(&key) {
        return Err(ApiError::field(
            "invalid_uri_params",
            &["providerConfigKey"],
            "Invalid integration key",
        ));
    }
    if find("connection_id").is_some() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_query_params",
            message: Some("connection_id is forbidden when using session token".into()),
            errors: vec![FieldError {
                code: "custom",
                message: "connection_id is forbidden when using session token".into(),
                path: vec!["connection_id".into()],
            }],
        });
    }
    if let Some(allowed) = &session.allowed_integrations {
        if !allowed.contains(&key) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "integration_not_allowed",
                format!("This connect session may not connect \"{key}\"."),
            ));
        }
    }
    if let Some((pck, cid)) = &session.reconnect {
        super::ensure_connection(app, pck, cid).await?;
    }
    let snapshot = app.state.snapshot.load_full();
    let existing = match &session.reconnect {
        Some((pck, cid)) => match snapshot.connection(pck, cid) {
            Some(c) if *pck == key => Some(c.clone()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_connection",
                    "The connection this session re-authorizes no longer exists.",
                ))
            }
        },
        None => None,
    };
    let Some(int) = snapshot.integrations.get(key.as_str()).cloned() else {
        return fail(page_error(
            "unknown_config_key",
            format!("There is no integration \"{key}\"."),
        ));
    };
    drop(snapshot);
    let provider = &int.provider;
    if provider.auth_mode != AuthMode::OAuth2 {
        return fail(page_error(
            "auth_mode_err",
            format!(
                "The integration \"{key}\" uses {}, not OAuth2.",
                provider.auth_mode.as_str()
            ),
        ));
    }
    let (Some(client_id), Some(_), Some(auth_url)) = (
        int.oauth_client_id.as_ref(),
        int.oauth_client_secret.as_ref(),
        provider.authorization_url.as_ref(),
    ) else {
        return fail(page_error(
            "provider_config_err",
            format!("The integration \"{key}\" has no OAuth client or authorization URL."),
        ));
    };
    let mut config = existing
        .as_ref()
        .map(|c| c.connection_config())
        .unwrap_or_default();
    config.extend(nested(&pairs, "params"));
    let defaults = session.integrations_config_defaults.get(&key);
    if let Some(Value::Object(d)) = defaults.and_then(|d| d.get("connection_config")) {
        config.extend(d.clone());
    }
    config.remove("webhook_url");
    let base = match auth_url.render(&values(&config)) {
        Ok(u) => u,
        Err(missing) => {
            return fail(page_error(
                "url_param_err",
                format!("The authorization URL needs {missing}: send it as params[...]"),
            ))
        }
    };
    let scopes: Vec<String> = match config.get("oauth_scopes_override").and_then(Value::as_str) {
        Some(s) => s.split(',').map(str::trim).map(str::to_string).collect(),
        None => match &int.scopes {
            Some(s) => s.split(',').map(str::trim).map(str::to_string).collect(),
            None => provider.default_scopes.clone(),
        },
    };
    let scopes: Vec<String> = scopes.into_iter().filter(|s| !s.is_empty()).collect();
    let separator = provider.scope_separator.as_deref().unwrap_or(" ");
    // The provider's parameters (templates), then the request's, which the session's replace.
    let mut auth_params: Vec<(String, String)> = Vec::new();
    for (k, v) in &provider.authorization_params {
        let rendered = Template::compile(v)
            .ok()
            .and_then(|t| t.render(&values(&config)))
            .unwrap_or_else(|| v.clone());
        auth_params.push((k.clone(), rendered));
    }
    let from_request = match defaults
        .and_then(|d| d.get("authorization_params"))
        .and_then(Value::as_object)
    {
        Some(session_params) => session_params.clone(),
        None => nested(&pairs, "authorization_params"),
    };
    for (k, v) in from_request {
        auth_params.retain(|(name, _)| *name != k);
        match v.as_str() {
            Some("undefined") | None => {}
            Some(v) => auth_params.push((k, v.to_string())),
        }
    }
    let redirect_uri = callback_url(app);
    let state = hex::encode(rand::random::<[u8; 32]>());
    let verifier = (!provider.disable_pkce).then(|| hex::encode(rand::random::<[u8; 24]>()));
    let mut query: Vec<(String, String)> = vec![
        ("response_type".into(), "code".into()),
        ("client_id".into(), client_id.expose().to_string()),
        ("redirect_uri".into(), redirect_uri.clone()),
    ];
    if !scopes.is_empty() {
        query.push(("scope".into(), scopes.join(separator)));
    }
    query.push(("state".into(), state.clone()));
    if let Some(v) = &verifier {
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes()));
        query.push(("code_challenge".into(), challenge));
        query.push(("code_challenge_method".into(), "S256".into()));
    }
    for (k, v) in auth_params {
        query.retain(|(name, _)| *name != k);
        query.push((k, v));
    }
    let session_left = session.expires_at;
    let expires_at = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(STATE_TTL_SECS))
        .min(session_left);
    app.sessions
        .put_state(
            sessions::digest(&state),
            OAuthState {
                session: digest,
                expires_at,
                provider_config_key: key.clone(),
                connection_config: config,
                code_verifier: verifier,
                redirect_uri,
                ws_client_id,
            },
        )
        .await
        .map_err(unavailable)?;
    let encoded: Vec<String> = query
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode_query_component(k),
                encode_query_component(v)
            )
        })
        .collect();
    let sep = if base.contains('?') { '&' } else { '?' };
    let location = format!("{base}{sep}{}", encoded.join("&"));
    let mut res = Response::new(crate::body::empty());
    *res.status_mut() = StatusCode::FOUND;
    let h = res.headers_mut();
    let loc = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::invalid_body("the authorization URL is not a valid URL"))?;
    h.insert(http::header::LOCATION, loc);
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    tracing::debug!(integration = %key, pkce = !provider.disable_pkce, "oauth flow started");
    Ok(res)
}

/// Where providers send the browser back: `--public-url` + `/oauth/callback`.
pub(super) fn callback_url(app: &App) -> String {
    let base = app
        .connect
        .callback_base
        .get()
        .or(app.connect.public_url.get())
        .map(String::as_str)
        .unwrap_or("http://127.0.0.1:3003");
    format!("{}/oauth/callback", base.trim_end_matches('/'))
}

/// `GET /oauth/callback`.
pub(super) async fn callback(
    app: &App,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ApiError> {
    let pairs = api::query_pairs(req.uri().query());
    let mut waiting = None;
    let outcome = finish(app, &pairs, &mut waiting).await;
    // The frontend SDK's socket learns the outcome too (Nango's `success` / `error`).
    if let Some((ws, key)) = waiting {
        match &outcome {
            Ok((cid, key)) => super::ws::success(&*app.sessions, &ws, key, cid),
            Err(e) => super::ws::error(&*app.sessions, &ws, &key, e.kind, &e.message),
        }
    }
    Ok(page(outcome))
}

/// Completes the flow; `waiting` is set to the SDK's socket and the integration once the state
/// names them.
async fn finish(
    app: &App,
    pairs: &[(String, String)],
    waiting: &mut Option<(String, String)>,
) -> Result<(String, String), PageError> {
    let find = |name: &str| {
        pairs
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    };
    let refused = || {
        page_error(
            "state_err",
            "This authorization link has expired or was already used. Start again.",
        )
    };
    let state = find("state")
        .filter(|s| !s.is_empty())
        .ok_or_else(refused)?;
    let taken = app
        .sessions
        .take_state(sessions::digest(state))
        .await
        .map_err(store_unavailable)?;
    let st = taken.ok_or_else(refused)?;
    if let Some(ws) = &st.ws_client_id {
        *waiting = Some((ws.clone(), st.provider_config_key.clone()));
    }
    if let Some(err) = find("error") {
        let described = find("error_description").unwrap_or(err);
        return Err(page_error(
            "callback_err",
            format!("The provider refused the authorization: {described}"),
        ));
    }
    let code = find("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| page_error("callback_err", "The provider sent no authorization code."))?;
    let session = app
        .sessions
        .get(st.session, false)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| {
            page_error(
                "unknown_connect_session_token",
                "The connect session has expired. Ask the application for a new one.",
            )
        })?
        .session;
    let key = st.provider_config_key.clone();
    if let Some((pck, cid)) = &session.reconnect {
        super::ensure_connection(app, pck, cid)
            .await
            .map_err(|e| page_error("store_unavailable", e.message.unwrap_or_default()))?;
    }
    let snapshot = app.state.snapshot.load_full();
    let int = snapshot
        .integrations
        .get(key.as_str())
        .cloned()
        .ok_or_else(|| {
            page_error(
                "unknown_config_key",
                format!("There is no integration \"{key}\"."),
            )
        })?;
    let existing = match &session.reconnect {
        Some((pck, cid)) => Some(snapshot.connection(pck, cid).cloned().ok_or_else(|| {
            page_error(
                "connection_not_found",
                "The connection this session re-authorizes no longer exists.",
            )
        })?),
        None => None,
    };
    drop(snapshot);
    let provider = &int.provider;
    let (Some(id), Some(secret), Some(token_url)) = (
        int.oauth_client_id.clone(),
        int.oauth_client_secret.clone(),
        provider.token_url.as_ref(),
    ) else {
        return Err(page_error(
            "provider_config_err",
            format!("The integration \"{key}\" has no OAuth client or token URL."),
        ));
    };
    let url = token_url
        .render(&values(&st.connection_config))
        .map_err(|missing| {
            page_error("url_param_err", format!("The token URL needs {missing}."))
        })?;
    let checked = reads_config(token_url.placeholders())
        && app.proxy.options.override_policy != OverridePolicy::Any;
    let mut form: Vec<(String, String)> = vec![
        ("grant_type".into(), "authorization_code".into()),
        ("code".into(), code.to_string()),
        ("redirect_uri".into(), st.redirect_uri.clone()),
    ];
    if let Some(v) = &st.code_verifier {
        form.push(("code_verifier".into(), v.clone()));
    }
    for (k, v) in &provider.token_params {
        form.retain(|(name, _)| name != k);
        form.push((k.clone(), v.clone()));
    }
    if !provider.token_auth_basic {
        form.push(("client_id".into(), id.expose().to_string()));
        form.push(("client_secret".into(), secret.expose().to_string()));
    }
    let body = form
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode_query_component(k),
                encode_query_component(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let token_err = |detail: &str| {
        tracing::debug!(integration = %key, detail, "oauth token exchange failed");
        page_error(
            "token_err",
            "The provider did not give an access token for this authorization.",
        )
    };
    let mut req = Request::new(crate::body::full(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = url
        .parse()
        .map_err(|_| token_err("the token URL is not a URL"))?;
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    if provider.token_auth_basic {
        let raw = format!("{}:{}", id.expose(), secret.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| token_err("the client credentials cannot go in a header"))?;
        v.set_sensitive(true);
        h.insert(http::header::AUTHORIZATION, v);
    }
    let client = if checked {
        &app.proxy.client.checked
    } else {
        &app.proxy.client.trusted
    };
    let timeout = app.proxy.options.response_timeout;
    let exchanged = tokio::time::timeout(timeout, async {
        let res = client
            .request(req)
            .await
            .map_err(|_| token_err("the token endpoint is unreachable"))?;
        let status = res.status().as_u16();
        let body = Limited::new(res.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|_| token_err("the token response could not be read"))?
            .to_bytes();
        Ok::<_, PageError>((status, body))
    })
    .await
    .map_err(|_| token_err("the token endpoint did not answer in time"))??;
    let (status, body) = exchanged;
    let grant =
        crate::oauth::endpoint::parse_response(status, &body).map_err(|f| token_err(&f.detail))?;
    let mut config = st.connection_config;
    if !provider.token_response_metadata.is_empty() {
        let answer: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
        for field in &provider.token_response_metadata {
            if let Some(v) = answer.get(field) {
                config.insert(field.clone(), v.clone());
            }
        }
    }
    let expires_at = grant.expires_in.and_then(|s| {
        jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_secs(i64::try_from(s).ok()?))
            .ok()
            .map(|t| format!("{t:.3}"))
    });
    let record = super::session_record(
        existing.as_deref(),
        &key,
        RawCredentials::OAuth2 {
            access_token: grant.access_token,
            refresh_token: grant.refresh_token,
            expires_at,
        },
        config,
        &session,
    );
    let cid = record.connection_id.clone();
    let mut w = Write::new(vec![Change::PutConnection(record.clone(), 0)])
        .expecting(Expect::IntegrationExists(key.clone()));
    if existing.is_some() {
        w = w.expecting(Expect::ConnectionExists {
            provider_config_key: key.clone(),
            connection_id: cid.clone(),
        });
    }
    commit(app, w).await.map_err(|e| {
        let e: ApiError = e.into();
        page_error(
            "unknown_err",
            e.message.unwrap_or_else(|| e.code.to_string()),
        )
    })?;
    let operation = if existing.is_some() {
        Operation::Override
    } else {
        Operation::Creation
    };
    super::created(app, &record, operation, &session);
    Ok((cid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        let res = page(Err(page_error("callback_err", "<script>\"x\"</script>")));
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()["sidekey-error"], "callback_err");
        assert_eq!(
            escape("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        let pairs = api::query_pairs(Some("params[a]=1&params[b][c]=2&authorization_params[p]=x"));
        let params = nested(&pairs, "params");
        assert_eq!((params.len(), params["a"].as_str()), (1, Some("1")));
        assert_eq!(nested(&pairs, "authorization_params")["p"], "x");
    }
}
