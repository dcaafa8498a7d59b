//! providers.yaml: Nango's provider catalogue format, parsed and compiled.
//!
//! The file is a map of provider name to entry. Fields sidekey does not use are ignored so that
//! Nango's own catalogue loads unmodified. `alias: other` is a shallow merge: the alias entry's
//! top-level fields replace the target's. An entry that sidekey cannot use (an auth mode it
//! cannot inject, a template function) compiles to an error that matters only when an
//! integration uses that provider; `sidekey check` lists the rest as warnings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::Diagnostic;
use crate::template::{BaseUrlTemplate, Template};

/// How a provider authenticates; the modes sidekey can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    ApiKey,
    Basic,
    OAuth2,
    OAuth2Cc,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "API_KEY" => Some(Self::ApiKey),
            "BASIC" => Some(Self::Basic),
            "OAUTH2" => Some(Self::OAuth2),
            "OAUTH2_CC" => Some(Self::OAuth2Cc),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "API_KEY",
            Self::Basic => "BASIC",
            Self::OAuth2 => "OAUTH2",
            Self::OAuth2Cc => "OAUTH2_CC",
        }
    }
}

/// An inclusive range of statuses, from `error_code` entries such as `429`, `"5xx"`, `"500-502"`.
pub type StatusRange = (u16, u16);

/// The provider's rate-limit and retry hints (`proxy.retry`).
#[derive(Debug, Clone, Default)]
pub struct RetryHints {
    /// Headers holding the time at which the limit resets.
    pub at: Vec<HeaderName>,
    /// Headers holding seconds to wait.
    pub after: Vec<HeaderName>,
    /// A header whose value `0` means the quota is spent.
    pub remaining: Option<HeaderName>,
    /// When set, replaces the default retryable statuses.
    pub error_codes: Option<Vec<StatusRange>>,
}

/// A provider entry, compiled.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    /// `display_name`, shown to end users by the Connect UI.
    pub display_name: Option<String>,
    pub auth_mode: AuthMode,
    pub base_url: Option<BaseUrlTemplate>,
    pub headers: Vec<(HeaderName, Template)>,
    pub query: Vec<(String, Template)>,
    pub retry: RetryHints,
    pub decompress: bool,
    pub token_url: Option<BaseUrlTemplate>,
    pub refresh_url: Option<BaseUrlTemplate>,
    pub token_params: Vec<(String, String)>,
    pub refresh_params: Vec<(String, String)>,
    /// `token_request_auth_method: basic`: client credentials in HTTP Basic.
    pub token_auth_basic: bool,
    pub token_expiration_buffer: Option<Duration>,
    /// The OAuth2 authorization-code flow (Connect): `authorization_url` (may read
    /// `connectionConfig` values), its fixed `authorization_params` (templates), the
    /// `scope_separator` (default a space), `default_scopes` (when the integration names none),
    /// `disable_pkce`, and the token response fields copied into `connection_config`
    /// (`token_response_metadata`, e.g. Salesforce's `instance_url`).
    pub authorization_url: Option<BaseUrlTemplate>,
    pub authorization_params: Vec<(String, String)>,
    pub scope_separator: Option<String>,
    pub default_scopes: Vec<String>,
    pub disable_pkce: bool,
    pub token_response_metadata: Vec<String>,
    /// `proxy.verification`: how an API_KEY or BASIC credential is tested before a
    /// connection is written (`None`: it is accepted untested, as Nango does).
    pub verification: Option<Verification>,
    /// `proxy.auth_error_code` (a sidekey extension; Nango has no such field): the upstream
    /// statuses that mean the connection's credential was refused, which mark an API_KEY or
    /// BASIC connection with an auth error (`webhooks::status`). Default `401`; a provider
    /// that answers a revoked key with 403 lists `[401, 403]`. Only 4xx entries are accepted.
    pub auth_error_codes: Vec<StatusRange>,
}

impl Provider {
    /// Whether an upstream `status` means the credential was refused (see
    /// [`Provider::auth_error_codes`]).
    pub fn is_auth_error(&self, status: u16) -> bool {
        self.auth_error_codes
            .iter()
            .any(|(a, b)| (*a..=*b).contains(&status))
    }
}

