//! Hostile and sloppy upstreams through the real binary (issue 15, items 4, 5, 6, 10, 11).
//!
//! Each upstream here is a bare `TcpListener` on 127.0.0.1 that writes exact bytes, so the
//! framing under test is the one on the wire and not what a well-behaved server library would
//! send. Callers are raw `TcpStream`s where the caller's connection itself is what is checked
//! (two responses on one keep-alive connection, a caller that stops reading).
//!
//! - a chunked answer that also carries Content-Length keeps the caller's connection in step;
//! - `101 Switching Protocols` becomes 502 `upstream_protocol_error`, its connection closed;
//! - a token endpoint's access_token with CR/LF is refused, nothing persisted, old token kept;
//! - a request on a pooled connection the upstream dropped goes out again on a fresh one, when
//!   that is safe; `Keep-Alive: timeout=` keeps sidekey from reusing a connection too late;
//! - a caller that stops reading gets cut after the idle timeout, and so does the upstream.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::client::{proxy_headers, TestClient, AUTH};
use support::sidekey::sidekey;
use support::upstream::{reply, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for anything that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(20);

fn config(base: &str) -> (String, String) {
    let providers = format!(
        "plain:\n  auth_mode: API_KEY\n  proxy:\n    base_url: {base}\n    headers: {{x-key: \"${{apiKey}}\"}}\n"
    );
    let vault = "integrations:\n  - {unique_key: plain, provider: plain}\nconnections:\n  - {connection_id: c1, provider_config_key: plain, credentials: {type: API_KEY, apiKey: k}}\n".to_string();
    (providers, vault)
}

/// A request head as an upstream read it.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A byte stream with a read buffer, for parsing HTTP/1.1 by hand.
struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(s: TcpStream) -> Self {
        Self { s, buf: Vec::new() }
    }

    /// Reads more bytes into the buffer; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next head (request or status line plus headers), or None at EOF.
    async fn head(&mut self) -> Option<(String, Vec<(String, String)>)> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..i + 4).collect();
                let text = String::from_utf8_lossy(&raw[..i]).into_owned();
                let mut lines = text.split("\r\n");
                let first = lines.next().unwrap_or_default().to_string();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                return Some((first, headers));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let raw: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(String::from_utf8_lossy(&raw[..i]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// A request as an upstream sees it (its body read by Content-Length and dropped).
    async fn request(&mut self) -> Option<Head> {
        let (first, headers) = self.head().await?;
        let mut parts = first.split(' ');
        let head = Head {
            method: parts.next().unwrap_or_default().to_string(),
            path: parts.next().unwrap_or_default().to_string(),
            headers,
        };
        let len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.exact(len).await?;
        Some(head)
    }

    /// A response as a caller reads it, framed the way a caller must frame it: chunked when
    /// Transfer-Encoding says so, else by Content-Length.
    async fn response(&mut self) -> Option<(u16, Vec<(String, String)>, Vec<u8>)> {
        let (first, headers) = self.head().await?;
        let status: u16 = first.split(' ').nth(1)?.parse().ok()?;
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let body = if get("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
            let mut body = Vec::new();
            loop {
                let size = self.line().await?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line().await?.is_empty() {}
                    break body;
                }
                body.extend(self.exact(size).await?);
                self.exact(2).await?;
            }
        } else {
            let len: usize = get("content-length").and_then(|v| v.parse().ok())?;
            self.exact(len).await?
        };
        Some((status, headers, body))
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }
}

/// A raw upstream: `serve(wire, n)` runs for its n-th accepted connection (from 0).
async fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Wire, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(Wire::new(s), n));
        }
    });
    (addr, accepted)
}

/// A raw request from the caller to sidekey's `/proxy/{path}`.
fn caller_request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} /proxy/{path} HTTP/1.1\r\nhost: sidekey\r\nauthorization: {AUTH}\r\nconnection-id: c1\r\nprovider-config-key: plain\r\ncontent-length: 0\r\n{extra}\r\n"
    )
    .into_bytes()
}

