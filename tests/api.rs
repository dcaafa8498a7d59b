//! Nango's management API: every write route with its error cases, the scope matrix, strict
//! inputs, read-only vaults, a hand edit racing a write, concurrent writers, and kill -9 in the
//! middle of a stream of writes. Through the real binary, except where the subject is the API
//! alone (in-process, [`support::app`]).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::app::test_app;
use support::client::{TestClient, AUTH};
use support::sidekey::{run_cli, sidekey, Sidekey};
use support::upstream::{ok_json, reply, Recorded, SyncHandler, Upstream};
use support::Served;
use support::CALLER_KEY;

const SECRET: &str = "sk_live_imported_secret_value";

fn providers(base: &str) -> String {
    format!(
        r#"
hdr:
  auth_mode: API_KEY
  proxy:
    base_url: {base}/api
    headers: {{authorization: "Bearer ${{apiKey}}"}}
tenant:
  auth_mode: API_KEY
  proxy:
    base_url: {base}/${{connectionConfig.tenant}}
    headers: {{x-key: "${{apiKey}}"}}
basic: {{auth_mode: BASIC, proxy: {{base_url: "{base}"}}}}
oauth: {{auth_mode: OAUTH2, token_url: "{base}/token", proxy: {{base_url: "{base}"}}}}
private-api-generic: {{auth_mode: API_KEY}}
"#
    )
}

const EMPTY_VAULT: &str = "# my vault\nintegrations: []\nconnections: []\n";

fn json_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("authorization", AUTH),
        ("content-type", "application/json"),
    ]
}

async fn call(
    c: &TestClient,
    sk: &impl Served,
    method: &str,
    path: &str,
    body: Value,
) -> support::client::TestResponse {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    c.send(method, &sk.url(path), &json_headers(), body).await
}

async fn setup(vault: &str, args: &[&str]) -> (Upstream, Sidekey) {
    let up = Upstream::start(ok_json()).await;
    let sk = sidekey(&providers(&up.url("")), vault)
        .args(args.iter().copied())
        .start();
    (up, sk)
}

/// What the store holds on disk: the vault's text and, after it, its journal's (the API
/// writes not yet folded into the vault; `config::journal`).
fn stored_text(sk: &Sidekey) -> String {
    let mut text = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    text.push_str(&std::fs::read_to_string(sk.path("vault.yaml.journal")).unwrap_or_default());
    text
}

/// Restarts a sidekey on the files it left in `dir`.
fn restart(dir: tempfile::TempDir) -> Sidekey {
    let args: Vec<String> = vec![
        "serve".into(),
        "--listen=127.0.0.1:0".into(),
        "--admin-listen=127.0.0.1:0".into(),
        "--log-format=json".into(),
        format!(
            "--providers={}",
            dir.path().join("providers.yaml").display()
        ),
        format!("--vault={}", dir.path().join("vault.yaml").display()),
    ];
    Sidekey::spawn(
        dir,
        &args,
        &[("SIDEKEY_SECRET_KEY".to_string(), CALLER_KEY.to_string())],
    )
}

