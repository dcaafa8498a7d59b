//! The auth routes `@nangohq/frontend` calls for API keys and basic credentials:
//! `POST /api-auth/api-key/{key}` with `{"apiKey"}` and `POST /api-auth/basic/{key}` with
//! `{"username","password"}`, the session token as `?connect_session_token=` and connection
//! config as `?params[name]=value`. The reply is `200 {connectionId, providerConfigKey}`.
//!
//! Order of checks, as Nango's: the session (401 `missing_public_key`,
//! `invalid_connect_session_token_format`, `unknown_connect_session_token`; the deprecated
//! `public_key` is refused with 401 `deprecated_authentication`, sidekey has no public keys),
//! the body (400 `invalid_body`), the query (400 `invalid_query_params`; `connection_id` is
//! forbidden with a session), the path key (400 `invalid_uri_params`), the integration (404
//! `unknown_provider_config`), its auth mode (400 `invalid_auth_mode`), the session's
//! allowed integrations (400 `integration_not_allowed`), a reconnect's connection (400
//! `invalid_connection`), then the credential test (400 `connection_test_failed`, nothing
//! written). Each call counts one attempt against the session; past
//! `ConnectOptions::max_attempts` the session answers 429 `too_many_attempts` until it
//! expires. The session is looked up again just before the write, so one deleted while its
//! credential was being tested writes nothing.

use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::sessions::{lookup, unavailable, unknown};
use super::Operation;
use crate::api::write::{commit, parse};
use crate::api::{self, validate, ApiError, FieldError};
use crate::app::App;
use crate::body::ProxyBody;
use crate::config::providers::AuthMode;
use crate::config::vault::RawCredentials;
use crate::config::Change;
use crate::secret::Secret;
use crate::store::{Expect, Write};

/// Which credential the route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    ApiKey,
    Basic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    #[serde(rename = "apiKey")]
    api_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicBody {
    username: String,
    password: String,
}

const MAX_SECRET: usize = 1024;

fn credentials(kind: Kind, body: Option<Value>) -> Result<RawCredentials, ApiError> {
    match kind {
        Kind::ApiKey => {
            let b: ApiKeyBody = parse(body)?;
            validate::length(&b.api_key, 1, MAX_SECRET, &["apiKey"])?;
            Ok(RawCredentials::ApiKey {
                api_key: Secret::new(b.api_key),
            })
        }
        Kind::Basic => {
            let b: BasicBody = parse(body)?;
            validate::length(&b.username, 0, MAX_SECRET, &["username"])?;
            validate::length(&b.password, 0, MAX_SECRET, &["password"])?;
            Ok(RawCredentials::Basic {
                username: Secret::new(b.username),
                password: Secret::new(b.password),
            })
        }
    }
}

fn query_issue(path: &str, code: &'static str, message: &str) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_query_params",
        message: Some(message.to_string()),
        errors: vec![FieldError {
            code,
            message: message.to_string(),
            path: vec![path.to_string()],
        }],
    }
}

/// `params[name]=value` pairs as a map (Nango parses the query with `qs`); one level only.
fn params(pairs: &[(String, String)]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (k, v) in pairs {
        if k == "params" {
            return Err(query_issue(
                "params",
                "invalid_type",
                "Invalid input: expected record",
            ));
        }
        let Some(inner) = k.strip_prefix("params[").and_then(|r| r.strip_suffix(']')) else {
            continue;
        };
        if inner.is_empty() || inner.contains(['[', ']']) {
            return Err(query_issue(
                "params",
                "invalid_type",
                "params takes one level of names: params[name]=value",
            ));
        }
        out.insert(inner.to_string(), Value::String(v.clone()));
    }
    Ok(out)
}

/// The session token of an auth route's query: 401 `missing_public_key` without one, 401
/// `deprecated_authentication` for a `public_key` (sidekey has no public keys).
pub(super) fn session_token<'a>(
    token: Option<&'a str>,
    public_key: Option<&str>,
) -> Result<&'a str, ApiError> {
    match (token, public_key) {
        (Some(t), _) if !t.is_empty() => Ok(t),
        (_, Some(p)) if !p.is_empty() => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "deprecated_authentication",
            "Public key authentication is deprecated. Please use connect session authentication instead.",
        )),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_public_key",
            "Authentication failed. The request is missing a connect session token (connect_session_token).",
        )),
    }
}

/// 429 `too_many_attempts`: the session used up its auth attempts.
pub(super) fn too_many_attempts() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "This connect session has made too many attempts; ask for a new session.",
    )
}