/// A provider's credential test (`proxy.verification`): each endpoint is tried in order, and
/// the first 2xx answer means the credential is valid.
#[derive(Debug, Clone)]
pub struct Verification {
    pub method: http::Method,
    /// Endpoints as written (a path, maybe with its own query), never empty.
    pub endpoints: Vec<String>,
    /// Used instead of the connection's base URL (rendered like one).
    pub base_url_override: Option<BaseUrlTemplate>,
    /// Sent as they are (Nango does not interpolate them); the credential still wins.
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
    /// The JSON body of a POST test.
    pub data: Option<serde_json::Value>,
}

/// The whole catalogue: each provider compiled, or the reasons it could not be.
#[derive(Debug, Default)]
pub struct Catalog {
    pub providers: HashMap<String, Result<Arc<Provider>, Vec<String>>>,
}

impl Catalog {
    /// Parses and compiles a providers.yaml. Errors here concern the whole file (not YAML, not a
    /// map); problems of single entries are kept per provider.
    pub fn parse(file: &str, src: &str) -> Result<Self, Diagnostic> {
        let root: Mapping = if src.trim().is_empty() {
            Mapping::new()
        } else {
            super::limits::check_yaml(src)
                .map_err(|r| Diagnostic::error(file, "", r.to_string()))?;
            serde_yaml_ng::from_str(src).map_err(|e| {
                Diagnostic::error(file, "", format!("not a YAML map of providers: {e}"))
            })?
        };
        let mut raw: BTreeMap<String, Mapping> = BTreeMap::new();
        for (k, v) in root {
            let Some(name) = k.as_str().map(str::to_string) else {
                return Err(Diagnostic::error(
                    file,
                    "",
                    "provider names must be strings",
                ));
            };
            match v {
                Value::Mapping(m) => {
                    raw.insert(name, m);
                }
                _ => {
                    return Err(Diagnostic::error(
                        file,
                        name,
                        "a provider entry must be a map",
                    ))
                }
            }
        }
        let providers = raw
            .keys()
            .map(|name| (name.clone(), compile_entry(name, &raw)))
            .collect();
        Ok(Self { providers })
    }