#[tokio::test]
async fn integrations_and_connections_lifecycle() {
    let (up, mut sk) = setup(EMPTY_VAULT, &[]).await;
    let c = TestClient::default();

    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh", "display_name": "GitHub"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["data"]["unique_key"], "gh");
    assert_eq!(res.json()["data"]["display_name"], "GitHub");
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "invalid_body");
    assert_eq!(
        res.json()["error"]["errors"][0]["path"],
        json!(["uniqueKey"])
    );
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "nope-provider", "unique_key": "x"}),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json()["error"]["errors"][0]["path"],
        json!(["provider"])
    );
    assert!(res.text().contains("nope-provider"), "{}", res.text());

    // Import: 201 with the full connection; the proxy uses it before the response was sent.
    let res = call(
        &c,
        &sk,
        "POST",
        "/connections",
        json!({
            "provider_config_key": "gh", "connection_id": "u1",
            "credentials": {"type": "API_KEY", "apiKey": SECRET},
            "metadata": {"plan": "pro"},
            "end_user": {"id": "eu-1", "display_name": "Ada"},
            "tags": {"team": "core"}
        }),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let v = res.json();
    assert_eq!(v["connection_id"], "u1");
    assert_eq!(v["credentials"]["apiKey"], SECRET);
    assert_eq!(v["tags"]["end_user_id"], "eu-1");
    assert_eq!(v["tags"]["team"], "core");
    assert!(v["created_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    let res = c.proxy(&sk.url(""), "/user", "u1", "gh").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        up.requests()
            .last()
            .expect("request")
            .header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // Re-import is an upsert, keeping created_at.
    let created = v["created_at"].clone();
    let res = call(
        &c,
        &sk,
        "POST",
        "/connections",
        json!({
            "provider_config_key": "gh", "connection_id": "u1",
            "credentials": {"type": "API_KEY", "apiKey": "rotated"}
        }),
    )
    .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.json()["created_at"], created);
    let res = c.proxy(&sk.url(""), "/user", "u1", "gh").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        up.requests()
            .last()
            .expect("request")
            .header("authorization"),
        Some("Bearer rotated")
    );

    // Type mismatch and a base URL that needs connection_config: refused with a path.
    let res = call(&c, &sk, "POST", "/connections", json!({
        "provider_config_key": "gh", "credentials": {"type": "BASIC", "username": "u", "password": "p"}
    })).await;
    assert_eq!(res.status, 400);
    assert!(
        res.text()
            .contains("Provider API_KEY does not support BASIC auth"),
        "{}",
        res.text()
    );
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "tenant", "unique_key": "t"}),
    )
    .await;
    assert_eq!(res.status, 200);
    let res = call(
        &c,
        &sk,
        "POST",
        "/connections",
        json!({
            "provider_config_key": "t", "credentials": {"type": "API_KEY", "apiKey": "k"}
        }),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(
        res.json()["error"]["errors"][0]["path"],
        json!(["connection_config"])
    );
    assert!(
        res.text().contains("connectionConfig.tenant"),
        "{}",
        res.text()
    );
    let res = call(
        &c,
        &sk,
        "POST",
        "/connections",
        json!({
            "provider_config_key": "missing", "credentials": {"type": "API_KEY", "apiKey": "k"}
        }),
    )
    .await;
    assert_eq!(res.status, 404);
    assert_eq!(res.error_code(), "not_found");

    // Metadata: replace (201) then shallow merge (200), all or nothing.
    let res = call(
        &c,
        &sk,
        "POST",
        "/connections/metadata",
        json!({"connection_id": "u1", "provider_config_key": "gh", "metadata": {"a": 1}}),
    )
    .await;
    assert_eq!(res.status, 201);
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/connections/metadata",
        json!({"connection_id": ["u1"], "provider_config_key": "gh", "metadata": {"b": 2}}),
    )
    .await;
    assert_eq!(res.status, 200);
    let res = call(&c, &sk, "PATCH", "/connections/metadata", json!({"connection_id": ["u1", "ghost"], "provider_config_key": "gh", "metadata": {"c": 3}})).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.error_code(), "unknown_connection");
    assert!(
        res.text().contains("No actions were taken"),
        "{}",
        res.text()
    );
    let res = call(
        &c,
        &sk,
        "GET",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.json()["metadata"], json!({"a": 1, "b": 2}));

    // PATCH end_user / tags; the list shows Nango's fields.
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/connections/u1?provider_config_key=gh",
        json!({"tags": {"stage": "beta"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({"success": true}));
    let res = call(&c, &sk, "GET", "/connections?tags[stage]=beta", Value::Null).await;
    let list = res.json()["connections"].as_array().expect("list").clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["connection_id"], "u1");
    assert!(list[0]["created"].is_string());
    assert!(
        !res.text().contains("rotated"),
        "the list never shows credentials"
    );

    // Restart: every write is in the vault, which still parses and keeps its header comment.
    let vault = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    assert!(vault.starts_with("# my vault\n"), "{vault}");
    let dir = sk.take_dir();
    drop(sk);
    let sk2 = restart(dir);
    let res = call(
        &c,
        &sk2,
        "GET",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["metadata"], json!({"a": 1, "b": 2}));
    assert_eq!(res.json()["tags"], json!({"stage": "beta"}));
    sk = sk2;

    // Delete the connection, then the integration (its connections go with it).
    let res = call(
        &c,
        &sk,
        "DELETE",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200);
    let res = c.proxy(&sk.url(""), "/user", "u1", "gh").await;
    assert_eq!(res.error_code(), "unknown_connection");
    let res = call(
        &c,
        &sk,
        "DELETE",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "unknown_connection");
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "u2", "credentials": {"type": "API_KEY", "apiKey": "k2"}})).await;
    assert_eq!(res.status, 201);
    let res = call(&c, &sk, "DELETE", "/integrations/gh", Value::Null).await;
    assert_eq!(res.json(), json!({"success": true}));
    let res = c.proxy(&sk.url(""), "/user", "u2", "gh").await;
    assert_eq!(res.error_code(), "unknown_provider_config");
    let res = call(&c, &sk, "DELETE", "/integrations/gh", Value::Null).await;
    assert_eq!(res.status, 404);
    let vault = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    assert!(!vault.contains("u2"), "{vault}");
    assert!(!sk.logs().contains(SECRET), "no secret in the logs");
}

