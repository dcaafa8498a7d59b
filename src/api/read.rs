//! The read side: providers, integrations and connections, answered from the snapshot.
//!
//! Credentials leave sidekey here only on `GET /connections/{id}`, and only to a key with the
//! `connections:read_credentials` scope; the refresh token only with `refresh_token=true`.
//! OAuth credentials are the token manager's current ones (refreshed first if they are about
//! to expire, or at once with `force_refresh=true`). Every other read shows at most the
//! credential's `type`.

use http::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{decode, ok, query_pairs, query_param, strict_query, ApiError, ApiRequest, ApiRoute};
use crate::app::App;
use crate::auth::Scope;
use crate::body::ProxyBody;
use crate::config::snapshot::ClientCredentials;
use crate::config::{Connection, Credential, Integration, Snapshot};
use crate::webhooks::status::ErrorView;

pub(crate) fn integration_json(i: &Integration) -> Value {
    json!({
        "unique_key": i.unique_key,
        "provider": i.provider.name,
        "display_name": i.display_name.clone().unwrap_or_else(|| i.provider.name.clone()),
        "auth_mode": i.provider.auth_mode.as_str(),
        "logo": Value::Null,
        "forward_webhooks": true,
        "created_at": i.record.created_at,
        "updated_at": i.record.updated_at,
    })
}

/// An integration's client credentials as Nango shows them with `include=credentials`
/// (OAuth providers only; the others have none).
fn integration_credentials(i: &Integration) -> Value {
    let mode = i.provider.auth_mode.as_str();
    if !mode.starts_with("OAUTH") {
        return Value::Null;
    }
    json!({
        "type": mode,
        "client_id": i.oauth_client_id.as_ref().map(|s| s.expose()),
        "client_secret": i.oauth_client_secret.as_ref().map(|s| s.expose()),
        "scopes": i.scopes,
        "webhook_secret": Value::Null,
    })
}

fn credential_type(c: &Credential) -> &'static str {
    match c {
        Credential::ApiKey(_) => "API_KEY",
        Credential::Basic { .. } => "BASIC",
        Credential::OAuth2 { .. } => "OAUTH2",
        Credential::OAuth2Cc(_) => "OAUTH2_CC",
    }
}

/// A connection as Nango's list shows it.
fn list_json(c: &Connection, errors: &ErrorView) -> Value {
    let e = c.extra();
    json!({
        "id": c.connection_id,
        "connection_id": c.connection_id,
        "provider_config_key": &*c.provider_config_key,
        "provider": c.integration.provider.name,
        "errors": errors.json(c),
        "end_user": e.end_user,
        "tags": e.tags,
        "metadata": e.metadata,
        "created": e.created_at,
    })
}

/// The full public connection (`POST /connections`, `GET /connections/{id}`), with the given
/// credentials object.
pub(crate) fn connection_json(c: &Connection, credentials: Value) -> Value {
    let e = c.extra();
    json!({
        "id": c.connection_id,
        "connection_id": c.connection_id,
        "provider_config_key": &*c.provider_config_key,
        "provider": c.integration.provider.name,
        "errors": [],
        "end_user": e.end_user,
        "tags": e.tags,
        "metadata": e.metadata,
        "connection_config": e.connection_config,
        "webhook_url_override": e.webhook_url_override,
        "created_at": e.created_at,
        "updated_at": e.updated_at,
        "last_fetched_at": Value::Null,
        "credentials": credentials,
    })
}