    /// The warnings `sidekey check` shows for entries that no integration uses.
    pub fn warnings(&self, file: &str) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = self
            .providers
            .iter()
            .filter_map(|(name, p)| p.as_ref().err().map(|errs| (name, errs)))
            .flat_map(|(name, errs)| {
                errs.iter()
                    .map(move |e| Diagnostic::warning(file, name.clone(), e.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// The longest `alias` chain followed (Nango's catalogue uses one step). Every provider resolves
/// its own chain, so without a bound a 5 000-step chain costs 5 000² merges and cycle checks.
pub const MAX_ALIAS_CHAIN: usize = 16;

/// Why an `alias` chain could not be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    #[error("`alias` must be a provider name")]
    NotAName,
    #[error("alias cycle: {chain} -> {target}")]
    Cycle { chain: String, target: String },
    #[error("alias chain longer than {MAX_ALIAS_CHAIN} steps ({first} -> {second} -> …)")]
    TooLong { first: String, second: String },
    #[error("alias names unknown provider `{0}`")]
    Unknown(String),
}

/// Follows `alias` chains and merges shallowly.
fn resolve_alias(name: &str, raw: &BTreeMap<String, Mapping>) -> Result<Mapping, AliasError> {
    let mut chain = vec![name.to_string()];
    let mut merged = raw.get(name).cloned().unwrap_or_default();
    let alias_key = Value::String("alias".into());
    while let Some(target) = merged.remove(&alias_key) {
        let target = target.as_str().ok_or(AliasError::NotAName)?.to_string();
        if chain.contains(&target) {
            return Err(AliasError::Cycle {
                chain: chain.join(" -> "),
                target,
            });
        }
        if chain.len() > MAX_ALIAS_CHAIN {
            return Err(AliasError::TooLong {
                first: chain[0].clone(),
                second: chain[1].clone(),
            });
        }
        let base = raw
            .get(&target)
            .ok_or_else(|| AliasError::Unknown(target.clone()))?;
        let mut next = base.clone();
        for (k, v) in merged {
            next.insert(k, v);
        }
        merged = next;
        chain.push(target);
    }
    Ok(merged)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Self::Str(s) => s,
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenUrl {
    One(String),
    ByMode(BTreeMap<String, String>),
}

#[derive(Deserialize, Default)]
struct RawRetry {
    at: Option<OneOrMany>,
    after: Option<OneOrMany>,
    remaining: Option<String>,
    error_code: Option<Vec<Scalar>>,
}

#[derive(Deserialize, Default)]
struct RawProxy {
    base_url: Option<String>,
    headers: Option<BTreeMap<String, Scalar>>,
    query: Option<BTreeMap<String, Scalar>>,
    retry: Option<RawRetry>,
    decompress: Option<bool>,
    auth_error_code: Option<Vec<Scalar>>,
    verification: Option<RawVerification>,
}

#[derive(Deserialize, Default)]
struct RawVerification {
    method: Option<String>,
    endpoints: Option<Vec<String>>,
    endpoint: Option<String>,
    base_url_override: Option<String>,
    headers: Option<BTreeMap<String, Scalar>>,
    data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawProvider {
    display_name: Option<String>,
    auth_mode: Option<String>,
    proxy: Option<RawProxy>,
    token_url: Option<TokenUrl>,
    refresh_url: Option<String>,
    token_params: Option<BTreeMap<String, Scalar>>,
    refresh_params: Option<BTreeMap<String, Scalar>>,
    token_request_auth_method: Option<String>,
    token_expiration_buffer: Option<u64>,
    authorization_url: Option<String>,
    authorization_params: Option<BTreeMap<String, Scalar>>,
    scope_separator: Option<String>,
    default_scopes: Option<OneOrMany>,
    disable_pkce: Option<bool>,
    token_response_metadata: Option<OneOrMany>,
}

fn compile_entry(
    name: &str,
    raw: &BTreeMap<String, Mapping>,
) -> Result<Arc<Provider>, Vec<String>> {
    let merged = resolve_alias(name, raw).map_err(|e| vec![e.to_string()])?;
    let entry: RawProvider = serde_path_to_error::deserialize(Value::Mapping(merged))
        .map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])?;
    let mut errors = Vec::new();
    let auth_mode = match entry.auth_mode.as_deref() {
        None => {
            errors.push("auth_mode is missing".to_string());
            None
        }
        Some(m) => {
            let mode = AuthMode::parse(m);
            if mode.is_none() {
                errors.push(format!("auth mode `{m}` is not supported by sidekey"));
            }
            mode
        }
    };
    let template = |errors: &mut Vec<String>, what: &str, src: &str| match Template::compile(src) {
        Ok(t) => Some(t),
        Err(e) => {
            errors.push(format!("{what}: {e}"));
            None
        }
    };
    let proxy = entry.proxy.unwrap_or_default();
    let mut headers = Vec::new();
    for (k, v) in proxy.headers.unwrap_or_default() {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(h) => {
                if let Some(t) =
                    template(&mut errors, &format!("proxy.headers.{k}"), &v.into_string())
                {
                    headers.push((h, t));
                }
            }
            Err(_) => errors.push(format!("proxy.headers.{k}: not a valid header name")),
        }
    }
    let mut query = Vec::new();
    for (k, v) in proxy.query.unwrap_or_default() {
        if let Some(t) = template(&mut errors, &format!("proxy.query.{k}"), &v.into_string()) {
            query.push((k, t));
        }
    }
    let base_template = |errors: &mut Vec<String>, what: &str, src: Option<String>| {
        src.and_then(|s| match BaseUrlTemplate::compile(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(format!("{what}: {e}"));
                None
            }
        })
    };
    let base_url = base_template(&mut errors, "proxy.base_url", proxy.base_url);
    let token_url_src = match entry.token_url {
        None => None,
        Some(TokenUrl::One(s)) => Some(s),
        Some(TokenUrl::ByMode(m)) => auth_mode.and_then(|mode| m.get(mode.as_str()).cloned()),
    };
    let token_url = base_template(&mut errors, "token_url", token_url_src);
    let refresh_url = base_template(&mut errors, "refresh_url", entry.refresh_url);
    // Only the Connect flow reads it: one sidekey cannot compile leaves the provider usable
    // for the proxy (the flow then says the provider cannot be connected).
    let authorization_url = entry
        .authorization_url
        .and_then(|s| BaseUrlTemplate::compile(&s).ok());
    let retry = compile_retry(proxy.retry.unwrap_or_default(), &mut errors);
    let verification = proxy
        .verification
        .and_then(|v| compile_verification(v, &mut errors));
    let auth_error_codes = match proxy.auth_error_code {
        None => vec![(401, 401)],
        Some(codes) => codes
            .into_iter()
            .filter_map(|c| {
                let s = c.into_string();
                let r = parse_status_range(&s).filter(|(a, b)| *a >= 400 && *b <= 499);
                if r.is_none() {
                    errors.push(format!(
                        "proxy.auth_error_code: `{s}` is not a 4xx status, `4xx` or `401-403`"
                    ));
                }
                r
            })
            .collect(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(auth_mode) = auth_mode else {
        return Err(vec!["auth_mode is missing".into()]);
    };
    let params = |m: Option<BTreeMap<String, Scalar>>| {
        m.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_string()))
            .collect()
    };
    Ok(Arc::new(Provider {
        name: name.to_string(),
        display_name: entry.display_name,
        auth_mode,
        base_url,
        headers,
        query,
        retry,
        decompress: proxy.decompress.unwrap_or(false),
        token_url,
        refresh_url,
        token_params: params(entry.token_params),
        refresh_params: params(entry.refresh_params),
        token_auth_basic: entry
            .token_request_auth_method
            .is_some_and(|m| m.eq_ignore_ascii_case("basic")),
        token_expiration_buffer: entry.token_expiration_buffer.map(Duration::from_secs),
        auth_error_codes,
        authorization_url,
        authorization_params: params(entry.authorization_params),
        scope_separator: entry.scope_separator,
        default_scopes: entry
            .default_scopes
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
        disable_pkce: entry.disable_pkce.unwrap_or(false),
        token_response_metadata: entry
            .token_response_metadata
            .map(OneOrMany::into_vec)
            .unwrap_or_default(),
        verification,
    }))
}

/// `proxy.verification`, or `None` when it names no endpoint (nothing to test).
fn compile_verification(raw: RawVerification, errors: &mut Vec<String>) -> Option<Verification> {
    let mut endpoints = raw.endpoints.unwrap_or_default();
    endpoints.extend(raw.endpoint);
    endpoints.retain(|e| !e.trim().is_empty());
    let method = match raw
        .method
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("GET") => http::Method::GET,
        Some("POST") => http::Method::POST,
        Some(m) => {
            errors.push(format!(
                "proxy.verification.method: `{m}` is not GET or POST"
            ));
            return None;
        }
    };
    let base_url_override = match raw.base_url_override {
        Some(s) => match BaseUrlTemplate::compile(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(format!("proxy.verification.base_url_override: {e}"));
                return None;
            }
        },
        None => None,
    };
    let mut headers = Vec::new();
    for (k, v) in raw.headers.unwrap_or_default() {
        let v = v.into_string();
        match (
            HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(&v),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => errors.push(format!(
                "proxy.verification.headers.{k}: not a valid header"
            )),
        }
    }
    (!endpoints.is_empty()).then_some(Verification {
        method,
        endpoints,
        base_url_override,
        headers,
        data: raw.data,
    })
}