// In-process: its subject is the API's validation, not the process.
#[tokio::test]
async fn integration_validation_and_patch() {
    let up = Upstream::start(ok_json()).await;
    let sk = test_app(&providers(&up.url("")), EMPTY_VAULT).start().await;
    let c = TestClient::default();
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "oauth", "unique_key": "o"}),
    )
    .await;
    assert_eq!(res.status, 400);
    assert!(res.text().contains("Missing credentials"), "{}", res.text());
    let res = call(&c, &sk, "POST", "/integrations", json!({"provider": "hdr", "unique_key": "h", "credentials": {"type": "OAUTH2", "client_id": "a", "client_secret": "b"}})).await;
    assert!(
        res.text().contains("incompatible credentials"),
        "{}",
        res.text()
    );
    let res = call(&c, &sk, "POST", "/integrations", json!({"provider": "oauth", "unique_key": "o", "credentials": {"type": "OAUTH2", "client_id": "cid", "client_secret": "csecret", "scopes": "read,write"}})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(!res.text().contains("csecret"));
    let res = call(&c, &sk, "POST", "/integrations", json!({"provider": "private-api-generic", "unique_key": "p", "integration_config": {"baseUrl": "http://127.0.0.1:1/api", "keyName": "x-api-key", "nope": "1"}})).await;
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json()["error"]["errors"][0]["path"],
        json!(["integration_config", "nope"])
    );
    let res = call(&c, &sk, "POST", "/integrations", json!({"provider": "private-api-generic", "unique_key": "p", "integration_config": {"baseUrl": "http://127.0.0.1:1/api", "keyName": "x-api-key", "valueTemplate": "Key ${apiKey}"}})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Rename, display name; rename refused once it has connections.
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/integrations/p",
        json!({"unique_key": "p2", "display_name": "Internal"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["data"]["unique_key"], "p2");
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "p2", "connection_id": "c", "credentials": {"type": "API_KEY", "apiKey": "k"}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/integrations/p2",
        json!({"unique_key": "p3"}),
    )
    .await;
    assert!(res.text().contains("active connections"), "{}", res.text());
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/integrations/zzz",
        json!({"display_name": "x"}),
    )
    .await;
    assert_eq!(res.status, 404);
    // A config change recompiles the integration's connections.
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/integrations/p2",
        json!({"integration_config": {"keyName": "x-other"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn strict_inputs_and_unserved_routes() {
    let (_up, sk) = setup(EMPTY_VAULT, &[]).await;
    let c = TestClient::default();
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "h", "extra": true}),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "invalid_body");
    assert_eq!(res.json()["error"]["errors"][0]["path"], json!(["extra"]));
    assert_eq!(res.header("sidekey-error"), Some("invalid_body"));
    let res = c
        .send(
            "POST",
            &sk.url("/integrations"),
            &[
                ("authorization", AUTH),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Bytes::from_static(b"provider=hdr"),
        )
        .await;
    assert_eq!(res.status, 415);
    assert_eq!(res.error_code(), "invalid_content_type");
    let big = Bytes::from(vec![b' '; 1024 * 1024 + 10]);
    let res = c
        .send("POST", &sk.url("/connections"), &json_headers(), big)
        .await;
    assert_eq!(res.status, 413);
    assert_eq!(res.error_code(), "payload_too_large");
    let res = c
        .send(
            "POST",
            &sk.url("/connections"),
            &json_headers(),
            Bytes::from_static(b"{not json"),
        )
        .await;
    assert_eq!(res.error_code(), "invalid_body");
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations?x=1",
        json!({"provider": "hdr", "unique_key": "h"}),
    )
    .await;
    assert_eq!(res.error_code(), "invalid_query_params");
    for path in [
        "/records",
        "/sync/trigger",
        "/action/trigger",
        "/scripts/config",
        "/webhook/x",
        "/environment",
    ] {
        let res = call(&c, &sk, "GET", path, Value::Null).await;
        assert_eq!(res.status, 501, "{path}");
        assert_eq!(res.error_code(), "not_supported");
        assert!(res.text().contains("runs no syncs"), "{}", res.text());
    }
    let res = call(&c, &sk, "GET", "/nope", Value::Null).await;
    assert_eq!(res.error_code(), "not_found");
    let res = c
        .send("POST", &sk.url("/integrations"), &[], Bytes::new())
        .await;
    assert_eq!(res.error_code(), "missing_auth_header");
    let res = call(&c, &sk, "GET", "/providers?search=HD", Value::Null).await;
    let names: Vec<&str> = res.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|s| if s == "hdr" { "hdr" } else { "other" })
        .collect();
    assert_eq!(names, ["hdr"]);
    let res = call(&c, &sk, "GET", "/providers/hdr", Value::Null).await;
    assert_eq!(res.json()["data"]["name"], "hdr");
    let res = call(&c, &sk, "GET", "/providers/none-such", Value::Null).await;
    assert_eq!(res.status, 404);
}

