//! OpenTelemetry traces through the real binary: a loopback OTLP/HTTP receiver (an upstream
//! that records `POST /v1/traces`, decoded here with `opentelemetry-proto`'s types), sidekey
//! started with `--otlp-endpoint`, and proxied requests carrying a caller `traceparent`.
//!
//! Checked: one server span per request continuing the caller's trace, a child span per
//! upstream attempt (a retry and a resend after a 401 each add one) and per token call, the
//! attributes an operator needs, nothing secret and no full connection id in the exported
//! bytes, each upstream attempt carrying a `traceparent` naming its own span (with the
//! caller's `tracestate`), spans flushed on SIGTERM, and a bad endpoint refused at start.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use support::client::{proxy_headers, TestClient};
use support::sidekey::{run_cli, sidekey};
use support::upstream::{reply, Recorded, SyncHandler, Upstream};
use support::CALLER_KEY;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const API_KEY: &str = "sk_live_trace_test_secret_value";
/// A connection id that must not appear in full anywhere in the export.
const CONNECTION: &str = "customer-8841-private-id";

/// An OTLP/HTTP receiver: records every export and answers 200 with an empty
/// `ExportTraceServiceResponse`, as a collector does.
async fn receiver() -> Upstream {
    Upstream::start(Arc::new(|_| {
        let mut r = reply(200, Bytes::new());
        r.headers_mut().insert(
            "content-type",
            "application/x-protobuf".parse().expect("value"),
        );
        r
    }))
    .await
}

/// Every span the receiver got, checking that each export was a protobuf POST to /v1/traces.
fn spans(rx: &Upstream) -> Vec<Span> {
    let mut out = Vec::new();
    for r in rx.requests() {
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.uri.path(), "/v1/traces");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        let req = ExportTraceServiceRequest::decode(r.body.clone()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let resource = rs.resource.expect("resource");
            assert_eq!(
                attr_of(&resource.attributes, "service.name"),
                Some(Value::StringValue("sidekey".into()))
            );
            for ss in rs.scope_spans {
                out.extend(ss.spans);
            }
        }
    }
    out
}

/// Waits (generously: the machine may be loaded) until the receiver holds spans that satisfy
/// `done`, and returns them.
fn wait_for_spans(rx: &Upstream, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = spans(rx);
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "spans never arrived; got {:#?}",
            got.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every export's raw bytes, for grepping.
fn exported_bytes(rx: &Upstream) -> Vec<u8> {
    rx.requests().iter().flat_map(|r| r.body.to_vec()).collect()
}

fn attr_of(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    attr_of(&span.attributes, key)
}

fn str_attr(span: &Span, key: &str) -> Option<String> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        other => panic!("{key} on `{}` is {other:?}, not a string", span.name),
    }
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => i,
        other => panic!("{key} on `{}` is {other:?}, not an integer", span.name),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn of_kind(spans: &[Span], kind: SpanKind) -> Vec<&Span> {
    spans.iter().filter(|s| s.kind == kind as i32).collect()
}

/// The first 16 hex digits of SHA-256, as sidekey hashes connection ids.
fn id_hash(id: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(id.as_bytes())[..8])
}