fn compile_retry(raw: RawRetry, errors: &mut Vec<String>) -> RetryHints {
    let mut names = |what: &str, list: Vec<String>| -> Vec<HeaderName> {
        list.into_iter()
            .filter_map(|h| match HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(format!("proxy.retry.{what}: `{h}` is not a header name"));
                    None
                }
            })
            .collect()
    };
    let at = names("at", raw.at.map(OneOrMany::into_vec).unwrap_or_default());
    let after = names(
        "after",
        raw.after.map(OneOrMany::into_vec).unwrap_or_default(),
    );
    let remaining = names("remaining", raw.remaining.into_iter().collect())
        .into_iter()
        .next();
    let error_codes = raw.error_code.map(|codes| {
        codes
            .into_iter()
            .filter_map(|c| {
                let s = c.into_string();
                let r = parse_status_range(&s);
                if r.is_none() {
                    errors.push(format!(
                        "proxy.retry.error_code: `{s}` is not a status, `5xx` or `500-502`"
                    ));
                }
                r
            })
            .collect()
    });
    RetryHints {
        at,
        after,
        remaining,
        error_codes,
    }
}

/// Parses `429`, `5xx` or `500-502`.
pub fn parse_status_range(s: &str) -> Option<StatusRange> {
    let s = s.trim();
    let valid = |n: u16| (100..=599).contains(&n);
    if let Some(d) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        let d: u16 = d.parse().ok()?;
        return (1..=5).contains(&d).then_some((d * 100, d * 100 + 99));
    }
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        return (valid(a) && valid(b) && a <= b).then_some((a, b));
    }
    let n: u16 = s.parse().ok()?;
    valid(n).then_some((n, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider<'a>(c: &'a Catalog, name: &str) -> &'a Provider {
        c.providers[name].as_ref().expect("compiles")
    }

    #[test]
    fn alias_is_a_shallow_merge() {
        let src = r#"
base:
  auth_mode: OAUTH2
  token_url: https://t.example/token
  proxy:
    base_url: https://api.example
    headers: {x-version: "2"}
pat:
  alias: base
  auth_mode: API_KEY
  proxy:
    base_url: https://api.example/v2
    headers: {authorization: "Bearer ${apiKey}"}
"#;
        let c = Catalog::parse("p.yaml", src).expect("parses");
        let pat = provider(&c, "pat");
        assert_eq!(pat.auth_mode, AuthMode::ApiKey);
        assert!(pat.token_url.is_some(), "inherited top-level field");
        assert_eq!(pat.headers.len(), 1, "proxy block replaced whole");
        assert_eq!(pat.headers[0].0, "authorization");
    }

    #[test]
    fn unusable_entries_fail_alone() {
        let src = r#"
good: {auth_mode: BASIC, proxy: {base_url: "https://x"}}
jwt: {auth_mode: JWT}
fn: {auth_mode: API_KEY, proxy: {headers: {authorization: "${base64(apiKey)}"}}}
loop1: {alias: loop2}
loop2: {alias: loop1}
"#;
        let c = Catalog::parse("p.yaml", src).expect("parses");
        assert!(c.providers["good"].is_ok());
        for bad in ["jwt", "fn", "loop1"] {
            assert!(c.providers[bad].is_err(), "{bad}");
        }
        let w = c.warnings("p.yaml");
        assert!(w.iter().any(|d| d
            .to_string()
            .contains("p.yaml: jwt: warning: auth mode `JWT`")));
    }

    #[test]
    fn retry_hints_and_status_ranges() {
        let src = r#"
p:
  auth_mode: API_KEY
  proxy:
    base_url: https://x
    headers: {x-api-key: "${apiKey}"}
    retry: {at: x-ratelimit-reset, after: [retry-after, x-wait], remaining: x-left, error_code: [403, "5xx", "500-502"]}
"#;
        let c = Catalog::parse("p.yaml", src).expect("parses");
        let r = &provider(&c, "p").retry;
        assert_eq!(r.at.len(), 1);
        assert_eq!(r.after.len(), 2);
        assert_eq!(
            r.error_codes.as_deref(),
            Some(&[(403, 403), (500, 599), (500, 502)][..])
        );
        assert_eq!(parse_status_range("6xx"), None);
        assert_eq!(parse_status_range("502-500"), None);
    }

    #[test]
    fn auth_error_codes_default_to_401_and_take_only_4xx() {
        let src = r#"
plain: {auth_mode: API_KEY, proxy: {base_url: "https://x"}}
strict: {auth_mode: API_KEY, proxy: {base_url: "https://x", auth_error_code: [401, "403"]}}
wide: {auth_mode: BASIC, proxy: {base_url: "https://x", auth_error_code: ["4xx"]}}
bad: {auth_mode: API_KEY, proxy: {base_url: "https://x", auth_error_code: [500]}}
"#;
        let c = Catalog::parse("p.yaml", src).expect("parses");
        let plain = provider(&c, "plain");
        assert!(plain.is_auth_error(401) && !plain.is_auth_error(403));
        let strict = provider(&c, "strict");
        assert!(strict.is_auth_error(401) && strict.is_auth_error(403));
        assert!(!strict.is_auth_error(404));
        assert!(provider(&c, "wide").is_auth_error(418));
        let bad = c.providers["bad"].as_ref().expect_err("500 is refused");
        assert!(bad[0].contains("proxy.auth_error_code: `500`"), "{bad:?}");
    }

    #[test]
    fn bundled_catalogue_compiles() {
        let c = Catalog::parse("providers.yaml", crate::config::BUNDLED_PROVIDERS).expect("parses");
        assert!(c.providers.len() >= 40);
        let errs = c.warnings("providers.yaml");
        assert!(errs.is_empty(), "{errs:?}");
        for name in [
            "github",
            "private-api-bearer",
            "private-api-basic",
            "private-api-generic",
        ] {
            assert!(c.providers[name].is_ok(), "{name}");
        }
    }

    #[test]
    fn not_a_map_is_a_file_error() {
        assert!(Catalog::parse("p.yaml", "- a\n- b\n").is_err());
        assert!(Catalog::parse("p.yaml", "a: [").is_err());
    }
}
