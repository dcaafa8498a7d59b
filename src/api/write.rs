//! The write side: JSON bodies → records → the store's writer → the new snapshot.
//!
//! Each handler parses its body strictly (unknown fields are refused with their path), checks
//! what Nango checks in the order Nango does, and sends one [`Write`] whose preconditions are
//! checked again when it commits — a duplicate key created by a concurrent request, or a
//! connection deleted meanwhile, is caught there, not overwritten. Compile problems (a
//! credential that does not fit the provider, a base URL that needs a `connection_config`
//! value) come back with the same messages `sidekey check` prints, as `errors[].path`.

use http::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::read::{connection_json, credentials_json, integration_json};
use super::{
    decode, ok, query_param, reply, strict_query, ApiError, ApiRequest, ApiRoute, FieldError,
};
use crate::app::App;
use crate::body::ProxyBody;
use crate::config::providers::AuthMode;
use crate::config::vault::{
    RawConnection, RawCredentials, RawIntegration, RawIntegrationConfig, RawIntegrationCredentials,
};
use crate::config::{Change, Snapshot};
use crate::secret::Secret;
use crate::store::{Expect, StoreError, Write};

pub(crate) async fn respond(
    app: &App,
    route: &ApiRoute<'_>,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    let m = req.method.clone();
    match (route, m) {
        (ApiRoute::Integrations, Method::POST) => post_integration(app, req).await,
        (ApiRoute::Integration(key), Method::PATCH) => {
            patch_integration(app, &decode(key), req).await
        }
        (ApiRoute::Integration(key), Method::DELETE) => {
            delete_integration(app, &decode(key), req).await
        }
        (ApiRoute::Connections, Method::POST) => post_connection(app, req).await,
        (ApiRoute::Connection(id), Method::PATCH) => patch_connection(app, &decode(id), req).await,
        (ApiRoute::Connection(id), Method::DELETE) => {
            delete_connection(app, &decode(id), req).await
        }
        (ApiRoute::Metadata, m @ (Method::POST | Method::PATCH)) => {
            metadata(app, m == Method::PATCH, req).await
        }
        (_, m) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method {m} is not allowed here"),
        )),
    }
}

/// Parses a management request body the way its route would, without applying it: what the
/// fuzz target and property tests of API bodies drive. `path` and `method` pick the route.
pub fn check_body(path: &str, method: &Method, body: &[u8]) -> Result<(), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(format!("the body is not valid JSON: {e}")))?;
    let body = Some(value);
    match (super::route(path), method.clone()) {
        (Some(ApiRoute::Integrations), Method::POST) => {
            let b: PostIntegration = parse(body)?;
            if let Some(c) = b.integration_config {
                integration_config(c, None)?;
            }
            Ok(())
        }
        (Some(ApiRoute::Integration(_)), Method::PATCH) => {
            let b: PatchIntegration = parse(body)?;
            if let Some(c) = b.integration_config {
                integration_config(c, None)?;
            }
            Ok(())
        }
        (Some(ApiRoute::Connections), Method::POST) => {
            let b: PostConnection = parse(body)?;
            import_credentials(b.credentials).map(|_| ())
        }
        (Some(ApiRoute::Connection(_)), Method::PATCH) => {
            parse::<PatchConnection>(body).map(|_| ())
        }
        (Some(ApiRoute::Metadata), Method::POST | Method::PATCH) => {
            parse::<MetadataBody>(body).map(|_| ())
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "no body is read here",
        )),
    }
}

/// Parses a body into `T`, naming the path of the first problem (an unknown field, a wrong
/// type) in Nango's `errors` list.
pub(crate) fn parse<T: DeserializeOwned>(body: Option<Value>) -> Result<T, ApiError> {
    let body = body.unwrap_or(Value::Object(Map::new()));
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let inner = e.into_inner().to_string();
        // A secret may be quoted in a serde message ("invalid type: string \"sk…\"").
        let message = scrub(&inner);
        let mut path = path;
        if let Some(field) = unknown_field(&inner) {
            if path.last() != Some(&field) {
                path.push(field);
            }
        }
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_body",
            message: Some(message.clone()),
            errors: vec![FieldError {
                code: "invalid",
                message,
                path,
            }],
        }
    })
}

