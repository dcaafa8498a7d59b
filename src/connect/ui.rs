//! The Connect UI: a small page at `connect_link`, embedded in the binary (no CDN, no external
//! fonts), where an end user picks one of the session's integrations and types an API key or
//! a user name and password. It also speaks the iframe protocol of `@nangohq/frontend`'s
//! `openConnectUI` (`ready` → `session_token`; `connect`, `error`, `close`), so that
//! `nango.openConnectUI({ baseURL: <public url>, apiURL: <public url> })` works.
//!
//! The page is static; what it shows comes from `GET /connect/session` and
//! `GET /connect/integrations` (both with the session token as Bearer): the session's allowed
//! integrations by display name, and the fields each one needs — the credential fields of its
//! auth mode (the integration's `keyLabel` for a private API) and the `connectionConfig` values
//! its base URL and injected templates use, less those the session's defaults give.
//!
//! The page carries the session token in its URL, so it is sent with `Referrer-Policy:
//! no-referrer` and `Cache-Control: no-store`; its Content-Security-Policy allows only its own
//! script, style and API (`'self'`), and any framing origin (an application embeds it).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::ProxyBody;
use crate::config::providers::AuthMode;
use crate::config::snapshot::Integration;
use crate::store::sessions::Session;
use crate::template::{Placeholder, Template};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/ui.js");
const STYLE: &str = include_str!("ui/ui.css");
const CALLBACK: &str = include_str!("ui/oauth-callback.js");

/// One of the page's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Index,
    Script,
    Style,
    /// The script of the OAuth callback page.
    Callback,
}

impl Asset {
    /// The asset a file name names (`ui.js`, `ui.css`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "ui.js" => Some(Self::Script),
            "ui.css" => Some(Self::Style),
            "oauth-callback.js" => Some(Self::Callback),
            _ => None,
        }
    }
}

/// The response for an asset.
pub fn serve(asset: Asset) -> Response<ProxyBody> {
    let (body, kind) = match asset {
        Asset::Index => (INDEX, "text/html; charset=utf-8"),
        Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        Asset::Style => (STYLE, "text/css; charset=utf-8"),
        Asset::Callback => (CALLBACK, "text/javascript; charset=utf-8"),
    };
    let mut res = uncached(
        StatusCode::OK,
        Bytes::from_static(body.as_bytes()),
        kind,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors *",
    );
    res.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A page or asset of Connect's browser side: never cached, no referrer sent from it, and
/// limited by `csp`.
pub(super) fn uncached(
    status: StatusCode,
    body: Bytes,
    kind: &'static str,
    csp: &'static str,
) -> Response<ProxyBody> {
    let mut res = Response::new(crate::body::full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    res
}

/// "application_key" → "Application key".
fn label(name: &str) -> String {
    let spaced = name.replace(['_', '-', '.'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn config_names(t: &Template) -> impl Iterator<Item = String> + '_ {
    t.placeholders().filter_map(|p| match p {
        Placeholder::ConnectionConfig(path) => Some(path.join(".")),
        _ => None,
    })
}

/// The fields an end user fills for `int`: its credential fields and the connection config
/// values its templates read (required unless a later base-URL alternative does without),
/// less those the session's defaults give.
pub fn integration_json(int: &Integration, session: &Session) -> Value {
    let display = int
        .display_name
        .clone()
        .or_else(|| int.provider.display_name.clone())
        .unwrap_or_else(|| int.unique_key.clone());
    let credentials = match int.provider.auth_mode {
        AuthMode::ApiKey => {
            let key_label = int
                .record
                .integration_config
                .as_ref()
                .and_then(|c| c.key_label.clone())
                .unwrap_or_else(|| "API key".to_string());
            json!([{"name": "apiKey", "label": key_label, "secret": true}])
        }
        AuthMode::Basic => json!([
            {"name": "username", "label": "Username", "secret": false},
            {"name": "password", "label": "Password", "secret": true},
        ]),
        _ => json!([]),
    };
    let given: Vec<String> = session
        .integrations_config_defaults
        .get(&int.unique_key)
        .and_then(|d| d.get("connection_config"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut params: Vec<(String, bool)> = Vec::new();
    let mut add = |name: String, required: bool| {
        if given.contains(&name) {
            return;
        }
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, r)) => *r |= required,
            None => params.push((name, required)),
        }
    };
    if let Some(url) = int.provider.authorization_url.as_ref() {
        for name in url.alternatives().iter().flat_map(config_names) {
            add(name, true);
        }
    }
    if let Some(base) = int.base_url.as_ref().or(int.provider.base_url.as_ref()) {
        let alts = base.alternatives();
        for (i, alt) in alts.iter().enumerate() {
            for name in config_names(alt) {
                // Needed only when no later alternative can stand in for this one.
                add(name, i + 1 == alts.len());
            }
        }
    }
    for inj in &int.injections {
        for name in config_names(&inj.template) {
            add(name, true);
        }
    }
    let params: Vec<Value> = params
        .into_iter()
        .map(|(name, required)| json!({"name": name, "label": label(&name), "required": required}))
        .collect();
    json!({
        "unique_key": int.unique_key,
        "provider": int.provider.name,
        "display_name": display,
        "auth_mode": int.provider.auth_mode.as_str(),
        "credentials": credentials,
        "params": params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_like_words() {
        assert_eq!(label("application_key"), "Application key");
        assert_eq!(label("site"), "Site");
        assert_eq!(label(""), "");
    }

    #[test]
    fn assets_carry_their_policies() {
        let res = serve(Asset::Index);
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        assert!(res.headers()["content-security-policy"]
            .to_str()
            .is_ok_and(|c| c.contains("script-src 'self'")));
        assert!(INDEX.contains("ui.js") && !INDEX.contains("http"));
        assert_eq!(Asset::named("ui.css"), Some(Asset::Style));
        assert_eq!(Asset::named("x.js"), None);
    }
}
