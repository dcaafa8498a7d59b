//! One call to a provider's token endpoint: building the form and the client authentication,
//! sending it through the upstream client, and reading the answer.
//!
//! The call is behind the [`TokenEndpoint`] trait so the token manager's single-flight and
//! cool-down logic can be unit-tested against a counting fake. The real [`HttpTokenEndpoint`]
//! uses the trusted upstream pool, so `--resolve` and `--extra-ca` apply to token URLs too.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};

use crate::body::full;
use crate::config::snapshot::encode_query_component;
use crate::secret::Secret;
use crate::upstream::{ClientError, HttpClient};

/// The largest token response read; real ones are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A token request: a form POST, with client credentials in it or in HTTP Basic.
pub struct TokenRequest {
    pub url: String,
    pub form: Vec<(String, Secret)>,
    /// Client id and secret for `Authorization: Basic`.
    pub basic: Option<(Secret, Secret)>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.form.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenRequest")
            .field("url", &crate::secret::redact_urls(&self.url))
            .field("form", &names)
            .field("basic", &self.basic.is_some())
            .finish()
    }
}

impl TokenRequest {
    /// Sets a form field, replacing one of the same name (provider params override defaults).
    pub fn set(&mut self, name: &str, value: impl Into<Secret>) {
        let value = value.into();
        match self.form.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.form.push((name.to_string(), value)),
        }
    }

    /// The value of a form field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.expose())
    }

    /// `application/x-www-form-urlencoded` body.
    pub fn encoded_form(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.form {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&encode_query_component(k));
            out.push('=');
            out.push_str(&encode_query_component(v.expose()));
        }
        out
    }
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<u64>,
}

/// A failed token call. `provider_error` is the endpoint's own `error` code, checked to look
/// like a code; `detail` is for the log and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFailure {
    pub provider_error: Option<String>,
    pub detail: String,
}

impl TokenFailure {
    pub fn local(detail: impl Into<String>) -> Self {
        Self {
            provider_error: None,
            detail: detail.into(),
        }
    }
}

pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TokenGrant, TokenFailure>> + Send + 'a>>;

/// Something that exchanges a [`TokenRequest`] for a token.
pub trait TokenEndpoint: Send + Sync {
    fn exchange(&self, req: TokenRequest) -> TokenFuture<'_>;
}

/// The real token endpoint client.
pub struct HttpTokenEndpoint {
    client: HttpClient,
    timeout: Duration,
}

impl HttpTokenEndpoint {
    /// `timeout` bounds the whole call, response body included.
    pub fn new(client: HttpClient, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn call(&self, req: TokenRequest) -> Result<TokenGrant, TokenFailure> {
        let uri: http::Uri = req
            .url
            .parse()
            .map_err(|_| TokenFailure::local("the token URL is not a valid URL"))?;
        let form = Bytes::from(req.encoded_form());
        let mut http_req = Request::new(full(form.clone()));
        *http_req.method_mut() = Method::POST;
        *http_req.uri_mut() = uri;
        let h = http_req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some((id, secret)) = &req.basic {
            let raw = format!("{}:{}", id.expose(), secret.expose());
            let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
            let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
                .map_err(|_| TokenFailure::local("the client credentials cannot go in a header"))?;
            v.set_sensitive(true);
            h.insert(header::AUTHORIZATION, v);
        }
        // Kept for one resend: a pooled connection the endpoint closed as idle just as the
        // request went out. Repeating a token request is no worse than losing it: a rotated
        // refresh token is gone either way, and client credentials can always be asked again.
        let (parts, _) = http_req.into_parts();
        let again = || {
            let mut r = Request::new(full(form.clone()));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let sent = match self.client.request(again()).await {
            Err(ClientError::Stale(_)) => self.client.request_fresh(again()).await,
            other => other,
        };
        let res = sent.map_err(|e| {
            TokenFailure::local(format!("token endpoint unreachable: {}", chain(&e)))
        })?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| TokenFailure::local("the token response could not be read"))?
            .to_bytes();
        parse_response(status.as_u16(), &body)
    }
}

impl TokenEndpoint for HttpTokenEndpoint {
    fn exchange(&self, req: TokenRequest) -> TokenFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.call(req)).await {
                Ok(r) => r,
                Err(_) => Err(TokenFailure::local(format!(
                    "the token endpoint did not answer within {:?}",
                    self.timeout
                ))),
            }
        })
    }
}

/// The error's message and its sources (connect errors, TLS alerts); none carries a secret.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Whether an access token can be sent as it is: RFC 6749 (appendix A.12) allows only visible
/// ASCII and space (`VSCHAR`), and that is also what every header value and template accepts.
/// Anything else (CR, LF, NUL, non-ASCII) would make each later request fail, or split a
/// header, so such a token is refused before it replaces the old one. A leading or trailing
/// space would be trimmed by the upstream's parser, so it is refused too.
fn usable_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !s.starts_with(' ')
        && !s.ends_with(' ')
}

