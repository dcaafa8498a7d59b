//! The invariants of sidekey's input parsers, written once and checked twice: by the cargo-fuzz
//! targets in `fuzz/fuzz_targets/` (long runs on nightly, by hand) and by the proptests in
//! `tests/props.rs` (fast, in CI). Each `check_*` function takes raw input bytes exactly as a
//! fuzz target receives them and panics when an invariant does not hold; a clean return means
//! the input was handled (accepted or refused) correctly.
//!
//! The oracles here are written from CONTRACT.md and the module docs, not copied from the code
//! they check: the drop lists are spelled out again, dot segments are removed the way a server
//! behind sidekey might remove them, and secrets are recognised by marker values that appear
//! nowhere else.
//!
//! Input formats (text, so committed corpora stay readable):
//! - template: the template source.
//! - join: `BASE\nTARGET\nNAMES`: a base URL (an unusable one falls back to
//!   `https://h.example/base`), the request target `/path?query`, comma-separated injected
//!   query names.
//! - headers: `name: value` lines, the caller's request headers (also replayed as an
//!   upstream response's headers).
//! - config: `PROVIDERS\0VAULT`, or only `VAULT` (with a fixed providers.yaml).
//! - json: first byte `t` = token response (`t` + 3-digit status + body); anything else =
//!   management API request target.
//! - api_body: `METHOD PATH\nBODY`: a management write route and its JSON body.

// Each fuzz target uses only its own checks.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body as _;
use sidekey::config::snapshot::{self, encode_query_component, BuildOptions};
use sidekey::config::{BaseUrl, Snapshot, Sources};
use sidekey::proxy::{headers, inject, rewrite, route};
use sidekey::template::{BaseUrlTemplate, Placeholder, Template, Values};

/// Marker secrets: distinctive strings the fuzzer will not produce by accident, so any
/// appearance in an output is a leak.
pub const API_KEY: &str = "sk0SECRET0apikey0value";
pub const PASSWORD: &str = "pw0SECRET0password0value";
pub const ACCESS_TOKEN: &str = "at0SECRET0accesstoken0value";
pub const CRED_EXTRA: &str = "cx0SECRET0credentialfield0value";

// ---------------------------------------------------------------------------------------------
// template