/// `POST /api-auth/api-key/{key}` and `POST /api-auth/basic/{key}`.
pub(super) async fn api_auth(
    app: &App,
    req: Request<ProxyBody>,
    raw_key: &str,
    kind: Kind,
) -> Result<Response<ProxyBody>, ApiError> {
    let (parts, body) = req.into_parts();
    let pairs = api::query_pairs(parts.uri.query());
    let find = |name: &str| {
        pairs
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    };
    let token = session_token(find("connect_session_token"), find("public_key"))?;
    let (found, digest) = lookup(app, token, true).await?;
    if found.attempts > app.connect.max_attempts {
        return Err(too_many_attempts());
    }
    let session = found.session;
    let body = api::read_json(&parts.headers, body).await?;
    let credentials = credentials(kind, body)?;
    let params = params(&pairs)?;
    let key = api::decode(raw_key);
    if !super::sessions::integration_key(&key) {
        return Err(ApiError::field(
            "invalid_uri_params",
            &["providerConfigKey"],
            "Invalid integration key",
        ));
    }
    if find("connection_id").is_some() {
        return Err(query_issue(
            "connection_id",
            "custom",
            "connection_id is forbidden when using session token",
        ));
    }
    if let Some((pck, cid)) = &session.reconnect {
        super::ensure_connection(app, pck, cid).await?;
    }
    let snapshot = app.state.snapshot.load_full();
    let Some(int) = snapshot.integrations.get(key.as_str()).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_provider_config",
            format!("There is no integration \"{key}\"."),
        ));
    };
    let wanted = match kind {
        Kind::ApiKey => AuthMode::ApiKey,
        Kind::Basic => AuthMode::Basic,
    };
    if int.provider.auth_mode != wanted {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_auth_mode",
            format!(
                "The integration \"{key}\" uses {}, not {}.",
                int.provider.auth_mode.as_str(),
                wanted.as_str()
            ),
        ));
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
    // A re-authorization keeps the connection's config unless the end user or the session
    // gives new values; the session's defaults win over the end user's params; a
    // `webhook_url` param is never taken from the browser.
    let mut config = existing
        .as_ref()
        .map(|c| c.connection_config())
        .unwrap_or_default();
    config.extend(params);
    if let Some(Value::Object(d)) = session
        .integrations_config_defaults
        .get(&key)
        .and_then(|d| d.get("connection_config"))
    {
        config.extend(d.clone());
    }
    config.remove("webhook_url");
    let record = super::session_record(existing.as_deref(), &key, credentials, config, &session);
    let cid = record.connection_id.clone();
    let candidate = snapshot
        .with(Change::PutConnection(record.clone(), 0))
        .map_err(|d| ApiError::from_diagnostics(&d))?;
    drop(snapshot);
    if let Some(conn) = candidate.connection(&key, &cid) {
        crate::proxy::verify::verify(&app.proxy, conn, true)
            .await
            .map_err(|_| api::connection_test_failed())?;
    }
    drop(candidate);
    // Deleted or expired while the credential was tested: nothing is written.
    if app
        .sessions
        .get(digest, false)
        .await
        .map_err(unavailable)?
        .is_none()
    {
        return Err(unknown());
    }
    let operation = if existing.is_some() {
        Operation::Override
    } else {
        Operation::Creation
    };
    let mut w = Write::new(vec![Change::PutConnection(record.clone(), 0)])
        .expecting(Expect::IntegrationExists(key.clone()));
    if existing.is_some() {
        w = w.expecting(Expect::ConnectionExists {
            provider_config_key: key.clone(),
            connection_id: cid.clone(),
        });
    }
    commit(app, w).await.map_err(|e| match e {
        crate::store::StoreError::Precondition(Expect::ConnectionExists { .. }) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_connection",
            "The connection this session re-authorizes no longer exists.",
        ),
        crate::store::StoreError::Precondition(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_provider_config",
            format!("There is no integration \"{key}\"."),
        ),
        other => other.into(),
    })?;
    super::created(app, &record, operation, &session);
    Ok(api::ok(json!({
        "connectionId": cid,
        "providerConfigKey": key,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_one_level() {
        let p = |q: &str| params(&api::query_pairs(Some(q)));
        let m = p("connect_session_token=x&params[subdomain]=acme%20co&params%5Bregion%5D=eu")
            .expect("params");
        assert_eq!(m["subdomain"], "acme co");
        assert_eq!(m["region"], "eu");
        assert!(p("params=x").is_err());
        assert!(p("params[a][b]=x").is_err());
    }

    #[test]
    fn credential_bodies_are_strict_and_never_echoed() {
        assert!(credentials(Kind::ApiKey, Some(json!({"apiKey": "k"}))).is_ok());
        let e =
            credentials(Kind::ApiKey, Some(json!({"apiKey": "", "x": 1}))).expect_err("refused");
        assert_eq!(e.code, "invalid_body");
        let e = credentials(Kind::ApiKey, Some(json!({"apiKey": "s".repeat(1025)})))
            .expect_err("too long");
        assert!(!format!("{e:?}").contains("sss"));
        assert!(credentials(Kind::Basic, Some(json!({"username": "", "password": ""}))).is_ok());
        assert!(credentials(Kind::Basic, Some(json!({"username": "u"}))).is_err());
    }
}