/// Reads a token response: a 2xx JSON object with a usable `access_token` is a grant; anything
/// else is a failure carrying the endpoint's `error` code when there is one.
pub fn parse_response(status: u16, body: &[u8]) -> Result<TokenGrant, TokenFailure> {
    let json: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(body).ok();
    let provider_error = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(|e| e.as_str())
        .and_then(error_code);
    let ok = (200..300).contains(&status);
    let access_token = json
        .as_ref()
        .and_then(|j| j.get("access_token"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty());
    match (ok, access_token, &provider_error) {
        (true, Some(at), None) if !usable_token(at) => Err(TokenFailure::local(format!(
            "the token endpoint answered {status} with an access_token that cannot be sent in a header"
        ))),
        (true, Some(at), None) => {
            let j = json.as_ref();
            let refresh_token = j
                .and_then(|j| j.get("refresh_token"))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(Secret::new);
            let expires_in = j.and_then(|j| j.get("expires_in")).and_then(|v| match v {
                serde_json::Value::Number(n) => n
                    .as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            });
            Ok(TokenGrant {
                access_token: Secret::new(at),
                refresh_token,
                expires_in,
            })
        }
        _ => Err(TokenFailure {
            detail: match (ok, &provider_error) {
                (_, Some(code)) => format!("the token endpoint answered {status} `{code}`"),
                (true, None) => {
                    format!("the token endpoint answered {status} without an access_token")
                }
                (false, None) => format!("the token endpoint answered {status}"),
            },
            provider_error,
        }),
    }
}

/// An `error` value worth passing on: it must look like an OAuth error code
/// (`invalid_grant`), so an endpoint echoing something else cannot leak it to callers.
fn error_code(s: &str) -> Option<String> {
    let s = s.trim();
    let fits = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    fits.then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grants_and_failures() {
        let g = parse_response(
            200,
            br#"{"access_token":"a","refresh_token":"r","expires_in":3600,"token_type":"bearer"}"#,
        )
        .expect("grant");
        assert_eq!(g.access_token.expose(), "a");
        assert_eq!(g.refresh_token.as_ref().map(Secret::expose), Some("r"));
        assert_eq!(g.expires_in, Some(3600));
        let g = parse_response(200, br#"{"access_token":"a","expires_in":"60"}"#).expect("grant");
        assert_eq!((g.refresh_token.is_none(), g.expires_in), (true, Some(60)));

        let f = parse_response(400, br#"{"error":"invalid_grant","error_description":"x"}"#)
            .expect_err("failure");
        assert_eq!(f.provider_error.as_deref(), Some("invalid_grant"));
        // 200 with an error field is still a failure (some providers do that).
        let f = parse_response(200, br#"{"error":"bad_verification_code"}"#).expect_err("failure");
        assert_eq!(f.provider_error.as_deref(), Some("bad_verification_code"));
        let f = parse_response(502, b"<html>oops</html>").expect_err("failure");
        assert_eq!(f.provider_error, None);
        let f = parse_response(200, br#"{"token":"x"}"#).expect_err("failure");
        assert_eq!(f.provider_error, None);
    }

    #[test]
    fn a_token_that_cannot_be_a_header_value_is_refused() {
        for bad in [
            "tok-1\r\nx-injected: 1",
            "tok-2\nx",
            "tok-3\u{0}",
            "tok-4\u{7f}",
            "tok-caf\u{e9}",
            "tok-5\tx",
            " tok-6",
            "tok-7 ",
        ] {
            let body = serde_json::json!({"access_token": bad, "refresh_token": "r"}).to_string();
            let f = parse_response(200, body.as_bytes()).expect_err(bad);
            assert_eq!(f.provider_error, None);
            assert!(
                f.detail.contains("cannot be sent in a header"),
                "{}",
                f.detail
            );
            assert!(!f.detail.contains("tok-"), "no token in the detail");
        }
        // RFC 6749 VSCHAR: visible ASCII and inner spaces are fine.
        for good in [
            "a.b-c_d~e+f/g=",
            "x!\"#$%&'()*,:;<>?@[\\]^`{|}",
            "two words",
        ] {
            let body = serde_json::json!({"access_token": good}).to_string();
            let g = parse_response(200, body.as_bytes()).expect(good);
            assert_eq!(g.access_token.expose(), good);
        }
    }

    #[test]
    fn provider_error_must_look_like_a_code() {
        let f = parse_response(400, br#"{"error":"refresh token sk_live_123 is revoked"}"#)
            .expect_err("failure");
        assert_eq!(f.provider_error, None);
        assert!(!f.detail.contains("sk_live_123"));
        assert_eq!(error_code("invalid_client"), Some("invalid_client".into()));
        assert_eq!(error_code(&"a".repeat(65)), None);
    }

    #[test]
    fn form_encoding_and_overrides() {
        let mut r = TokenRequest {
            url: "https://t.example/token".into(),
            form: Vec::new(),
            basic: Some((Secret::new("id"), Secret::new("s3cret"))),
        };
        r.set("grant_type", "refresh_token".to_string());
        r.set("refresh_token", "a b&c=".to_string());
        r.set("grant_type", "custom".to_string());
        assert_eq!(
            r.encoded_form(),
            "grant_type=custom&refresh_token=a%20b%26c%3D"
        );
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("a b&c="), "{dbg}");
    }
}