/// A credential's fields as Nango returns them; OAuth tokens from `current` when the token
/// manager holds newer ones than the record.
pub(crate) fn credentials_json(
    c: &Connection,
    current: Option<(
        crate::secret::Secret,
        Option<crate::secret::Secret>,
        Option<jiff::Timestamp>,
    )>,
    with_refresh_token: bool,
) -> Value {
    let s = |v: &crate::secret::Secret| Value::String(v.expose().to_string());
    let mut m = Map::new();
    m.insert("type".into(), credential_type(&c.credential).into());
    match &c.credential {
        Credential::ApiKey(k) => {
            m.insert("apiKey".into(), s(k));
        }
        Credential::Basic { username, password } => {
            m.insert("username".into(), s(username));
            m.insert("password".into(), s(password));
        }
        Credential::OAuth2 {
            access_token,
            refresh_token,
            expires_at,
        } => {
            let (token, refresh, expires) = match &current {
                Some((t, r, e)) => (t.clone(), r.clone(), *e),
                None => (access_token.clone(), refresh_token.clone(), *expires_at),
            };
            m.insert("access_token".into(), s(&token));
            m.insert(
                "expires_at".into(),
                expires.map_or(Value::Null, |e| Value::String(format!("{e:.3}"))),
            );
            if with_refresh_token {
                if let Some(r) = &refresh {
                    m.insert("refresh_token".into(), s(r));
                }
            }
            let mut raw = Map::new();
            raw.insert("access_token".into(), s(&token));
            raw.insert("type".into(), "OAUTH2".into());
            m.insert("raw".into(), Value::Object(raw));
        }
        Credential::OAuth2Cc(cc) => {
            let ClientCredentials {
                client_id,
                client_secret,
                token,
                expires_at,
            } = &**cc;
            let (token, expires) = match &current {
                Some((t, _, e)) => (Some(t.clone()), *e),
                None => (token.clone(), *expires_at),
            };
            let int = &c.integration;
            let opt = |v: Option<&crate::secret::Secret>| v.map_or(Value::Null, s);
            m.insert("token".into(), opt(token.as_ref()));
            m.insert(
                "client_id".into(),
                opt(client_id.as_ref().or(int.oauth_client_id.as_ref())),
            );
            m.insert(
                "client_secret".into(),
                opt(client_secret.as_ref().or(int.oauth_client_secret.as_ref())),
            );
            m.insert(
                "expires_at".into(),
                expires.map_or(Value::Null, |e| Value::String(format!("{e:.3}"))),
            );
        }
    }
    Value::Object(m)
}

/// zod's `stringbool`: true/false/1/0/yes/no/on/off/y/n/enabled/disabled.
fn stringbool(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    match query_param(query, name) {
        None => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "y" | "enabled" => Ok(true),
            "false" | "0" | "no" | "off" | "n" | "disabled" | "" => Ok(false),
            _ => Err(ApiError::field(
                "invalid_query_params",
                &[name],
                "Invalid input: expected a boolean string",
            )),
        },
    }
}

pub(crate) async fn respond(
    app: &App,
    route: &ApiRoute<'_>,
    req: &ApiRequest<'_>,
) -> Result<Response<ProxyBody>, ApiError> {
    let errors = app.state.errors.view();
    if let (ApiRoute::Connections, Some(cold)) = (route, app.state.cold.get()) {
        return list_cold(cold.as_ref(), &errors, req.query).await;
    }
    let snapshot = app.state.snapshot.load_full();
    if let Some(res) = from_snapshot_with(&snapshot, &errors, route, req.query, req.scopes)? {
        return Ok(res);
    }
    // Only a credential read by a key allowed to make it is left: it needs the token manager.
    let ApiRoute::Connection(id) = route else {
        return Err(ApiError::not_found("no such route"));
    };
    let query = req.query;
    let force = stringbool(query, "force_refresh")?;
    let with_refresh = stringbool(query, "refresh_token")?;
    let key = query_param(query, "provider_config_key").unwrap_or_default();
    let c = snapshot
        .connection(&key, &decode(id))
        .ok_or_else(|| ApiError::not_found("Failed to find connection"))?
        .clone();
    let failed = |e: crate::error::ProxyError| {
        ApiError::new(
            StatusCode::FAILED_DEPENDENCY,
            "invalid_credentials",
            e.to_string(),
        )
    };
    // The token endpoint is called on the request runtime: a connection it opens joins the
    // upstream pool, and its task must not live on the background thread this runs on.
    let (state, conn) = (app.state.clone(), c.clone());
    app.foreground
        .run(async move {
            let token = state.oauth.access_token(&conn).await?;
            if let (true, Some(t)) = (force, token.as_ref()) {
                state.oauth.refresh_after_unauthorized(&conn, t).await?;
            }
            Ok(())
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })?
        .map_err(failed)?;
    let creds = credentials_json(&c, app.state.oauth.current(&c), with_refresh);
    // Read again: the refresh above may have marked or cleared an error.
    let mut v = connection_json(&c, creds);
    v["errors"] = app.state.errors.view().json(&c);
    Ok(ok(v))
}