/// The field named by serde's "unknown field `x`" message.
fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Says what was wrong without repeating what the caller sent (a value may be a secret).
///
/// serde's messages name the offending value first and what was expected last: "invalid
/// type: string \"sk_…\", expected a map", "unknown variant `x`, expected one of …". The
/// value is printed with escapes, so no quote-tracking can find its end reliably; instead the
/// message is rebuilt from its fixed parts: the category, the kind of value (the words before
/// the value itself) and the text after the last ", expected ", which comes from sidekey's own
/// types. Messages that name only the caller's field names ("unknown field `x`", echoed in
/// the path anyway) or sidekey's ("missing field `x`") are kept; anything else is replaced
/// by a generic phrase.
fn scrub(msg: &str) -> String {
    let expected = |rest: &str| rest.rfind(", expected ").map(|i| rest[i + 2..].to_string());
    for (prefix, what) in [
        ("invalid type: ", "invalid type"),
        ("invalid value: ", "invalid value"),
    ] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            // The kind: "string", "integer", "unit value", "map" — the words before any quote.
            let kind: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphabetic() || *c == ' ')
                .collect();
            let kind = kind.trim();
            return match expected(rest) {
                Some(e) if !kind.is_empty() => format!("{what}: {kind}, {e}"),
                Some(e) => format!("{what}: {e}"),
                None => what.to_string(),
            };
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        return match expected(rest) {
            Some(e) => format!("unknown variant, {e}"),
            None => "unknown variant".to_string(),
        };
    }
    let own_words = |rest: &str| rest.chars().all(|c| c != '"' && c != '\\');
    for prefix in ["unknown field `", "missing field `", "invalid length "] {
        if msg.starts_with(prefix) && own_words(msg) {
            return msg.to_string();
        }
    }
    if msg.starts_with("duplicate key `") {
        return "duplicate key".to_string();
    }
    "invalid value".to_string()
}

fn write_error(e: StoreError, on_precondition: impl FnOnce(&Expect) -> ApiError) -> ApiError {
    match e {
        StoreError::Precondition(p) => on_precondition(&p),
        other => other.into(),
    }
}

pub(crate) async fn commit(app: &App, w: Write) -> Result<std::sync::Arc<Snapshot>, StoreError> {
    match app.writer.as_ref() {
        Some(writer) => writer.write(w).await,
        None => Err(StoreError::ReadOnly(
            "this sidekey has no store to write to".into(),
        )),
    }
}