// ---- item 4: Content-Length beside Transfer-Encoding ----

#[tokio::test]
async fn a_chunked_answer_with_content_length_keeps_the_callers_connection_in_step() {
    // One upstream connection: the first answer claims 5 bytes but is chunked (27 bytes), the
    // second is plain. The caller must read exactly those two answers on one connection.
    let (addr, _) = raw_upstream(|mut w, _| async move {
        let mut n = 0;
        while w.request().await.is_some() {
            let res: &[u8] = if n == 0 {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
                  1b\r\nhello, this body is chunked\r\n0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond"
            };
            w.send(res).await;
            n += 1;
        }
    })
    .await;
    let (p, v) = config(&format!("http://{addr}"));
    let sk = sidekey(&p, &v).start();
    let mut caller = Wire::new(TcpStream::connect(sk.addr).await.expect("connect"));
    caller.send(&caller_request("GET", "one", "")).await;
    let (status, headers, body) = tokio::time::timeout(SOON, caller.response())
        .await
        .expect("first response in time")
        .expect("first response");
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "hello, this body is chunked"
    );
    let cl = headers.iter().any(|(k, _)| k == "content-length");
    let te = headers.iter().any(|(k, _)| k == "transfer-encoding");
    assert!(!(cl && te), "never both framings: {headers:?}");
    caller.send(&caller_request("GET", "two", "")).await;
    let second = tokio::time::timeout(SOON, caller.response())
        .await
        .expect("second response in time");
    let (status, _, body) = second.expect("second response parses");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, "second".to_string()),
        "the second response is the upstream's second response"
    );
}

// ---- item 5: 101 Switching Protocols ----