/// A vault with keys of several scopes (digests of the names below).
fn scoped_vault() -> String {
    let d = |k: &str| hex::encode(sha2_digest(k));
    format!(
        r#"
secret_keys:
  - {{sha256: "{}", scopes: [proxy]}}
  - {{sha256: "{}", scopes: [connections:read, integrations:read]}}
  - {{sha256: "{}", scopes: [environment:connections:read, connections:read_credentials]}}
  - {{sha256: "{}", scopes: [connections:write, integrations:read]}}
  - {{sha256: "{}", scopes: [integrations:read, integrations:write]}}
  - {{sha256: "{}", scopes: [integrations:read, integrations:write, connections:read_credentials]}}
integrations:
  - {{unique_key: gh, provider: hdr}}
  - {{unique_key: o, provider: oauth, credentials: {{type: OAUTH2, oauth_client_id: cid, oauth_client_secret: csecret}}}}
connections:
  - {{connection_id: u1, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
  - {{connection_id: o1, provider_config_key: o, credentials: {{type: OAUTH2, access_token: at, refresh_token: "rt-secret"}}}}
"#,
        d("key-proxy"),
        d("key-read"),
        d("key-creds"),
        d("key-write"),
        d("key-int"),
        d("key-int-creds")
    )
}

fn sha2_digest(k: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(k.as_bytes()).into()
}

#[tokio::test]
async fn scope_matrix() {
    let (_up, sk) = setup(&scoped_vault(), &[]).await;
    let c = TestClient::default();
    let send = |key: &'static str, method: &'static str, path: &'static str, body: Value| {
        let c = &c;
        let sk = &sk;
        async move {
            let auth = format!("Bearer {key}");
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("connection-id", "u1"),
                ("provider-config-key", "gh"),
            ];
            let body = if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            };
            c.send(method, &sk.url(path), &headers, body).await
        }
    };
    // proxy-only: proxies, reads nothing.
    assert_eq!(
        send("key-proxy", "GET", "/proxy/x", Value::Null)
            .await
            .status,
        200
    );
    let res = send("key-proxy", "GET", "/integrations", Value::Null).await;
    assert_eq!(res.status, 403);
    assert_eq!(res.error_code(), "forbidden");
    assert!(res.text().contains("integrations:read"), "{}", res.text());
    // read: lists, sees a connection without its credential, may not refresh or write.
    let res = send("key-read", "GET", "/proxy/x", Value::Null).await;
    assert_eq!(res.status, 403);
    assert!(res.text().contains("proxy"));
    let res = send(
        "key-read",
        "GET",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["credentials"], json!({"type": "API_KEY"}));
    assert!(!res.text().contains(SECRET));
    let res = send(
        "key-read",
        "GET",
        "/connections/u1?provider_config_key=gh&force_refresh=true",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 403);
    let res = send(
        "key-read",
        "DELETE",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 403);
    assert!(res.text().contains("connections:write"));
    // read_credentials: the credential, and the refresh token only when asked.
    let res = send(
        "key-creds",
        "GET",
        "/connections/u1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.json()["credentials"]["apiKey"], SECRET);
    let res = send(
        "key-creds",
        "GET",
        "/connections/o1?provider_config_key=o",
        Value::Null,
    )
    .await;
    assert_eq!(res.json()["credentials"]["access_token"], "at");
    assert!(!res.text().contains("rt-secret"), "{}", res.text());
    let res = send(
        "key-creds",
        "GET",
        "/connections/o1?provider_config_key=o&refresh_token=true",
        Value::Null,
    )
    .await;
    assert_eq!(res.json()["credentials"]["refresh_token"], "rt-secret");
    let res = send("key-creds", "GET", "/integrations", Value::Null).await;
    assert_eq!(res.status, 403);
    // write: imports, but may not create integrations.
    let res = send("key-write", "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "u9", "credentials": {"type": "API_KEY", "apiKey": "k"}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = send(
        "key-write",
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "z"}),
    )
    .await;
    assert_eq!(res.status, 403);
    assert!(res.text().contains("integrations:write"));
    // write: sets (POST) and merges (PATCH) metadata, deletes a connection.
    let res = send(
        "key-write",
        "POST",
        "/connections/metadata",
        json!({"connection_id": "u9", "provider_config_key": "gh", "metadata": {"a": 1}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = send(
        "key-write",
        "PATCH",
        "/connections/metadata",
        json!({"connection_id": "u9", "provider_config_key": "gh", "metadata": {"b": 2}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = send(
        "key-read",
        "GET",
        "/connections/u9?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(
        res.json()["metadata"],
        json!({"a": 1, "b": 2}),
        "{}",
        res.text()
    );
    let res = send(
        "key-write",
        "DELETE",
        "/connections/u9?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = send(
        "key-read",
        "GET",
        "/connections/u9?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 404, "{}", res.text());
    // integrations:write: creates, patches and deletes integrations, but may not import.
    let res = send(
        "key-int",
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "z"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = send(
        "key-int",
        "PATCH",
        "/integrations/z",
        json!({"display_name": "Zed"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["data"]["display_name"], "Zed");
    let res = send("key-int", "DELETE", "/integrations/z", Value::Null).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({"success": true}));
    let res = send("key-int", "GET", "/integrations/z", Value::Null).await;
    assert_eq!(res.status, 404);
    let res = send("key-int", "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "u8", "credentials": {"type": "API_KEY", "apiKey": "k"}})).await;
    assert_eq!(res.status, 403);
    // include=credentials: the client secret is a credential, so integrations:write alone
    // does not show it; with connections:read_credentials too it does.
    let res = send(
        "key-int",
        "GET",
        "/integrations/o?include=credentials",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(
        res.json()["data"].get("credentials").is_none(),
        "{}",
        res.text()
    );
    assert!(!res.text().contains("csecret"), "{}", res.text());
    let res = send(
        "key-int-creds",
        "GET",
        "/integrations/o?include=credentials",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.json()["data"]["credentials"]["client_secret"],
        "csecret"
    );
    assert_eq!(res.json()["data"]["credentials"]["client_id"], "cid");
}

#[test]
fn key_new_with_scopes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, _) = run_cli(&["key", "new", "--scopes", "proxy"], dir.path());
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("sk_"));
    assert!(lines[1].starts_with("sha256: "));
    assert_eq!(lines[2], "scopes: [proxy]");
    let (code, _, err) = run_cli(&["key", "new", "--scopes", "proxy,everything"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("everything"), "{err}");
}

#[tokio::test]
async fn read_only_vault_refuses_writes_and_keeps_serving() {
    let vault = format!("integrations: [{{unique_key: gh, provider: hdr}}]\nconnections:\n  - {{connection_id: u1, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: \"{SECRET}\"}}}}\n");
    let (_up, sk) = setup(&vault, &["--vault-read-only"]).await;
    let c = TestClient::default();
    let before = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "u2", "credentials": {"type": "API_KEY", "apiKey": "k"}})).await;
    assert_eq!(res.status, 409);
    assert_eq!(res.error_code(), "store_read_only");
    assert!(res.text().contains("read-only"));
    assert_eq!(
        std::fs::read_to_string(sk.path("vault.yaml")).expect("vault"),
        before
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "u1", "gh").await.status, 200);
    assert_eq!(
        c.proxy(&sk.url(""), "/x", "u2", "gh").await.error_code(),
        "unknown_connection"
    );
}

#[tokio::test]
async fn a_hand_edit_racing_a_write_is_kept() {
    let vault = "integrations: [{unique_key: gh, provider: hdr}]\nconnections: []\n";
    // A long settle: the watcher must not be what picks the edit up.
    let (_up, sk) = setup(vault, &["--reload-settle", "1h"]).await;
    let c = TestClient::default();
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "api-1", "credentials": {"type": "API_KEY", "apiKey": "k1"}})).await;
    assert_eq!(res.status, 201);
    // A second write: spliced onto the file the first one wrote (store::splice).
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "api-0", "credentials": {"type": "API_KEY", "apiKey": "k0"}})).await;
    assert_eq!(res.status, 201);
    // The operator changes a connection (moving every byte offset after it) and appends one by
    // hand; the next API write happens before any reload, and must not splice from the old
    // offsets.
    let path = sk.path("vault.yaml");
    let text = std::fs::read_to_string(&path).expect("vault");
    let mut text = text.replacen("\"k1\"", "\"edited-by-hand\"", 1);
    assert!(text.contains("edited-by-hand"), "{text}");
    text.push_str("- connection_id: by-hand\n  provider_config_key: gh\n  credentials: {type: API_KEY, apiKey: hand}\n");
    std::fs::write(&path, &text).expect("hand edit");
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "api-2", "credentials": {"type": "API_KEY", "apiKey": "k2"}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let after = stored_text(&sk);
    assert!(after.contains("edited-by-hand"), "{after}");
    let (code, out, _) = run_cli(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        sk.dir(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 connections"), "{out}");
    for id in ["api-1", "api-0", "by-hand", "api-2"] {
        assert!(after.contains(id), "{id} missing:\n{after}");
        assert_eq!(
            c.proxy(&sk.url(""), "/x", id, "gh").await.status,
            200,
            "{id}"
        );
    }
    // A hand edit that breaks the vault stops writes with a conflict; serving goes on.
    std::fs::write(&path, "integrations: [oops\n").expect("broken edit");
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "api-3", "credentials": {"type": "API_KEY", "apiKey": "k3"}})).await;
    assert_eq!(res.status, 409, "{}", res.text());
    assert_eq!(res.error_code(), "conflict");
    assert_eq!(
        std::fs::read_to_string(&path).expect("vault"),
        "integrations: [oops\n"
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "api-2", "gh").await.status, 200);
}