// ---------------------------------------------------------------- integrations

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntegrationCredentialsBody {
    #[serde(rename = "type")]
    kind: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    scopes: Option<String>,
    #[allow(dead_code)]
    webhook_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostIntegration {
    provider: String,
    unique_key: String,
    display_name: Option<String>,
    #[allow(dead_code)]
    forward_webhooks: Option<bool>,
    credentials: Option<IntegrationCredentialsBody>,
    integration_config: Option<Map<String, Value>>,
    custom: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchIntegration {
    unique_key: Option<String>,
    display_name: Option<String>,
    #[allow(dead_code)]
    forward_webhooks: Option<bool>,
    credentials: Option<IntegrationCredentialsBody>,
    integration_config: Option<Map<String, Value>>,
    custom: Option<Map<String, Value>>,
}

pub(crate) fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~' | b' '))
}

/// The integration's credentials as a record, checked against the provider's auth mode.
fn integration_credentials(
    mode: AuthMode,
    body: Option<IntegrationCredentialsBody>,
    old: Option<RawIntegrationCredentials>,
) -> Result<Option<RawIntegrationCredentials>, ApiError> {
    match (mode, body) {
        (AuthMode::OAuth2, Some(c)) => {
            if c.kind != "OAUTH2" {
                return Err(ApiError::invalid_body(
                    "incompatible credentials auth type and provider auth",
                ));
            }
            let need = |v: Option<String>, f: &str| {
                v.filter(|s| !s.is_empty()).ok_or_else(|| {
                    ApiError::field(
                        "invalid_body",
                        &["credentials", f],
                        "Invalid input: expected a non-empty string",
                    )
                })
            };
            if let Some(s) = &c.scopes {
                let ok = s.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b':' | b'/' | b'_' | b'.' | b'*' | b'-' | b',')
                });
                if !ok {
                    return Err(ApiError::field(
                        "invalid_body",
                        &["credentials", "scopes"],
                        "scopes are comma-separated, without spaces",
                    ));
                }
            }
            Ok(Some(RawIntegrationCredentials {
                kind: Some("OAUTH2".into()),
                oauth_client_id: Some(Secret::new(need(c.client_id, "client_id")?)),
                oauth_client_secret: Some(Secret::new(need(c.client_secret, "client_secret")?)),
                scopes: c.scopes.filter(|s| !s.is_empty()),
            }))
        }
        (AuthMode::OAuth2, None) => match old {
            Some(o) => Ok(Some(o)),
            None => Err(ApiError::invalid_body("Missing credentials")),
        },
        (_, Some(_)) => Err(ApiError::invalid_body(
            "incompatible credentials auth type and provider auth",
        )),
        (_, None) => Ok(old),
    }
}

/// `integration_config` (a map of strings) as the record's typed config, merged over `old`.
fn integration_config(
    body: Map<String, Value>,
    old: Option<RawIntegrationConfig>,
) -> Result<RawIntegrationConfig, ApiError> {
    let mut merged = match old {
        Some(o) => match serde_json::to_value(o) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        None => Map::new(),
    };
    for (k, v) in body {
        if !v.is_string() {
            return Err(ApiError::field(
                "invalid_body",
                &["integration_config", &k],
                "Invalid input: expected string",
            ));
        }
        merged.insert(k, v);
    }
    let v = Value::Object(merged);
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let mut segs = vec!["integration_config".to_string()];
        if path != "." {
            segs.extend(path.split('.').map(str::to_string));
        }
        if let Some(f) = unknown_field(&inner) {
            if segs.last() != Some(&f) {
                segs.push(f);
            }
        }
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_body",
            message: Some(scrub(&inner)),
            errors: vec![FieldError {
                code: "invalid",
                message: scrub(&inner),
                path: segs,
            }],
        }
    })
}

async fn post_integration(app: &App, req: ApiRequest<'_>) -> Result<Response<ProxyBody>, ApiError> {
    strict_query(req.query, &[])?;
    let body: PostIntegration = parse(req.body)?;
    let snapshot = app.state.snapshot.load_full();
    let provider = match snapshot.catalog.providers.get(&body.provider) {
        Some(Ok(p)) => p.clone(),
        _ => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_body",
                message: Some(format!(
                    "Invalid provider: `{}` is not in providers.yaml",
                    body.provider
                )),
                errors: vec![FieldError {
                    code: "invalid_string",
                    message: format!("Invalid provider `{}`", body.provider),
                    path: vec!["provider".into()],
                }],
            })
        }
    };
    if !valid_key(&body.unique_key) {
        return Err(ApiError::field(
            "invalid_body",
            &["unique_key"],
            "Invalid unique key",
        ));
    }
    if body.custom.is_some() {
        return Err(ApiError::field(
            "invalid_body",
            &["custom"],
            "custom is not supported; use integration_config",
        ));
    }
    let duplicate = || ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_body",
        message: Some("Unique key already exists".into()),
        errors: vec![FieldError {
            code: "invalid_string",
            message: "Unique key already exists".into(),
            path: vec!["uniqueKey".into()],
        }],
    };
    if snapshot.integrations.contains_key(body.unique_key.as_str()) {
        return Err(duplicate());
    }
    let credentials = integration_credentials(provider.auth_mode, body.credentials, None)?;
    let integration_config = body
        .integration_config
        .map(|c| integration_config(c, None))
        .transpose()?;
    let now = super::now();
    let record = RawIntegration {
        unique_key: body.unique_key.clone(),
        provider: body.provider,
        display_name: body.display_name,
        credentials,
        integration_config,
        created_at: Some(now.clone()),
        updated_at: Some(now),
    };
    let key = record.unique_key.clone();
    let w = Write::new(vec![Change::PutIntegration(record)])
        .expecting(Expect::IntegrationAbsent(key.clone()));
    let snap = commit(app, w)
        .await
        .map_err(|e| write_error(e, |_| duplicate()))?;
    let int = snap
        .integrations
        .get(key.as_str())
        .ok_or_else(|| ApiError::not_found("the integration is gone"))?;
    Ok(ok(json!({ "data": integration_json(int) })))
}

