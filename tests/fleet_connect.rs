//! Connect across a fleet on one PostgreSQL store, and the store's migrations: the real binary,
//! replicas on a private cluster (tests/support/pg.rs), driven over HTTP on 127.0.0.1.
//!
//! - A connect session made through replica A works through replica B's public listener:
//!   `GET`/`DELETE /connect/session`, API-key submission, the OAuth start on one replica and
//!   the provider's callback on the other. Attempts made at once on both replicas are counted
//!   once each; an OAuth `state` is used once across the fleet; only token digests are stored.
//!   With PostgreSQL stopped, the Connect routes answer 503 `store_unavailable`.
//! - A webhook event committed by a replica that is then killed with `kill -9` in the middle of
//!   its delivery is delivered by the other replica, and by it only once, never while the
//!   first still held it (and the other does not spin meanwhile). A refused attempt is retried
//!   from the table after its backoff, and not sent again once delivered.
//! - `sidekey migrate` on a database at schema version 1 holding rows brings it to the current
//!   schema (the same as a fresh one) and keeps the rows; several `migrate` at once all succeed.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use support::client::{TestClient, TestResponse, AUTH};
use support::pg::Pg;
use support::sidekey::{sidekey, Sidekey};
use support::upstream::{reply, Upstream};

const KEY: &str = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";
const GOOD_KEY: &str = "sk_end_user_good_fleet_0123";
const SIGNING_KEY: &str = "whsec-fleet-0123456789abcdef";

/// `keyed` (API key checked on `/me`), `plain` (an API key nothing checks) and `oauthp`
/// (OAuth2 with its authorization and token endpoints), all on `api.test`, which `--resolve` points at the loopback upstream.
fn providers(port: u16) -> String {
    format!(
        r#"
keyed:
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}
    headers: {{x-api-key: "${{apiKey}}"}}
    verification: {{endpoints: [/me]}}
plain:
  auth_mode: API_KEY
  proxy:
    base_url: http://api.test:{port}
    headers: {{x-api-key: "${{apiKey}}"}}
oauthp:
  auth_mode: OAUTH2
  authorization_url: http://api.test:{port}/authorize
  token_url: http://api.test:{port}/token
  proxy: {{base_url: "http://api.test:{port}"}}
"#
    )
}

fn replica(pg: &Pg, port: u16, extra: &[String]) -> Sidekey {
    sidekey(&providers(port), "")
        .env("RUST_LOG", "info,sidekey::store=debug")
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .arg(format!("--store={}", pg.url()))
        .arg("--connect-listen=127.0.0.1:0")
        .arg(format!("--resolve=api.test:{port}:127.0.0.1"))
        .args(extra.iter().cloned())
        .start()
}

/// The public (Connect) listener of a replica, from its "sidekey is serving" line.
fn connect_addr(s: &Sidekey) -> std::net::SocketAddr {
    s.logs()
        .lines()
        .filter(|l| l.contains("sidekey is serving"))
        .find_map(|l| {
            serde_json::from_str::<Value>(l).ok()?["connect"]
                .as_str()
                .and_then(|a| a.parse().ok())
        })
        .expect("the replica has a connect listener")
}

fn connect_url(s: &Sidekey, path: &str) -> String {
    format!("http://{}{path}", connect_addr(s))
}

/// The frontend SDK's WebSocket over a raw socket: the handshake, then unmasked server text
/// frames (as in tests/connect.rs).
struct Ws {
    stream: tokio::net::TcpStream,
}

