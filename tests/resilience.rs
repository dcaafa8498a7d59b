//! Resilience on the wire through the real binary over loopback sockets: retries (statuses,
//! `Retry-On`, provider codes, waits asked by the upstream, resets), request bodies replayed
//! or streamed once, the three timeouts, and decompression.
//!
//! Waits are asserted as lower bounds only; every binary test sets short durations by flag.
//! Where the wait itself is the subject, the test runs sidekey in-process on paused time
//! ([`support::app`]), so the wait is virtual.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use support::app::test_app;
use support::client::{proxy_headers, TestClient};
use support::sidekey::{sidekey, Sidekey};
use support::upstream::{body, reply, FullBacklog, Recorded, TestBody, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn providers(base: &str) -> String {
    format!(
        r#"
plain:
  auth_mode: API_KEY
  proxy: {{base_url: "{base}", headers: {{x-key: "${{apiKey}}"}}}}
limited:
  auth_mode: API_KEY
  proxy:
    base_url: "{base}"
    headers: {{x-key: "${{apiKey}}"}}
    retry: {{at: x-ratelimit-reset, remaining: x-ratelimit-remaining}}
coded:
  auth_mode: API_KEY
  proxy:
    base_url: "{base}"
    headers: {{x-key: "${{apiKey}}"}}
    retry: {{error_code: ["403"]}}
squeezed:
  auth_mode: API_KEY
  proxy: {{base_url: "{base}", headers: {{x-key: "${{apiKey}}"}}, decompress: true}}
"#
    )
}

const VAULT: &str = r#"
integrations:
  - {unique_key: plain, provider: plain}
  - {unique_key: limited, provider: limited}
  - {unique_key: coded, provider: coded}
  - {unique_key: squeezed, provider: squeezed}
connections:
  - {connection_id: c1, provider_config_key: plain, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: c1, provider_config_key: limited, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: c1, provider_config_key: coded, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: c1, provider_config_key: squeezed, credentials: {type: API_KEY, apiKey: k}}
"#;

/// sidekey in front of `base`, with a short backoff so retries do not slow the tests.
fn start(base: &str, args: &[&str]) -> Sidekey {
    sidekey(&providers(base), VAULT)
        .arg("--retry-backoff-base=10ms")
        .arg("--retry-backoff-max=50ms")
        .args(args.iter().copied())
        .start()
}

/// Headers of a call on integration `int` plus `extra`.
fn headers<'a>(int: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = proxy_headers("c1", int);
    h.extend_from_slice(extra);
    h
}

/// An upstream answering with `script[i]` to its i-th request (the last entry thereafter).
async fn scripted(script: Vec<(u16, Vec<(&'static str, String)>)>) -> Upstream {
    let n = AtomicUsize::new(0);
    Upstream::start(Arc::new(move |_r: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst).min(script.len() - 1);
        let (status, hs) = &script[i];
        let mut res = reply(*status, format!("attempt {}", i + 1));
        for (k, v) in hs {
            res.headers_mut().insert(*k, v.parse().expect("value"));
        }
        res
    }))
    .await
}

