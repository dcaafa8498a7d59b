//! Operations through the real binary: admin probes, Prometheus metrics that move with traffic,
//! the JSON access log, secret redaction across every output, graceful drain on SIGTERM, TLS on
//! the proxy listener with certificate reload, and the CLI's `--help` / `--version`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::ca::TestCa;
use support::client::{proxy_headers, TestClient, TestResponse};
use support::sidekey::{run_cli, sidekey, Sidekey};
use support::upstream::{ok_json, reply, RawHandler, Upstream};
use support::CALLER_KEY;

const SECRET: &str = "sk_live_ops_secret_value";

fn providers(base: &str) -> String {
    format!(
        r#"
hdr:
  auth_mode: API_KEY
  proxy: {{base_url: "{base}/api", headers: {{authorization: "Bearer ${{apiKey}}"}}}}
qry:
  auth_mode: API_KEY
  proxy: {{base_url: "{base}", query: {{api_key: "$<apiKey>"}}}}
"#
    )
}

fn vault() -> String {
    format!(
        r#"
integrations:
  - {{unique_key: hdr, provider: hdr}}
  - {{unique_key: qry, provider: qry}}
connections:
  - {{connection_id: c1, provider_config_key: hdr, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
  - {{connection_id: c1, provider_config_key: qry, credentials: {{type: API_KEY, apiKey: "{SECRET}"}}}}
"#
    )
}

/// An upstream that answers `200 slow ok` only once the test adds a permit to the gate.
fn gated_upstream_handler() -> (Arc<tokio::sync::Semaphore>, RawHandler) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let handler: RawHandler = Arc::new(move |_req| {
        let g = g.clone();
        Box::pin(async move {
            if let Ok(permit) = g.acquire().await {
                permit.forget();
            }
            reply(200, "slow ok")
        })
    });
    (gate, handler)
}

/// A request whose failure is a value, for requests a shutting-down sidekey may cut off.
async fn try_send(url: &str, headers: &[(&str, &str)]) -> Result<(StatusCode, Bytes), String> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = url.parse().map_err(|e| format!("{e}"))?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, body))
}

async fn get_admin(sk: &Sidekey, path: &str) -> TestResponse {
    TestClient::default()
        .send("GET", &sk.admin_url(path), &[], Bytes::new())
        .await
}