#[tokio::test]
async fn concurrent_writers_all_land() {
    let vault = "integrations: [{unique_key: gh, provider: hdr}]\nconnections: []\n";
    let (_up, sk) = setup(vault, &[]).await;
    let c = Arc::new(TestClient::default());
    let url = sk.url("/connections");
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let body = json!({"provider_config_key": "gh", "connection_id": format!("w{w}-{i}"), "credentials": {"type": "API_KEY", "apiKey": "k"}});
                let res = c.send("POST", &url, &json_headers(), Bytes::from(body.to_string())).await;
                assert_eq!(res.status, 201, "{}", res.text());
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let res = call(&c, &sk, "GET", "/connections", Value::Null).await;
    assert_eq!(
        res.json()["connections"].as_array().expect("list").len(),
        160
    );
    let (code, out, _) = run_cli(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        sk.dir(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("160 connections"), "{out}");
}

#[tokio::test]
async fn kill_9_mid_writes_loses_no_answered_write() {
    let vault = "integrations: [{unique_key: gh, provider: hdr}]\nconnections: []\n";
    let (_up, mut sk) = setup(vault, &[]).await;
    let c = Arc::new(TestClient::default());
    let url = sk.url("/connections");
    let answered = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, url, answered) = (c.clone(), url.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let body = json!({"provider_config_key": "gh", "connection_id": id, "credentials": {"type": "API_KEY", "apiKey": "k"}});
                let headers = json_headers();
                let req = c.send_result("POST", &url, &headers, Bytes::from(body.to_string()));
                match req.await {
                    Some(201) => {
                        answered.lock().expect("lock").insert(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    // Let a stream of writes run, then kill -9 while they are in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while answered.lock().expect("lock").len() < 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sk.signal("KILL");
    for t in tasks {
        let _ = t.await;
    }
    let answered = answered.lock().expect("lock").clone();
    assert!(
        answered.len() >= 100,
        "only {} writes answered",
        answered.len()
    );
    let dir = sk.take_dir();
    drop(sk);
    let (code, out, _) = run_cli(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "the vault parses after kill -9: {out}");
    let sk = restart(dir);
    let res = call(&c, &sk, "GET", "/connections", Value::Null).await;
    let present: HashSet<String> = res.json()["connections"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["connection_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let lost: Vec<&String> = answered.difference(&present).collect();
    assert!(lost.is_empty(), "answered 201 but lost: {lost:?}");
}

/// The writes a kill -9 catches in the journal (not yet folded into the vault) are there
/// after a restart, for `sidekey check` too, and survive a SIGHUP reload; once writes go idle
/// they are folded into the vault and the journal is emptied.
#[tokio::test]
async fn kill_9_with_an_unfolded_journal_loses_no_answered_write() {
    let vault = "integrations: [{unique_key: gh, provider: hdr}]\nconnections: [{connection_id: old, provider_config_key: gh, credentials: {type: API_KEY, apiKey: k}}]\n";
    let (_up, mut sk) = setup(vault, &[]).await;
    let c = TestClient::default();
    let mut ids = vec!["old".to_string()];
    // The first write folds (a process's first commit rewrites the vault); the others go to
    // the journal, back to back, so no idle fold comes between them and the kill.
    for i in 0..20 {
        let id = format!("j{i}");
        let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": id, "credentials": {"type": "API_KEY", "apiKey": format!("k{i}")}})).await;
        assert_eq!(res.status, 201, "{}", res.text());
        ids.push(id);
    }
    // A delete goes to the journal too.
    let res = call(
        &c,
        &sk,
        "DELETE",
        "/connections/old?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    ids.remove(0);
    sk.signal("KILL");
    let journal = std::fs::read_to_string(sk.path("vault.yaml.journal")).expect("journal");
    assert!(
        journal.contains("\"j19\""),
        "the last write is in the journal:\n{journal}"
    );
    let vault_text = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    assert!(!vault_text.contains("j19"), "not folded yet:\n{vault_text}");
    assert!(
        vault_text.contains("old"),
        "the delete is not folded yet:\n{vault_text}"
    );
    let dir = sk.take_dir();
    drop(sk);
    let (code, out, _) = run_cli(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 connections"),
        "check sees vault + journal: {out}"
    );

    let sk = restart(dir);
    let listed = |res: support::client::TestResponse| -> HashSet<String> {
        res.json()["connections"]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| c["connection_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let want: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        listed(call(&c, &sk, "GET", "/connections", Value::Null).await),
        want
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "j19", "gh").await.status, 200);
    assert_eq!(c.proxy(&sk.url(""), "/x", "old", "gh").await.status, 404);

    // A second after start with no writes, the journal is folded into the vault.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = std::fs::metadata(sk.path("vault.yaml.journal")).map_or(0, |m| m.len());
        if j == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the journal was not folded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vault_text = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    for id in &ids {
        assert!(
            vault_text.contains(id.as_str()),
            "{id} folded:\n{vault_text}"
        );
    }
    assert!(!vault_text.contains("\"old\""), "{vault_text}");

    // Journaled writes survive a SIGHUP reload (it rebuilds from vault + journal).
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "after-hup", "credentials": {"type": "API_KEY", "apiKey": "k"}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "after-hup-2", "credentials": {"type": "API_KEY", "apiKey": "k"}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert!(std::fs::metadata(sk.path("vault.yaml.journal")).map_or(0, |m| m.len()) > 0);
    // An update and a delete of connections the folded vault holds, journaled too.
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "j0", "credentials": {"type": "API_KEY", "apiKey": "k0-updated"}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = call(
        &c,
        &sk,
        "DELETE",
        "/connections/j1?provider_config_key=gh",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    sk.signal("HUP");
    assert!(
        sk.wait_for_log("SIGHUP", Duration::from_secs(10)),
        "{}",
        sk.logs()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.proxy(&sk.url(""), "/x", "after-hup-2", "gh").await.status,
        200
    );
    assert_eq!(
        c.proxy(&sk.url(""), "/x", "after-hup", "gh").await.status,
        200
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "j1", "gh").await.status, 404);

    // Folded again once writes stop (spliced onto the vault the first fold wrote, with every
    // change journaled since): the vault alone now holds exactly what is served.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(sk.path("vault.yaml.journal")).map_or(0, |m| m.len()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal was not folded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vault_text = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    for want in ["after-hup-2", "after-hup", "k0-updated", "\"j19\""] {
        assert!(vault_text.contains(want), "{want}:\n{vault_text}");
    }
    assert!(!vault_text.contains("\"j1\""), "{vault_text}");
    assert!(!vault_text.contains("\"k0\""), "{vault_text}");
    let (code, out, _) = run_cli(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        sk.dir(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("21 connections"), "{out}");
}

#[tokio::test]
async fn api_writes_are_sealed_when_a_key_is_set() {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let up = Upstream::start(ok_json()).await;
    let sk = sidekey(&providers(&up.url("")), EMPTY_VAULT)
        .env("SIDEKEY_ENCRYPTION_KEY", &key)
        .start();
    let c = TestClient::default();
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "gh"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "gh", "connection_id": "u1", "credentials": {"type": "API_KEY", "apiKey": SECRET}})).await;
    assert_eq!(res.status, 201, "{}", res.text());
    // The connection went to the journal (the first write, the integration, rewrote the
    // vault): sealed there as in the vault.
    let vault = stored_text(&sk);
    assert!(
        !vault.contains(SECRET),
        "plaintext secret on disk:\n{vault}"
    );
    assert!(vault.contains("enc:v1:"), "{vault}");
    let journal = std::fs::read_to_string(sk.path("vault.yaml.journal")).expect("journal");
    assert!(
        journal.contains("\"u1\"") && journal.contains("enc:v1:"),
        "{journal}"
    );
    assert_eq!(c.proxy(&sk.url(""), "/x", "u1", "gh").await.status, 200);
    assert_eq!(
        up.requests()
            .last()
            .expect("request")
            .header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    // `sidekey check` opens it with the key and refuses it without.
    let (code, out, _) = support::sidekey::run_cli(
        &[
            "check",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        sk.dir(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SIDEKEY_ENCRYPTION_KEY"), "{out}");
    // With the key, the journal's sealed secret opens; with another, the journal's line and
    // connection are named (never the value).
    let env = [("SIDEKEY_ENCRYPTION_KEY", key.as_str())];
    let check = [
        "check",
        "--providers",
        "providers.yaml",
        "--vault",
        "vault.yaml",
    ];
    let (code, out, _) = support::sidekey::run_cli_env(&check, sk.dir(), &env);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 connections"), "{out}");
    let other = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    let (code, out, _) = support::sidekey::run_cli_env(
        &check,
        sk.dir(),
        &[("SIDEKEY_ENCRYPTION_KEY", other.as_str())],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("vault.yaml.journal") && out.contains("connections[u1]"),
        "{out}"
    );
    assert!(!out.contains(SECRET), "{out}");
    // Resealing the vault alone would strand the journal's groups under the old key.
    let (code, out, err) = support::sidekey::run_cli_env(
        &[
            "vault",
            "rekey",
            "--providers",
            "providers.yaml",
            "--vault",
            "vault.yaml",
        ],
        sk.dir(),
        &[
            ("SIDEKEY_ENCRYPTION_KEY", key.as_str()),
            ("SIDEKEY_NEW_ENCRYPTION_KEY", other.as_str()),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("not yet folded"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn nangos_field_limits_and_integration_includes() {
    let (_up, sk) = setup(EMPTY_VAULT, &[]).await;
    let c = TestClient::default();
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "oauth", "unique_key": "o",
               "credentials": {"type": "OAUTH2", "client_id": "cid", "client_secret": "csecret"}}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = call(
        &c,
        &sk,
        "POST",
        "/integrations",
        json!({"provider": "hdr", "unique_key": "h"}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let long_key = "k".repeat(1025);
    // Each body Nango refuses is refused with its path, and nothing is written.
    for (body, path) in [
        (
            json!({"provider_config_key": "h", "connection_id": "c",
                "credentials": {"type": "API_KEY", "apiKey": long_key}}),
            json!(["credentials", "apiKey"]),
        ),
        (
            json!({"provider_config_key": "h", "connection_id": "c", "end_user": {"id": "u", "email": "not-mail"},
                "credentials": {"type": "API_KEY", "apiKey": SECRET}}),
            json!(["end_user", "email"]),
        ),
        (
            json!({"provider_config_key": "h", "connection_id": "c", "tags": {"9lives": "x"},
                "credentials": {"type": "API_KEY", "apiKey": SECRET}}),
            json!(["tags", "9lives"]),
        ),
        (
            json!({"provider_config_key": "h", "connection_id": "c", "webhook_url_override": null,
                "credentials": {"type": "API_KEY", "apiKey": SECRET}}),
            json!(["webhook_url_override"]),
        ),
    ] {
        let res = call(&c, &sk, "POST", "/connections", body).await;
        assert_eq!(res.status, 400, "{}", res.text());
        assert_eq!(res.error_code(), "invalid_body");
        assert_eq!(res.json()["error"]["errors"][0]["path"], path);
        assert!(
            !res.text().contains("kkkkkkkk"),
            "the value is not repeated"
        );
    }
    let res = call(&c, &sk, "GET", "/connections", Value::Null).await;
    assert_eq!(res.json()["connections"], json!([]), "nothing was written");
    // A good import; its end user's fields become tags in Nango's order and case.
    let res = call(
        &c,
        &sk,
        "POST",
        "/connections",
        json!({"provider_config_key": "h", "connection_id": "c",
               "end_user": {"id": "u1", "email": "a@b.co", "organization": {"id": "org", "display_name": "Org"},
                            "tags": {"Team": "blue"}},
               "credentials": {"type": "API_KEY", "apiKey": SECRET}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(
        res.json()["tags"],
        json!({"end_user_id": "u1", "end_user_email": "a@b.co", "organization_id": "org",
               "organization_display_name": "Org", "team": "blue"})
    );
    let res = call(
        &c,
        &sk,
        "PATCH",
        "/connections/c?provider_config_key=h",
        json!({"tags": {"a": ""}}),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(
        res.json()["error"]["errors"][0]["path"],
        json!(["tags", "a"])
    );
    for q in ["search=", &format!("search={}", "s".repeat(256))] {
        let res = call(&c, &sk, "GET", &format!("/connections?{q}"), Value::Null).await;
        assert_eq!(res.status, 400, "{q}");
        assert_eq!(res.error_code(), "invalid_query_params");
        let res = call(&c, &sk, "GET", &format!("/providers?{q}"), Value::Null).await;
        assert_eq!(res.status, 400, "{q}");
    }
    // include=credentials shows the client secret to a key that may read secrets (the
    // environment's key has every scope; see `scope_matrix` for keys with fewer).
    let res = call(
        &c,
        &sk,
        "GET",
        "/integrations/o?include=credentials&include=webhook",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let data = &res.json()["data"];
    assert_eq!(data["credentials"]["client_secret"], "csecret");
    assert_eq!(data["credentials"]["type"], "OAUTH2");
    assert!(data.get("webhook_url").is_some_and(Value::is_null));
    let res = call(&c, &sk, "GET", "/integrations/o", Value::Null).await;
    assert!(res.json()["data"].get("credentials").is_none());
    assert!(!res.text().contains("csecret"));
    let res = call(
        &c,
        &sk,
        "GET",
        "/integrations/o?include=everything",
        Value::Null,
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "invalid_query_params");
    let res = call(&c, &sk, "GET", "/integrations?x=1", Value::Null).await;
    assert_eq!(res.status, 400);
}

/// An upstream that is also the `oauth` provider's token endpoint (`/token`): it grants
/// `at-fresh` / `rt-fresh`; every other path answers 200 `{"ok":true}`.
fn with_token_endpoint() -> SyncHandler {
    Arc::new(|r: &Recorded| {
        let body = if r.uri.path() == "/token" {
            json!({"access_token": "at-fresh", "refresh_token": "rt-fresh",
                   "expires_in": 3600, "token_type": "Bearer"})
        } else {
            json!({"ok": true})
        };
        let mut res = reply(200, body.to_string());
        res.headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        res
    })
}

fn token_calls(up: &Upstream) -> Vec<Recorded> {
    up.requests()
        .into_iter()
        .filter(|r| r.uri.path() == "/token")
        .collect()
}

#[tokio::test]
async fn force_refresh_refreshes_an_oauth2_connection_now() {
    // A token valid for a year: nothing but force_refresh makes sidekey call the endpoint.
    let vault = "integrations:\n  - {unique_key: o, provider: oauth, credentials: {type: OAUTH2, oauth_client_id: cid, oauth_client_secret: csecret}}\nconnections:\n  - {connection_id: o1, provider_config_key: o, credentials: {type: OAUTH2, access_token: at-old, refresh_token: rt-old, expires_at: \"2099-01-01T00:00:00Z\"}}\n";
    let up = Upstream::start(with_token_endpoint()).await;
    let sk = sidekey(&providers(&up.url("")), vault).start();
    let c = TestClient::default();
    let get = |q: &'static str| {
        let (c, sk) = (&c, &sk);
        async move {
            let res = call(
                c,
                sk,
                "GET",
                &format!("/connections/o1?provider_config_key=o{q}"),
                Value::Null,
            )
            .await;
            assert_eq!(res.status, 200, "{q}: {}", res.text());
            res
        }
    };
    let res = get("").await;
    assert_eq!(res.json()["credentials"]["access_token"], "at-old");
    assert!(token_calls(&up).is_empty());
    let res = get("&force_refresh=true").await;
    assert_eq!(
        res.json()["credentials"]["access_token"],
        "at-fresh",
        "{}",
        res.text()
    );
    // The refresh token only with refresh_token=true: neither the old nor the new one.
    assert!(
        res.json()["credentials"].get("refresh_token").is_none(),
        "{}",
        res.text()
    );
    assert!(!res.text().contains("rt-fresh") && !res.text().contains("rt-old"));
    let calls = token_calls(&up);
    assert_eq!(calls.len(), 1, "one token call");
    let form = String::from_utf8_lossy(&calls[0].body).into_owned();
    assert!(form.contains("grant_type=refresh_token"), "{form}");
    assert!(form.contains("refresh_token=rt-old"), "{form}");
    // The refreshed token is the one kept: asked again, without forcing, no new call.
    let res = get("&refresh_token=true").await;
    assert_eq!(res.json()["credentials"]["access_token"], "at-fresh");
    assert_eq!(res.json()["credentials"]["refresh_token"], "rt-fresh");
    assert_eq!(token_calls(&up).len(), 1);
    // And the proxy uses it.
    assert_eq!(c.proxy(&sk.url(""), "/x", "o1", "o").await.status, 200);
    let last = up.requests().pop().expect("proxied request");
    assert_eq!(last.header("authorization"), Some("Bearer at-fresh"));
}

#[tokio::test]
async fn imported_oauth2_basic_and_oauth2_cc_credentials_are_injected() {
    let up = Upstream::start(with_token_endpoint()).await;
    let base = up.url("");
    let providers = format!(
        "{}cc: {{auth_mode: OAUTH2_CC, token_url: \"{base}/cc/token\", proxy: {{base_url: \"{base}\"}}}}\n",
        providers(&base)
    );
    let vault = "integrations:\n  - {unique_key: o, provider: oauth, credentials: {type: OAUTH2, oauth_client_id: cid, oauth_client_secret: csecret}}\n  - {unique_key: b, provider: basic}\n  - {unique_key: cc, provider: cc}\nconnections: []\n";
    let sk = sidekey(&providers, vault).start();
    let c = TestClient::default();
    let imports = [
        (
            "o",
            json!({"type": "OAUTH2", "access_token": "at-imported", "refresh_token": "rt-imported",
                     "expires_at": "2099-01-01T00:00:00Z"}),
        ),
        (
            "b",
            json!({"type": "BASIC", "username": "user", "password": "pass-imported"}),
        ),
        (
            "cc",
            json!({"type": "OAUTH2_CC", "client_id": "cc-id", "client_secret": "cc-secret",
                      "token": "cc-token-imported", "expires_at": "2099-01-01T00:00:00Z"}),
        ),
    ];
    for (int, creds) in &imports {
        let res = call(
            &c,
            &sk,
            "POST",
            "/connections",
            json!({"provider_config_key": int, "connection_id": "u1", "credentials": creds}),
        )
        .await;
        assert_eq!(res.status, 201, "{int}: {}", res.text());
        assert_eq!(res.json()["provider_config_key"], *int);
    }
    // GET with credentials (the environment's key may read them) returns what was imported.
    let res = call(
        &c,
        &sk,
        "GET",
        "/connections/u1?provider_config_key=o&refresh_token=true",
        Value::Null,
    )
    .await;
    assert_eq!(
        res.json()["credentials"]["access_token"],
        "at-imported",
        "{}",
        res.text()
    );
    assert_eq!(res.json()["credentials"]["refresh_token"], "rt-imported");
    let res = call(
        &c,
        &sk,
        "GET",
        "/connections/u1?provider_config_key=b",
        Value::Null,
    )
    .await;
    assert_eq!(
        res.json()["credentials"]["password"],
        "pass-imported",
        "{}",
        res.text()
    );
    // The proxy injects each, without a token call (the tokens are valid until 2099).
    let basic = format!("Basic {}", base64_encode("user:pass-imported"));
    for (int, want) in [
        ("o", "Bearer at-imported".to_string()),
        ("b", basic),
        ("cc", "Bearer cc-token-imported".to_string()),
    ] {
        let res = c.proxy(&sk.url(""), "/x", "u1", int).await;
        assert_eq!(res.status, 200, "{int}: {}", res.text());
        let last = up.requests().pop().expect("proxied request");
        assert_eq!(last.header("authorization"), Some(want.as_str()), "{int}");
    }
    assert!(up
        .requests()
        .iter()
        .all(|r| !r.uri.path().ends_with("token")));
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Makes a directory immutable (`chattr +i`: even root may not create, rename or remove
/// entries in it, EPERM) until dropped; `None` where chattr or the file system cannot.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &std::path::Path) -> Option<Self> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_vault_directory_that_cannot_be_written_is_a_read_only_store() {
    // No --vault-read-only: the vault merely sits where nothing can be created (as a
    // Kubernetes Secret mount). Writes answer 409 store_read_only (503 before), serving goes
    // on, and a refreshed token goes to the state file.
    let vault = "integrations:\n  - {unique_key: o, provider: oauth, credentials: {type: OAUTH2, oauth_client_id: cid, oauth_client_secret: csecret}}\nconnections:\n  - {connection_id: o1, provider_config_key: o, credentials: {type: OAUTH2, access_token: at-old, refresh_token: rt-old, expires_at: \"2000-01-01T00:00:00Z\"}}\n";
    let up = Upstream::start(with_token_endpoint()).await;
    let state_dir = tempfile::tempdir().expect("state dir");
    let state = state_dir.path().join("state.yaml");
    let sk = sidekey(&providers(&up.url("")), vault)
        .arg(format!("--state={}", state.display()))
        .start();
    let Some(_immutable) = Immutable::set(sk.dir()) else {
        eprintln!("skipped: chattr +i is not available here");
        return;
    };
    let before = std::fs::read_to_string(sk.path("vault.yaml")).expect("vault");
    let c = TestClient::default();
    let res = call(&c, &sk, "POST", "/connections", json!({"provider_config_key": "o", "connection_id": "o2", "credentials": {"type": "OAUTH2", "access_token": "t"}})).await;
    assert_eq!(res.status, 409, "{}", res.text());
    assert_eq!(res.error_code(), "store_read_only");
    assert!(res.text().contains("--vault-read-only"), "{}", res.text());
    // The expired token is refreshed on the next proxied request; the vault cannot take it,
    // the state file does.
    assert_eq!(c.proxy(&sk.url(""), "/x", "o1", "o").await.status, 200);
    assert_eq!(token_calls(&up).len(), 1);
    let last = up.requests().pop().expect("proxied request");
    assert_eq!(last.header("authorization"), Some("Bearer at-fresh"));
    assert_eq!(
        std::fs::read_to_string(sk.path("vault.yaml")).expect("vault"),
        before
    );
    let st = std::fs::read_to_string(&state).expect("state file written");
    assert!(st.contains("at-fresh") && st.contains("rt-fresh"), "{st}");
}