/// Whether the store holds connections of `integration` that the snapshot does not cache
/// (a bounded connection cache); `false` over the whole vault.
async fn stored_connections(app: &App, integration: &str) -> Result<bool, ApiError> {
    let Some(cold) = app.state.cold.get() else {
        return Ok(false);
    };
    Ok(cold.has_connections(integration).await?)
}

async fn patch_integration(
    app: &App,
    key: &str,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    strict_query(req.query, &[])?;
    let body: PatchIntegration = parse(req.body)?;
    let snapshot = app.state.snapshot.load_full();
    let missing = || ApiError::not_found(format!("Integration \"{key}\" does not exist"));
    let int = snapshot.integrations.get(key).ok_or_else(missing)?.clone();
    if body.custom.is_some() {
        return Err(ApiError::field(
            "invalid_body",
            &["custom"],
            "custom is not supported; use integration_config",
        ));
    }
    let mut record = int.record.clone();
    let mut changes = Vec::new();
    // The record read now is the base of the new one: it must still be the integration's
    // record when the write commits (a hand edit meanwhile answers 409, not lost).
    let mut expect = vec![
        Expect::IntegrationExists(key.to_string()),
        Expect::IntegrationRecord {
            key: key.to_string(),
            record: Box::new(int.record.clone()),
        },
    ];
    if let Some(new_key) = body.unique_key.filter(|k| k != key) {
        if !valid_key(&new_key) {
            return Err(ApiError::field(
                "invalid_body",
                &["unique_key"],
                "Invalid unique key",
            ));
        }
        if snapshot.integrations.contains_key(new_key.as_str()) {
            return Err(ApiError::invalid_body(
                "uniqueKey is already used by another integration",
            ));
        }
        if snapshot.connections.get(key).is_some_and(|t| !t.is_empty())
            || stored_connections(app, key).await?
        {
            return Err(ApiError::invalid_body(
                "Can't rename an integration with active connections",
            ));
        }
        changes.push(Change::DeleteIntegration(key.to_string()));
        expect.push(Expect::IntegrationAbsent(new_key.clone()));
        record.unique_key = new_key;
    }
    if let Some(d) = body.display_name {
        record.display_name = Some(d);
    }
    record.credentials =
        integration_credentials(int.provider.auth_mode, body.credentials, record.credentials)?;
    if let Some(c) = body.integration_config {
        record.integration_config = Some(integration_config(c, record.integration_config)?);
    }
    record.updated_at = Some(super::now());
    let new_key = record.unique_key.clone();
    changes.push(Change::PutIntegration(record));
    let w = Write { expect, changes };
    let snap = commit(app, w).await.map_err(|e| {
        write_error(e, |p| match p {
            Expect::IntegrationExists(_) => missing(),
            Expect::IntegrationRecord { .. } => ApiError::from(StoreError::Conflict(format!(
                "the integration \"{key}\" was changed while this write was being made; read it and retry"
            ))),
            _ => ApiError::invalid_body("uniqueKey is already used by another integration"),
        })
    })?;
    let int = snap
        .integrations
        .get(new_key.as_str())
        .ok_or_else(missing)?;
    Ok(ok(json!({ "data": integration_json(int) })))
}