/// The value of one series (`name{labels}` exactly as printed, or a bare name).
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Polls /metrics until `name` has `want`; returns the last scrape.
async fn wait_series(sk: &Sidekey, name: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get_admin(sk, "/metrics").await.text();
        if series(&text, name) == Some(want) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The access log events so far, parsed.
fn access_events(sk: &Sidekey) -> Vec<serde_json::Value> {
    sk.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sidekey::access")
        .collect()
}

/// Waits until at least `n` access events were written.
async fn wait_access(sk: &Sidekey, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = access_events(sk);
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn probes_answer_and_sigint_exits_zero() {
    let up = Upstream::start(ok_json()).await;
    let mut sk = sidekey(&providers(&up.url("")), &vault()).start();
    let live = get_admin(&sk, "/live").await;
    assert_eq!(live.status, 200, "{}", live.text());
    assert_eq!(get_admin(&sk, "/ready").await.status, 200);
    let missing = get_admin(&sk, "/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "not_found");
    let post = TestClient::default()
        .send("POST", &sk.admin_url("/live"), &[], Bytes::new())
        .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let metrics = get_admin(&sk, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.contains("openmetrics-text")),
        "{:?}",
        metrics.headers
    );
    sk.signal("INT");
    assert_eq!(
        sk.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        sk.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let (gate, slow) = gated_upstream_handler();
    let slow_up = Upstream::start_raw(slow).await;
    let up = Upstream::start(ok_json()).await;
    let p = format!(
        "{}\nslow: {{auth_mode: API_KEY, proxy: {{base_url: \"{}\", headers: {{x-key: \"${{apiKey}}\"}}}}}}\n",
        providers(&up.url("")),
        slow_up.url("")
    );
    let v = format!(
        "{}  - {{connection_id: s, provider_config_key: slow, credentials: {{type: API_KEY, apiKey: x}}}}\n",
        vault().replace("connections:", "  - {unique_key: slow, provider: slow}\nconnections:")
    );
    let sk = sidekey(&p, &v).start();
    let before = get_admin(&sk, "/metrics").await.text();
    assert_eq!(
        series(&before, "sidekey_snapshot_generation"),
        Some(1.0),
        "{before}"
    );
    assert_eq!(series(&before, "sidekey_requests_in_flight"), Some(0.0));
    assert!(!before.contains("sidekey_requests_total{"), "{before}");

    let c = TestClient::default();
    for _ in 0..2 {
        assert_eq!(c.proxy(&sk.url(""), "/a", "c1", "hdr").await.status, 200);
    }
    assert_eq!(
        c.proxy(&sk.url(""), "/a", "nobody", "hdr").await.status,
        404
    );
    let attacker_named = c
        .proxy(&sk.url(""), "/a", "c1", "made-up-integration-42")
        .await;
    assert_eq!(attacker_named.status, 404);
    let post = c
        .send(
            "POST",
            &sk.url("/proxy/p"),
            &proxy_headers("c1", "qry"),
            "body",
        )
        .await;
    assert_eq!(post.status, 200);

    let text = wait_series(&sk, "sidekey_requests_in_flight", 0.0).await;
    let want = [
        (
            r#"sidekey_requests_total{integration="hdr",method="GET",status_class="2xx"}"#,
            2.0,
        ),
        (
            r#"sidekey_requests_total{integration="hdr",method="GET",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"sidekey_requests_total{integration="unknown",method="GET",status_class="4xx"}"#,
            1.0,
        ),
        (
            r#"sidekey_requests_total{integration="qry",method="POST",status_class="2xx"}"#,
            1.0,
        ),
        (
            r#"sidekey_upstream_latency_seconds_count{integration="hdr"}"#,
            2.0,
        ),
        (
            r#"sidekey_upstream_latency_seconds_count{integration="qry"}"#,
            1.0,
        ),
    ];
    for (name, value) in want {
        assert_eq!(series(&text, name), Some(value), "{name} in:\n{text}");
    }
    assert!(
        !text.contains("made-up-integration-42"),
        "a caller-chosen name became a label:\n{text}"
    );

    // The in-flight gauge holds a request until its response is done.
    let slow_req = {
        let url = sk.url("/proxy/wait");
        tokio::spawn(async move { try_send(&url, &proxy_headers("s", "slow")).await })
    };
    let text = wait_series(&sk, "sidekey_requests_in_flight", 1.0).await;
    assert_eq!(
        series(&text, "sidekey_requests_in_flight"),
        Some(1.0),
        "{text}"
    );
    gate.add_permits(1);
    let (status, _) = slow_req.await.expect("join").expect("slow request");
    assert_eq!(status, 200);
    let text = wait_series(&sk, "sidekey_requests_in_flight", 0.0).await;
    assert_eq!(
        series(&text, "sidekey_requests_in_flight"),
        Some(0.0),
        "{text}"
    );

    // Open client connections are counted from accept to close. Once the test's pooled
    // clients are gone, none is open.
    drop(c);
    let text = wait_series(&sk, "sidekey_client_connections", 0.0).await;
    let base = series(&text, "sidekey_client_connections").expect("gauge present");
    assert_eq!(base, 0.0, "{text}");
    let a = std::net::TcpStream::connect(sk.addr).expect("connect");
    let b = std::net::TcpStream::connect(sk.addr).expect("connect");
    let text = wait_series(&sk, "sidekey_client_connections", base + 2.0).await;
    assert_eq!(
        series(&text, "sidekey_client_connections"),
        Some(base + 2.0),
        "{text}"
    );
    drop((a, b));
    let text = wait_series(&sk, "sidekey_client_connections", base).await;
    assert_eq!(
        series(&text, "sidekey_client_connections"),
        Some(base),
        "{text}"
    );
}

#[tokio::test]
async fn access_log_has_every_field_and_traceparent_passes_through() {
    let up = Upstream::start(Arc::new(|_| reply(201, "0123456789"))).await;
    let sk = sidekey(&providers(&up.url("")), &vault()).start();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut h = proxy_headers("c1", "qry");
    h.extend([
        ("nango-activity-log-id", "act-77"),
        ("traceparent", traceparent),
        ("tracestate", "vendor=x"),
    ]);
    let res = TestClient::default()
        .send(
            "POST",
            &sk.url("/proxy/search?q=1&api_key=mine"),
            &h,
            "hello world",
        )
        .await;
    assert_eq!(res.status, 201);
    let r = up.only();
    assert_eq!(r.header("traceparent"), Some(traceparent));
    assert_eq!(r.header("tracestate"), Some("vendor=x"));
    assert_eq!(
        r.uri.query(),
        Some(format!("q=1&api_key={SECRET}").as_str())
    );

    // An error sidekey makes itself is logged too, with its code and no upstream.
    let refused = TestClient::default()
        .proxy(&sk.url(""), "/x", "ghost", "qry")
        .await;
    assert_eq!(refused.status, 404);

    let events = wait_access(&sk, 2).await;
    assert_eq!(events.len(), 2, "{}", sk.logs());
    let e = &events[0];
    assert_eq!(e["level"], "INFO");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["integration"], "qry");
    assert_eq!(e["connection_id"], "c1");
    assert_eq!(e["upstream_host"], up.addr.to_string());
    assert_eq!(e["upstream_path"], "/search?q=1&api_key=***");
    assert_eq!(e["status"], 201);
    assert_eq!(e["attempts"], 1);
    assert!(e["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
    assert_eq!(e["bytes_in"], 11);
    assert_eq!(e["bytes_out"], 10);
    assert_eq!(e["complete"], true);
    assert_eq!(e["activity_log_id"], "act-77");

    let e = &events[1];
    assert_eq!(e["status"], 404);
    assert_eq!(e["error"], "unknown_connection");
    assert_eq!(e["integration"], "qry");
    assert_eq!(e["attempts"], 0);
    assert!(e.get("upstream_host").is_none(), "{e}");
    assert!(e.get("activity_log_id").is_none(), "{e}");
    assert!(!sk.logs().contains(SECRET), "{}", sk.logs());
}

/// Every secret of a run that used every auth mode, over TLS/h2 and plain upstreams, with debug
/// logging, errors and a metrics scrape: none may appear in anything sidekey wrote or answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output() {
    const HDR: &str = "hdr-secret-7f3a91";
    const QRY: &str = "qry-secret-55b2c0";
    const BASIC_PW: &str = "basic-pw-9d1e44";
    const OAUTH: &str = "oauth-token-c3a871";
    const REFRESH: &str = "refresh-token-0a6d52";
    const CLIENT_SECRET: &str = "client-secret-b47e19";
    const GEN_H: &str = "generic-h-2be610";
    const GEN_Q: &str = "generic-q-81fa3d";
    const TLS_Q: &str = "tls-q-4c29e7";
    const DEAD_Q: &str = "dead-q-e61b08";
    const WRONG_KEY: &str = "wrong-caller-key-5e0c1d";

    let up = Upstream::start(Arc::new(|r| {
        if r.uri.path().ends_with("/denied") {
            reply(401, r#"{"message":"bad credentials"}"#)
        } else {
            reply(200, "ok")
        }
    }))
    .await;
    let ca = TestCa::new();
    let tls_up =
        Upstream::start_tls(ok_json(), ca.server_cert(&["api.test"]).server_config()).await;
    // An upstream that hangs up on every connection: a failed exchange on a port the test keeps
    // (a port bound and released could be taken by another process meanwhile).
    let hang_up = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_port = hang_up.local_addr().expect("addr").port();
    let hang_up = tokio::spawn(async move {
        while let Ok((stream, _)) = hang_up.accept().await {
            drop(stream);
        }
    });
    let base = up.url("");
    let p = format!(
        r#"
hdr: {{auth_mode: API_KEY, proxy: {{base_url: "{base}", headers: {{authorization: "Bearer ${{apiKey}}"}}}}}}
qry: {{auth_mode: API_KEY, proxy: {{base_url: "{base}", query: {{api_key: "$<apiKey>"}}}}}}
basic: {{auth_mode: BASIC, proxy: {{base_url: "{base}"}}}}
oauth: {{auth_mode: OAUTH2, token_url: "{base}/token", proxy: {{base_url: "{base}"}}}}
tlsq: {{auth_mode: API_KEY, proxy: {{base_url: "https://api.test", query: {{api_key: "$<apiKey>"}}}}}}
dead: {{auth_mode: API_KEY, proxy: {{base_url: "http://127.0.0.1:{dead_port}", query: {{key: "${{apiKey}}"}}}}}}
private-api-generic: {{auth_mode: API_KEY}}
"#
    );
    let v = format!(
        r#"
integrations:
  - {{unique_key: hdr, provider: hdr}}
  - {{unique_key: qry, provider: qry}}
  - {{unique_key: basic, provider: basic}}
  - unique_key: oauth
    provider: oauth
    credentials: {{type: OAUTH2, oauth_client_id: my-client, oauth_client_secret: "{CLIENT_SECRET}"}}
  - {{unique_key: tlsq, provider: tlsq}}
  - {{unique_key: dead, provider: dead}}
  - unique_key: gh
    provider: private-api-generic
    integration_config: {{baseUrl: "{base}/gen", keyPlacement: header, keyName: x-api-key}}
  - unique_key: gq
    provider: private-api-generic
    integration_config: {{baseUrl: "{base}/gen", keyPlacement: query, keyName: token}}
connections:
  - {{connection_id: c, provider_config_key: hdr, credentials: {{type: API_KEY, apiKey: "{HDR}"}}}}
  - {{connection_id: c, provider_config_key: qry, credentials: {{type: API_KEY, apiKey: "{QRY}"}}}}
  - {{connection_id: c, provider_config_key: basic, credentials: {{type: BASIC, username: user, password: "{BASIC_PW}"}}}}
  - {{connection_id: c, provider_config_key: oauth, credentials: {{type: OAUTH2, access_token: "{OAUTH}", refresh_token: "{REFRESH}"}}}}
  - {{connection_id: c, provider_config_key: tlsq, credentials: {{type: API_KEY, apiKey: "{TLS_Q}"}}}}
  - {{connection_id: c, provider_config_key: dead, credentials: {{type: API_KEY, apiKey: "{DEAD_Q}"}}}}
  - {{connection_id: c, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: "{GEN_H}"}}}}
  - {{connection_id: c, provider_config_key: gq, credentials: {{type: API_KEY, apiKey: "{GEN_Q}"}}}}
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path);
    let resolve = format!("api.test:443:127.0.0.1:{}", tls_up.port());
    let mut sk = sidekey(&p, &v)
        .env("RUST_LOG", "debug")
        .args([
            "--extra-ca",
            ca_path.to_str().expect("utf8"),
            "--resolve",
            &resolve,
        ])
        .start();

    let mut answers = Vec::new();
    let mut record = |label: &str, res: TestResponse| {
        answers.push(format!(
            "{label}: {} {:?} {}",
            res.status,
            res.headers,
            res.text()
        ));
        res.status
    };
    let c = TestClient::default();
    let h2 = TestClient::h2c();
    for integration in ["hdr", "qry", "basic", "oauth", "gh", "gq"] {
        let s = record(
            integration,
            c.proxy(&sk.url(""), "/v1/items?page=2", "c", integration)
                .await,
        );
        assert_eq!(s, 200, "{integration}");
    }
    let s = record(
        "tlsq",
        h2.proxy(&sk.url(""), "/v1/secure?x=1", "c", "tlsq").await,
    );
    assert_eq!(s, 200);
    assert_eq!(tls_up.only().version, http::Version::HTTP_2);
    let s = record(
        "upstream 401",
        c.proxy(&sk.url(""), "/denied", "c", "qry").await,
    );
    assert_eq!(s, 401);
    let s = record(
        "dead",
        c.proxy(&sk.url(""), "/down?api=1", "c", "dead").await,
    );
    assert_eq!(s, 502);
    let s = record(
        "unknown connection",
        c.proxy(&sk.url(""), "/x", "ghost", "oauth").await,
    );
    assert_eq!(s, 404);
    let wrong = format!("Bearer {WRONG_KEY}");
    let s = record(
        "wrong caller key",
        c.send(
            "GET",
            &sk.url("/proxy/x"),
            &[
                ("authorization", &wrong),
                ("connection-id", "c"),
                ("provider-config-key", "hdr"),
            ],
            Bytes::new(),
        )
        .await,
    );
    assert_eq!(s, 401);
    hang_up.abort();
    let metrics = get_admin(&sk, "/metrics").await.text();
    assert!(metrics.contains("sidekey_requests_total"), "{metrics}");
    assert_eq!(
        up.count(),
        7,
        "six auth modes and the 401 reached the plain upstream"
    );

    wait_access(&sk, 11).await;
    sk.signal("TERM");
    assert_eq!(sk.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(sk.wait_for_log("\"stopped\"", Duration::from_secs(5)));
    let logs = sk.logs();
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug logging was on");
    for masked in [
        "/v1/items?page=2&api_key=***",
        "/v1/secure?x=1&api_key=***",
        "/down?api=1&key=***",
        "/gen/v1/items?page=2&token=***",
    ] {
        assert!(
            logs.contains(masked),
            "access log shows `{masked}`:\n{logs}"
        );
    }

    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{BASIC_PW}"));
    let everything = format!("{logs}\n{}\n{metrics}", answers.join("\n"));
    for secret in [
        HDR,
        QRY,
        BASIC_PW,
        &basic,
        OAUTH,
        REFRESH,
        CLIENT_SECRET,
        GEN_H,
        GEN_Q,
        TLS_Q,
        DEAD_Q,
        CALLER_KEY,
        WRONG_KEY,
    ] {
        assert!(
            !everything.contains(secret),
            "`{secret}` leaked:\n{}",
            everything
                .lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test]
async fn a_silent_connection_does_not_hold_up_the_drain() {
    let up = Upstream::start(ok_json()).await;
    let mut sk = sidekey(&providers(&up.url("")), &vault())
        .args(["--drain-timeout", "60s"])
        .start();
    // Connected, never sends a byte: nothing is in flight on it. sidekey would drop it after
    // 10 s anyway; it must not wait that long (or the 60 s drain) to exit.
    let silent = std::net::TcpStream::connect(sk.addr).expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sk.signal("TERM");
    assert_eq!(
        sk.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        sk.logs()
    );
    assert!(!sk.logs().contains("drain timeout reached"));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (gate, slow) = gated_upstream_handler();
    let up = Upstream::start_raw(slow).await;
    let mut sk = sidekey(&providers(&up.url("")), &vault())
        .args(["--drain-timeout", "30s"])
        .start();
    let url = sk.url("/proxy/slow");
    let in_flight = tokio::spawn(async move { try_send(&url, &proxy_headers("c1", "hdr")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1, "the slow request reached the upstream");

    sk.signal("TERM");
    assert!(
        sk.wait_for_log("listener closed", Duration::from_secs(10)),
        "{}",
        sk.logs()
    );
    let ready = get_admin(&sk, "/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(get_admin(&sk, "/live").await.status, 200);
    let err = std::net::TcpStream::connect(sk.addr).expect_err("new connections are refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(!in_flight.is_finished(), "still waiting on the upstream");

    // Let the upstream answer, ~1.5 s after the request arrived.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gate.add_permits(1);
    let (status, body) = in_flight.await.expect("join").expect("in-flight request");
    assert_eq!(status, 200);
    assert_eq!(body, "slow ok");
    assert_eq!(
        sk.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        sk.logs()
    );
    assert!(sk.wait_for_log("\"stopped\"", Duration::from_secs(5)));
    let logs = sk.logs();
    assert!(!logs.contains("drain timeout reached"), "{logs}");
    let events = access_events(&sk);
    assert_eq!(events.len(), 1, "{logs}");
    assert_eq!(events[0]["status"], 200);
    assert_eq!(events[0]["complete"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_a_request_short_and_still_exits_zero() {
    let (_gate, never) = gated_upstream_handler();
    let up = Upstream::start_raw(never).await;
    let mut sk = sidekey(&providers(&up.url("")), &vault())
        .args(["--drain-timeout", "500ms"])
        .start();
    let url = sk.url("/proxy/forever");
    let in_flight = tokio::spawn(async move { try_send(&url, &proxy_headers("c1", "hdr")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1);
    sk.signal("TERM");
    assert_eq!(
        sk.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        sk.logs()
    );
    assert!(
        sk.wait_for_log("drain timeout reached", Duration::from_secs(5)),
        "{}",
        sk.logs()
    );
    let result = in_flight.await.expect("join");
    assert!(
        result.is_err(),
        "the cut-off request gets no response: {result:?}"
    );
}

/// Connects over TLS trusting `ca`, offering `alpn`; returns the stream and the served leaf.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

fn served_leaf(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("peer certs")[0]
        .as_ref()
        .to_vec()
}

fn proxy_request(uri: &str) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = uri.parse().expect("uri");
    for (k, v) in proxy_headers("c1", "hdr") {
        req.headers_mut().insert(k, v.parse().expect("value"));
    }
    req
}

/// Writes `contents` to `path` by rename, as a deploy tool or the kubelet would.
fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_h1_and_h2_and_reloads_its_certificate() {
    let up = Upstream::start(ok_json()).await;
    let ca = TestCa::new();
    let first = ca.server_cert(&["localhost"]);
    let certs = tempfile::tempdir().expect("tempdir");
    let cert_path = certs.path().join("tls.crt");
    let key_path = certs.path().join("tls.key");
    std::fs::write(&cert_path, &first.cert_pem).expect("cert");
    std::fs::write(&key_path, &first.key_pem).expect("key");
    let sk = sidekey(&providers(&up.url("")), &vault())
        .args([
            "--tls-cert",
            cert_path.to_str().expect("utf8"),
            "--tls-key",
            key_path.to_str().expect("utf8"),
        ])
        .start();

    // HTTP/1.1 over TLS.
    let tls = tls_connect(sk.addr, &ca, &[b"http/1.1"]).await;
    assert_eq!(served_leaf(&tls), first.cert_der.as_ref());
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let mut req = proxy_request("/proxy/over-tls");
    req.headers_mut()
        .insert("host", "localhost".parse().expect("host"));
    let res = send.send_request(req).await.expect("h1 request");
    assert_eq!(res.status(), 200);

    // HTTP/2 chosen by ALPN.
    let tls = tls_connect(sk.addr, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let uri = format!("https://localhost:{}/proxy/over-h2", sk.addr.port());
    let res = send
        .send_request(proxy_request(&uri))
        .await
        .expect("h2 request");
    assert_eq!(res.status(), 200);
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(paths, ["/api/over-tls", "/api/over-h2"]);

    // Plain HTTP on the TLS port gets no answer.
    assert!(try_send(&sk.url("/proxy/x"), &proxy_headers("c1", "hdr"))
        .await
        .is_err());

    // New files: new connections get the new certificate.
    let second = ca.server_cert(&["localhost", "v2.localhost"]);
    replace(&key_path, &second.key_pem);
    replace(&cert_path, &second.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut served = Vec::new();
    while Instant::now() < deadline {
        served = served_leaf(&tls_connect(sk.addr, &ca, &[b"http/1.1"]).await);
        if served == second.cert_der.as_ref() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, second.cert_der.as_ref(), "{}", sk.logs());
    assert!(sk.wait_for_log("TLS certificate reloaded", Duration::from_secs(5)));

    // A broken certificate is refused and the last good one stays.
    let refusals = || sk.logs().matches("TLS certificate not reloaded").count();
    let before = refusals();
    replace(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while refusals() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refusals(), before + 1, "{}", sk.logs());
    let tls = tls_connect(sk.addr, &ca, &[b"http/1.1"]).await;
    assert_eq!(served_leaf(&tls), second.cert_der.as_ref());
    assert!(
        !sk.logs().contains(&second.key_pem[40..80]),
        "no key material in logs"
    );
}

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let (code, out, err) = run_cli(args, dir.path());
        assert_eq!(code, 0, "{err}");
        // One block per flag: from its `--name` line to the next flag or heading.
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        for line in out.lines() {
            let indent = line.len() - line.trim_start().len();
            let starts_flag = indent <= 6 && line.trim_start().starts_with('-');
            let heading = !line.is_empty() && !line.starts_with(' ');
            if starts_flag {
                blocks.push(vec![line]);
            } else if heading {
                blocks.push(Vec::new());
            } else if let Some(b) = blocks.last_mut() {
                b.push(line);
            }
        }
        let mut flags = 0;
        for block in blocks.iter().filter(|b| !b.is_empty()) {
            let Some(flag) = block[0]
                .trim_start()
                .strip_prefix("--")
                .and_then(|f| f.split(' ').next())
            else {
                continue; // -h, --help and -V, --version
            };
            flags += 1;
            let text = block.join("\n");
            let env = format!("[env: SIDEKEY_{}]", flag.to_uppercase().replace('-', "_"));
            assert!(text.contains(&env), "--{flag} does not show {env}:\n{text}");
            let explained = block[1..]
                .iter()
                .any(|l| !l.trim().is_empty() && !l.trim().starts_with('['));
            assert!(explained, "--{flag} has no explanation:\n{text}");
        }
        assert!(flags >= 20, "found only {flags} flags in:\n{out}");
        for needle in [
            "SIDEKEY_SECRET_KEY",
            "RUST_LOG",
            "/metrics",
            "--drain-timeout",
        ] {
            assert!(out.contains(needle), "{needle} missing from {args:?} help");
        }
    }
}

#[test]
fn version_prints_the_package_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, _) = run_cli(&["--version"], dir.path());
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("sidekey {}", env!("CARGO_PKG_VERSION")));
}