/// How many log lines hold all `needles`, once `want` of them have arrived or 5 s have passed
/// (stderr is read by another thread, so a line may land just after the response).
fn log_lines_with(sk: &Sidekey, needles: &[&str], want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = sk
            .logs()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count();
        if n >= want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_flaky_upstream_succeeds_on_the_third_attempt() {
    let up = scripted(vec![(503, vec![]), (503, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &[]);
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/items"),
            &headers("plain", &[("retries", "3")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "attempt 3");
    assert_eq!(up.count(), 3);
    // Every attempt is a tracing event with its status and wait.
    assert_eq!(
        log_lines_with(
            &sk,
            &[
                "upstream attempt",
                "\"status\":503",
                "\"outcome\":\"retry\"",
                "wait_ms"
            ],
            2
        ),
        2,
        "{}",
        sk.logs()
    );
    assert_eq!(
        log_lines_with(
            &sk,
            &[
                "upstream attempt",
                "\"attempt\":3",
                "\"status\":200",
                "final"
            ],
            1
        ),
        1,
        "{}",
        sk.logs()
    );
}

#[tokio::test]
async fn without_retries_a_503_comes_back_untouched() {
    let up = scripted(vec![
        (503, vec![("x-upstream", "yes".into())]),
        (200, vec![]),
    ])
    .await;
    let sk = start(&up.url(""), &[]);
    let c = TestClient::default();
    for extra in [vec![], vec![("retries", "0")], vec![("retries", " ")]] {
        let before = up.count();
        let res = c
            .send(
                "GET",
                &sk.url("/proxy/x"),
                &headers("plain", &extra),
                Bytes::new(),
            )
            .await;
        assert_eq!(up.count(), before + 1, "one attempt with {extra:?}");
        if before == 0 {
            assert_eq!(res.status, 503);
            assert_eq!(res.text(), "attempt 1");
            assert_eq!(res.header("x-upstream"), Some("yes"));
            assert_eq!(res.header("sidekey-error"), None);
        }
    }
}

#[tokio::test]
async fn retry_on_adds_statuses_and_provider_codes_replace_the_defaults() {
    let up = scripted(vec![(404, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &[]);
    let c = TestClient::default();
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("retries", "2"), ("retry-on", "404, 409")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.count(), 2);

    // A 404 without Retry-On is the answer.
    let up = scripted(vec![(404, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &[]);
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("retries", "2")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 404);
    assert_eq!(up.count(), 1);

    // The provider retries 403 only: a 503 is final, a 403 is retried.
    let up = scripted(vec![(503, vec![]), (403, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &[]);
    let h = headers("coded", &[("retries", "3")]);
    let res = c.send("GET", &sk.url("/proxy/x"), &h, Bytes::new()).await;
    assert_eq!(res.status, 503);
    assert_eq!(up.count(), 1);
    let res = c.send("GET", &sk.url("/proxy/x"), &h, Bytes::new()).await;
    assert_eq!(res.status, 200);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn a_post_body_is_replayed_byte_exact() {
    let up = scripted(vec![(503, vec![]), (502, vec![]), (201, vec![])]).await;
    let sk = start(&up.url(""), &[]);
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let res = TestClient::default()
        .send(
            "POST",
            &sk.url("/proxy/upload"),
            &headers(
                "plain",
                &[
                    ("retries", "5"),
                    ("content-type", "application/octet-stream"),
                ],
            ),
            payload.clone(),
        )
        .await;
    assert_eq!(res.status, 201);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.body.as_ref(), payload.as_slice());
        assert_eq!(r.header("content-length"), Some("20000"));
    }
}

#[tokio::test]
async fn bodies_replay_over_an_h2_upstream() {
    let ca = support::ca::TestCa::new();
    let cert = ca.server_cert(&["api.test"]);
    let n = AtomicUsize::new(0);
    let up = Upstream::start_tls(
        Arc::new(move |r: &Recorded| {
            let status = if n.fetch_add(1, Ordering::SeqCst) < 2 {
                503
            } else {
                200
            };
            reply(status, r.body.clone())
        }),
        cert.server_config(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path);
    let extra_ca = format!("--extra-ca={}", ca_path.display());
    let resolve = format!("--resolve=api.test:443:127.0.0.1:{}", up.port());
    let sk = start("https://api.test", &[&extra_ca, &resolve]);
    let res = TestClient::default()
        .send_body(
            "POST",
            &sk.url("/proxy/upload"),
            &headers("plain", &[("retries", "2")]),
            streamed(40_000),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.body.len(), 40_000);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(r.body.as_ref(), vec![7u8; 40_000].as_slice());
    }
}

/// A body of `len` bytes sent in 64 KiB chunks without a Content-Length.
fn streamed(len: usize) -> TestBody {
    let chunks: Vec<Result<Frame<Bytes>, support::upstream::BoxError>> = vec![7u8; len]
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

#[tokio::test]
async fn a_body_past_the_buffer_is_sent_once_never_twice() {
    let up = scripted(vec![(503, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &[]);
    let c = TestClient::default();
    const MIB: usize = 1024 * 1024;
    // With a Content-Length.
    let res = c
        .send(
            "POST",
            &sk.url("/proxy/big"),
            &headers("plain", &[("retries", "3")]),
            vec![7u8; MIB],
        )
        .await;
    assert_eq!(res.status, 503, "the only attempt's answer");
    assert_eq!(up.count(), 1);
    assert_eq!(up.requests()[0].body.len(), MIB);

    // Streamed without a length: the cap counts the bytes themselves.
    let up = scripted(vec![(503, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &["--retry-buffer-bytes=1000"]);
    let res = c
        .send_body(
            "POST",
            &sk.url("/proxy/big"),
            &headers("plain", &[("retries", "3")]),
            streamed(MIB),
        )
        .await;
    assert_eq!(res.status, 503);
    assert_eq!(up.count(), 1, "a streamed body is never sent twice");
    assert_eq!(up.requests()[0].body.len(), MIB);
    assert!(
        sk.wait_for_log("body_not_replayable", Duration::from_secs(5)),
        "{}",
        sk.logs()
    );

    // Within the cap, the same streamed body is replayed.
    let up = scripted(vec![(503, vec![]), (200, vec![])]).await;
    let sk = start(&up.url(""), &["--retry-buffer-bytes=200000"]);
    let res = c
        .send_body(
            "POST",
            &sk.url("/proxy/small"),
            &headers("plain", &[("retries", "3")]),
            streamed(150_000),
        )
        .await;
    assert_eq!(res.status, 200);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.body.len() == 150_000));
}

// In-process on paused time: sidekey's one-second wait runs on the test's virtual clock, so
// the test checks the wait without spending it (it slept a real second through the binary).
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let up = scripted(vec![
        (429, vec![("retry-after", "1".into())]),
        (200, vec![]),
    ])
    .await;
    let sk = test_app(&providers(&up.url("")), VAULT).start().await;
    let started = tokio::time::Instant::now();
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("retries", "1")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.count(), 2);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    // Not the backoff cap or another timer: the upstream's own second, give or take.
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

#[tokio::test]
async fn a_provider_reset_time_is_honoured() {
    // The upstream asks to come back at a whole epoch second at least one second away.
    let reset_at: Arc<Mutex<Option<SystemTime>>> = Arc::default();
    let second_at: Arc<Mutex<Option<SystemTime>>> = Arc::default();
    let n = AtomicUsize::new(0);
    let (reset, second) = (reset_at.clone(), second_at.clone());
    let up = Upstream::start(Arc::new(move |_r: &Recorded| {
        let now = SystemTime::now();
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            let secs = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .as_secs()
                + 2;
            *reset.lock().expect("lock") = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            let mut r = reply(429, "slow down");
            r.headers_mut().insert(
                "x-ratelimit-reset",
                secs.to_string().parse().expect("value"),
            );
            r.headers_mut()
                .insert("x-ratelimit-remaining", "0".parse().expect("value"));
            r
        } else {
            *second.lock().expect("lock") = Some(now);
            reply(200, "ok")
        }
    }))
    .await;
    let sk = start(&up.url(""), &[]);
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("limited", &[("retries", "1")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200);
    let reset = reset_at.lock().expect("lock").expect("first attempt");
    let second = second_at.lock().expect("lock").expect("second attempt");
    assert!(
        second >= reset,
        "retried {:?} before the reset time",
        reset.duration_since(second).unwrap_or_default()
    );
}

#[tokio::test]
async fn a_wait_longer_than_the_limit_returns_the_response_at_once() {
    let up = scripted(vec![
        (429, vec![("retry-after", "120".into())]),
        (200, vec![]),
    ])
    .await;
    let sk = start(&up.url(""), &["--retry-max-wait=1s"]);
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("retries", "3")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 429);
    assert_eq!(res.text(), "attempt 1");
    assert_eq!(res.header("retry-after"), Some("120"));
    assert_eq!(res.header("sidekey-error"), None);
    assert_eq!(up.count(), 1);
    assert!(
        sk.wait_for_log("wait_too_long", Duration::from_secs(5)),
        "{}",
        sk.logs()
    );
}

/// A raw HTTP/1.1 server that hangs up on its first `drops` connections after reading the
/// request head, then answers `200 ok`. Returns its address and the connection count.
async fn hang_up_first(drops: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count: Arc<AtomicUsize> = Arc::default();
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let i = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if i < drops {
                    return; // dropping the socket: no response at all
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_reset_before_the_response_is_retried() {
    let (addr, conns) = hang_up_first(2).await;
    let sk = start(&format!("http://{addr}"), &[]);
    let c = TestClient::default();
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("retries", "2")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "ok");
    assert_eq!(conns.load(Ordering::SeqCst), 3);

    // Without retries the reset is a 502.
    let (addr, conns) = hang_up_first(1).await;
    let sk = start(&format!("http://{addr}"), &[]);
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 502);
    assert_eq!(res.error_code(), "upstream_unreachable");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connect_timeout_is_504() {
    let full = FullBacklog::start().await;
    let sk = start(&full.url(""), &["--connect-timeout=300ms"]);
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(res.error_code(), "upstream_timeout");
}

#[tokio::test]
async fn a_send_that_makes_no_progress_is_504() {
    // A listener that accepts and then says nothing: the TLS handshake never completes, so the
    // request never gets going. The idle timeout bounds it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.push(s);
        }
    });
    let sk = start(
        &format!("https://{addr}"),
        &["--idle-timeout=300ms", "--response-timeout=60s"],
    );
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(res.error_code(), "upstream_timeout");
    held.abort();
}

/// An upstream that waits `delay` before its response head.
async fn slow_head(delay: Duration) -> Upstream {
    Upstream::start_raw(Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            reply(200, "late")
        })
    }))
    .await
}

#[tokio::test]
async fn a_missing_response_head_is_504_and_not_retried() {
    let up = slow_head(Duration::from_secs(3)).await;
    let sk = start(&up.url(""), &["--response-timeout=300ms"]);
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("retries", "2")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 504);
    assert_eq!(res.error_code(), "upstream_timeout");
    assert_eq!(up.count(), 1, "the upstream may be working on it: no retry");
}

/// POSTs `abcde` through `sk`, one byte every 200 ms.
async fn post_slowly(sk: &Sidekey) -> support::client::TestResponse {
    TestClient::default()
        .send_body(
            "POST",
            &sk.url("/proxy/x"),
            &headers("plain", &[]),
            slow_body(),
        )
        .await
}

/// A request body of five bytes, `abcde`, one every 200 ms.
fn slow_body() -> support::upstream::TestBody {
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((
            Ok::<_, support::upstream::BoxError>(Frame::data(Bytes::from(vec![b'a' + i]))),
            i + 1,
        ))
    });
    StreamBody::new(chunks).boxed()
}