async fn delete_integration(
    app: &App,
    key: &str,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    strict_query(req.query, &[])?;
    let missing = || ApiError::not_found("Integration does not exist");
    if !app.state.snapshot.load().integrations.contains_key(key) {
        return Err(missing());
    }
    let w = Write::new(vec![Change::DeleteIntegration(key.to_string())])
        .expecting(Expect::IntegrationExists(key.to_string()));
    commit(app, w)
        .await
        .map_err(|e| write_error(e, |_| missing()))?;
    Ok(ok(json!({ "success": true })))
}

// ---------------------------------------------------------------- connections

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostConnection {
    provider_config_key: String,
    connection_id: Option<String>,
    metadata: Option<Map<String, Value>>,
    connection_config: Option<Map<String, Value>>,
    webhook_url_override: Option<String>,
    end_user: Option<EndUser>,
    tags: Option<Map<String, Value>>,
    credentials: Value,
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndUser {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) display_name: Option<String>,
    #[serde(default)]
    pub(crate) organization: Option<Organization>,
    #[serde(default)]
    pub(crate) tags: Option<Map<String, Value>>,
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Organization {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) display_name: Option<String>,
}

impl EndUser {
    pub(crate) fn to_value(&self) -> Value {
        json!({
            "id": self.id,
            "email": self.email,
            "display_name": self.display_name,
            "organization": self.organization.as_ref().map(|o| json!({"id": o.id, "display_name": o.display_name})),
            "tags": self.tags,
        })
    }

    /// Nango's tags made from an end user, in its order: `end_user_id`, `end_user_email`,
    /// `end_user_display_name`, `organization_id`, `organization_display_name` (values cut to
    /// 255 characters), then the end user's own tags with lower-cased keys — all of them left
    /// out if the total would pass ten.
    pub(crate) fn tags(&self) -> Map<String, Value> {
        let cut = |s: &str| Value::String(s.chars().take(255).collect());
        let mut t = Map::new();
        t.insert("end_user_id".into(), cut(&self.id));
        if let Some(e) = &self.email {
            t.insert("end_user_email".into(), cut(e));
        }
        if let Some(d) = &self.display_name {
            t.insert("end_user_display_name".into(), cut(d));
        }
        if let Some(o) = &self.organization {
            t.insert("organization_id".into(), cut(&o.id));
            if let Some(d) = &o.display_name {
                t.insert("organization_display_name".into(), cut(d));
            }
        }
        let own = self.tags.iter().flatten();
        if t.len() + self.tags.as_ref().map_or(0, Map::len) <= 10 {
            for (k, v) in own {
                t.insert(k.to_ascii_lowercase(), v.clone());
            }
        }
        t
    }
}

/// The credentials of an import as a record; `expires_at` may be RFC 3339 or epoch milliseconds.
fn import_credentials(mut v: Value) -> Result<RawCredentials, ApiError> {
    if let Some(obj) = v.as_object_mut() {
        if let Some(ms) = obj.get("expires_at").and_then(Value::as_i64) {
            let ts = jiff::Timestamp::from_millisecond(ms).map_err(|_| {
                ApiError::field(
                    "invalid_body",
                    &["credentials", "expires_at"],
                    "not a valid date",
                )
            })?;
            obj.insert("expires_at".into(), Value::String(ts.to_string()));
        }
        if let Some(s) = obj.get("expires_at").and_then(Value::as_str) {
            if s.parse::<jiff::Timestamp>().is_err() {
                return Err(ApiError::field(
                    "invalid_body",
                    &["credentials", "expires_at"],
                    "not an RFC 3339 date",
                ));
            }
        }
        // Nango's OAUTH2 import may carry a per-connection client override; sidekey takes
        // client settings from the integration.
        obj.remove("config_override");
    }
    let wrapped = json!({ "credentials": v });
    #[derive(Deserialize)]
    struct W {
        credentials: RawCredentials,
    }
    let w: W = parse(Some(wrapped))?;
    Ok(w.credentials)
}

