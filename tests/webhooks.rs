//! Expired-credential detection and auth webhooks, over real sockets.
//!
//! A loopback receiver stands in for the application's webhook endpoint; loopback upstreams
//! answer 401/403/200 on demand, and a loopback token endpoint refuses refreshes. The binary
//! is used where the process matters (flags, `kill -9`, restart on the same files), sidekey
//! in-process elsewhere. Signatures are checked by Nango's own Node SDK
//! (`tests/node/verify.mjs`, `@nangohq/node` installed by `npm ci` in `tests/node`).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::app::test_app;
use support::client::{TestClient, TestResponse};
use support::sidekey::{run_cli_env, sidekey, Sidekey};
use support::upstream::{reply, Recorded, SyncHandler, Upstream};
use support::{Served, CALLER_KEY};

const SIGNING_KEY: &str = "whsec-test-0123456789abcdef";
const KEY_ONE: &str = "api-key-one-SECRET-1111";
const KEY_TWO: &str = "api-key-two-SECRET-2222";
const KEY_NEW: &str = "api-key-new-SECRET-3333";

/// An upstream answering whatever status `status` holds now.
fn switchable(status: Arc<AtomicU16>) -> SyncHandler {
    Arc::new(move |_| reply(status.load(Ordering::SeqCst), r#"{"upstream":true}"#))
}

/// A webhook receiver answering 200.
async fn receiver() -> Upstream {
    Upstream::start(Arc::new(|_| reply(200, "ok"))).await
}

fn providers(api: &str) -> String {
    format!(
        r#"
k: {{auth_mode: API_KEY, proxy: {{base_url: "{api}", headers: {{x-api-key: "${{apiKey}}"}}}}}}
k403: {{auth_mode: API_KEY, proxy: {{base_url: "{api}", headers: {{x-api-key: "${{apiKey}}"}}, auth_error_code: [401, 403]}}}}
"#
    )
}

const VAULT: &str = r#"
integrations:
  - {unique_key: ik, provider: k}
  - {unique_key: ik3, provider: k403}
connections:
  - {connection_id: c1, provider_config_key: ik, credentials: {type: API_KEY, apiKey: api-key-one-SECRET-1111}}
  - {connection_id: c2, provider_config_key: ik3, credentials: {type: API_KEY, apiKey: api-key-two-SECRET-2222}}
  - {connection_id: c3, provider_config_key: ik, credentials: {type: API_KEY, apiKey: api-key-three-SECRET-4444}}
"#;

fn bearer() -> String {
    format!("Bearer {CALLER_KEY}")
}

async fn get(s: &impl Served, path: &str) -> TestResponse {
    let auth = bearer();
    TestClient::default()
        .send(
            "GET",
            &s.url(path),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
}

/// `connection_id → errors` of `GET /connections` with this query.
async fn listed(s: &impl Served, query: &str) -> Vec<(String, Value)> {
    let res = get(s, &format!("/connections{query}")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let mut v: Vec<(String, Value)> = res.json()["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| {
            (
                c["connection_id"].as_str().expect("id").to_string(),
                c["errors"].clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn ids(v: &[(String, Value)]) -> Vec<&str> {
    v.iter().map(|(id, _)| id.as_str()).collect()
}

/// The value of a metric line that starts with `prefix` (labels included), if present.
async fn metric(s: &impl Served, prefix: &str) -> Option<f64> {
    let res = TestClient::default()
        .send("GET", &s.admin_url("/metrics"), &[], Bytes::new())
        .await;
    res.text()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body_json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).expect("webhook body is JSON")
}

/// Verifies a received webhook with `@nangohq/node`: `(verifyIncomingWebhookRequest,
/// verifyWebhookSignature)`.
fn node_verify(key: &str, body: &[u8], headers: &http::HeaderMap) -> (bool, bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/@nangohq/node").is_dir(),
        "@nangohq/node is not installed: run `npm ci` in tests/node (as .ci/run does)"
    );
    let hs: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().expect("ascii").to_string()),
            )
        })
        .collect();
    let input = json!({"key": key, "body": String::from_utf8_lossy(body), "headers": hs});
    let mut child = std::process::Command::new("node")
        .arg("verify.mjs")
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run node (Node.js 18+ must be installed)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write to node");
    }
    let out = child.wait_with_output().expect("node output");
    assert!(out.status.success(), "node verify.mjs failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("node prints JSON");
    (
        v["hmac"].as_bool().expect("hmac"),
        v["legacy"].as_bool().expect("legacy"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_key_marks_the_connection_until_a_2xx_or_a_new_credential() {
    let status = Arc::new(AtomicU16::new(200));
    let api = Upstream::start(switchable(status.clone())).await;
    let hooks = receiver().await;
    // The webhook host is a name pinned to loopback: it goes through the checked pool, whose
    // policy trusts operator pins, with no --webhook-allow-private.
    let port = hooks.port();
    let sk = sidekey(&providers(&api.url("")), VAULT)
        .env("SIDEKEY_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
        .arg(format!("--webhook-url=http://hooks.test:{port}/nango"))
        .arg(format!("--resolve=hooks.test:{port}:127.0.0.1"))
        .arg("--webhook-retry-base=100ms")
        .start();
    let client = TestClient::default();
    assert!(listed(&sk, "?withError=true").await.is_empty());

    // A 401 to c1's key: the caller gets the upstream's 401, the connection an error.
    status.store(401, Ordering::SeqCst);
    for _ in 0..3 {
        let res = client.proxy(&sk.url(""), "/me", "c1", "ik").await;
        assert_eq!(res.status, 401);
    }
    let with = listed(&sk, "?withError=true").await;
    assert_eq!(ids(&with), ["c1"]);
    let errors = with[0].1.as_array().expect("errors").clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["type"], "auth");
    let log_id = errors[0]["log_id"].as_str().expect("log_id").to_string();
    assert_eq!(log_id.len(), 20);
    assert_eq!(ids(&listed(&sk, "?withError=false").await), ["c2", "c3"]);
    assert_eq!(ids(&listed(&sk, "").await), ["c1", "c2", "c3"]);
    let one = get(&sk, "/connections/c1?provider_config_key=ik").await;
    assert_eq!(one.json()["errors"][0]["log_id"], log_id.as_str());
    assert_eq!(
        metric(&sk, r#"sidekey_connection_auth_errors{integration="ik"}"#).await,
        Some(1.0)
    );
    assert!(sk.logs().contains(&log_id), "the log_id names a log event");

    // One webhook for the three 401s, signed, in Nango's shape, with no credential in it.
    wait_until("the webhook", Duration::from_secs(10), || {
        hooks.count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hook = hooks.only();
    assert_eq!(hook.uri.path(), "/nango");
    assert_eq!(hook.header("content-type"), Some("application/json"));
    let b = body_json(&hook);
    assert_eq!(
        b,
        json!({"from": "nango", "type": "auth", "operation": "refresh", "success": false,
            "connectionId": "c1", "providerConfigKey": "ik", "provider": "k",
            "authMode": "API_KEY", "environment": "prod", "tags": {},
            "error": {"type": "connection_test_failed",
                "description": "The API refused this connection's credentials (HTTP 401); reconnect it."}})
    );
    assert_eq!(
        hook.header("x-nango-hmac-sha256"),
        Some(sidekey::webhooks::sign::hmac_sha256_hex(SIGNING_KEY.as_bytes(), &hook.body).as_str())
    );
    let raw = String::from_utf8_lossy(&hook.body);
    assert!(!raw.contains(KEY_ONE));

    // 403 is an auth error only where the provider says so (k403), not for k.
    status.store(403, Ordering::SeqCst);
    assert_eq!(
        client.proxy(&sk.url(""), "/x", "c3", "ik").await.status,
        403
    );
    assert_eq!(
        client.proxy(&sk.url(""), "/x", "c2", "ik3").await.status,
        403
    );
    assert_eq!(ids(&listed(&sk, "?withError=true").await), ["c1", "c2"]);

    // The next 2xx clears c1.
    status.store(200, Ordering::SeqCst);
    assert_eq!(
        client.proxy(&sk.url(""), "/x", "c1", "ik").await.status,
        200
    );
    assert_eq!(ids(&listed(&sk, "?withError=true").await), ["c2"]);
    assert_eq!(
        metric(&sk, r#"sidekey_connection_auth_errors{integration="ik"}"#).await,
        Some(0.0)
    );

    // A new credential for c2 (a re-import) clears it, and announces an override.
    let auth = bearer();
    let res = client
        .send(
            "POST",
            &sk.url("/connections"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            json!({"provider_config_key": "ik3", "connection_id": "c2",
                "credentials": {"type": "API_KEY", "apiKey": KEY_NEW}})
            .to_string(),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    assert!(listed(&sk, "?withError=true").await.is_empty());
    wait_until("the override webhook", Duration::from_secs(10), || {
        hooks
            .requests()
            .iter()
            .any(|r| body_json(r)["operation"] == "override")
    })
    .await;
    let logs = sk.logs();
    for secret in [KEY_ONE, KEY_TWO, KEY_NEW, SIGNING_KEY] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        for r in hooks.requests() {
            assert!(!String::from_utf8_lossy(&r.body).contains(secret));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_sends_a_webhook_that_the_node_sdk_verifies() {
    let grant = Arc::new(AtomicU16::new(400));
    let token = {
        let grant = grant.clone();
        Upstream::start(Arc::new(move |_| {
            if grant.load(Ordering::SeqCst) == 200 {
                reply(
                    200,
                    r#"{"access_token":"at-new","refresh_token":"rt-new","expires_in":3600}"#,
                )
            } else {
                reply(400, r#"{"error":"invalid_grant"}"#)
            }
        }))
        .await
    };
    let api = Upstream::start(Arc::new(|_| reply(200, "{}"))).await;
    let hooks = receiver().await;
    let providers = format!(
        r#"oa: {{auth_mode: OAUTH2, token_url: "{}", proxy: {{base_url: "{}"}}}}"#,
        token.url("/token"),
        api.url("")
    );
    let expired = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 60)
        .expect("ts")
        .to_string();
    let vault = format!(
        "integrations:\n  - {{unique_key: io, provider: oa, credentials: {{oauth_client_id: cid, oauth_client_secret: csecret}}}}\nconnections:\n  - {{connection_id: o1, provider_config_key: io, credentials: {{type: OAUTH2, access_token: at-old, refresh_token: rt-old, expires_at: \"{expired}\"}}}}\n"
    );
    let app = test_app(&providers, &vault)
        .webhook_signing_key(SIGNING_KEY)
        .arg(format!("--webhook-url={}", hooks.url("/hooks")))
        .arg("--webhook-allow-private")
        .arg("--webhook-environment=dev")
        .arg("--refresh-cooldown=200ms")
        .start()
        .await;
    let client = TestClient::default();
    let res = client.proxy(&app.url(""), "/me", "o1", "io").await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert_eq!(res.error_code(), "credentials_refresh_failed");
    let with = listed(&app, "?withError=true").await;
    assert_eq!(ids(&with), ["o1"]);

    wait_until("the webhook", Duration::from_secs(10), || {
        hooks.count() >= 1
    })
    .await;
    let hook = hooks.only();
    let b = body_json(&hook);
    assert_eq!(b["operation"], "refresh");
    assert_eq!(b["success"], false);
    assert_eq!(b["environment"], "dev");
    assert_eq!(b["authMode"], "OAUTH2");
    assert_eq!(b["error"]["type"], "refresh_token_external_error");
    assert!(b["error"]["description"]
        .as_str()
        .expect("description")
        .contains("invalid_grant"));
    assert!(b.get("endUser").is_none(), "never on a refresh failure");
    for secret in ["at-old", "rt-old", "csecret"] {
        assert!(!String::from_utf8_lossy(&hook.body).contains(secret));
    }

    // Nango's SDK accepts both signatures, and refuses a body changed by one byte.
    assert_eq!(
        node_verify(SIGNING_KEY, &hook.body, &hook.headers),
        (true, true)
    );
    let mut tampered = hook.body.to_vec();
    let at = tampered.len() - 2;
    tampered[at] = b'X';
    assert!(!node_verify(SIGNING_KEY, &tampered, &hook.headers).0);
    assert!(!node_verify("another-key", &hook.body, &hook.headers).0);

    // After the cool-down a successful refresh clears the error.
    grant.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = client.proxy(&app.url(""), "/me", "o1", "io").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(listed(&app, "?withError=true").await.is_empty());
    app.stop().await;
}

/// The outbox file of a sidekey started in `dir`.
fn outbox(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("vault.yaml.outbox")).unwrap_or_default()
}

fn start_binary(dir: tempfile::TempDir, api: &str, hook: SocketAddr) -> Sidekey {
    sidekey(&providers(api), VAULT)
        .in_dir(dir)
        .env("SIDEKEY_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
        .arg(format!("--webhook-url=http://{hook}/hooks"))
        .arg("--webhook-allow-private")
        .arg("--webhook-retry-base=100ms")
        .arg("--webhook-retry-max=300ms")
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_webhook_survives_kill_9_and_is_delivered_once_after_restart() {
    let status = Arc::new(AtomicU16::new(401));
    let api = Upstream::start(switchable(status.clone())).await;
    // A port for the receiver, which is down for now.
    let hook_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut sk = start_binary(tempfile::tempdir().expect("dir"), &api.url(""), hook_addr);
    let client = TestClient::default();
    assert_eq!(
        client.proxy(&sk.url(""), "/x", "c1", "ik").await.status,
        401
    );
    assert!(sk.wait_for_log("webhook events committed", Duration::from_secs(10)));
    assert!(outbox(sk.dir()).contains(r#"\"connectionId\":\"c1\""#));
    // It is being retried against the closed port.
    assert!(sk.wait_for_log("will retry", Duration::from_secs(10)));

    let dir = sk.take_dir();
    sk.signal("KILL");
    assert_eq!(
        sk.wait_exit(Duration::from_secs(5)),
        None,
        "killed by a signal"
    );
    drop(sk);

    let hooks = Upstream::start_on(hook_addr, Arc::new(|_| reply(200, "ok"))).await;
    let mut sk = start_binary(dir, &api.url(""), hook_addr);
    wait_until("the redelivery", Duration::from_secs(10), || {
        hooks.count() >= 1
    })
    .await;
    let b = body_json(&hooks.requests()[0]);
    assert_eq!(
        (b["connectionId"].as_str(), b["operation"].as_str()),
        (Some("c1"), Some("refresh"))
    );
    assert!(sk.wait_for_log("webhook delivered", Duration::from_secs(5)));

    // Delivered means removed: neither this process nor the next sends it again.
    let dir = sk.take_dir();
    sk.signal("TERM");
    assert_eq!(sk.wait_exit(Duration::from_secs(10)), Some(0));
    drop(sk);
    let sk = start_binary(dir, &api.url(""), hook_addr);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hooks.count(), 1, "{:#?}", hooks.requests());
    assert!(!sk.logs().contains("left from an earlier run"));
}

#[test]
fn webhook_urls_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("providers.yaml"),
        providers("http://api.test"),
    )
    .expect("w");
    std::fs::write(dir.path().join("vault.yaml"), VAULT).expect("w");
    let base = [
        "serve",
        "--listen=127.0.0.1:0",
        "--admin-listen=127.0.0.1:0",
        "--providers=providers.yaml",
        "--vault=vault.yaml",
    ];
    let key = [("SIDEKEY_WEBHOOK_SIGNING_KEY", SIGNING_KEY)];
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        run_cli_env(&args, dir.path(), env)
    };
    let (code, _, err) = run(&["--webhook-url=http://127.0.0.1:9/h"], &key);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--webhook-allow-private"), "{err}");
    let (code, _, err) = run(&["--webhook-url=http://169.254.169.254/latest"], &key);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(&["--webhook-url=https://hooks.example.com/h"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SIDEKEY_WEBHOOK_SIGNING_KEY"), "{err}");
    assert!(!dir.path().join("vault.yaml.outbox").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_announces_creation_then_override_and_honours_the_override_url() {
    let api = Upstream::start(Arc::new(|_| reply(200, "{}"))).await;
    let main_hooks = receiver().await;
    // The override's receiver refuses with 400: final, not retried.
    let other_hooks = Upstream::start(Arc::new(|_| reply(400, "no"))).await;
    let app = test_app(&providers(&api.url("")), VAULT)
        .webhook_signing_key(SIGNING_KEY)
        .arg(format!("--webhook-url={}", main_hooks.url("/main")))
        .arg("--webhook-allow-private")
        .arg("--webhook-retry-base=50ms")
        .start()
        .await;
    let client = TestClient::default();
    let auth = bearer();
    let post = |body: Value| {
        let (client, auth, url) = (&client, auth.clone(), app.url("/connections"));
        async move {
            client
                .send(
                    "POST",
                    &url,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    body.to_string(),
                )
                .await
        }
    };
    let res = post(json!({"provider_config_key": "ik", "connection_id": "n1",
        "webhook_url_override": other_hooks.url("/other"),
        "credentials": {"type": "API_KEY", "apiKey": KEY_NEW}}))
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let res = post(json!({"provider_config_key": "ik", "connection_id": "n1",
        "credentials": {"type": "API_KEY", "apiKey": KEY_NEW}}))
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    wait_until("both webhooks", Duration::from_secs(10), || {
        other_hooks.count() >= 1 && main_hooks.count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let created = body_json(&other_hooks.only());
    assert_eq!(
        (created["operation"].as_str(), created["success"].as_bool()),
        (Some("creation"), Some(true))
    );
    assert_eq!(created["connectionId"], "n1");
    let overridden = body_json(&main_hooks.only());
    assert_eq!(overridden["operation"], "override");
    assert!(overridden.get("error").is_none());
    assert_eq!(
        metric(&app, r#"sidekey_webhook_deliveries_total{result="failed"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &app,
            r#"sidekey_webhook_deliveries_total{result="delivered"}"#
        )
        .await,
        Some(1.0)
    );
    app.stop().await;
}

/// A connection's own `webhook_url_override` is kept on it: shown by `GET /connections/{id}`,
/// it receives the connection's later webhooks (an auth error found by the proxy), and a PATCH
/// with `""` clears it, after which they go to `--webhook-url`.
#[tokio::test]
async fn a_connections_webhook_url_override_receives_its_later_webhooks() {
    let status = Arc::new(AtomicU16::new(401));
    let api = Upstream::start(switchable(status.clone())).await;
    let main_hooks = receiver().await;
    let own_hooks = receiver().await;
    let app = test_app(&providers(&api.url("")), VAULT)
        .webhook_signing_key(SIGNING_KEY)
        .arg(format!("--webhook-url={}", main_hooks.url("/main")))
        .arg("--webhook-allow-private")
        .start()
        .await;
    let client = TestClient::default();
    let auth = bearer();
    let send = |method: &'static str, path: String, body: Value| {
        let (client, auth, url) = (&client, auth.clone(), app.url(&path));
        async move {
            client
                .send(
                    method,
                    &url,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    body.to_string(),
                )
                .await
        }
    };
    let own = own_hooks.url("/own");
    let res = send(
        "POST",
        "/connections".into(),
        json!({"provider_config_key": "ik", "connection_id": "w1", "webhook_url_override": own,
            "credentials": {"type": "API_KEY", "apiKey": KEY_NEW}}),
    )
    .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let shown = get(&app, "/connections/w1?provider_config_key=ik").await;
    assert_eq!(shown.json()["webhook_url_override"], own.as_str());
    wait_until("the creation webhook", Duration::from_secs(10), || {
        own_hooks.count() >= 1
    })
    .await;
    // The API refuses the key: the auth error's webhook goes to the connection's own URL.
    let proxied = |id: &'static str| {
        let (client, auth, url) = (&client, auth.clone(), app.url("/proxy/x"));
        async move {
            client
                .send(
                    "GET",
                    &url,
                    &[
                        ("authorization", &auth),
                        ("connection-id", id),
                        ("provider-config-key", "ik"),
                    ],
                    Bytes::new(),
                )
                .await
        }
    };
    assert_eq!(proxied("w1").await.status, 401);
    wait_until("the refresh webhook", Duration::from_secs(10), || {
        own_hooks.count() >= 2
    })
    .await;
    let refused = body_json(&own_hooks.requests()[1]);
    assert_eq!(
        (refused["operation"].as_str(), refused["success"].as_bool()),
        (Some("refresh"), Some(false))
    );
    assert_eq!(main_hooks.count(), 0, "nothing to --webhook-url yet");
    // Cleared by a PATCH with "": the next error goes to --webhook-url.
    let res = send(
        "PATCH",
        "/connections/w1?provider_config_key=ik".into(),
        json!({"webhook_url_override": ""}),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let shown = get(&app, "/connections/w1?provider_config_key=ik").await;
    assert_eq!(shown.json()["webhook_url_override"], Value::Null);
    status.store(200, Ordering::SeqCst);
    assert_eq!(proxied("w1").await.status, 200); // clears the error
    status.store(401, Ordering::SeqCst);
    assert_eq!(proxied("w1").await.status, 401);
    wait_until("the default URL's webhook", Duration::from_secs(10), || {
        main_hooks.count() >= 1
    })
    .await;
    assert_eq!(own_hooks.count(), 2);
    app.stop().await;
}