/// [`from_snapshot_with`] with no connection errors (a snapshot alone knows of none).
pub fn from_snapshot(
    snapshot: &Snapshot,
    route: &ApiRoute<'_>,
    query: Option<&str>,
    scopes: crate::auth::Scopes,
) -> Result<Option<Response<ProxyBody>>, ApiError> {
    from_snapshot_with(snapshot, &ErrorView::default(), route, query, scopes)
}

/// Every read answered from the snapshot and the connection errors alone; `None` for a
/// credential read by a key with `connections:read_credentials` (that one may refresh a token
/// first: see [`respond`]).
pub fn from_snapshot_with(
    snapshot: &Snapshot,
    errors: &ErrorView,
    route: &ApiRoute<'_>,
    query: Option<&str>,
    scopes: crate::auth::Scopes,
) -> Result<Option<Response<ProxyBody>>, ApiError> {
    let ok = |v: Value| Ok(Some(ok(v)));
    match route {
        ApiRoute::Providers => {
            strict_query(query, &["search"])?;
            let search = query_param(query, "search").map(|s| s.to_ascii_lowercase());
            // Nango takes an integration-key-shaped search (it becomes a regex there).
            if let Some(s) = &search {
                let shaped = s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"~:.@ _-".contains(&b));
                if s.is_empty() || s.len() > 255 || !shaped {
                    return Err(ApiError::field(
                        "invalid_query_params",
                        &["search"],
                        "search is 1-255 characters of letters, digits and ~:.@ _-",
                    ));
                }
            }
            let mut names: Vec<Value> = snapshot
                .catalog
                .providers
                .iter()
                .filter(|(name, _)| {
                    search
                        .as_deref()
                        .is_none_or(|s| name.to_ascii_lowercase().contains(s))
                })
                .filter_map(|(name, p)| p.as_ref().ok().map(|p| provider_json(name, p)))
                .collect();
            names.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            ok(json!({ "data": names }))
        }
        ApiRoute::Provider(name) => {
            strict_query(query, &[])?;
            let name = decode(name);
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ApiError::field(
                    "invalid_uri_params",
                    &["provider"],
                    "Invalid provider name",
                ));
            }
            match snapshot.catalog.providers.get(&name) {
                Some(Ok(p)) => ok(json!({ "data": provider_json(&name, p) })),
                _ => Err(ApiError::not_found(format!("Unknown provider {name}"))),
            }
        }
        ApiRoute::Integrations => {
            strict_query(query, &[])?;
            let mut list: Vec<&Integration> =
                snapshot.integrations.values().map(AsRef::as_ref).collect();
            list.sort_by(|a, b| a.unique_key.cmp(&b.unique_key));
            let data: Vec<Value> = list.into_iter().map(integration_json).collect();
            ok(json!({ "data": data }))
        }
        ApiRoute::Integration(key) => {
            let key = decode(key);
            let i = snapshot.integrations.get(key.as_str()).ok_or_else(|| {
                ApiError::not_found(format!("Integration \"{key}\" does not exist"))
            })?;
            strict_query(query, &["include"])?;
            let mut data = integration_json(i);
            for (k, v) in query_pairs(query) {
                if k.split('[').next() != Some("include") {
                    continue;
                }
                match v.as_str() {
                    // sidekey routes no provider webhooks.
                    "webhook" => data["webhook_url"] = Value::Null,
                    // Like Nango, silently left out for a key that may not set them; and,
                    // since the client id and secret are credentials, for a key that may not
                    // read credentials either (CONTRACT: credentials leave sidekey only to
                    // `connections:read_credentials`, the proxy and the token endpoint).
                    "credentials"
                        if scopes.contains(Scope::IntegrationsWrite)
                            && scopes.contains(Scope::ConnectionsReadCredentials) =>
                    {
                        data["credentials"] = integration_credentials(i)
                    }
                    "credentials" => {}
                    _ => {
                        return Err(ApiError::field(
                            "invalid_query_params",
                            &["include"],
                            "include is `webhook` or `credentials`",
                        ))
                    }
                }
            }
            ok(json!({ "data": data }))
        }
        ApiRoute::Connections => list(snapshot, errors, query).map(Some),
        ApiRoute::Connection(id) => {
            let id = decode(id);
            strict_query(
                query,
                &[
                    "provider_config_key",
                    "force_refresh",
                    "refresh_token",
                    "refresh_github_app_jwt_token",
                ],
            )?;
            let force = stringbool(query, "force_refresh")?;
            let with_refresh = stringbool(query, "refresh_token")?;
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
            let c = snapshot
                .connection(&key, &id)
                .ok_or_else(|| ApiError::not_found("Failed to find connection"))?
                .clone();
            let may_read = scopes.contains(Scope::ConnectionsReadCredentials);
            if may_read {
                return Ok(None);
            }
            if force || with_refresh {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Credential and refresh options require the connections:read_credentials scope",
                ));
            }
            let creds = json!({ "type": credential_type(&c.credential) });
            let mut v = connection_json(&c, creds);
            v["errors"] = errors.json(&c);
            ok(v)
        }
        ApiRoute::Metadata => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST or PATCH",
        )),
    }
}