async fn post_connection(app: &App, req: ApiRequest<'_>) -> Result<Response<ProxyBody>, ApiError> {
    strict_query(req.query, &[])?;
    let raw = req.body.clone();
    let body: PostConnection = parse(req.body)?;
    super::validate::post_connection(raw.as_ref())?;
    let snapshot = app.state.snapshot.load_full();
    let Some(int) = snapshot
        .integrations
        .get(body.provider_config_key.as_str())
        .cloned()
    else {
        return Err(ApiError::not_found("Integration does not exist"));
    };
    let credentials = import_credentials(body.credentials)?;
    let mode = int.provider.auth_mode;
    if credentials.type_name() != mode.as_str() {
        return Err(ApiError::invalid_body(format!(
            "Provider {} does not support {} auth",
            mode.as_str(),
            credentials.type_name()
        )));
    }
    let connection_id = match body.connection_id {
        Some(id) if !id.trim().is_empty() => id,
        Some(_) => {
            return Err(ApiError::field(
                "invalid_body",
                &["connection_id"],
                "must not be empty",
            ))
        }
        None => new_id(),
    };
    let mut tags = body
        .end_user
        .as_ref()
        .map(EndUser::tags)
        .unwrap_or_default();
    if let Some(t) = &body.tags {
        tags.extend(t.clone());
    }
    let existing = snapshot.connection(&body.provider_config_key, &connection_id);
    let hook_url = body.webhook_url_override.clone();
    let operation = if existing.is_some() {
        crate::webhooks::Operation::Override
    } else {
        crate::webhooks::Operation::Creation
    };
    let now = super::now();
    let created_at = existing
        .and_then(|c| c.created_at())
        .unwrap_or_else(|| now.clone());
    let record = RawConnection {
        connection_id: connection_id.clone(),
        provider_config_key: body.provider_config_key.clone(),
        credentials,
        connection_config: body.connection_config.unwrap_or_default(),
        metadata: body.metadata.unwrap_or_default(),
        end_user: body.end_user.as_ref().map(EndUser::to_value),
        tags,
        // Kept on the connection for its later webhooks. An import replaces the whole record
        // (config and metadata too), so one without it (or with `""`) clears it.
        webhook_url_override: hook_url.clone().filter(|u| !u.is_empty()),
        created_at: Some(created_at),
        updated_at: Some(now),
    };
    let pck = record.provider_config_key.clone();
    // API_KEY and BASIC credentials are tested before anything is written (Nango's
    // `proxy.verification`); OAuth imports are not.
    if matches!(mode, AuthMode::ApiKey | AuthMode::Basic) {
        let candidate = snapshot
            .with(Change::PutConnection(record.clone(), 0))
            .map_err(|d| ApiError::from_diagnostics(&d))?;
        if let Some(conn) = candidate.connection(&pck, &connection_id).cloned() {
            // On the request runtime: this handler runs on the background thread, and an
            // upstream connection the test opens joins the proxy's pool.
            let proxy = app.proxy.clone();
            app.foreground
                .run(async move { crate::proxy::verify::verify(&proxy, &conn, false).await })
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        e.to_string(),
                    )
                })?
                .map_err(|_| super::connection_test_failed())?;
        }
    }
    let w = Write::new(vec![Change::PutConnection(record, 0)])
        .expecting(Expect::IntegrationExists(pck.clone()));
    let snap = commit(app, w)
        .await
        .map_err(|e| write_error(e, |_| ApiError::not_found("Integration does not exist")))?;
    let conn = snap
        .connection(&pck, &connection_id)
        .ok_or_else(|| ApiError::not_found("the connection is gone"))?;
    // As Nango does for an import: a creation or override webhook (no `endUser`: that is for
    // connect sessions), and an override clears the connection's auth error.
    let mut ev = crate::webhooks::AuthEvent::about(conn, operation, true);
    ev.webhook_url_override = hook_url;
    app.announce(ev);
    let creds = credentials_json(conn, None, true);
    Ok(reply(StatusCode::CREATED, connection_json(conn, creds)))
}

