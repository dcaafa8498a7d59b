//! Connect: sessions, the auth routes `@nangohq/frontend` calls, credential verification, and
//! the public listener, over real sockets (in-process sidekey, loopback verification
//! upstream). The Node SDKs themselves drive the binary in `tests/connect_node.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::app::{test_app, TestApp};
use support::client::{TestClient, TestResponse, AUTH};
use support::upstream::{reply, Recorded, Upstream};

const GOOD_KEY: &str = "sk_end_user_good_0123";
const BAD_KEY: &str = "sk_end_user_bad_4567";
/// A caller key holding only `proxy` (its digest goes in the vault).
const PROXY_ONLY_KEY: &str = "proxy-only-key-0123456789";

/// Accepts `x-api-key: GOOD_KEY` and Basic `user:pass`; 401 otherwise. `POST /token` is an
/// OAuth token endpoint that grants the code `good-code` with a PKCE verifier.
fn verifier() -> support::upstream::SyncHandler {
    Arc::new(|r: &Recorded| {
        if r.uri.path() == "/token" {
            let form = String::from_utf8_lossy(&r.body).to_string();
            let ok = form.contains("code=good-code")
                && form.contains("grant_type=authorization_code")
                && form.contains("code_verifier=");
            return if ok {
                reply(
                    200,
                    r#"{"access_token":"at-1","refresh_token":"rt-1","expires_in":3600,"instance_url":"https://inst.example.com","token_type":"bearer"}"#,
                )
            } else {
                reply(400, r#"{"error":"invalid_grant"}"#)
            };
        }
        let basic_ok = r.header("authorization") == Some("Basic dXNlcjpwYXNz");
        if r.header("x-api-key") == Some(GOOD_KEY) || basic_ok {
            reply(200, r#"{"me":true}"#)
        } else {
            reply(401, r#"{"error":"bad key"}"#)
        }
    })
}

fn providers(port: u16) -> String {
    format!(
        r#"
keyed:
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}/${{connectionConfig.region}}
    headers: {{x-api-key: "${{apiKey}}"}}
    verification: {{method: GET, endpoints: [/nope, /me], headers: {{accept: application/json}}}}
userpass:
  auth_mode: BASIC
  proxy:
    base_url: http://api.test:{port}
    verification: {{endpoints: [/whoami]}}
loopback:
  auth_mode: API_KEY
  proxy:
    base_url: http://${{connectionConfig.host}}
    headers: {{x-api-key: "${{apiKey}}"}}
    verification: {{endpoints: [/me]}}
untested:
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}
    headers: {{x-api-key: "${{apiKey}}"}}
oauth: {{auth_mode: OAUTH2, token_url: "http://api.test:{port}/token", proxy: {{base_url: "http://api.test:{port}"}}}}
oauthp:
  display_name: OAuth Provider
  auth_mode: OAUTH2
  authorization_url: http://auth.test:{port}/authorize
  authorization_params: {{audience: api, prompt: consent}}
  token_url: http://api.test:{port}/token
  scope_separator: ","
  token_response_metadata: [instance_url]
  proxy: {{base_url: "http://api.test:{port}"}}
"#
    )
}

fn vault() -> String {
    format!(
        r#"
secret_keys:
  - sha256: "{}"
    scopes: [proxy]
integrations:
  - {{unique_key: keyed, provider: keyed}}
  - {{unique_key: basic, provider: userpass}}
  - {{unique_key: loop, provider: loopback}}
  - {{unique_key: untested, provider: untested}}
  - {{unique_key: oauth, provider: oauth}}
  - unique_key: oauthi
    provider: oauthp
    credentials: {{type: OAUTH2, oauth_client_id: cid-1, oauth_client_secret: csecret-1, scopes: "read,write"}}
connections: []
"#,
        hex::encode(sidekey::auth::digest(PROXY_ONLY_KEY))
    )
}

struct Env {
    up: Upstream,
    sk: TestApp,
    c: TestClient,
}

async fn env(args: &[&str]) -> Env {
    let up = Upstream::start(verifier()).await;
    let port = up.port();
    let mut b = test_app(&providers(port), &vault())
        .connect_listener()
        .arg(format!("--resolve=api.test:{port}:127.0.0.1"));
    for a in args {
        b = b.arg(*a);
    }
    let sk = b.start().await;
    Env {
        up,
        sk,
        c: TestClient::http1(),
    }
}

impl Env {
    async fn send(&self, method: &str, url: &str, auth: &str, body: Value) -> TestResponse {
        let mut headers = vec![("content-type", "application/json")];
        let bearer = format!("Bearer {auth}");
        if !auth.is_empty() {
            headers.push(("authorization", bearer.as_str()));
        }
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.c.send(method, url, &headers, body).await
    }

    async fn session(&self, body: Value) -> TestResponse {
        let key = AUTH.trim_start_matches("Bearer ");
        self.send("POST", &self.sk.url("/connect/sessions"), key, body)
            .await
    }

    async fn token(&self, body: Value) -> String {
        let r = self.session(body).await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["data"]["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    /// `POST /api-auth/api-key/{key}` on the public listener.
    async fn api_key(&self, key: &str, query: &str, api_key: &str) -> TestResponse {
        let url = self
            .sk
            .connect_url(&format!("/api-auth/api-key/{key}?{query}"));
        self.send("POST", &url, "", json!({ "apiKey": api_key }))
            .await
    }

    async fn connections(&self) -> Value {
        let key = AUTH.trim_start_matches("Bearer ");
        let r = self
            .send("GET", &self.sk.url("/connections"), key, Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["connections"].clone()
    }
}

fn end_user() -> Value {
    json!({"id": "u-42", "email": "ada@example.com", "display_name": "Ada", "tags": {"Plan": "pro"}})
}

#[tokio::test]
async fn sessions_are_made_read_and_deleted() {
    let e = env(&["--public-url=https://connect.example.com/base/"]).await;
    let r = e
        .session(json!({
            "end_user": end_user(),
            "organization": {"id": "org-1", "display_name": "Acme"},
            "allowed_integrations": ["keyed", "basic"],
            "integrations_config_defaults": {"keyed": {"user_scopes": "x", "connection_config": {"region": "eu"}}},
            "tags": {"team": "core"},
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let data = &r.json()["data"];
    let token = data["token"].as_str().expect("token");
    assert!(token.starts_with("nango_connect_session_") && token.len() == 22 + 64);
    assert_eq!(
        data["connect_link"],
        format!("https://connect.example.com/base/?session_token={token}")
    );
    let expires: jiff::Timestamp = data["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("RFC 3339");
    let ttl = expires.duration_since(jiff::Timestamp::now());
    assert!(
        ttl > jiff::SignedDuration::from_secs(29 * 60)
            && ttl <= jiff::SignedDuration::from_secs(30 * 60),
        "{ttl:?}"
    );
    // The session as a Connect UI reads it, on either listener.
    for url in [
        e.sk.url("/connect/session"),
        e.sk.connect_url("/connect/session"),
    ] {
        let r = e.send("GET", &url, token, Value::Null).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        let d = &r.json()["data"];
        assert_eq!(d["endUser"]["id"], "u-42");
        assert_eq!(d["endUser"]["organization"]["id"], "org-1");
        assert_eq!(d["allowed_integrations"], json!(["keyed", "basic"]));
        assert_eq!(
            d["integrations_config_defaults"],
            json!({"keyed": {"connection_config": {"region": "eu"}}}),
            "user_scopes is not echoed"
        );
        assert_eq!(d["isReconnecting"], false);
    }
    // Nango's 401s: the shape of the token, then whether it is known.
    let url = e.sk.connect_url("/connect/session");
    let r = e
        .send("GET", &url, "nango_connect_session_xyz", Value::Null)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "invalid_connect_session_token_format")
    );
    let unknown = format!("nango_connect_session_{}", "a".repeat(64));
    let r = e.send("GET", &url, &unknown, Value::Null).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "unknown_connect_session_token")
    );
    let r = e.send("GET", &url, "", Value::Null).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "missing_auth_header")
    );
    // A secret key is not a session token.
    let r = e.send("GET", &url, support::CALLER_KEY, Value::Null).await;
    assert_eq!(r.error_code(), "invalid_connect_session_token_format");
    // DELETE: 204, then the token is unknown at once, on every route.
    let r = e.send("DELETE", &url, token, Value::Null).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = e.send("GET", &url, token, Value::Null).await;
    assert_eq!(r.error_code(), "unknown_connect_session_token");
    let r = e
        .api_key("keyed", &format!("connect_session_token={token}"), GOOD_KEY)
        .await;
    assert_eq!(r.error_code(), "unknown_connect_session_token");
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn session_bodies_are_checked_as_nango_checks_them() {
    let e = env(&[]).await;
    let code = |r: &TestResponse| (r.status.as_u16(), r.error_code());
    let path = |r: &TestResponse| r.json()["error"]["errors"][0]["path"].clone();
    // end_user is required unless tags are given.
    let r = e.session(json!({})).await;
    assert_eq!(code(&r), (400, "invalid_body".into()));
    assert_eq!(path(&r), json!(["end_user"]));
    let r = e.session(json!({"tags": {}})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = e.session(json!({"end_user": {"id": "u", "nope": 1}})).await;
    assert_eq!(code(&r), (400, "invalid_body".into()));
    let r = e
        .session(json!({"end_user": {"id": "u", "email": "x"}}))
        .await;
    assert_eq!(path(&r), json!(["end_user", "email"]));
    let r = e.session(json!({"end_user": {"id": ""}})).await;
    assert_eq!(path(&r), json!(["end_user", "id"]));
    let r = e.session(json!({"tags": {"1bad": "x"}})).await;
    assert_eq!(path(&r), json!(["tags", "1bad"]));
    let r = e
        .session(json!({"end_user": {"id": "u"}, "extra": 1}))
        .await;
    assert_eq!(code(&r), (400, "invalid_body".into()));
    // Integration keys must exist, reported at their paths as `custom` issues.
    let r = e
        .session(json!({"end_user": {"id": "u"}, "allowed_integrations": ["keyed", "ghost"]}))
        .await;
    assert_eq!(code(&r), (400, "invalid_body".into()));
    assert_eq!(path(&r), json!(["allowed_integrations", "1"]));
    assert_eq!(r.json()["error"]["errors"][0]["code"], "custom");
    let r = e
        .session(json!({"end_user": {"id": "u"}, "integrations_config_defaults": {"ghost": {}}}))
        .await;
    assert_eq!(path(&r), json!(["integrations_config_defaults", "ghost"]));
    let r = e
        .session(json!({"end_user": {"id": "u"}, "overrides": {"keyed": {"docs_connect": "https://x.example.com"}}}))
        .await;
    assert_eq!(code(&r), (403, "forbidden".into()));
    let r = e
        .session(json!({"end_user": {"id": "u"}, "webhook_url_override": "http://127.0.0.1:9/x"}))
        .await;
    assert_eq!(path(&r), json!(["webhook_url_override"]));
    // The deprecated connection_config.webhook_url is checked the same way, and never reaches
    // the connection's config.
    let r = e
        .session(json!({"end_user": {"id": "u"}, "integrations_config_defaults": {"keyed": {"connection_config": {"webhook_url": "http://10.0.0.1/x"}}}}))
        .await;
    assert_eq!(
        path(&r),
        json!([
            "integrations_config_defaults",
            "keyed",
            "connection_config",
            "webhook_url"
        ])
    );
    let token = e
        .token(json!({"end_user": {"id": "u"}, "integrations_config_defaults": {"keyed": {"connection_config": {"region": "eu", "webhook_url": "https://hooks.example.com/x"}}}}))
        .await;
    let r = e
        .send(
            "GET",
            &e.sk.connect_url("/connect/session"),
            &token,
            Value::Null,
        )
        .await;
    assert_eq!(
        r.json()["data"]["integrations_config_defaults"]["keyed"]["connection_config"],
        json!({"region": "eu"})
    );
    // No query parameter; JSON only; the scope.
    let key = AUTH.trim_start_matches("Bearer ");
    let r = e
        .send(
            "POST",
            &e.sk.url("/connect/sessions?x=1"),
            key,
            json!({"tags": {}}),
        )
        .await;
    assert_eq!(code(&r), (400, "invalid_query_params".into()));
    let r = e
        .send(
            "POST",
            &e.sk.url("/connect/sessions"),
            PROXY_ONLY_KEY,
            json!({"tags": {}}),
        )
        .await;
    assert_eq!(code(&r), (403, "forbidden".into()));
    assert!(r.text().contains("connect_sessions:write"), "{}", r.text());
    let r = e
        .send(
            "POST",
            &e.sk.url("/connect/sessions"),
            "",
            json!({"tags": {}}),
        )
        .await;
    assert_eq!(code(&r), (401, "missing_auth_header".into()));
    let r =
        e.c.send(
            "POST",
            &e.sk.url("/connect/sessions"),
            &[("authorization", AUTH), ("content-type", "text/plain")],
            Bytes::from("{}"),
        )
        .await;
    assert_eq!(code(&r), (415, "invalid_content_type".into()));
}

#[tokio::test]
async fn an_api_key_is_verified_then_written_with_the_sessions_end_user_and_tags() {
    let e = env(&[]).await;
    let token = e
        .token(json!({
            "end_user": end_user(),
            "organization": {"id": "org-1"},
            "tags": {"team": "core"},
            "allowed_integrations": ["keyed"],
            "integrations_config_defaults": {"keyed": {"connection_config": {"tier": "gold"}}},
        }))
        .await;
    let q = format!("connect_session_token={token}&params[region]=eu&params[tier]=free&params[webhook_url]=http://x");
    // A refused key: 400 connection_test_failed, both endpoints tried, nothing written.
    let r = e.api_key("keyed", &q, BAD_KEY).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "connection_test_failed"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(BAD_KEY));
    let paths: Vec<String> = e.up.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(paths, ["/eu/nope", "/eu/me"]);
    assert_eq!(e.connections().await, json!([]));
    // The good key: the first 2xx endpoint makes it valid.
    let r = e.api_key("keyed", &q, GOOD_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let body = r.json();
    assert_eq!(body["providerConfigKey"], "keyed");
    let id = body["connectionId"]
        .as_str()
        .expect("connectionId")
        .to_string();
    assert_eq!(id.len(), 36, "a UUID");
    let seen = e.up.requests();
    let last = seen.last().expect("verified");
    assert_eq!(last.header("x-api-key"), Some(GOOD_KEY));
    assert_eq!(last.header("accept"), Some("application/json"));
    let list = e.connections().await;
    assert_eq!(list[0]["connection_id"], id.as_str());
    assert_eq!(list[0]["end_user"]["id"], "u-42");
    assert_eq!(list[0]["end_user"]["email"], "ada@example.com");
    assert_eq!(list[0]["end_user"]["organization"]["id"], "org-1");
    assert_eq!(
        list[0]["tags"],
        json!({"end_user_id": "u-42", "end_user_email": "ada@example.com", "end_user_display_name": "Ada", "organization_id": "org-1", "plan": "pro", "team": "core"})
    );
    let key = AUTH.trim_start_matches("Bearer ");
    let r = e
        .send(
            "GET",
            &e.sk
                .url(&format!("/connections/{id}?provider_config_key=keyed")),
            key,
            Value::Null,
        )
        .await;
    let conn = r.json();
    assert_eq!(conn["credentials"]["apiKey"], GOOD_KEY);
    assert_eq!(
        conn["connection_config"],
        json!({"region": "eu", "tier": "gold"}),
        "the session's defaults win over params; webhook_url is dropped"
    );
    // The proxy serves it at once.
    let r =
        e.c.send(
            "GET",
            &e.sk.url("/proxy/me"),
            &[
                ("authorization", AUTH),
                ("connection-id", id.as_str()),
                ("provider-config-key", "keyed"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same session may connect again within its life.
    let r = e.api_key("keyed", &q, GOOD_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.json()["connectionId"], id.as_str());
    assert_eq!(e.connections().await.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn basic_credentials_and_untested_providers() {
    let e = env(&[]).await;
    let token = e.token(json!({"end_user": {"id": "u-1"}})).await;
    let url = |p: &str| {
        e.sk.connect_url(&format!("{p}?connect_session_token={token}"))
    };
    let r = e
        .send(
            "POST",
            &url("/api-auth/basic/basic"),
            "",
            json!({"username": "user", "password": "nope"}),
        )
        .await;
    assert_eq!(r.error_code(), "connection_test_failed");
    let r = e
        .send(
            "POST",
            &url("/api-auth/basic/basic"),
            "",
            json!({"username": "user", "password": "pass"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["providerConfigKey"], "basic");
    // Both fields are required, and nothing else is taken.
    let r = e
        .send(
            "POST",
            &url("/api-auth/basic/basic"),
            "",
            json!({"username": "user"}),
        )
        .await;
    assert_eq!(r.error_code(), "invalid_body");
    // A provider without verification endpoints accepts any key, untested.
    let before = e.up.count();
    let r = e
        .send(
            "POST",
            &url("/api-auth/api-key/untested"),
            "",
            json!({"apiKey": "anything"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(e.up.count(), before);
}

#[tokio::test]
async fn auth_routes_answer_nangos_error_codes() {
    let e = env(&[]).await;
    let token = e
        .token(json!({"end_user": {"id": "u-1"}, "allowed_integrations": ["keyed", "oauth"]}))
        .await;
    let code = |r: &TestResponse| (r.status.as_u16(), r.error_code());
    let t = format!("connect_session_token={token}&params[region]=eu");
    assert_eq!(
        code(&e.api_key("keyed", "", GOOD_KEY).await),
        (401, "missing_public_key".into())
    );
    assert_eq!(
        code(
            &e.api_key(
                "keyed",
                "public_key=0b5f7e3c-7e0a-4d3b-9a61-2f8f1c1d2e3f",
                GOOD_KEY
            )
            .await
        ),
        (401, "deprecated_authentication".into())
    );
    assert_eq!(
        code(
            &e.api_key("keyed", "connect_session_token=abc", GOOD_KEY)
                .await
        ),
        (401, "invalid_connect_session_token_format".into())
    );
    assert_eq!(
        code(
            &e.api_key("keyed", &format!("{t}&connection_id=mine"), GOOD_KEY)
                .await
        ),
        (400, "invalid_query_params".into())
    );
    assert_eq!(
        code(&e.api_key("ghost", &t, GOOD_KEY).await),
        (404, "unknown_provider_config".into())
    );
    assert_eq!(
        code(&e.api_key("oauth", &t, GOOD_KEY).await),
        (400, "invalid_auth_mode".into())
    );
    assert_eq!(
        code(&e.api_key("untested", &t, GOOD_KEY).await),
        (400, "integration_not_allowed".into())
    );
    assert_eq!(
        code(&e.api_key("keyed", &t, "").await),
        (400, "invalid_body".into())
    );
    assert_eq!(
        code(&e.api_key("a%2Fb", &t, GOOD_KEY).await),
        (400, "invalid_uri_params".into())
    );
    // A base URL whose connection_config value is missing is refused before any request.
    assert_eq!(
        code(
            &e.api_key("keyed", &format!("connect_session_token={token}"), GOOD_KEY)
                .await
        )
        .0,
        400
    );
    assert_eq!(e.up.count(), 0, "no check reached the upstream");
    // A CORS preflight from a browser.
    let r =
        e.c.send(
            "OPTIONS",
            &e.sk.connect_url("/api-auth/api-key/keyed"),
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("Content-Type")));
    let r =
        e.c.send(
            "GET",
            &e.sk.connect_url("/api-auth/api-key/keyed"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(code(&r), (405, "method_not_allowed".into()));
}

#[tokio::test]
async fn a_reconnect_session_reauthorizes_its_connection() {
    let e = env(&[]).await;
    let token = e
        .token(json!({"end_user": end_user(), "tags": {"team": "core"}}))
        .await;
    let q = format!("connect_session_token={token}&params[region]=eu");
    let id = e.api_key("keyed", &q, GOOD_KEY).await.json()["connectionId"]
        .as_str()
        .expect("id")
        .to_string();
    let key = AUTH.trim_start_matches("Bearer ");
    let e = &e;
    let reconnect = |body: Value| {
        let url = e.sk.url("/connect/sessions/reconnect");
        async move { e.send("POST", &url, key, body).await }
    };
    let r = reconnect(json!({"connection_id": "ghost", "integration_id": "keyed"})).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "invalid_body")
    );
    let r = reconnect(
        json!({"connection_id": id, "integration_id": "keyed", "allowed_integrations": ["keyed"]}),
    )
    .await;
    assert_eq!(
        r.error_code(),
        "invalid_body",
        "no allowed_integrations on reconnect"
    );
    let r = reconnect(json!({"connection_id": id, "integration_id": "keyed"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let again = r.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = e
        .send(
            "GET",
            &e.sk.connect_url("/connect/session"),
            &again,
            Value::Null,
        )
        .await;
    assert_eq!(r.json()["data"]["isReconnecting"], true);
    assert_eq!(r.json()["data"]["allowed_integrations"], json!(["keyed"]));
    // Only its own integration; the same connection id; the end user and tags kept.
    let rq = format!("connect_session_token={again}");
    let r = e.api_key("untested", &rq, "other").await;
    assert_eq!(r.error_code(), "integration_not_allowed");
    let new_key = GOOD_KEY;
    let r = e.api_key("keyed", &rq, new_key).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["connectionId"], id.as_str());
    let list = e.connections().await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["end_user"]["id"], "u-42");
    assert_eq!(list[0]["tags"]["team"], "core");
    let r = e
        .send(
            "GET",
            &e.sk
                .url(&format!("/connections/{id}?provider_config_key=keyed")),
            key,
            Value::Null,
        )
        .await;
    assert_eq!(r.json()["connection_config"]["region"], "eu", "config kept");
    // The connection deleted: the session cannot bring it back.
    let r = e
        .send(
            "DELETE",
            &e.sk
                .url(&format!("/connections/{id}?provider_config_key=keyed")),
            key,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.api_key("keyed", &rq, new_key).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "invalid_connection")
    );
}

#[tokio::test]
async fn sessions_expire_and_limit_attempts() {
    let e = env(&["--connect-session-ttl=1s", "--connect-max-attempts=2"]).await;
    let token = e.token(json!({"tags": {}})).await;
    let q = format!("connect_session_token={token}&params[region]=eu");
    assert_eq!(
        e.api_key("keyed", &q, BAD_KEY).await.error_code(),
        "connection_test_failed"
    );
    assert_eq!(
        e.api_key("keyed", &q, BAD_KEY).await.error_code(),
        "connection_test_failed"
    );
    let r = e.api_key("keyed", &q, GOOD_KEY).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "too_many_attempts")
    );
    let requests = e.up.count();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = e.api_key("keyed", &q, GOOD_KEY).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "unknown_connect_session_token")
    );
    let r = e
        .send(
            "GET",
            &e.sk.connect_url("/connect/session"),
            &token,
            Value::Null,
        )
        .await;
    assert_eq!(r.error_code(), "unknown_connect_session_token");
    assert_eq!(e.up.count(), requests);
    assert_eq!(e.connections().await, json!([]));
}

#[tokio::test]
async fn the_public_listener_serves_no_proxy_and_no_management_route() {
    let e = env(&[]).await;
    let key = AUTH.trim_start_matches("Bearer ");
    for (method, path) in [
        ("GET", "/proxy/me"),
        ("GET", "/connections"),
        ("GET", "/connections/x/proxy/me"),
        ("GET", "/integrations"),
        ("POST", "/integrations"),
        ("GET", "/providers"),
        ("POST", "/connect/sessions"),
        ("POST", "/connect/sessions/reconnect"),
        ("GET", "/sync/x"),
        ("GET", "/metrics"),
    ] {
        let r = e
            .send(method, &e.sk.connect_url(path), key, json!({"tags": {}}))
            .await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (404, "not_found"),
            "{method} {path}"
        );
        assert_eq!(r.header("sidekey-error"), Some("not_found"));
    }
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn imports_are_verified_and_end_user_urls_are_address_checked() {
    let e = env(&[]).await;
    let key = AUTH.trim_start_matches("Bearer ");
    let e = &e;
    let host = format!("127.0.0.1:{}", e.up.port());
    let import = |api_key: &str, int: &str| {
        let url = e.sk.url("/connections");
        let body = json!({"provider_config_key": int, "connection_id": "imp", "connection_config": {"region": "us", "host": host}, "credentials": {"type": "API_KEY", "apiKey": api_key}});
        async move { e.send("POST", &url, key, body).await }
    };
    let r = import(BAD_KEY, "keyed").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "connection_test_failed")
    );
    assert_eq!(e.connections().await, json!([]));
    let r = import(GOOD_KEY, "keyed").await;
    assert_eq!(r.status, 201, "{}", r.text());
    // An operator's import reaches a loopback host its connection_config names (trusted, like
    // the proxy)...
    let r = import(GOOD_KEY, "loop").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = e.up.count();
    // ...an end user's params do not: that URL goes through the checked pool.
    let token = e.token(json!({"tags": {}})).await;
    let r = e
        .api_key(
            "loop",
            &format!("connect_session_token={token}&params[host]={host}"),
            GOOD_KEY,
        )
        .await;
    assert_eq!(r.error_code(), "connection_test_failed");
    assert_eq!(e.up.count(), seen, "no packet to a loopback address");
}

#[tokio::test]
async fn the_connect_ui_page_and_what_it_lists() {
    let e = env(&[]).await;
    // The page: at / on the public listener, at /connect/ on both; its files beside it.
    for url in [
        e.sk.connect_url("/?session_token=x"),
        e.sk.connect_url("/connect/"),
        e.sk.url("/connect/"),
    ] {
        let r = e.c.send("GET", &url, &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "{url}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert!(r.text().contains("ui.js"));
    }
    for url in [e.sk.connect_url("/ui.js"), e.sk.url("/connect/ui.js")] {
        let r = e.c.send("GET", &url, &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "{url}");
        assert!(r.text().contains("session_token"));
    }
    // The main listener's root stays the proxy's 404.
    let r = e.c.send("GET", &e.sk.url("/"), &[], Bytes::new()).await;
    assert_eq!(r.status, 404);
    // What the page lists: the session's API_KEY and BASIC integrations by display name, with
    // their fields, less the config the session gives.
    let token = e
        .token(json!({"tags": {}, "allowed_integrations": ["keyed", "basic", "oauth"]}))
        .await;
    let url = e.sk.connect_url("/connect/integrations");
    let r = e.send("GET", &url, &token, Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json()["data"].clone();
    let keys: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["unique_key"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["basic", "keyed"],
        "OAuth is not offered; sorted by name"
    );
    assert_eq!(
        list[1]["credentials"],
        json!([{"name": "apiKey", "label": "API key", "secret": true}])
    );
    assert_eq!(
        list[1]["params"],
        json!([{"name": "region", "label": "Region", "required": true}])
    );
    assert_eq!(list[0]["credentials"][1]["name"], "password");
    let token = e
        .token(json!({"tags": {}, "integrations_config_defaults": {"keyed": {"connection_config": {"region": "eu"}}}}))
        .await;
    let r = e.send("GET", &url, &token, Value::Null).await;
    let keyed = r.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["unique_key"] == "keyed")
        .cloned()
        .expect("keyed");
    assert_eq!(keyed["params"], json!([]), "the session gives the region");
    let r = e.send("GET", &url, "", Value::Null).await;
    assert_eq!(r.error_code(), "missing_auth_header");
}

/// The query of a URL as decoded pairs.
fn query_of(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find_map(|(k, v)| (k == name).then_some(v.as_str()))
}

#[tokio::test]
async fn the_oauth2_authorization_code_flow() {
    let e = env(&[]).await;
    let token = e
        .token(json!({"end_user": end_user(), "allowed_integrations": ["oauthi", "keyed"]}))
        .await;
    let e = &e;
    let token = token.as_str();
    let start = |q: String| {
        let url = e.sk.connect_url(&format!(
            "/oauth/connect/oauthi?connect_session_token={token}{q}"
        ));
        async move { e.c.send("GET", &url, &[], Bytes::new()).await }
    };
    let r = start("&params[tenant]=t1&authorization_params[login_hint]=ada&authorization_params[prompt]=undefined".into()).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").expect("location").to_string();
    assert!(
        location.starts_with(&format!("http://auth.test:{}/authorize?", e.up.port())),
        "{location}"
    );
    let q = query_of(&location);
    assert_eq!(param(&q, "response_type"), Some("code"));
    assert_eq!(param(&q, "client_id"), Some("cid-1"));
    let connect = e.sk.connect.expect("connect listener");
    assert_eq!(
        param(&q, "redirect_uri"),
        Some(format!("http://{connect}/oauth/callback").as_str())
    );
    assert_eq!(
        param(&q, "scope"),
        Some("read,write"),
        "the provider's scope_separator"
    );
    assert_eq!(param(&q, "audience"), Some("api"));
    assert_eq!(
        param(&q, "prompt"),
        None,
        "`undefined` removes a template parameter"
    );
    assert_eq!(param(&q, "login_hint"), Some("ada"));
    assert_eq!(param(&q, "code_challenge_method"), Some("S256"));
    let challenge = param(&q, "code_challenge").expect("PKCE").to_string();
    let state = param(&q, "state").expect("state").to_string();
    assert_eq!(state.len(), 64);
    assert!(!location.contains("csecret-1"));
    // The provider sends the browser back with a code.
    let callback = |q: String| {
        let url = e.sk.connect_url(&format!("/oauth/callback?{q}"));
        async move { e.c.send("GET", &url, &[], Bytes::new()).await }
    };
    let r = callback(format!("code=good-code&state={state}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(
        html.contains(r#"data-outcome="success""#) && html.contains("oauth-callback.js"),
        "{html}"
    );
    // The token request: the code, the verifier whose S256 is the challenge, the client.
    let token_req =
        e.up.requests()
            .into_iter()
            .find(|r| r.uri.path() == "/token")
            .expect("token request");
    let form = query_of(&format!("?{}", String::from_utf8_lossy(&token_req.body)));
    assert_eq!(
        param(&form, "redirect_uri"),
        Some(format!("http://{connect}/oauth/callback").as_str())
    );
    assert_eq!(param(&form, "client_secret"), Some("csecret-1"));
    let verifier = param(&form, "code_verifier").expect("verifier");
    assert_eq!(verifier.len(), 48);
    use base64::Engine as _;
    use sha2::Digest as _;
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes())),
        challenge
    );
    // The connection: the token, the config with the token response's metadata, the end user.
    let list = e.connections().await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let id = list[0]["connection_id"].as_str().expect("id").to_string();
    assert!(html.contains(&id));
    assert_eq!(list[0]["end_user"]["id"], "u-42");
    let key = AUTH.trim_start_matches("Bearer ");
    let conn = e
        .send(
            "GET",
            &e.sk.url(&format!(
                "/connections/{id}?provider_config_key=oauthi&refresh_token=true"
            )),
            key,
            Value::Null,
        )
        .await
        .json();
    assert_eq!(conn["credentials"]["access_token"], "at-1");
    assert_eq!(conn["credentials"]["refresh_token"], "rt-1");
    assert!(conn["credentials"]["expires_at"].is_string());
    assert_eq!(
        conn["connection_config"],
        json!({"tenant": "t1", "instance_url": "https://inst.example.com"})
    );
    // The state is single-use.
    let r = callback(format!("code=good-code&state={state}")).await;
    assert_eq!(
        (r.status.as_u16(), r.header("sidekey-error")),
        (400, Some("state_err"))
    );
    let r = callback("code=good-code&state=nope".into()).await;
    assert_eq!(r.header("sidekey-error"), Some("state_err"));
    // A code the token endpoint refuses, and a provider's own error: nothing written.
    let state_of = |r: &TestResponse| {
        param(&query_of(r.header("location").expect("location")), "state")
            .expect("state")
            .to_string()
    };
    let s2 = state_of(&start(String::new()).await);
    let r = callback(format!("code=bad-code&state={s2}")).await;
    assert_eq!(
        (r.status.as_u16(), r.header("sidekey-error")),
        (400, Some("token_err"))
    );
    let s3 = state_of(&start(String::new()).await);
    let r = callback(format!(
        "error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state={s3}"
    ))
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("sidekey-error")),
        (400, Some("callback_err"))
    );
    assert!(r.text().contains("&lt;b&gt;no"), "escaped: {}", r.text());
    assert_eq!(e.connections().await.as_array().map(Vec::len), Some(1));
    // A session deleted mid-flow stops the flow at the callback.
    let s4 = state_of(&start(String::new()).await);
    let r = e
        .send(
            "DELETE",
            &e.sk.connect_url("/connect/session"),
            token,
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = callback(format!("code=good-code&state={s4}")).await;
    assert_eq!(
        r.header("sidekey-error"),
        Some("unknown_connect_session_token")
    );
    assert_eq!(e.connections().await.as_array().map(Vec::len), Some(1));
    // Errors before the redirect.
    let t2 = e
        .token(json!({"tags": {}, "allowed_integrations": ["keyed", "oauthi"]}))
        .await;
    let get = |path: String| {
        let url = e.sk.connect_url(&path);
        async move { e.c.send("GET", &url, &[], Bytes::new()).await }
    };
    let r = get(format!("/oauth/connect/keyed?connect_session_token={t2}")).await;
    assert_eq!(
        (r.status.as_u16(), r.header("sidekey-error")),
        (400, Some("auth_mode_err"))
    );
    let r = get(format!(
        "/oauth/connect/untested?connect_session_token={t2}"
    ))
    .await;
    assert_eq!(r.error_code(), "integration_not_allowed");
    let r = get(format!(
        "/oauth/connect/oauthi?connect_session_token={t2}&connection_id=x"
    ))
    .await;
    assert_eq!(r.error_code(), "invalid_query_params");
    let r = get("/oauth/connect/oauthi".into()).await;
    assert_eq!(r.error_code(), "missing_public_key");
}

#[tokio::test]
async fn the_connect_listener_speaks_tls_with_the_main_listeners_certificate() {
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::TokioIo;
    let ca = support::ca::TestCa::new();
    let cert = ca.server_cert(&["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, &cert.cert_pem).expect("cert");
    std::fs::write(&key_path, &cert.key_pem).expect("key");
    let e = env(&[
        &format!("--tls-cert={}", cert_path.display()),
        &format!("--tls-key={}", key_path.display()),
    ])
    .await;
    let addr = e.sk.connect.expect("connect listener");
    let get = |path: &'static str, auth: Option<&'static str>| {
        let ca = &ca;
        async move {
            let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"http/1.1"]));
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            let mut req = http::Request::new(Full::new(Bytes::new()));
            *req.uri_mut() = path.parse().expect("uri");
            req.headers_mut()
                .insert("host", "localhost".parse().expect("host"));
            if let Some(a) = auth {
                req.headers_mut()
                    .insert("authorization", a.parse().expect("auth"));
            }
            let res = send.send_request(req).await.expect("request");
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let bearer = "Bearer nango_connect_session_0000000000000000000000000000000000000000000000000000000000000000";
    let (status, body) = get("/connect/session", Some(bearer)).await;
    assert_eq!(status, 401);
    assert!(body.contains("unknown_connect_session_token"), "{body}");
    let (status, _) = get("/proxy/me", None).await;
    assert_eq!(status, 404);
    let (status, body) = get("/", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("ui.js"));
    // Links and redirect URIs say https when the listeners do.
    let public = e.sk.app.connect.public_url.get().expect("public url");
    assert_eq!(public, &format!("https://{addr}"));
}

#[tokio::test]
async fn an_oauth_state_expires_with_its_session_and_starts_count_as_attempts() {
    let e = env(&["--connect-session-ttl=1s", "--connect-max-attempts=2"]).await;
    let token = e.token(json!({"tags": {}})).await;
    let e = &e;
    let start = || {
        let url = e.sk.connect_url(&format!(
            "/oauth/connect/oauthi?connect_session_token={token}"
        ));
        async move { e.c.send("GET", &url, &[], Bytes::new()).await }
    };
    let r = start().await;
    assert_eq!(r.status, 302, "{}", r.text());
    let state = param(&query_of(r.header("location").expect("location")), "state")
        .expect("state")
        .to_string();
    assert_eq!(start().await.status, 302);
    let r = start().await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "too_many_attempts")
    );
    // The state lives no longer than its session.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let url =
        e.sk.connect_url(&format!("/oauth/callback?code=good-code&state={state}"));
    let r = e.c.send("GET", &url, &[], Bytes::new()).await;
    assert_eq!(
        (r.status.as_u16(), r.header("sidekey-error")),
        (400, Some("state_err"))
    );
    assert!(e.up.requests().iter().all(|r| r.uri.path() != "/token"));
    assert_eq!(e.connections().await, json!([]));
}

/// A WebSocket client over a raw socket: the handshake, then unmasked server text frames.
struct Ws {
    stream: tokio::net::TcpStream,
}

impl Ws {
    async fn open(addr: std::net::SocketAddr) -> (Self, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await.expect("response head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        (Self { stream }, head)
    }

    async fn next(&mut self) -> Value {
        use tokio::io::AsyncReadExt as _;
        let mut h = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut h))
            .await
            .expect("a frame in time")
            .expect("frame head");
        assert_eq!(h[0], 0x81, "an unfragmented text frame");
        let len = match h[1] {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).await.expect("len");
                usize::from(u16::from_be_bytes(b))
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await.expect("payload");
        serde_json::from_slice(&payload).expect("JSON")
    }
}

#[tokio::test]
async fn the_frontend_sdks_websocket_hears_the_outcome() {
    let e = env(&[]).await;
    let addr = e.sk.connect.expect("connect listener");
    let (mut ws, _) = Ws::open(addr).await;
    let ack = ws.next().await;
    assert_eq!(ack["message_type"], "connection_ack");
    let id = ack["ws_client_id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 36);
    let token = e.token(json!({"tags": {}})).await;
    let get = |path: String| {
        let url = e.sk.connect_url(&path);
        let c = e.c.clone();
        async move { c.send("GET", &url, &[], Bytes::new()).await }
    };
    // Success: the popup's callback sends `success` with the connection.
    let r = get(format!(
        "/oauth/connect/oauthi?connect_session_token={token}&ws_client_id={id}"
    ))
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let state = param(&query_of(r.header("location").expect("location")), "state")
        .expect("state")
        .to_string();
    let r = get(format!("/oauth/callback?code=good-code&state={state}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let msg = ws.next().await;
    assert_eq!(msg["message_type"], "success");
    assert_eq!(msg["provider_config_key"], "oauthi");
    assert_eq!(msg["is_pending"], false);
    let list = e.connections().await;
    assert_eq!(msg["connection_id"], list[0]["connection_id"]);
    // Errors: at the callback, and before the redirect.
    let r = get(format!(
        "/oauth/connect/oauthi?connect_session_token={token}&ws_client_id={id}"
    ))
    .await;
    let state = param(&query_of(r.header("location").expect("location")), "state")
        .expect("state")
        .to_string();
    get(format!("/oauth/callback?code=bad-code&state={state}")).await;
    let msg = ws.next().await;
    assert_eq!(
        (msg["message_type"].as_str(), msg["error_type"].as_str()),
        (Some("error"), Some("token_err"))
    );
    get(format!(
        "/oauth/connect/keyed?connect_session_token={token}&ws_client_id={id}"
    ))
    .await;
    let msg = ws.next().await;
    assert_eq!(msg["error_type"], "auth_mode_err");
    // Not on the main listener; not without the handshake's headers.
    let r =
        e.c.send(
            "GET",
            &e.sk.connect_url("/"),
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 400, "no Sec-WebSocket-Key");
}

/// A connection made through Connect is announced as Nango announces it: a signed `auth`
/// webhook, `creation` with the session's end user (to the session's `webhook_url_override`
/// when it has one), then `override` for a reconnect, and never the credential.
#[tokio::test]
async fn a_connect_creation_and_a_reconnect_send_signed_auth_webhooks() {
    const SIGNING_KEY: &str = "whsec-connect-test-0123";
    let hooks = Upstream::start(Arc::new(|_| reply(200, "ok"))).await;
    let other = Upstream::start(Arc::new(|_| reply(200, "ok"))).await;
    let up = Upstream::start(verifier()).await;
    let port = up.port();
    let sk = test_app(&providers(port), &vault())
        .connect_listener()
        .webhook_signing_key(SIGNING_KEY)
        .arg(format!("--resolve=api.test:{port}:127.0.0.1"))
        .arg(format!("--webhook-url={}", hooks.url("/hooks")))
        .arg("--webhook-allow-private")
        // A session's own URL must name a host (a literal loopback address is refused, as
        // Nango refuses it); the operator's pin sends it to the second receiver.
        .arg(format!("--resolve=hooks.test:{}:127.0.0.1", other.port()))
        .start()
        .await;
    let e = Env {
        up,
        sk,
        c: TestClient::http1(),
    };
    let token = e
        .token(json!({"end_user": end_user(), "organization": {"id": "org-1"}, "allowed_integrations": ["keyed"]}))
        .await;
    let r = e
        .api_key(
            "keyed",
            &format!("connect_session_token={token}&params[region]=eu"),
            GOOD_KEY,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["connectionId"].as_str().expect("id").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hooks.count() < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = hooks.requests();
    assert_eq!(seen.len(), 1, "one creation webhook");
    let body: Value = serde_json::from_slice(&seen[0].body).expect("json");
    assert_eq!(body["type"], "auth");
    assert_eq!(body["operation"], "creation");
    assert_eq!(body["success"], true);
    assert_eq!(body["connectionId"], id.as_str());
    assert_eq!(body["providerConfigKey"], "keyed");
    assert_eq!(body["provider"], "keyed");
    assert_eq!(body["endUser"]["endUserId"], "u-42");
    assert_eq!(body["endUser"]["endUserEmail"], "ada@example.com");
    assert_eq!(body["endUser"]["organizationId"], "org-1");
    assert!(!String::from_utf8_lossy(&seen[0].body).contains(GOOD_KEY));
    // Signed with the key over the exact body (hex HMAC-SHA256, as Nango signs).
    let want = sidekey::webhooks::sign::hmac_sha256_hex(SIGNING_KEY.as_bytes(), &seen[0].body);
    assert_eq!(seen[0].header("x-nango-hmac-sha256"), Some(want.as_str()));

    // A reconnect session, with its own webhook URL: an override, sent there.
    let key = AUTH.trim_start_matches("Bearer ");
    let r = e
        .send(
            "POST",
            &e.sk.url("/connect/sessions/reconnect"),
            key,
            json!({"connection_id": id, "integration_id": "keyed", "webhook_url_override": format!("http://hooks.test:{}/elsewhere", other.port())}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = e
        .api_key(
            "keyed",
            &format!("connect_session_token={token}&params[region]=eu"),
            GOOD_KEY,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while other.count() < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = other.requests();
    assert_eq!(seen.len(), 1, "the override went to the session's URL");
    let body: Value = serde_json::from_slice(&seen[0].body).expect("json");
    assert_eq!(body["operation"], "override");
    assert_eq!(body["connectionId"], id.as_str());
    assert_eq!(hooks.count(), 1, "nothing more to the default URL");
}