#[tokio::test]
async fn the_response_timeout_counts_from_the_end_of_the_request_body() {
    // The caller takes about a second to send its body; the upstream answers as soon as it
    // has it. A clock started at the request head would have run out.
    let up = Upstream::start(Arc::new(|r: &Recorded| reply(200, r.body.clone()))).await;
    let sk = start(&up.url(""), &["--response-timeout=300ms"]);
    let res = post_slowly(&sk).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "abcde");
}

#[tokio::test]
async fn a_long_idle_timeout_does_not_delay_the_response_timeout() {
    // The body takes about a second, longer than the response timeout; the upstream would
    // answer after 10 s. The response timeout must still run from the body's end, not from
    // whenever the 30 s idle timer would next look.
    let up = slow_head(Duration::from_secs(10)).await;
    let sk = start(
        &up.url(""),
        &["--response-timeout=300ms", "--idle-timeout=30s"],
    );
    let res = post_slowly(&sk).await;
    assert_eq!(res.status, 504, "{}", res.text());
    assert_eq!(res.error_code(), "upstream_timeout");
}

/// An upstream that sends its head and `first` bytes of body, then stalls for a minute.
/// `length` sets a Content-Length (else the body is chunked).
async fn stalls_mid_body(first: &'static [u8], length: Option<usize>) -> Upstream {
    Upstream::start_raw(Arc::new(move |_req: Request<Incoming>| {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                if !first.is_empty() {
                    let _ = tx.send(Bytes::from_static(first)).await;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(tx);
            });
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, support::upstream::BoxError>(Frame::data(chunk)), rx))
            });
            let mut res = Response::new(StreamBody::new(chunks).boxed());
            if let Some(n) = length {
                res.headers_mut()
                    .insert("content-length", n.to_string().parse().expect("value"));
            }
            res
        })
    }))
    .await
}