/// A random UUID v4, as Nango gives a connection imported without an id.
pub(crate) fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchConnection {
    end_user: Option<EndUser>,
    tags: Option<Map<String, Value>>,
    webhook_url_override: Option<String>,
}

/// The `provider_config_key` query parameter and the connection it names, with Nango's codes.
fn named_connection(
    snapshot: &Snapshot,
    id: &str,
    query: Option<&str>,
    unknown_connection: ApiError,
) -> Result<std::sync::Arc<crate::config::Connection>, ApiError> {
    strict_query(query, &["provider_config_key"])?;
    let key = query_param(query, "provider_config_key").ok_or_else(|| {
        ApiError::field(
            "invalid_query_params",
            &["provider_config_key"],
            "Invalid input: expected string, received undefined",
        )
    })?;
    if !snapshot.integrations.contains_key(key.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_provider_config",
            "Provider does not exists",
        ));
    }
    snapshot
        .connection(&key, id)
        .cloned()
        .ok_or(unknown_connection)
}

async fn patch_connection(
    app: &App,
    id: &str,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    let snapshot = app.state.snapshot.load_full();
    let missing = || ApiError::not_found("Failed to find connection");
    let conn = named_connection(&snapshot, id, req.query, missing())?;
    let raw = req.body.clone();
    let body: PatchConnection = parse(req.body)?;
    super::validate::patch_connection(raw.as_ref())?;
    let mut record = conn.record();
    if body.end_user.is_some() || body.tags.is_some() {
        let mut tags = body
            .end_user
            .as_ref()
            .map(EndUser::tags)
            .unwrap_or_default();
        if let Some(t) = &body.tags {
            tags.extend(t.clone());
        }
        record.tags = tags;
    }
    if let Some(eu) = &body.end_user {
        record.end_user = Some(eu.to_value());
    }
    if let Some(u) = &body.webhook_url_override {
        // `""` clears it, as in Nango.
        record.webhook_url_override = Some(u.clone()).filter(|u| !u.is_empty());
    }
    record.updated_at = Some(super::now());
    let w =
        Write::new(vec![Change::PutConnection(record, 0)]).expecting(Expect::ConnectionVersion {
            provider_config_key: conn.provider_config_key.to_string(),
            connection_id: conn.connection_id.to_string(),
            version: conn.version,
        });
    commit(app, w).await.map_err(|e| {
        write_error(e, |_| {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the connection changed while this write was made; read it again and retry",
            )
        })
    })?;
    Ok(ok(json!({ "success": true })))
}

async fn delete_connection(
    app: &App,
    id: &str,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    let snapshot = app.state.snapshot.load_full();
    let unknown = || ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "unknown_connection",
        message: None,
        errors: Vec::new(),
    };
    let conn = named_connection(&snapshot, id, req.query, unknown())?;
    let key = (
        conn.provider_config_key.to_string(),
        conn.connection_id.to_string(),
    );
    let w = Write::new(vec![Change::DeleteConnection {
        provider_config_key: key.0.clone(),
        connection_id: key.1.clone(),
    }])
    .expecting(Expect::ConnectionExists {
        provider_config_key: key.0,
        connection_id: key.1,
    });
    commit(app, w)
        .await
        .map_err(|e| write_error(e, |_| unknown()))?;
    Ok(ok(json!({ "success": true })))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataBody {
    connection_id: OneOrMany,
    provider_config_key: String,
    metadata: Map<String, Value>,
}