fn provider_json(name: &str, p: &crate::config::providers::Provider) -> Value {
    json!({
        "name": name,
        "auth_mode": p.auth_mode.as_str(),
        "display_name": name,
        "logo_url": Value::Null,
    })
}

/// `GET /connections`, with Nango's filters.
fn list(
    snapshot: &Snapshot,
    errors: &ErrorView,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ApiError> {
    let q = ListQuery::parse(query)?;
    let list: Vec<&Connection> = snapshot
        .connections
        .iter()
        .filter(|(k, _)| {
            q.integrations
                .as_ref()
                .is_none_or(|l| l.iter().any(|i| **i == ***k))
        })
        .flat_map(|(_, m)| m.values().map(AsRef::as_ref))
        .filter(|c| q.wants(c, errors))
        .collect();
    Ok(q.render(list, errors))
}

/// The most connections one list over the store reads up to ((page + 1) × limit).
const MAX_COLD_LIST: usize = 100_000;

/// `GET /connections` over a bounded connection cache: the store lists (narrowed by what it
/// can, in Nango's order), the rest is filtered here, and the reading stops once the page is
/// full.
async fn list_cold(
    cold: &dyn crate::state::ColdStore,
    errors: &ErrorView,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ApiError> {
    let q = ListQuery::parse(query)?;
    let need = q.page.saturating_add(1).saturating_mul(q.limit);
    // Pages are read from the start of the store's order: a bound on how far.
    if need > MAX_COLD_LIST {
        return Err(ApiError::field(
            "invalid_query_params",
            &["page"],
            format!("with the PostgreSQL store, (page + 1) × limit is at most {MAX_COLD_LIST}"),
        ));
    }
    let mut got: Vec<std::sync::Arc<Connection>> = Vec::new();
    let filter = crate::state::ListFilter {
        integrations: q.integrations.as_deref(),
        connection_id: q.want_id.as_deref(),
        end_user_id: q.end_user.as_deref(),
    };
    let mut each = |c: std::sync::Arc<Connection>| {
        if q.wants(&c, errors) {
            got.push(c);
        }
        got.len() < need
    };
    cold.list(filter, &mut each).await?;
    Ok(q.render(got.iter().map(AsRef::as_ref).collect(), errors))
}

/// `GET /connections`'s query, checked.
struct ListQuery {
    integrations: Option<Vec<String>>,
    with_error: Option<bool>,
    want_id: Option<String>,
    search: Option<String>,
    end_user: Option<String>,
    org: Option<String>,
    tags: Vec<(String, String)>,
    limit: usize,
    page: usize,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        strict_query(
            query,
            &[
                "withError",
                "connectionId",
                "search",
                "endUserId",
                "endUserOrganizationId",
                "integrationId",
                "tags",
                "limit",
                "page",
                "provider_config_key",
            ],
        )?;
        let integrations: Option<Vec<String>> = query_param(query, "integrationId")
            .or_else(|| query_param(query, "provider_config_key"))
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
        if integrations
            .as_ref()
            .is_some_and(|l| l.iter().any(String::is_empty))
        {
            return Err(ApiError::field(
                "invalid_query_params",
                &["integrationId"],
                "integrationId is a comma-separated list of integration keys",
            ));
        }
        // `withError` (Nango's dashboard list has it; its public list does not): true lists only
        // connections with an error, false only those without; absent, all.
        let with_error = match query_param(query, "withError") {
            None => None,
            Some(_) => Some(stringbool(query, "withError")?),
        };
        let want_id = query_param(query, "connectionId");
        for name in [
            "connectionId",
            "search",
            "endUserId",
            "endUserOrganizationId",
        ] {
            if query_param(query, name).is_some_and(|s| s.is_empty() || s.chars().count() > 255) {
                return Err(ApiError::field(
                    "invalid_query_params",
                    &[name],
                    format!("{name} is 1-255 characters"),
                ));
            }
        }
        let search = query_param(query, "search").map(|s| s.to_ascii_lowercase());
        let end_user = query_param(query, "endUserId");
        let org = query_param(query, "endUserOrganizationId");
        let tags: Vec<(String, String)> = query_pairs(query)
            .into_iter()
            .filter_map(|(k, v)| {
                let t = k.strip_prefix("tags[")?.strip_suffix(']')?;
                Some((t.to_ascii_lowercase(), v))
            })
            .collect();
        let limit = match query_param(query, "limit") {
            None => 10_000,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=2000).contains(&n) => n,
                _ => {
                    return Err(ApiError::field(
                        "invalid_query_params",
                        &["limit"],
                        "limit must be a number from 1 to 2000",
                    ))
                }
            },
        };
        let page = match query_param(query, "page") {
            None => 0,
            Some(p) => p.parse::<usize>().map_err(|_| {
                ApiError::field(
                    "invalid_query_params",
                    &["page"],
                    "page must be a number ≥ 0",
                )
            })?,
        };
        Ok(Self {
            integrations,
            with_error,
            want_id,
            search,
            end_user,
            org,
            tags,
            limit,
            page,
        })
    }

    /// The filters on one connection (the integrations are narrowed before).
    fn wants(&self, c: &Connection, errors: &ErrorView) -> bool {
        let eu_field = |c: &Connection, f: &str| {
            c.end_user()
                .as_ref()
                .and_then(|e| e.get(f))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        self.with_error.is_none_or(|w| errors.has(c) == w)
            && self
                .want_id
                .as_deref()
                .is_none_or(|w| w == &*c.connection_id)
            && self
                .end_user
                .as_deref()
                .is_none_or(|w| eu_field(c, "id").as_deref() == Some(w))
            && self.org.as_deref().is_none_or(|w| {
                c.end_user()
                    .as_ref()
                    .and_then(|e| e.get("organization"))
                    .and_then(|o| o.get("id"))
                    .and_then(Value::as_str)
                    == Some(w)
            })
            && self.search.as_deref().is_none_or(|s| {
                c.connection_id.to_ascii_lowercase().contains(s)
                    || ["display_name", "email"]
                        .iter()
                        .any(|f| eu_field(c, f).is_some_and(|v| v.to_ascii_lowercase().contains(s)))
            })
            && self.tags.iter().all(|(k, v)| {
                c.tags()
                    .iter()
                    .any(|(tk, tv)| tk.to_ascii_lowercase() == *k && tv.as_str() == Some(v))
            })
    }

    /// The page of `list`, newest first.
    fn render(&self, mut list: Vec<&Connection>, errors: &ErrorView) -> Response<ProxyBody> {
        let (page, limit) = (self.page, self.limit);
        // Newest first, as Nango orders; records without a creation time last, by key.
        // The creation time is decoded from the connection's cold fields: once per connection
        // (a cached key), not once per comparison.
        list.sort_by_cached_key(|c| {
            (
                std::cmp::Reverse(c.created_at()),
                c.provider_config_key.clone(),
                c.connection_id.clone(),
            )
        });
        let data: Vec<Value> = list
            .into_iter()
            .skip(page.saturating_mul(limit))
            .take(limit)
            .map(|c| list_json(c, errors))
            .collect();
        ok(json!({ "connections": data }))
    }
}