#[tokio::test]
async fn a_stalled_body_cuts_the_stream_instead_of_ending_it() {
    for (length, client) in [
        (None, TestClient::http1()),
        (Some(100), TestClient::http1()),
        (None, TestClient::h2c()),
    ] {
        let up = stalls_mid_body(b"partial", length).await;
        let sk = start(&up.url(""), &["--idle-timeout=300ms"]);
        let res = client
            .send_streaming("GET", &sk.url("/proxy/x"), &headers("plain", &[]), body(""))
            .await;
        assert_eq!(res.status(), 200, "the head was already relayed");
        let got = res.into_body().collect().await;
        assert!(
            got.is_err(),
            "length {length:?}: a stalled body must fail, not end cleanly: {got:?}"
        );
        assert!(sk.wait_for_log("upstream body stalled", Duration::from_secs(5)));
    }
}

#[tokio::test]
async fn a_stall_before_anything_was_sent_is_504() {
    // With Decompress, sidekey reads the first bytes before relaying the head; a stall there
    // means nothing reached the caller yet.
    let up = stalls_mid_body(b"", None).await;
    let sk = start(&up.url(""), &["--idle-timeout=300ms"]);
    let res = TestClient::default()
        .send(
            "GET",
            &sk.url("/proxy/x"),
            &headers("plain", &[("decompress", "true")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.status, 504);
    assert_eq!(res.error_code(), "upstream_timeout");
}

const TEXT: &str = "{\"items\":[\"one\",\"two\",\"three\"]} ";

async fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread as enc;
    let mut out = Vec::new();
    match coding {
        "gzip" => enc::GzipEncoder::new(data).read_to_end(&mut out).await,
        "deflate" => enc::ZlibEncoder::new(data).read_to_end(&mut out).await,
        "br" => enc::BrotliEncoder::new(data).read_to_end(&mut out).await,
        "zstd" => enc::ZstdEncoder::new(data).read_to_end(&mut out).await,
        other => panic!("no encoder for {other}"),
    }
    .expect("encode");
    out
}

/// An upstream that answers every path `/<coding>` with the text so encoded; `/sniff-<coding>`
/// does the same without Content-Encoding.
async fn compressing() -> Upstream {
    let plain = TEXT.repeat(200);
    let mut bodies = Vec::new();
    for coding in ["gzip", "deflate", "br", "zstd"] {
        bodies.push((coding, encode(coding, plain.as_bytes()).await));
    }
    Upstream::start(Arc::new(move |r: &Recorded| {
        let path = r.uri.path().trim_start_matches('/');
        let (sniff, coding) = match path.strip_prefix("sniff-") {
            Some(c) => (true, c),
            None => (false, path),
        };
        let Some((_, data)) = bodies.iter().find(|(c, _)| *c == coding) else {
            return reply(200, "plain text");
        };
        let mut res = reply(200, data.clone());
        if !sniff {
            res.headers_mut()
                .insert("content-encoding", coding.parse().expect("value"));
        }
        res
    }))
    .await
}

#[tokio::test]
async fn each_encoding_is_decoded_when_asked_and_passes_through_otherwise() {
    let up = compressing().await;
    let sk = start(&up.url(""), &[]);
    let c = TestClient::default();
    let plain = TEXT.repeat(200);
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let url = sk.url(&format!("/proxy/{coding}"));
        let res = c
            .send(
                "GET",
                &url,
                &headers("plain", &[("decompress", "true")]),
                Bytes::new(),
            )
            .await;
        assert_eq!(res.status, 200);
        assert_eq!(res.text(), plain, "{coding} decoded");
        assert_eq!(res.header("content-encoding"), None);
        assert_eq!(res.header("content-length"), None);

        // The provider's `decompress: true` does the same.
        let res = c
            .send("GET", &url, &headers("squeezed", &[]), Bytes::new())
            .await;
        assert_eq!(res.text(), plain, "{coding} decoded for the provider");

        // Not asked: the exact compressed bytes and their headers.
        let res = c
            .send("GET", &url, &headers("plain", &[]), Bytes::new())
            .await;
        assert_eq!(
            res.body.as_ref(),
            encode(coding, plain.as_bytes()).await.as_slice()
        );
        assert_eq!(res.header("content-encoding"), Some(coding));
        let res = c
            .send(
                "GET",
                &url,
                &headers("plain", &[("decompress", "false")]),
                Bytes::new(),
            )
            .await;
        assert_eq!(res.header("content-encoding"), Some(coding));
    }
    // No Content-Encoding: gzip and zstd are recognised by their magic bytes.
    for coding in ["gzip", "zstd"] {
        let url = sk.url(&format!("/proxy/sniff-{coding}"));
        let res = c
            .send(
                "GET",
                &url,
                &headers("plain", &[("decompress", "true")]),
                Bytes::new(),
            )
            .await;
        assert_eq!(res.text(), plain, "{coding} sniffed");
    }
    // Anything else passes through, its length kept.
    let res = c
        .send(
            "GET",
            &sk.url("/proxy/other"),
            &headers("plain", &[("decompress", "true")]),
            Bytes::new(),
        )
        .await;
    assert_eq!(res.text(), "plain text");
    assert_eq!(res.header("content-length"), Some("10"));
}