/// `POST` (replace) and `PATCH` (shallow merge) `/connections/metadata`: every named
/// connection or none.
async fn metadata(
    app: &App,
    merge: bool,
    req: ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    strict_query(req.query, &[])?;
    let echo = req.body.clone().unwrap_or(Value::Null);
    let body: MetadataBody = parse(req.body)?;
    let (ids, many) = match body.connection_id {
        OneOrMany::One(id) => (vec![id], false),
        OneOrMany::Many(ids) => (ids, true),
    };
    let pck = body.provider_config_key;
    let not_found = |id: &str| {
        let mut m = format!(
            "Connection with connection id {id} and provider config key {pck} not found. Please make sure the connection exists in the Nango dashboard"
        );
        if many {
            m.push_str(
                ". No actions were taken on any of the connections as a result of this failure.",
            );
        }
        ApiError::new(StatusCode::NOT_FOUND, "unknown_connection", m)
    };
    let snapshot = app.state.snapshot.load_full();
    let mut w = Write::default();
    let now = super::now();
    for id in &ids {
        let conn = snapshot.connection(&pck, id).ok_or_else(|| not_found(id))?;
        let mut record = conn.record();
        if merge {
            for (k, v) in &body.metadata {
                record.metadata.insert(k.clone(), v.clone());
            }
        } else {
            record.metadata = body.metadata.clone();
        }
        record.updated_at = Some(now.clone());
        w.expect.push(Expect::ConnectionVersion {
            provider_config_key: pck.clone(),
            connection_id: id.clone(),
            version: conn.version,
        });
        w.changes.push(Change::PutConnection(record, 0));
    }
    commit(app, w).await.map_err(|e| {
        write_error(e, |p| match p {
            Expect::ConnectionVersion { connection_id, .. } => {
                match app.state.snapshot.load().connection(&pck, connection_id) {
                    None => not_found(connection_id),
                    Some(_) => ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        "a connection changed while this write was made; retry",
                    ),
                }
            }
            _ => not_found(""),
        })
    })?;
    let status = if merge {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(reply(status, echo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_name_their_path() {
        let Err(e) = parse::<PostConnection>(Some(json!({
            "provider_config_key": "p", "credentials": {}, "nope": 1
        }))) else {
            panic!("refused")
        };
        assert_eq!(e.code, "invalid_body");
        assert_eq!(e.errors[0].path, ["nope"]);
    }

    #[test]
    fn credential_values_never_appear_in_messages() {
        let e = import_credentials(json!({"type": "API_KEY", "apiKey": ["sk_live_secret"]}))
            .expect_err("refused");
        assert!(!format!("{e:?}").contains("sk_live_secret"), "{e:?}");
        let c = import_credentials(
            json!({"type": "OAUTH2", "access_token": "t", "expires_at": 1_900_000_000_000i64}),
        )
        .expect("epoch millis");
        assert!(matches!(
            c,
            RawCredentials::OAuth2 {
                expires_at: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn scrubbed_messages_keep_the_category_and_drop_the_value() {
        // An escaped quote inside the value used to end the quote-tracking early.
        let msg = r#"invalid type: string "sk_live\", expected a map\" tail", expected a map"#;
        assert_eq!(scrub(msg), "invalid type: string, expected a map");
        assert_eq!(
            scrub("invalid value: integer `7`, expected a timestamp"),
            "invalid value: integer, expected a timestamp"
        );
        assert_eq!(
            scrub("unknown variant `sk_live`, expected one of `API_KEY`, `BASIC`"),
            "unknown variant, expected one of `API_KEY`, `BASIC`"
        );
        assert_eq!(scrub("missing field `apiKey`"), "missing field `apiKey`");
        assert_eq!(scrub("duplicate key `sk_live`"), "duplicate key");
        assert_eq!(scrub("something new: sk_live"), "invalid value");
    }

    #[test]
    fn a_value_with_escaped_quotes_never_reaches_the_error() {
        let secret = r#"sk"live\"}\"#;
        let Err(e) = parse::<PostConnection>(Some(json!({
            "provider_config_key": "p", "connection_id": "c", "metadata": secret
        }))) else {
            panic!("refused")
        };
        let shown = format!("{e:?}");
        assert!(!shown.contains("live"), "{shown}");
        assert_eq!(e.errors[0].path, ["metadata"]);
    }

    #[test]
    fn ids_are_uuid_v4() {
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_id());
    }
}