#[tokio::test]
async fn an_upstream_switching_protocols_gets_502_and_its_connection_closed() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<bool>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let (addr, accepted) = raw_upstream(move |mut w, n| {
        let closed_tx = closed_tx.clone();
        async move {
            if n > 0 {
                while w.request().await.is_some() {
                    w.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                return;
            }
            if w.request().await.is_none() {
                return;
            }
            w.send(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n\x81\x05hello")
                .await;
            // Whatever sidekey does next, it must not keep this connection: EOF or a reset.
            let gone = tokio::time::timeout(SOON, async {
                let mut b = [0u8; 64];
                loop {
                    match w.s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok();
            if let Some(tx) = closed_tx.lock().expect("lock").take() {
                let _ = tx.send(gone);
            }
        }
    })
    .await;
    let (p, v) = config(&format!("http://{addr}"));
    let sk = sidekey(&p, &v).start();
    let c = TestClient::default();
    let res = c.proxy(&sk.url(""), "/ws", "c1", "plain").await;
    assert_eq!(res.status, 502, "{}", res.text());
    assert_eq!(res.error_code(), "upstream_protocol_error");
    assert_eq!(res.header("sidekey-error"), Some("upstream_protocol_error"));
    assert!(
        closed_rx.await.expect("verdict"),
        "the upstream's connection was closed"
    );
    // The caller's connection and the pool are fine: the next request is answered normally.
    let res = c.proxy(&sk.url(""), "/after", "c1", "plain").await;
    assert_eq!((res.status.as_u16(), res.text()), (200, "ok".to_string()));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

// ---- item 6: a token that cannot be a header value ----

#[tokio::test]
async fn a_token_with_a_line_break_is_refused_and_the_old_token_kept() {
    let token = Upstream::start(Arc::new(|_| {
        let body = serde_json::json!({
            "access_token": "at-evil\r\nx-injected: 1",
            "refresh_token": "rt-evil",
            "expires_in": 3600
        });
        let mut r = reply(200, body.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        r
    }))
    .await;
    let api = Upstream::start(support::upstream::ok_json()).await;
    let providers = format!(
        "oa: {{auth_mode: OAUTH2, token_url: \"{}\", proxy: {{base_url: \"{}\"}}}}\n",
        token.url("/oauth/token"),
        api.url("")
    );
    // The token is still valid for a minute, inside the default 5-minute refresh buffer, so
    // the first request tries an early refresh.
    let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 60)
        .expect("ts")
        .to_string();
    let vault = format!(
        "integrations:\n  - {{unique_key: oa, provider: oa, credentials: {{oauth_client_id: id, oauth_client_secret: sec}}}}\nconnections:\n  - connection_id: c1\n    provider_config_key: oa\n    credentials: {{type: OAUTH2, access_token: at-old, refresh_token: rt-old, expires_at: \"{expires}\"}}\n"
    );
    let sk = sidekey(&providers, &vault).start();
    let before = std::fs::read(sk.path("vault.yaml")).expect("vault");
    let c = TestClient::default();
    for i in 0..2 {
        let res = c.proxy(&sk.url(""), "/me", "c1", "oa").await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
    }
    let seen: Vec<_> = api
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(seen, ["Bearer at-old", "Bearer at-old"]);
    assert!(api
        .requests()
        .iter()
        .all(|r| r.header("x-injected").is_none()));
    assert_eq!(token.count(), 1, "the cool-down holds off a second call");
    assert_eq!(
        std::fs::read(sk.path("vault.yaml")).expect("vault"),
        before,
        "nothing persisted"
    );
    assert!(sk.wait_for_log("token refresh failed", SOON));
    let logs = sk.logs();
    assert!(
        !logs.contains("at-evil") && !logs.contains("rt-evil"),
        "{logs}"
    );
}

// ---- item 10: stale pooled connections ----

/// An upstream that answers the first request of each connection and, on every later one,
/// reads the request and closes without a byte, as an upstream does whose keep-alive timer
/// fired just as the request went out. Records each request's method, path and connection.
async fn drops_reused_connections() -> (SocketAddr, Arc<Mutex<Vec<(Head, usize)>>>) {
    let seen: Arc<Mutex<Vec<(Head, usize)>>> = Arc::default();
    let log = seen.clone();
    let (addr, _) = raw_upstream(move |mut w, n| {
        let log = log.clone();
        async move {
            let Some(head) = w.request().await else {
                return;
            };
            log.lock().expect("lock").push((head, n));
            let body = format!("conn {n}");
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            w.send(res.as_bytes()).await;
            if let Some(head) = w.request().await {
                log.lock().expect("lock").push((head, n));
            }
            // Dropping `w` closes the connection with nothing written.
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn a_request_on_a_connection_the_upstream_dropped_goes_out_again_on_a_fresh_one() {
    let (addr, seen) = drops_reused_connections().await;
    let (p, v) = config(&format!("http://{addr}"));
    let sk = sidekey(&p, &v).start();
    let c = TestClient::default();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let res = c
            .proxy(&sk.url(""), &format!("/n/{i}"), "c1", "plain")
            .await;
        statuses.push(res.status.as_u16());
    }
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "{failed} of 20 failed: {statuses:?}");
    // Every request after the first met a dead connection first, then a fresh one.
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 39, "{seen:?}");
    // The resend is transparent: not a `Retries` attempt, so the access log says 1.
    assert!(sk.wait_for_log("\"attempts\":1", SOON));
    assert!(!sk.logs().contains("\"attempts\":2"));
}

#[tokio::test]
async fn only_a_safe_request_is_sent_again_after_its_connection_died() {
    let (addr, seen) = drops_reused_connections().await;
    let (p, v) = config(&format!("http://{addr}"));
    let sk = sidekey(&p, &v).start();
    let c = TestClient::default();
    let send =
        |method: &'static str, path: &'static str, extra: Vec<(&'static str, &'static str)>| {
            let c = c.clone();
            let url = sk.url(&format!("/proxy{path}"));
            async move {
                let mut h = proxy_headers("c1", "plain");
                h.extend(extra);
                c.send(method, &url, &h, bytes::Bytes::new()).await
            }
        };
    // Each pair: a GET that leaves a connection in the pool, then the request under test on it.
    assert_eq!(send("GET", "/warm1", vec![]).await.status, 200);
    let post = send("POST", "/charge", vec![]).await;
    assert_eq!(post.status, 502, "{}", post.text());
    assert_eq!(post.error_code(), "upstream_unreachable");
    assert_eq!(send("GET", "/warm2", vec![]).await.status, 200);
    let keyed = send("POST", "/keyed", vec![("idempotency-key", "k-1")]).await;
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    assert_eq!(send("GET", "/warm3", vec![]).await.status, 200);
    let put = send("PUT", "/put", vec![]).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let seen = seen.lock().expect("lock").clone();
    let times = |path: &str| seen.iter().filter(|(h, _)| h.path == path).count();
    assert_eq!(times("/charge"), 1, "a POST is never sent twice: {seen:?}");
    assert_eq!(times("/keyed"), 2, "{seen:?}");
    assert_eq!(times("/put"), 2, "{seen:?}");
    let keyed: Vec<_> = seen.iter().filter(|(h, _)| h.path == "/keyed").collect();
    assert!(keyed
        .iter()
        .all(|(h, _)| h.method == "POST" && h.header("idempotency-key") == Some("k-1")));
}

/// An upstream that keeps each connection open for any number of requests and says
/// `keep-alive` in each answer; records on which connection each request came.
async fn keep_alive_upstream(hint: Option<&'static str>) -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(move |mut w, _| async move {
        while w.request().await.is_some() {
            let extra = hint
                .map(|h| format!("keep-alive: {h}\r\n"))
                .unwrap_or_default();
            let res = format!("HTTP/1.1 200 OK\r\n{extra}content-length: 2\r\n\r\nok");
            w.send(res.as_bytes()).await;
        }
    })
    .await
}

#[tokio::test]
async fn an_upstream_keep_alive_timeout_limits_reuse() {
    for (hint, args, want) in [
        (None, vec![], 1),
        (Some("timeout=1, max=100"), vec![], 2),
        (None, vec!["--pool-idle-timeout=300ms"], 2),
    ] {
        let (addr, accepted) = keep_alive_upstream(hint).await;
        let (p, v) = config(&format!("http://{addr}"));
        let sk = sidekey(&p, &v).args(args.clone()).start();
        let c = TestClient::default();
        assert_eq!(c.proxy(&sk.url(""), "/a", "c1", "plain").await.status, 200);
        // Past half of the upstream's 1 s, well within sidekey's own idle default.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(c.proxy(&sk.url(""), "/b", "c1", "plain").await.status, 200);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            want,
            "hint {hint:?}, {args:?}"
        );
    }
}

// ---- item 11: a caller that stops reading ----

#[tokio::test]
async fn a_caller_that_stops_reading_releases_both_connections() {
    const SIZE: u64 = 64 << 20;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u64>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let (addr, _) = raw_upstream(move |mut w, _| {
        let done_tx = done_tx.clone();
        async move {
            if w.request().await.is_none() {
                return;
            }
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n");
            w.send(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            while sent < SIZE {
                if w.s.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            if let Some(tx) = done_tx.lock().expect("lock").take() {
                let _ = tx.send(sent);
            }
        }
    })
    .await;
    let (p, v) = config(&format!("http://{addr}"));
    let sk = sidekey(&p, &v).arg("--idle-timeout=1s").start();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut caller = Wire::new(socket.connect(sk.addr).await.expect("connect"));
    caller.send(&caller_request("GET", "big", "")).await;
    let (status, _) = tokio::time::timeout(SOON, caller.head())
        .await
        .expect("head in time")
        .expect("head");
    assert!(status.contains(" 200 "), "{status}");
    // The caller reads nothing more. The upstream must see its connection go.
    let sent = tokio::time::timeout(SOON, done_rx)
        .await
        .expect("the upstream's connection was released")
        .expect("sent");
    assert!(sent < SIZE, "the upstream could not write the whole body");
    // And the caller's connection is cut, not left open: it ends before the whole body.
    let mut got = caller.buf.len() as u64;
    let ended = tokio::time::timeout(SOON, async {
        let mut b = vec![0u8; 64 * 1024];
        loop {
            match caller.s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the caller's connection was closed");
    assert!(got < SIZE, "cut short: {got} bytes");
    assert!(sk.wait_for_log("stalled", SOON), "{}", sk.logs());
}

#[tokio::test]
async fn a_resend_after_a_stale_connection_leaves_the_retry_count_alone() {
    // The first request of each connection is answered from this script; a second request on
    // a connection is read and the connection closed, as above.
    let script: Arc<Mutex<Vec<u16>>> = Arc::new(Mutex::new(vec![200, 503, 200]));
    let (addr, accepted) = raw_upstream(move |mut w, _| {
        let script = script.clone();
        async move {
            if w.request().await.is_none() {
                return;
            }
            let status = {
                let mut s = script.lock().expect("lock");
                if s.len() > 1 {
                    s.remove(0)
                } else {
                    s[0]
                }
            };
            let res = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
            w.send(res.as_bytes()).await;
            let _ = w.request().await;
        }
    })
    .await;
    let (p, v) = config(&format!("http://{addr}"));
    let sk = sidekey(&p, &v)
        .arg("--retry-backoff-base=1ms")
        .arg("--retry-backoff-max=5ms")
        .start();
    let c = TestClient::default();
    assert_eq!(
        c.proxy(&sk.url(""), "/warm", "c1", "plain").await.status,
        200
    );
    let mut h = proxy_headers("c1", "plain");
    h.push(("retries", "1"));
    let res = c
        .send("GET", &sk.url("/proxy/x"), &h, bytes::Bytes::new())
        .await;
    // Stale connection → resend (not counted) → 503 → one retry (counted) → 200.
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert!(sk.wait_for_log("\"attempts\":2", SOON), "{}", sk.logs());
}

#[tokio::test]
async fn a_token_call_on_a_connection_the_endpoint_dropped_goes_out_again() {
    // Each connection answers its first token call and drops the next one unanswered.
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let (addr, accepted) = raw_upstream(move |mut w, _| {
        let count = count.clone();
        async move {
            if w.request().await.is_none() {
                return;
            }
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            // Expires at once (inside the refresh buffer), so every request refreshes.
            let body = format!(r#"{{"access_token":"at-{n}","expires_in":1}}"#);
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            w.send(res.as_bytes()).await;
            let _ = w.request().await;
        }
    })
    .await;
    let api = Upstream::start(support::upstream::ok_json()).await;
    let providers = format!(
        "cc: {{auth_mode: OAUTH2_CC, token_url: \"http://{addr}/token\", proxy: {{base_url: \"{}\"}}}}\n",
        api.url("")
    );
    let vault = "integrations:\n  - {unique_key: cc, provider: cc, credentials: {oauth_client_id: id, oauth_client_secret: sec}}\nconnections:\n  - {connection_id: c1, provider_config_key: cc, credentials: {type: OAUTH2_CC}}\n";
    let sk = sidekey(&providers, vault).start();
    let c = TestClient::default();
    for i in 0..2 {
        let res = c.proxy(&sk.url(""), "/me", "c1", "cc").await;
        assert_eq!(res.status, 200, "request {i}: {}", res.text());
    }
    let seen: Vec<_> = api
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_string())
        .collect();
    assert_eq!(seen, ["Bearer at-1", "Bearer at-2"], "{}", sk.logs());
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert!(!sk.logs().contains("token refresh failed"), "{}", sk.logs());
}
