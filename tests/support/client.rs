//! A small HTTP client for driving sidekey in tests (HTTP/1.1, or h2c with prior knowledge).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::upstream::TestBody;
use super::CALLER_KEY;

/// A response, body collected.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// `error.code` of a sidekey error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {:?}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, TestBody>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::http1()
    }
}

impl TestClient {
    pub fn http1() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// HTTP/2 over cleartext with prior knowledge (h2c).
    pub fn h2c() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(HttpConnector::new()),
        }
    }

    /// Sends a request and collects the response.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let body = Full::new(body.into())
            .map_err(|never| match never {})
            .boxed();
        self.send_body(method, url, headers, body).await
    }

    /// Sends a request with any body and collects the response.
    pub async fn send_body(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> TestResponse {
        let res = self.send_streaming(method, url, headers, body).await;
        let (parts, b) = res.into_parts();
        let body = b.collect().await.expect("response body").to_bytes();
        TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request and returns the response with its body still streaming.
    pub async fn send_streaming(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: TestBody,
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = Request::new(body);
        *req.method_mut() = Method::from_bytes(method.as_bytes()).expect("method");
        *req.uri_mut() = url.parse().expect("url");
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(v).expect("header value"),
            );
        }
        self.inner.request(req).await.expect("request to sidekey")
    }

    /// Sends a request and returns only its status, or `None` if the connection failed (the
    /// server went away): for tests that kill the server mid-stream.
    pub async fn send_result(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Option<u16> {
        let mut req = Request::new(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        );
        *req.method_mut() = Method::from_bytes(method.as_bytes()).ok()?;
        *req.uri_mut() = url.parse().ok()?;
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                http::HeaderValue::from_str(v).ok()?,
            );
        }
        let res = self.inner.request(req).await.ok()?;
        let status = res.status().as_u16();
        res.into_body().collect().await.ok()?;
        Some(status)
    }

    /// A GET through sidekey's `/proxy` with the standard caller key and connection headers.
    pub async fn proxy(
        &self,
        base: &str,
        endpoint: &str,
        connection: &str,
        integration: &str,
    ) -> TestResponse {
        self.send(
            "GET",
            &format!("{base}/proxy{endpoint}"),
            &proxy_headers(connection, integration),
            Bytes::new(),
        )
        .await
    }
}

/// The standard headers of a proxy call.
pub fn proxy_headers<'a>(connection: &'a str, integration: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("authorization", AUTH),
        ("connection-id", connection),
        ("provider-config-key", integration),
    ]
}

/// `Bearer <CALLER_KEY>`.
pub const AUTH: &str = const_format_auth();

const fn const_format_auth() -> &'static str {
    "Bearer test-caller-key-0123456789"
}

#[test]
fn auth_matches_caller_key() {
    assert_eq!(AUTH, format!("Bearer {CALLER_KEY}"));
}
