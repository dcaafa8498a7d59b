//! The read side of Nango's management API: providers, integrations and connections.
//!
//! Nango clients list integrations and connections and read connection metadata with these
//! routes, so they answer in Nango's shapes. One deliberate difference: credential values are
//! never returned (a connection shows only its credential `type`): keeping secrets out of the
//! application is the reason sidekey exists, and the proxy is how the application uses them.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::ProxyBody;
use crate::config::{Connection, Credential, Integration, Snapshot};
use crate::error::{json_response, ProxyError};

/// A management route.
#[derive(Debug, PartialEq, Eq)]
pub enum ApiRoute<'a> {
    Providers,
    Integrations,
    Integration(&'a str),
    Connections,
    Connection(&'a str),
}

/// Matches the management routes (`/connection` is Nango's older spelling of `/connections`).
pub fn route(path: &str) -> Option<ApiRoute<'_>> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/providers" => return Some(ApiRoute::Providers),
        "/integrations" | "/config" => return Some(ApiRoute::Integrations),
        "/connections" | "/connection" => return Some(ApiRoute::Connections),
        _ => {}
    }
    if let Some(key) = path
        .strip_prefix("/integrations/")
        .or_else(|| path.strip_prefix("/config/"))
    {
        return (!key.is_empty() && !key.contains('/')).then_some(ApiRoute::Integration(key));
    }
    let id = path
        .strip_prefix("/connections/")
        .or_else(|| path.strip_prefix("/connection/"))?;
    (!id.is_empty() && !id.contains('/')).then_some(ApiRoute::Connection(id))
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn integration_json(i: &Integration) -> Value {
    json!({
        "unique_key": i.unique_key,
        "provider": i.provider.name,
        "display_name": i.display_name.clone().unwrap_or_else(|| i.provider.name.clone()),
        "auth_mode": i.provider.auth_mode.as_str(),
    })
}

fn credential_type(c: &Credential) -> &'static str {
    match c {
        Credential::ApiKey(_) => "API_KEY",
        Credential::Basic { .. } => "BASIC",
        Credential::OAuth2 { .. } => "OAUTH2",
        Credential::OAuth2Cc { .. } => "OAUTH2_CC",
    }
}

fn connection_json(c: &Connection, full: bool) -> Value {
    let mut v = json!({
        "id": c.connection_id,
        "connection_id": c.connection_id,
        "provider_config_key": c.provider_config_key,
        "provider": c.integration.provider.name,
        "metadata": c.metadata,
        "errors": [],
    });
    if full {
        v["connection_config"] = Value::Object(c.connection_config.clone());
        v["credentials"] = json!({ "type": credential_type(&c.credential) });
    }
    v
}

fn ok(body: Value) -> Response<ProxyBody> {
    json_response(StatusCode::OK, Bytes::from(body.to_string()), None)
}

/// Answers a management route from the snapshot.
pub fn respond(
    snapshot: &Snapshot,
    route: &ApiRoute<'_>,
    method: &Method,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed(method.to_string()));
    }
    match route {
        ApiRoute::Providers => {
            let mut names: Vec<Value> = snapshot
                .catalog
                .providers
                .iter()
                .filter_map(|(name, p)| {
                    p.as_ref()
                        .ok()
                        .map(|p| json!({"name": name, "auth_mode": p.auth_mode.as_str()}))
                })
                .collect();
            names.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(ok(json!({ "data": names })))
        }
        ApiRoute::Integrations => {
            let mut list: Vec<&Integration> =
                snapshot.integrations.values().map(AsRef::as_ref).collect();
            list.sort_by(|a, b| a.unique_key.cmp(&b.unique_key));
            let data: Vec<Value> = list.into_iter().map(integration_json).collect();
            Ok(ok(json!({ "data": data })))
        }
        ApiRoute::Integration(key) => {
            let key = decode(key);
            let i = snapshot
                .integrations
                .get(key.as_str())
                .ok_or(ProxyError::UnknownProviderConfig(key))?;
            Ok(ok(json!({ "data": integration_json(i) })))
        }
        ApiRoute::Connections => {
            let filter = query_param(query, "integrationId")
                .or_else(|| query_param(query, "provider_config_key"));
            let want_id = query_param(query, "connectionId");
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            let mut list: Vec<&Connection> = snapshot
                .connections
                .iter()
                .filter(|(k, _)| filter.as_deref().is_none_or(|f| *f == ***k))
                .flat_map(|(_, m)| m.values().map(AsRef::as_ref))
                .filter(|c| want_id.as_deref().is_none_or(|w| w == c.connection_id))
                .collect();
            list.sort_by(|a, b| {
                (a.provider_config_key.as_str(), a.connection_id.as_str())
                    .cmp(&(b.provider_config_key.as_str(), b.connection_id.as_str()))
            });
            let data: Vec<Value> = list
                .into_iter()
                .take(limit)
                .map(|c| connection_json(c, false))
                .collect();
            Ok(ok(json!({ "connections": data })))
        }
        ApiRoute::Connection(id) => {
            let id = decode(id);
            let key = query_param(query, "provider_config_key").ok_or_else(|| {
                ProxyError::InvalidHeaders(
                    "the provider_config_key query parameter is required".into(),
                )
            })?;
            if !snapshot.integrations.contains_key(key.as_str()) {
                return Err(ProxyError::UnknownProviderConfig(key));
            }
            let c = snapshot
                .connection(&key, &id)
                .ok_or(ProxyError::UnknownConnection {
                    connection_id: id,
                    provider_config_key: key,
                })?;
            Ok(ok(connection_json(c, true)))
        }
    }
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
        assert_eq!(route("/connections/u1/proxy"), None);
        assert_eq!(route("/providers"), Some(ApiRoute::Providers));
        assert_eq!(route("/nope"), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&integrationId=my%20gh"), "integrationId").as_deref(),
            Some("my gh")
        );
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(query_param(None, "b"), None);
    }
}