impl Ws {
    async fn open(addr: std::net::SocketAddr) -> Self {
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
        Self { stream }
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

async fn send(c: &TestClient, method: &str, url: &str, bearer: &str, body: Value) -> TestResponse {
    let auth = format!("Bearer {bearer}");
    let mut headers = vec![("content-type", "application/json")];
    if !bearer.is_empty() {
        headers.push(("authorization", auth.as_str()));
    }
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    c.send(method, url, &headers, body).await
}

fn caller() -> &'static str {
    AUTH.trim_start_matches("Bearer ")
}

async fn new_session(c: &TestClient, on: &Sidekey, body: Value) -> String {
    let r = send(c, "POST", &on.url("/connect/sessions"), caller(), body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_string()
}

async fn api_key(c: &TestClient, on: &Sidekey, token: &str, key: &str) -> TestResponse {
    let url = connect_url(
        on,
        &format!("/api-auth/api-key/keyed?connect_session_token={token}"),
    );
    send(c, "POST", &url, "", json!({ "apiKey": key })).await
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Both integrations, made through `a` and waited for on `others`.
async fn integrations(c: &TestClient, a: &Sidekey, others: &[&Sidekey]) {
    for body in [
        json!({"provider": "keyed", "unique_key": "keyed"}),
        json!({"provider": "oauthp", "unique_key": "oauthi",
               "credentials": {"type": "OAUTH2", "client_id": "cid-1", "client_secret": "csecret-1"}}),
    ] {
        let r = send(c, "POST", &a.url("/integrations"), caller(), body).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for o in others {
        wait_for(
            "the integrations on another replica",
            Duration::from_secs(10),
            async || {
                let r = send(c, "GET", &o.url("/integrations"), caller(), Value::Null).await;
                r.text().contains("oauthi") && r.text().contains("\"keyed\"")
            },
        )
        .await;
    }
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

fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find_map(|(k, v)| (k == name).then(|| v.clone()))
}

/// The verification and token endpoint: `/me` accepts [`GOOD_KEY`], `/token` grants the code
/// `good-code` (with a PKCE verifier, which it records).
async fn provider(verifiers: Arc<Mutex<Vec<String>>>) -> Upstream {
    Upstream::start(Arc::new(move |r: &support::upstream::Recorded| {
        if r.uri.path() == "/token" {
            let form = String::from_utf8_lossy(&r.body).to_string();
            let pairs = query_of(&format!("?{form}"));
            if let Some(v) = param(&pairs, "code_verifier") {
                verifiers.lock().expect("lock").push(v);
            }
            return if param(&pairs, "code").as_deref() == Some("good-code") {
                let mut res = reply(
                    200,
                    r#"{"access_token":"at-fleet","refresh_token":"rt-fleet","expires_in":3600}"#,
                );
                res.headers_mut()
                    .insert("content-type", "application/json".parse().expect("value"));
                res
            } else {
                reply(400, r#"{"error":"invalid_grant"}"#)
            };
        }
        if r.header("x-api-key") == Some(GOOD_KEY) {
            reply(200, r#"{"me":true}"#)
        } else {
            reply(401, r#"{"error":"bad key"}"#)
        }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_replica_works_on_another() {
    let pg = Pg::start();
    let verifiers = Arc::new(Mutex::new(Vec::new()));
    let up = provider(verifiers.clone()).await;
    let max = ["--connect-max-attempts=4".to_string()];
    let a = replica(&pg, up.port(), &max);
    let b = replica(&pg, up.port(), &max);
    let c = TestClient::http1();
    integrations(&c, &a, &[&b]).await;

    // Made on A, read on B's public listener.
    let token = new_session(
        &c,
        &a,
        json!({"end_user": {"id": "u-42", "email": "ada@example.com"}, "allowed_integrations": ["keyed", "oauthi"]}),
    )
    .await;
    let r = send(
        &c,
        "GET",
        &connect_url(&b, "/connect/session"),
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["endUser"]["id"], "u-42");

    // Only the token's SHA-256 is stored.
    let rows = pg.psql("SELECT token_sha256 FROM sidekey_connect_sessions");
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    assert_eq!(rows.trim(), digest);
    assert!(!pg.dump().contains(&token), "a session token in pg_dump");

    // An API key submitted on B: verified, written, seen on A with the session's end user.
    let r = api_key(&c, &b, &token, GOOD_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["connectionId"].as_str().expect("id").to_string();
    wait_for("the connection on A", Duration::from_secs(10), async || {
        let r = send(&c, "GET", &a.url("/connections"), caller(), Value::Null).await;
        r.json()["connections"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x["connection_id"] == id && x["end_user"]["id"] == "u-42")
        })
    })
    .await;

    // The frontend SDK's socket is on B; the OAuth flow starts on A and the provider sends
    // the browser back to B, then (second flow) to A: B's socket hears both outcomes.
    let mut ws = Ws::open(connect_addr(&b)).await;
    let ack = ws.next().await;
    let ws_id = ack["ws_client_id"]
        .as_str()
        .expect("ws_client_id")
        .to_string();
    assert!(
        b.wait_for_log(
            "listening for relayed WebSocket messages",
            Duration::from_secs(10)
        ),
        "{}",
        b.logs()
    );
    let start = connect_url(
        &a,
        &format!("/oauth/connect/oauthi?connect_session_token={token}&ws_client_id={ws_id}"),
    );
    let r = c.send("GET", &start, &[], Bytes::new()).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").expect("location").to_string();
    let state = param(&query_of(&location), "state").expect("state");
    let callback =
        |on: &Sidekey| connect_url(on, &format!("/oauth/callback?code=good-code&state={state}"));
    let r = c.send("GET", &callback(&b), &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains(r#"data-outcome="success""#),
        "{}",
        r.text()
    );
    let msg = ws.next().await;
    assert_eq!(
        (
            msg["message_type"].as_str(),
            msg["provider_config_key"].as_str()
        ),
        (Some("success"), Some("oauthi")),
        "{msg}"
    );
    let r = c.send("GET", &start, &[], Bytes::new()).await;
    let second = param(&query_of(r.header("location").expect("location")), "state").expect("state");
    let url = connect_url(&a, &format!("/oauth/callback?code=bad-code&state={second}"));
    let r = c.send("GET", &url, &[], Bytes::new()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = ws.next().await;
    assert_eq!(
        (msg["message_type"].as_str(), msg["error_type"].as_str()),
        (Some("error"), Some("token_err")),
        "relayed from A: {msg}"
    );
    // The state was used: not again, on either replica.
    for on in [&a, &b] {
        let r = c.send("GET", &callback(on), &[], Bytes::new()).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("state_err"), "{}", r.text());
    }
    // One state brought back to both replicas at once: exactly one of them takes it.
    let r = c.send("GET", &start, &[], Bytes::new()).await;
    let third = param(&query_of(r.header("location").expect("location")), "state").expect("state");
    let tokens_before = up
        .requests()
        .iter()
        .filter(|r| r.uri.path() == "/token")
        .count();
    let mut both = Vec::new();
    for on in [&a, &b] {
        let (c, url) = (
            c.clone(),
            connect_url(on, &format!("/oauth/callback?code=good-code&state={third}")),
        );
        both.push(tokio::spawn(async move {
            c.send("GET", &url, &[], Bytes::new()).await.status
        }));
    }
    let mut statuses = Vec::new();
    for t in both {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400]);
    let tokens_after = up
        .requests()
        .iter()
        .filter(|r| r.uri.path() == "/token")
        .count();
    assert_eq!(tokens_after - tokens_before, 1, "one token exchange");
    assert_eq!(ws.next().await["message_type"], "success");
    let verifier = verifiers
        .lock()
        .expect("lock")
        .first()
        .cloned()
        .expect("PKCE verifier");
    let dump = pg.dump();
    assert!(!dump.contains(&state), "an OAuth state in pg_dump");
    assert!(!dump.contains(&verifier), "a PKCE verifier in pg_dump");
    wait_for(
        "the OAuth connection on A",
        Duration::from_secs(10),
        async || {
            let r = send(&c, "GET", &a.url("/connections"), caller(), Value::Null).await;
            r.json()["connections"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["provider_config_key"] == "oauthi"))
        },
    )
    .await;

    // Every field of a session survives the database: made on A, shown by B.
    let full = new_session(
        &c,
        &a,
        json!({
            "end_user": {"id": "u-9", "email": "x@example.com", "display_name": "X", "tags": {"plan": "pro"}},
            "organization": {"id": "org-1", "display_name": "Acme"},
            "allowed_integrations": ["keyed"],
            "integrations_config_defaults": {"keyed": {"connection_config": {"region": "eu"}}},
            "webhook_url_override": "https://hooks.example.com/x",
        }),
    )
    .await;
    let r = send(
        &c,
        "GET",
        &connect_url(&b, "/connect/session"),
        &full,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &r.json()["data"];
    assert_eq!(d["endUser"]["email"], "x@example.com", "{d}");
    assert_eq!(d["endUser"]["organization"]["id"], "org-1", "{d}");
    assert_eq!(d["endUser"]["tags"]["plan"], "pro", "{d}");
    assert_eq!(d["allowed_integrations"], json!(["keyed"]), "{d}");
    assert_eq!(
        d["integrations_config_defaults"]["keyed"]["connection_config"]["region"], "eu",
        "{d}"
    );
    assert_eq!(d["isReconnecting"], false, "{d}");
    // A reconnect session made on A re-authorizes the connection through a replica started
    // after it was made, which holds no connection until one is named (its bounded cache).
    let fresh = replica(&pg, up.port(), &max);
    let r = send(
        &c,
        "POST",
        &a.url("/connect/sessions/reconnect"),
        caller(),
        json!({"connection_id": id, "integration_id": "keyed"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let again = r.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = send(
        &c,
        "GET",
        &connect_url(&fresh, "/connect/session"),
        &again,
        Value::Null,
    )
    .await;
    assert_eq!(r.json()["data"]["isReconnecting"], true, "{}", r.text());
    let r = api_key(&c, &fresh, &again, GOOD_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["connectionId"], id.as_str(), "the same connection");

    // Deleted on B: gone on A at once.
    let r = send(
        &c,
        "DELETE",
        &connect_url(&b, "/connect/session"),
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = send(
        &c,
        "GET",
        &connect_url(&a, "/connect/session"),
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.error_code(), "unknown_connect_session_token");

    // Attempts made at once on both replicas share one count: with 4 allowed, of 10 refused
    // keys exactly 4 are tested (400) and 6 are over the limit (429). Counted per replica,
    // 8 would have been tested.
    let token = new_session(&c, &a, json!({"tags": {"t": "x"}})).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (c, token) = (c.clone(), token.clone());
        let url = connect_url(
            if i % 2 == 0 { &a } else { &b },
            &format!("/api-auth/api-key/keyed?connect_session_token={token}"),
        );
        tasks.push(tokio::spawn(async move {
            send(&c, "POST", &url, "", json!({"apiKey": "wrong"}))
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [400, 400, 400, 400, 429, 429, 429, 429, 429, 429]);

    // Expiry is the database's clock: a session past its time is unknown on every replica.
    let expiring = new_session(&c, &b, json!({"tags": {"t": "y"}})).await;
    let url = |on: &Sidekey| connect_url(on, "/connect/session");
    let r = send(&c, "GET", &url(&a), &expiring, Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    pg.psql(&format!(
        "UPDATE sidekey_connect_sessions SET expires_at = now() - interval '1 second'
         WHERE token_sha256 = '{}'",
        hex::encode(sha2::Sha256::digest(expiring.as_bytes()))
    ));
    for on in [&a, &b] {
        let r = send(&c, "GET", &url(on), &expiring, Value::Null).await;
        assert_eq!(
            r.error_code(),
            "unknown_connect_session_token",
            "{}",
            r.text()
        );
    }

    // PostgreSQL stopped: the Connect routes answer 503 store_unavailable, never a panic.
    pg.stop();
    let r = send(
        &c,
        "GET",
        &connect_url(&b, "/connect/session"),
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_unavailable", "{}", r.text());
    println!("with PostgreSQL stopped: {}", r.text());
    assert!(
        !r.text().contains(&pg.url()) && !r.text().contains(&token),
        "{}",
        r.text()
    );
    let r = send(
        &c,
        "POST",
        &a.url("/connect/sessions"),
        caller(),
        json!({"tags": {"t": "x"}}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_unavailable", "{}", r.text());
    let r = api_key(&c, &a, &token, GOOD_KEY).await;
    assert_eq!(r.error_code(), "store_unavailable", "{}", r.text());
    let r = c.send("GET", &callback(&a), &[], Bytes::new()).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("store_unavailable"), "{}", r.text());
    for s in [&a, &b] {
        let logs = s.logs();
        for secret in [&token, &full, &again, &state, &verifier, GOOD_KEY] {
            assert!(!logs.contains(secret), "a secret in the logs");
        }
        assert!(!s.logs().contains("panicked"), "{}", s.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_killed_replica_is_delivered_by_another() {
    let pg = Pg::start();
    // One upstream: the key check (`/me`) and the webhook receiver (`/hook`), whose first
    // request hangs (the replica delivering it is killed meanwhile) and the later ones answer
    // 200. Every webhook body is recorded with its arrival.
    let hooks: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (h2, c2) = (hooks.clone(), calls.clone());
    let up = Upstream::start_raw(Arc::new(move |r: http::Request<hyper::body::Incoming>| {
        let (hooks, calls) = (h2.clone(), c2.clone());
        Box::pin(async move {
            if r.uri().path() != "/hook" {
                let ok = r
                    .headers()
                    .get("x-api-key")
                    .is_some_and(|v| v.as_bytes() == GOOD_KEY.as_bytes());
                return reply(if ok { 200 } else { 401 }, "{}");
            }
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            hooks
                .lock()
                .expect("lock")
                .push((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            reply(200, "ok")
        })
    }))
    .await;
    let hook_args = [
        format!("--webhook-url=http://127.0.0.1:{}/hook", up.port()),
        "--webhook-allow-private".to_string(),
    ];
    let start = |pg: &Pg| {
        sidekey(&providers(up.port()), "")
            .env("RUST_LOG", "info,sidekey::webhooks=debug")
            .env("SIDEKEY_ENCRYPTION_KEY", KEY)
            .env("SIDEKEY_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
            .arg(format!("--store={}", pg.url()))
            .arg("--connect-listen=127.0.0.1:0")
            .arg(format!("--resolve=api.test:{}:127.0.0.1", up.port()))
            .args(hook_args.iter().cloned())
            .start()
    };
    // A alone: it commits the creation event and is the one delivering it (B does not run
    // yet, so it cannot claim the event first).
    let mut a = start(&pg);
    let c = TestClient::http1();
    integrations(&c, &a, &[]).await;
    let token = new_session(&c, &a, json!({"end_user": {"id": "u-7"}})).await;
    let r = api_key(&c, &a, &token, GOOD_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["connectionId"].as_str().expect("id").to_string();
    wait_for(
        "A's delivery attempt",
        Duration::from_secs(10),
        async || calls.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(
        pg.psql("SELECT count(*) FROM sidekey_webhook_outbox WHERE delivered_at IS NULL")
            .trim(),
        "1"
    );

    // B starts and looks for due events every second, but A holds this one.
    let b = start(&pg);
    let xacts = || {
        pg.psql(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'sidekey'",
        )
        .trim()
        .parse::<i64>()
        .expect("a count")
    };
    let before = xacts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "B sent the event A was sending"
    );
    // B looks about once a second; it does not spin on the event A holds.
    let spent = xacts() - before;
    println!("transactions while A held the event: {spent}");
    assert!(
        spent < 100,
        "{spent} transactions in 3 s: B polls in a loop"
    );

    // Taken before the signal: B may deliver before `kill` returns.
    let killed = Instant::now();
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(5));
    wait_for("B's delivery", Duration::from_secs(10), async || {
        calls.load(Ordering::SeqCst) >= 2
    })
    .await;
    println!("delivered by B {:?} after A's kill -9", killed.elapsed());
    // Once, and finished in the outbox.
    wait_for(
        "the delivery recorded",
        Duration::from_secs(10),
        async || {
            pg.psql("SELECT count(*) FROM sidekey_webhook_outbox WHERE delivered_at IS NOT NULL")
                .trim()
                == "1"
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = hooks.lock().expect("lock").clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1, got[1].1, "the same event");
    assert!(got[1].0 >= killed, "B delivered only after A was gone");
    let body: Value = serde_json::from_str(&got[1].1).expect("JSON body");
    assert_eq!(body["operation"], "creation");
    assert_eq!(body["connectionId"], id);
    assert_eq!(body["endUser"]["endUserId"], "u-7", "{body}");
    assert_eq!(
        pg.psql("SELECT attempts FROM sidekey_webhook_outbox")
            .trim(),
        "1",
        "A's attempt never finished"
    );
    assert!(b.logs().contains("webhook delivered"), "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_attempt_is_retried_from_the_table_with_its_backoff() {
    let pg = Pg::start();
    // The receiver answers 503 twice, then 200.
    let hooks: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let h2 = hooks.clone();
    let up = Upstream::start_raw(Arc::new(move |r: http::Request<hyper::body::Incoming>| {
        let hooks = h2.clone();
        Box::pin(async move {
            if r.uri().path() != "/hook" {
                let ok = r
                    .headers()
                    .get("x-api-key")
                    .is_some_and(|v| v.as_bytes() == GOOD_KEY.as_bytes());
                return reply(if ok { 200 } else { 401 }, "{}");
            }
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut h = hooks.lock().expect("lock");
            h.push((Instant::now(), String::from_utf8_lossy(&body).into_owned()));
            reply(if h.len() <= 2 { 503 } else { 200 }, "ok")
        })
    }))
    .await;
    let a = sidekey(&providers(up.port()), "")
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .env("SIDEKEY_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
        .arg(format!("--store={}", pg.url()))
        .arg(format!("--resolve=api.test:{}:127.0.0.1", up.port()))
        .arg(format!("--webhook-url=http://127.0.0.1:{}/hook", up.port()))
        .arg("--webhook-allow-private")
        .arg("--webhook-retry-base=300ms")
        .start();
    let c = TestClient::http1();
    integrations(&c, &a, &[]).await;
    let token = new_session(&c, &a, json!({"tags": {"t": "x"}})).await;
    let url = a.url(&format!(
        "/api-auth/api-key/keyed?connect_session_token={token}"
    ));
    let r = send(&c, "POST", &url, "", json!({ "apiKey": GOOD_KEY })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("three attempts", Duration::from_secs(15), async || {
        hooks.lock().expect("lock").len() >= 3
    })
    .await;
    wait_for(
        "the delivery recorded",
        Duration::from_secs(10),
        async || {
            pg.psql("SELECT attempts FROM sidekey_webhook_outbox WHERE delivered_at IS NOT NULL")
                .trim()
                == "3"
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hooks.lock().expect("lock").clone();
    assert_eq!(got.len(), 3, "not sent again once delivered");
    assert!(
        got.iter().all(|h| h.1 == got[0].1),
        "the same body each time"
    );
    // 300 ms, then 600 ms: the backoff the table keeps (next_attempt_at).
    let gaps = [got[1].0 - got[0].0, got[2].0 - got[1].0];
    println!("retry gaps: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(290), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(590), "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raised_while_postgres_is_down_is_committed_when_it_is_back() {
    let pg = Pg::start();
    let hooks: Arc<Mutex<Vec<String>>> = Arc::default();
    let h2 = hooks.clone();
    let up = Upstream::start_raw(Arc::new(move |r: http::Request<hyper::body::Incoming>| {
        let hooks = h2.clone();
        Box::pin(async move {
            if r.uri().path() != "/hook" {
                return reply(401, "{}");
            }
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            hooks
                .lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&body).into_owned());
            reply(200, "ok")
        })
    }))
    .await;
    let a = sidekey(&providers(up.port()), "")
        .env("RUST_LOG", "info,sidekey::webhooks=debug")
        .env("SIDEKEY_ENCRYPTION_KEY", KEY)
        .env("SIDEKEY_WEBHOOK_SIGNING_KEY", SIGNING_KEY)
        .arg(format!("--store={}", pg.url()))
        .arg(format!("--resolve=api.test:{}:127.0.0.1", up.port()))
        .arg(format!("--webhook-url=http://127.0.0.1:{}/hook", up.port()))
        .arg("--webhook-allow-private")
        .start();
    let c = TestClient::http1();
    let r = send(
        &c,
        "POST",
        &a.url("/integrations"),
        caller(),
        json!({"provider": "plain", "unique_key": "plain"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        &c,
        "POST",
        &a.url("/connections"),
        caller(),
        json!({"provider_config_key": "plain", "connection_id": "p1",
               "credentials": {"type": "API_KEY", "apiKey": "a-key-the-api-refuses"}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The import's own `creation` event first, while the database is up.
    wait_for("the creation event", Duration::from_secs(10), async || {
        hooks.lock().expect("lock").len() == 1
    })
    .await;
    // The database goes; the API refuses the cached connection's key: an auth event.
    pg.stop();
    let res = c.proxy(&a.url(""), "/x", "p1", "plain").await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(
        a.wait_for_log("cannot commit webhook events yet", Duration::from_secs(10)),
        "{}",
        a.logs()
    );
    assert_eq!(hooks.lock().expect("lock").len(), 1);
    pg.restart();
    wait_for(
        "the event after the outage",
        Duration::from_secs(30),
        async || hooks.lock().expect("lock").len() == 2,
    )
    .await;
    let body: Value = serde_json::from_str(&hooks.lock().expect("lock")[1]).expect("JSON");
    assert_eq!(
        (body["operation"].as_str(), body["success"].as_bool()),
        (Some("refresh"), Some(false)),
        "{body}"
    );
    assert_eq!(body["connectionId"], "p1");
    assert!(!a.logs().contains("they are lost"), "{}", a.logs());
}

/// Columns and indexes of the `sidekey_*` tables of database `db` (not the migrations' own
/// table), one line each, sorted.
fn schema_of(pg: &Pg, db: &str) -> String {
    pg.psql_db(
        db,
        "SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
           SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
                  || ' ' || coalesce(column_default, '') AS x
           FROM information_schema.columns
           WHERE table_name LIKE 'sidekey%' AND table_name <> 'sidekey_schema_migrations'
           UNION ALL
           SELECT indexdef FROM pg_indexes
           WHERE tablename LIKE 'sidekey%' AND tablename <> 'sidekey_schema_migrations'
         ) s",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_upgrades_a_version_1_schema_and_keeps_its_rows() {
    use sidekey::store::postgres::schema::{latest, MIGRATIONS};
    let pg = Pg::start();
    let up = provider(Arc::default()).await;
    let c = TestClient::http1();
    // Rows written by sidekey: an integration, a connection (sealed), a connect session.
    let a = replica(&pg, up.port(), &[]);
    integrations(&c, &a, &[]).await;
    let r = send(
        &c,
        "POST",
        &a.url("/connections"),
        caller(),
        json!({"provider_config_key": "keyed", "connection_id": "old-1",
               "credentials": {"type": "API_KEY", "apiKey": GOOD_KEY}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = new_session(&c, &a, json!({"end_user": {"id": "u-old"}})).await;
    drop(a);

    // Back to version 1: what migrations 2 and 3 added goes, the rows stay. That this is
    // version 1 is checked against a database made by migration 1 alone.
    pg.psql(
        "DROP INDEX sidekey_connections_newest;
         DROP TABLE sidekey_oauth_states;
         ALTER TABLE sidekey_connect_sessions DROP COLUMN attempts;
         DELETE FROM sidekey_schema_migrations WHERE version > 1",
    );
    pg.psql_db("postgres", "CREATE DATABASE v1ref");
    pg.psql_db("v1ref", MIGRATIONS[0].1);
    assert_eq!(
        schema_of(&pg, "sidekey"),
        schema_of(&pg, "v1ref"),
        "not the version 1 schema"
    );
    assert!(latest() >= 2);

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("--store={}", pg.url());
    let (code, out, err) = support::sidekey::run_cli(&["migrate", &url], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("schema is at version {}", latest())),
        "{out}"
    );
    let versions = pg.psql(
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM sidekey_schema_migrations",
    );
    let all: Vec<String> = MIGRATIONS.iter().map(|m| m.0.to_string()).collect();
    assert_eq!(versions.trim(), all.join(","));
    // The same schema as a fresh database migrated by this binary.
    pg.psql_db("postgres", "CREATE DATABASE fresh");
    let fresh_url = format!("--store={}", pg.url().replace("/sidekey", "/fresh"));
    let (code, out, err) = support::sidekey::run_cli(&["migrate", &fresh_url], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(schema_of(&pg, "sidekey"), schema_of(&pg, "fresh"));

    // Served after the upgrade: the connection with its credential, the session.
    let b = replica(&pg, up.port(), &[]);
    let res = c.proxy(&b.url(""), "/me", "old-1", "keyed").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let r = send(
        &c,
        "GET",
        &connect_url(&b, "/connect/session"),
        &token,
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"]["endUser"]["id"], "u-old");
    let r = api_key(&c, &b, &token, GOOD_KEY).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn several_migrates_at_once_apply_each_migration_once() {
    let pg = Pg::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("--store={}", pg.url());
    // Started together on an empty database: without the advisory lock they would create the
    // same tables at once, and all but one would fail.
    let children: Vec<std::process::Child> = (0..4)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
                .args(["migrate", &url])
                .current_dir(dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn sidekey migrate")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = pg.psql("SELECT count(*), count(DISTINCT version) FROM sidekey_schema_migrations");
    let n = sidekey::store::postgres::schema::MIGRATIONS.len();
    assert_eq!(rows.trim(), format!("{n}|{n}"));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What a session in PostgreSQL costs against one in memory: `POST /connect/sessions` and
/// `GET /connect/session` on a replica of the store and on a vault-file sidekey, in
/// alternating rounds in the same minutes. Prints p50/p99 of each and their ratios:
/// `cargo test --test fleet_connect session_latency -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn session_latency_in_postgres_against_memory() {
    let pg = Pg::start();
    let up = provider(Arc::default()).await;
    let c = TestClient::http1();
    let p = replica(&pg, up.port(), &[]);
    integrations(&c, &p, &[]).await;
    let f = sidekey(
        &providers(up.port()),
        "integrations:\n  - {unique_key: keyed, provider: keyed}\nconnections: []\n",
    )
    .start();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let per: usize = std::env::var("PER_ROUND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // (create, read) latencies per mode.
    let mut lat: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    for round in 0..rounds * 2 {
        // Alternate which goes first, so neither always runs on the warmer machine.
        let (which, on) = if round % 2 == 0 { (0, &f) } else { (1, &p) };
        for _ in 0..per {
            let t = Instant::now();
            let token = new_session(&c, on, json!({"end_user": {"id": "u-1"}})).await;
            lat[which].0.push(t.elapsed());
            let t = Instant::now();
            let r = send(&c, "GET", &on.url("/connect/session"), &token, Value::Null).await;
            lat[which].1.push(t.elapsed());
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    for l in &mut lat {
        l.0.sort_unstable();
        l.1.sort_unstable();
    }
    for (name, i) in [("memory (vault file)", 0), ("postgres", 1)] {
        println!(
            "{name}: create p50 {:?} p99 {:?}; read p50 {:?} p99 {:?} ({} each)",
            percentile(&lat[i].0, 0.5),
            percentile(&lat[i].0, 0.99),
            percentile(&lat[i].1, 0.5),
            percentile(&lat[i].1, 0.99),
            lat[i].0.len()
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "postgres / memory: create p50 {:.2}x p99 {:.2}x; read p50 {:.2}x p99 {:.2}x",
        ratio(percentile(&lat[1].0, 0.5), percentile(&lat[0].0, 0.5)),
        ratio(percentile(&lat[1].0, 0.99), percentile(&lat[0].0, 0.99)),
        ratio(percentile(&lat[1].1, 0.5), percentile(&lat[0].1, 0.5)),
        ratio(percentile(&lat[1].1, 0.99), percentile(&lat[0].1, 0.99)),
    );
}