fn assert_absent(haystack: &[u8], needles: &[&str]) {
    for n in needles {
        assert!(
            !haystack.windows(n.len()).any(|w| w == n.as_bytes()),
            "{n:?} was exported"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_server_span_with_a_child_per_attempt_named_upstream() {
    let rx = receiver().await;
    // 503 first, then 200: `Retries: 1` makes two attempts.
    let hits = Arc::new(AtomicUsize::new(0));
    let api: SyncHandler = {
        let hits = hits.clone();
        Arc::new(move |_: &Recorded| {
            if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                reply(503, "busy")
            } else {
                reply(200, r#"{"ok":true}"#)
            }
        })
    };
    let up = Upstream::start(api).await;
    let providers = format!(
        "keyed: {{auth_mode: API_KEY, proxy: {{base_url: \"{}\", headers: {{authorization: \"Bearer ${{apiKey}}\"}}}}}}\n",
        up.url("")
    );
    let vault = format!(
        "integrations:\n  - {{unique_key: my-api, provider: keyed}}\nconnections:\n  - {{connection_id: {CONNECTION}, provider_config_key: my-api, credentials: {{type: API_KEY, apiKey: \"{API_KEY}\"}}}}\n"
    );
    let sk = sidekey(&providers, &vault)
        .arg(format!("--otlp-endpoint={}", rx.url("")))
        .arg("--retry-backoff-base=1ms")
        .arg("--retry-backoff-max=5ms")
        // Export every 100 ms instead of every 5 s, so the test need not stop sidekey.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start();
    let client = TestClient::default();

    let caller_traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let mut headers = proxy_headers(CONNECTION, "my-api");
    headers.push(("traceparent", &caller_traceparent));
    headers.push(("tracestate", "vendor=abc,other=1"));
    headers.push(("retries", "1"));
    let res = client
        .send(
            "GET",
            &sk.url("/proxy/items?page=2"),
            &headers,
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // A refused request: sidekey's own error code goes on its span.
    let res = client
        .send(
            "GET",
            &sk.url("/proxy/items"),
            &proxy_headers("nobody", "my-api"),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 404);

    let all = wait_for_spans(&rx, |s| of_kind(s, SpanKind::Server).len() >= 2);
    let servers = of_kind(&all, SpanKind::Server);
    assert_eq!(servers.len(), 2, "one server span per request");
    let server = servers
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .expect("the traced request's span continues the caller's trace id");
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "child of the caller's span"
    );
    assert_eq!(server.name, "GET /proxy/{endpoint}");
    assert_eq!(
        str_attr(server, "http.route").as_deref(),
        Some("/proxy/{endpoint}")
    );
    assert_eq!(
        str_attr(server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        str_attr(server, "sidekey.integration").as_deref(),
        Some("my-api")
    );
    assert_eq!(
        str_attr(server, "sidekey.provider").as_deref(),
        Some("keyed")
    );
    let upstream_host = up.url("").trim_start_matches("http://").to_string();
    assert_eq!(
        str_attr(server, "sidekey.upstream.host").as_deref(),
        Some(upstream_host.as_str())
    );
    assert_eq!(int_attr(server, "http.response.status_code"), 200);
    assert_eq!(int_attr(server, "sidekey.attempts"), 2);
    assert_eq!(
        str_attr(server, "sidekey.connection_id_hash"),
        Some(id_hash(CONNECTION))
    );
    assert_eq!(attr(server, "sidekey.connection_id"), None);
    assert_eq!(attr(server, "sidekey.error.code"), None);

    // Two attempts, children of the server span, in order.
    let mut attempts: Vec<&Span> = of_kind(&all, SpanKind::Client)
        .into_iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    attempts.sort_by_key(|s| int_attr(s, "sidekey.attempt"));
    assert_eq!(attempts.len(), 2, "one child span per attempt");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(hex(&a.trace_id), TRACE_ID);
        assert_eq!(a.name, "GET");
        assert_eq!(int_attr(a, "sidekey.attempt"), i as i64 + 1);
        assert_eq!(str_attr(a, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(int_attr(a, "server.port"), i64::from(up.port()));
    }
    assert_eq!(int_attr(attempts[0], "http.response.status_code"), 503);
    assert_eq!(str_attr(attempts[0], "error.type").as_deref(), Some("503"));
    assert_eq!(int_attr(attempts[1], "http.response.status_code"), 200);
    assert_eq!(int_attr(attempts[1], "http.request.resend_count"), 1);

    // Each upstream request named its own attempt's span; the caller's tracestate passed.
    let got = up.requests();
    assert_eq!(got.len(), 2);
    for (r, a) in got.iter().zip(&attempts) {
        assert_eq!(
            r.header("traceparent"),
            Some(format!("00-{TRACE_ID}-{}-01", hex(&a.span_id)).as_str())
        );
        assert_eq!(r.header("tracestate"), Some("vendor=abc,other=1"));
    }

    // The refused request: a fresh trace (no traceparent came), its code, no attempts.
    let refused = servers
        .iter()
        .find(|s| hex(&s.trace_id) != TRACE_ID)
        .expect("second server span");
    assert!(refused.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        str_attr(refused, "sidekey.error.code").as_deref(),
        Some("unknown_connection")
    );
    assert_eq!(int_attr(refused, "http.response.status_code"), 404);
    assert_eq!(int_attr(refused, "sidekey.attempts"), 0);

    let bytes = exported_bytes(&rx);
    assert_absent(&bytes, &[API_KEY, CONNECTION, CALLER_KEY, "page=2"]);
    assert!(!sk.logs().contains(API_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refresh_after_401_is_its_own_span_and_sigterm_flushes_the_spans() {
    let rx = receiver().await;
    let token = Upstream::start(Arc::new(|_: &Recorded| {
        let mut r = reply(
            200,
            r#"{"access_token":"at-fresh-secret","refresh_token":"rt-rotated-secret","expires_in":3600}"#,
        );
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        r
    }))
    .await;
    // The API refuses the stored token, so sidekey refreshes and resends once.
    let api = Upstream::start(Arc::new(|r: &Recorded| {
        if r.header("authorization") == Some("Bearer at-stale-secret") {
            reply(401, "expired")
        } else {
            reply(200, "ok")
        }
    }))
    .await;
    let providers = format!(
        "oa: {{auth_mode: OAUTH2, token_url: \"{}/oauth/token\", proxy: {{base_url: \"{}\"}}}}\n",
        token.url(""),
        api.url("")
    );
    let vault = format!(
        "integrations:\n  - {{unique_key: crm, provider: oa, credentials: {{oauth_client_id: cid, oauth_client_secret: client-secret-xyz}}}}\nconnections:\n  - {{connection_id: {CONNECTION}, provider_config_key: crm, credentials: {{type: OAUTH2, access_token: at-stale-secret, refresh_token: rt-first-secret}}}}\n"
    );
    let mut sk = sidekey(&providers, &vault)
        .arg(format!("--otlp-endpoint={}", rx.url("")))
        .arg("--otlp-connection-id=none")
        // Nothing is exported on schedule during this test: only the shutdown flush can
        // deliver the spans.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .start();
    let caller_traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let mut headers = proxy_headers(CONNECTION, "crm");
    headers.push(("traceparent", &caller_traceparent));
    let res = TestClient::default()
        .send("POST", &sk.url("/proxy/contacts"), &headers, "{\"a\":1}")
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(token.count(), 1);
    assert_eq!(rx.count(), 0, "nothing exported before shutdown");

    sk.signal("TERM");
    assert_eq!(sk.wait_exit(Duration::from_secs(30)), Some(0));
    let all = spans(&rx);
    let servers = of_kind(&all, SpanKind::Server);
    assert_eq!(servers.len(), 1, "{all:#?}");
    let server = servers[0];
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(int_attr(server, "sidekey.attempts"), 2);
    assert_eq!(str_attr(server, "sidekey.provider").as_deref(), Some("oa"));
    assert_eq!(attr(server, "sidekey.connection_id"), None);
    assert_eq!(attr(server, "sidekey.connection_id_hash"), None);

    let children: Vec<&Span> = all
        .iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    let tokens: Vec<&&Span> = children
        .iter()
        .filter(|s| s.name == "oauth token")
        .collect();
    assert_eq!(tokens.len(), 1, "one span per token call");
    let t = tokens[0];
    assert_eq!(t.kind, SpanKind::Client as i32);
    assert_eq!(
        str_attr(t, "sidekey.oauth.grant_type").as_deref(),
        Some("refresh_token")
    );
    assert_eq!(
        str_attr(t, "sidekey.oauth.trigger").as_deref(),
        Some("unauthorized")
    );
    assert_eq!(str_attr(t, "sidekey.oauth.result").as_deref(), Some("ok"));
    assert_eq!(str_attr(t, "sidekey.integration").as_deref(), Some("crm"));
    let mut attempts: Vec<&&Span> = children.iter().filter(|s| s.name == "POST").collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2, "the 401 and the resend");
    assert_eq!(int_attr(attempts[0], "http.response.status_code"), 401);
    assert_eq!(int_attr(attempts[1], "http.response.status_code"), 200);
    assert!(
        attempts[0].end_time_unix_nano <= t.start_time_unix_nano
            && t.end_time_unix_nano <= attempts[1].start_time_unix_nano,
        "the token call sits between the two attempts"
    );
    let sent = api.requests();
    assert_eq!(sent.len(), 2);
    for (r, a) in sent.iter().zip(&attempts) {
        assert_eq!(
            r.header("traceparent"),
            Some(format!("00-{TRACE_ID}-{}-01", hex(&a.span_id)).as_str())
        );
    }

    assert_absent(
        &exported_bytes(&rx),
        &[
            CONNECTION,
            "at-stale-secret",
            "at-fresh-secret",
            "rt-first-secret",
            "rt-rotated-secret",
            "client-secret-xyz",
            CALLER_KEY,
        ],
    );
}

#[test]
fn a_bad_endpoint_is_refused_at_start_without_echoing_credentials() {
    let dir = tempfile::tempdir().expect("dir");
    for (url, expect) in [
        ("ftp://127.0.0.1:4318", "http:// or https://"),
        (
            "http://user:hunter2@127.0.0.1:4318",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
    ] {
        let (code, _out, err) = run_cli(
            &["serve", "--listen=127.0.0.1:0", "--otlp-endpoint", url],
            dir.path(),
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--otlp-endpoint") && err.contains(expect),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
    assert!(
        !dir.path().join("vault.yaml").exists(),
        "refused before the first run created anything"
    );
}

/// Spans are created per request, not shared: concurrent requests each get their own trace
/// and their own attempt span under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_keep_their_spans_apart() {
    let rx = receiver().await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let up = Upstream::start({
        let seen = seen.clone();
        Arc::new(move |r: &Recorded| {
            seen.lock()
                .expect("lock")
                .push(r.header("traceparent").unwrap_or("").to_string());
            reply(200, "ok")
        })
    })
    .await;
    let providers = format!(
        "keyed: {{auth_mode: API_KEY, proxy: {{base_url: \"{}\", headers: {{x-key: \"${{apiKey}}\"}}}}}}\n",
        up.url("")
    );
    let vault = format!(
        "integrations:\n  - {{unique_key: k, provider: keyed}}\nconnections:\n  - {{connection_id: c, provider_config_key: k, credentials: {{type: API_KEY, apiKey: \"{API_KEY}\"}}}}\n"
    );
    let sk = sidekey(&providers, &vault)
        .arg(format!("--otlp-endpoint={}", rx.url("")))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start();
    let client = TestClient::http1();
    let n = 20;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let url = sk.url("/proxy/x");
            tokio::spawn(async move {
                let tp = format!("00-{:032x}-{CALLER_SPAN}-01", i + 1);
                let mut h = proxy_headers("c", "k");
                h.push(("traceparent", &tp));
                client.send("GET", &url, &h, Bytes::new()).await.status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    let all = wait_for_spans(&rx, |s| s.len() >= 2 * n);
    assert_eq!(all.len(), 2 * n);
    let sent = seen.lock().expect("lock").clone();
    for i in 0..n {
        let trace = format!("{:032x}", i + 1);
        let in_trace: Vec<&Span> = all.iter().filter(|s| hex(&s.trace_id) == trace).collect();
        assert_eq!(in_trace.len(), 2, "trace {trace}");
        let server = of_kind(&all, SpanKind::Server)
            .into_iter()
            .find(|s| hex(&s.trace_id) == trace)
            .expect("server span");
        let attempt = in_trace
            .iter()
            .find(|s| s.kind == SpanKind::Client as i32)
            .expect("attempt span");
        assert_eq!(attempt.parent_span_id, server.span_id);
        let expected = format!("00-{trace}-{}-01", hex(&attempt.span_id));
        assert!(sent.contains(&expected), "{expected} not sent upstream");
    }
}