fn json_map(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Invariant: compiling and rendering never panic; text without `$` compiles and renders to
/// itself; a template renders exactly when every placeholder resolves; every placeholder prints
/// as a path that compiles back to itself; a base URL template only ever names
/// `connectionConfig`/`metadata`, so rendering it never yields a credential.
pub fn check_template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let cc = json_map(serde_json::json!({"a": "A", "x": "X", "n": {"m": 7, "t": true}, "e": ""}));
    let md = json_map(serde_json::json!({"a": "MA", "k": {"v": "V"}}));
    let cr = json_map(serde_json::json!({"token": CRED_EXTRA, "a": CRED_EXTRA}));
    let values = Values {
        api_key: Some(API_KEY),
        access_token: Some(ACCESS_TOKEN),
        username: Some("user"),
        password: Some(PASSWORD),
        connection_config: Some(&cc),
        credentials: Some(&cr),
        metadata: Some(&md),
    };
    match Template::compile(src) {
        Ok(t) => {
            let rendered = t.render(&values);
            assert_eq!(
                rendered.is_some(),
                t.first_unresolved(&values).is_none(),
                "render and first_unresolved disagree on {src:?}"
            );
            assert_eq!(
                t.render(&Values::default()).is_some(),
                t.placeholders().next().is_none()
            );
            for p in t.placeholders() {
                let again =
                    Template::compile(&format!("${{{p}}}")).expect("a printed path compiles");
                assert_eq!(again.placeholders().collect::<Vec<_>>(), [p], "{p}");
            }
        }
        Err(_) => assert!(src.contains('$'), "text without `$` was refused: {src:?}"),
    }
    if !src.contains('$') {
        let t = Template::compile(src).expect("text without `$` compiles");
        assert_eq!(t.render(&values).as_deref(), Some(src));
    }
    if let Ok(b) = BaseUrlTemplate::compile(src) {
        for p in b.placeholders() {
            assert!(
                matches!(
                    p,
                    Placeholder::ConnectionConfig(_) | Placeholder::Metadata(_)
                ),
                "a base URL names {p}"
            );
        }
        if let Ok(url) = b.render(&values) {
            for secret in [API_KEY, PASSWORD, ACCESS_TOKEN, CRED_EXTRA] {
                assert!(
                    !url.contains(secret) || src.contains(secret),
                    "a base URL rendered a credential: {src:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// join: route + upstream_uri

/// The segments left after a server behind sidekey removes dot segments (RFC 3986 §5.2.4) in
/// the most aggressive way sidekey defends against: each segment percent-decoded once and split
/// again on `/` and `\`; `..` at the root stays at the root; empty segments are dropped.
pub fn normalized_segments(path: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for raw in path.split('/') {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        for part in decoded.split(|b| *b == b'/' || *b == b'\\') {
            match part {
                b"" | b"." => {}
                b".." => {
                    out.pop();
                }
                s => out.push(s.to_vec()),
            }
        }
    }
    out
}

const FALLBACK_BASE: &str = "https://h.example/base";

/// Invariant: routing and joining never panic; the endpoint is the raw tail of the path; a
/// joined URL keeps the base's scheme and authority, is the base path, one `/` and the
/// endpoint byte for byte, and after removing dot segments still lies inside the base path —
/// or the join is refused with `invalid_endpoint`; each injected query name appears exactly
/// once.
pub fn check_join(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let base_src = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or("/proxy/");
    let names = lines.next().unwrap_or_default();
    let base = BaseUrl::parse(base_src)
        .or_else(|_| BaseUrl::parse(FALLBACK_BASE))
        .expect("the fallback base parses");
    let Ok(pq) = http::uri::PathAndQuery::try_from(target) else {
        return; // hyper would have refused the request line
    };
    let path = pq.path();
    let Some(r) = route::route(path) else {
        return;
    };
    let endpoint = match &r {
        route::Route::Proxy { endpoint } => {
            assert_eq!(format!("/proxy{endpoint}"), path);
            *endpoint
        }
        route::Route::ConnectionProxy { selector, endpoint } => {
            assert!(path.ends_with(endpoint) && !selector.is_empty());
            *endpoint
        }
    };
    assert!(endpoint.is_empty() || endpoint.starts_with('/'));
    let _ = rewrite::absolute_endpoint(endpoint);
    let mut injected_names: Vec<String> = Vec::new();
    for n in names.split(',').filter(|n| !n.is_empty()).take(4) {
        let n = encode_query_component(n);
        if !injected_names.contains(&n) {
            injected_names.push(n);
        }
    }
    let injected: Vec<(&str, &str)> = injected_names.iter().map(|n| (n.as_str(), "v")).collect();
    match rewrite::upstream_uri(&base, endpoint, pq.query(), &injected) {
        Ok(uri) => {
            assert_eq!(uri.scheme(), Some(&base.scheme));
            assert_eq!(uri.authority(), Some(&base.authority));
            assert_eq!(
                uri.path(),
                format!("{}/{}", base.path(), endpoint.trim_start_matches('/')),
                "the path is not base + endpoint byte for byte"
            );
            let base_segs = normalized_segments(base.path());
            let joined = normalized_segments(uri.path());
            assert!(
                joined.starts_with(&base_segs),
                "{target:?} escapes the base {:?}: {}",
                base.path(),
                uri.path()
            );
            let query = uri.query().unwrap_or_default();
            for name in &injected_names {
                let count = query
                    .split('&')
                    .filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) == name)
                    .count();
                assert_eq!(
                    count, 1,
                    "injected `{name}` appears {count} times in {query:?}"
                );
            }
        }
        Err(e) => assert_eq!(e.code(), "invalid_endpoint", "{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// headers

/// Hop-by-hop headers, from CONTRACT.md.
pub fn hop_by_hop(n: &str) -> bool {
    matches!(
        n,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
    )
}

/// Infrastructure headers (seed 003's list without content-length) and the caller's own
/// Authorization, from CONTRACT.md.
pub fn infrastructure(n: &str) -> bool {
    matches!(
        n,
        "host"
            | "x-request-id"
            | "x-real-ip"
            | "x-scheme"
            | "x-original-forwarded-for"
            | "x-different-name"
            | "x-request-start"
            | "x-using-nginx-controller"
            | "x-amzn-trace-id"
            | "forwarded-for-header"
            | "proxy-protocol"
            | "real_ip_header"
            | "real_ip_recursive"
            | "cdn-loop"
            | "forwarded"
            | "authorization"
    ) || n.starts_with("x-forwarded-")
        || n.starts_with("cf-")
}

/// sidekey's control headers, from CONTRACT.md.
pub fn control(n: &str) -> bool {
    matches!(
        n,
        "connection-id"
            | "provider-config-key"
            | "retries"
            | "retry-on"
            | "base-url-override"
            | "decompress"
            | "nango-activity-log-id"
    ) || n.starts_with("nango-is-")
}

fn never_forwarded(n: &str) -> bool {
    hop_by_hop(n) || infrastructure(n) || control(n)
}

const HEADER_PROVIDERS: &str = r#"
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: https://h.example/base
    headers: {authorization: "Bearer ${apiKey}", x-api-key: "${apiKey}"}
oauth:
  auth_mode: OAUTH2
  token_url: https://h.example/token
  proxy:
    base_url: https://h.example
    headers: {x-token: "T ${accessToken}"}
"#;

const HEADER_VAULT: &str = r#"
integrations:
  - {unique_key: hdr, provider: hdr}
  - {unique_key: oauth, provider: oauth, credentials: {oauth_client_id: cid, oauth_client_secret: csecret}}
connections:
  - {connection_id: c, provider_config_key: hdr, credentials: {type: API_KEY, apiKey: sk0SECRET0apikey0value}}
  - {connection_id: o, provider_config_key: oauth, credentials: {type: OAUTH2, access_token: at0SECRET0accesstoken0value}}
"#;

fn build(providers: &str, vault: &str) -> Result<Snapshot, Vec<sidekey::config::Diagnostic>> {
    snapshot::build(
        &Sources {
            providers_name: "providers.yaml".into(),
            providers: providers.into(),
            vault_name: "vault.yaml".into(),
            vault: vault.into(),
        },
        &BuildOptions::default(),
    )
}

fn header_snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| build(HEADER_PROVIDERS, HEADER_VAULT).expect("the fixed config builds"))
}

/// Parses `name: value` lines into a header map, skipping lines that are not valid headers.
pub fn parse_header_lines(data: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n').take(64) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn named_by_connection(map: &HeaderMap, name: &str) -> bool {
    map.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
}

fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a HeaderValue> {
    map.get_all(name).iter().collect()
}

/// Invariant, to the upstream: no hop-by-hop, infrastructure or control header ever passes,
/// nor a plain header the caller's Connection header names; `Nango-Proxy-X` reaches the upstream
/// as `X` (same drop list, never Content-Length) and replaces a plain `X`; everything else
/// passes with all its values in order; the injected credential is the one and only value of
/// its header whatever the caller sent. To the caller: no hop-by-hop header, nothing the
/// upstream's Connection header names, no forged `Sidekey-Error`; everything else untouched.
pub fn check_headers(data: &[u8]) {
    let caller = parse_header_lines(data);
    let snap = header_snapshot();
    for (cid, pck, token) in [("c", "hdr", None), ("o", "oauth", Some(ACCESS_TOKEN))] {
        let conn = snap.connection(pck, cid).expect("fixed connection");
        let mut out = HeaderMap::new();
        headers::request_headers(&caller, &mut out);
        if let Err(e) = inject::inject(conn, token, &mut out) {
            panic!("injecting a fixed credential failed: {e}");
        }
        let mut injected: Vec<HeaderName> =
            conn.static_headers.iter().map(|(n, _)| n.clone()).collect();
        if token.is_some() {
            injected.push(HeaderName::from_static("x-token"));
        }
        let prefixed =
            |n: &str| -> Vec<&HeaderValue> { values(&caller, &format!("nango-proxy-{n}")) };
        for name in out.keys() {
            let n = name.as_str();
            if injected.contains(name) {
                continue;
            }
            assert!(!never_forwarded(n), "`{n}` reached the upstream");
            if prefixed(n).is_empty() || n == "content-length" {
                assert!(
                    !named_by_connection(&caller, n),
                    "`{n}` is named by Connection"
                );
            }
        }
        for name in &injected {
            let expected = match name.as_str() {
                "x-token" => format!("T {ACCESS_TOKEN}"),
                "authorization" => format!("Bearer {API_KEY}"),
                _ => API_KEY.to_string(),
            };
            assert_eq!(values(&out, name.as_str()), [expected.as_str()], "{name}");
            assert!(out[name].is_sensitive(), "{name} is not marked sensitive");
        }
        for name in caller.keys() {
            let n = name.as_str();
            if injected.contains(name) {
                continue;
            }
            if let Some(inner) = n.strip_prefix("nango-proxy-") {
                let Ok(inner_name) = HeaderName::from_bytes(inner.as_bytes()) else {
                    continue;
                };
                if !never_forwarded(inner)
                    && inner != "content-length"
                    && !injected.contains(&inner_name)
                {
                    assert_eq!(
                        values(&out, inner),
                        values(&caller, n),
                        "Nango-Proxy-{inner}"
                    );
                }
                continue;
            }
            let shadowed = !prefixed(n).is_empty() && !never_forwarded(n) && n != "content-length";
            if never_forwarded(n) || named_by_connection(&caller, n) || shadowed {
                continue;
            }
            assert_eq!(
                values(&out, n),
                values(&caller, n),
                "`{n}` was not passed whole"
            );
        }
    }

    let mut response = caller.clone();
    headers::response_headers(&mut response);
    for name in response.keys() {
        let n = name.as_str();
        assert!(!hop_by_hop(n), "`{n}` reached the caller");
        assert!(n != "sidekey-error", "an upstream forged Sidekey-Error");
        assert!(
            !named_by_connection(&caller, n),
            "`{n}` is named by the upstream's Connection"
        );
    }
    // RFC 9112 §6.3: a message framed by Transfer-Encoding has no Content-Length to pass on.
    let chunked = caller.contains_key(http::header::TRANSFER_ENCODING);
    if chunked {
        assert!(
            !response.contains_key(http::header::CONTENT_LENGTH),
            "Content-Length passed beside Transfer-Encoding"
        );
    }
    for name in caller.keys() {
        let n = name.as_str();
        let reframed = chunked && n == "content-length";
        if !hop_by_hop(n) && !reframed && n != "sidekey-error" && !named_by_connection(&caller, n) {
            assert_eq!(
                values(&response, n),
                values(&caller, n),
                "`{n}` was changed"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config

const CONFIG_PROVIDERS: &str = r#"
hdr: {auth_mode: API_KEY, proxy: {base_url: "https://${connectionConfig.sub}.example || https://h.example", headers: {x-key: "${apiKey}"}}}
basic: {auth_mode: BASIC, proxy: {base_url: "https://b.example"}}
oauth: {auth_mode: OAUTH2, token_url: "https://t.example/token", proxy: {base_url: "https://o.example"}}
cc: {auth_mode: OAUTH2_CC, token_url: "https://t.example/token", proxy: {base_url: "https://c.example"}}
"#;

/// Invariant: building a snapshot from any providers.yaml and vault text never panics and
/// always terminates; a refusal lists at least one error, each naming its file; a snapshot's
/// lookup tables agree with each other.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (providers, vault) = text.split_once('\0').unwrap_or((CONFIG_PROVIDERS, text));
    match build(providers, vault) {
        Ok(snap) => {
            let by_id: usize = snap.by_connection_id.values().count();
            assert_eq!(snap.connection_count(), by_id);
            for (key, conns) in &snap.connections {
                assert!(
                    snap.integrations.contains_key(&**key),
                    "connections of unknown `{key}`"
                );
                for (id, c) in conns {
                    assert_eq!((&*c.provider_config_key, &*c.connection_id), (&**key, id));
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            for d in &errors {
                assert!(d.file == "providers.yaml" || d.file == "vault.yaml", "{d}");
                assert!(!d.message.is_empty(), "{d}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// json: token responses and the management API

const API_VAULT: &str = r#"
integrations:
  - {unique_key: hdr, provider: hdr}
  - {unique_key: oauth, provider: oauth, credentials: {oauth_client_id: cid, oauth_client_secret: cx0SECRET0credentialfield0value}}
connections:
  - {connection_id: c, provider_config_key: hdr, credentials: {type: API_KEY, apiKey: sk0SECRET0apikey0value}, metadata: {m: 1}}
  - {connection_id: "a b", provider_config_key: hdr, credentials: {type: API_KEY, apiKey: sk0SECRET0apikey0value}}
  - {connection_id: o, provider_config_key: oauth, credentials: {type: OAUTH2, access_token: at0SECRET0accesstoken0value, refresh_token: pw0SECRET0password0value}}
"#;

fn api_snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| build(HEADER_PROVIDERS, API_VAULT).expect("the fixed config builds"))
}

/// The whole body of a response sidekey made itself (always a ready `Full` body).
fn body_bytes(res: http::Response<sidekey::body::ProxyBody>) -> (http::response::Parts, Vec<u8>) {
    let (parts, mut body) = res.into_parts();
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(e))) => panic!("a body sidekey made failed: {e}"),
            Poll::Pending => panic!("a body sidekey made is not ready"),
        }
    }
    (parts, out)
}

/// Invariant, token responses: parsing never panics; a grant needs a 2xx status and a
/// non-empty access token; a failure's `provider_error` looks like an OAuth error code and its
/// detail holds only the status and that code, never another value from the body.
/// Management API: any request target is answered without a panic, with a JSON body; an error
/// carries `Sidekey-Error` equal to its `error.code`; no credential ever appears in a body
/// unless the caller sent that very string.
pub fn check_json(data: &[u8]) {
    if let Some(rest) = data.strip_prefix(b"t") {
        let status = rest
            .get(..3)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        let body = rest.get(3..).unwrap_or_default();
        match sidekey::oauth::endpoint::parse_response(status, body) {
            Ok(grant) => {
                assert!((200..300).contains(&status));
                assert!(!grant.access_token.expose().is_empty());
            }
            Err(f) => {
                let expected = match &f.provider_error {
                    Some(code) => {
                        assert!(code.len() <= 64 && !code.is_empty());
                        assert!(code
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)));
                        format!("the token endpoint answered {status} `{code}`")
                    }
                    None if (200..300).contains(&status) => {
                        format!("the token endpoint answered {status} without an access_token")
                    }
                    None => format!("the token endpoint answered {status}"),
                };
                assert_eq!(f.detail, expected);
            }
        }
        return;
    }
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(target) else {
        return;
    };
    let Some(api) = sidekey::api::route(pq.path()) else {
        return;
    };
    // A key that may read connections but not their credentials (that scope is the one way
    // credentials leave sidekey through the API).
    let scopes = sidekey::auth::Scopes::parse(&["connections:read", "integrations:read"])
        .expect("known scopes");
    let res = match sidekey::api::read::from_snapshot(api_snapshot(), &api, pq.query(), scopes) {
        Ok(Some(res)) => res,
        Ok(None) => panic!("only a credential read needs more than the snapshot"),
        Err(e) => e.to_response(),
    };
    let (parts, body) = body_bytes(res);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("every answer is JSON");
    if let Some(code) = json.get("error").and_then(|e| e.get("code")) {
        let marker = parts
            .headers
            .get("sidekey-error")
            .expect("errors carry Sidekey-Error");
        assert_eq!(code.as_str(), marker.to_str().ok());
    } else {
        assert_eq!(parts.status, http::StatusCode::OK);
    }
    let sent = percent_encoding::percent_decode_str(target).decode_utf8_lossy();
    let body = String::from_utf8_lossy(&body);
    for secret in [API_KEY, PASSWORD, ACCESS_TOKEN, CRED_EXTRA] {
        assert!(
            !body.contains(secret) || sent.contains(secret),
            "{secret} in {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// api_body

/// Invariant, management API bodies: parsing any body for any write route never panics; a
/// refusal is 400 `invalid_body` (or 405 for a route that reads no body) with a message, and
/// never repeats a string value of the body (a value may be a credential): secret markers in
/// the body appear nowhere in the error.
pub fn check_api_body(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let (method, path) = head.split_once(' ').unwrap_or(("POST", head));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Err(e) = sidekey::api::write::check_body(path, &method, body.as_bytes()) else {
        return;
    };
    assert!(
        matches!(e.code, "invalid_body" | "method_not_allowed"),
        "unexpected code {}",
        e.code
    );
    assert!(
        e.message.is_some() || !e.errors.is_empty(),
        "refused without a reason"
    );
    let shown = format!(
        "{} {}",
        e.message.clone().unwrap_or_default(),
        e.errors
            .iter()
            .map(|f| f.message.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Object keys are names the caller chose and are echoed ("unknown field `x`"); string
    // values never are. A marker inside any key is therefore not a leak.
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        collect_strings(&v, &mut keys, &mut values);
    }
    for secret in [API_KEY, PASSWORD, ACCESS_TOKEN, CRED_EXTRA] {
        let in_key = keys.iter().any(|k| k.contains(secret));
        if !in_key && body.contains(secret) {
            assert!(
                !shown.contains(secret),
                "a body value reached the error: {shown}"
            );
        }
    }
}

/// Every object key and every string value in a JSON document.
fn collect_strings(v: &serde_json::Value, keys: &mut Vec<String>, values: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => values.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, keys, values)),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                keys.push(k.clone());
                collect_strings(x, keys, values);
            }
        }
        _ => {}
    }
}
