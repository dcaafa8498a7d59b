//! Listener limits through the real binary, with raw sockets for the hostile clients: partial
//! and silent request heads cut at the header-read timeout, idle HTTP/1.1 keep-alive and idle
//! h2 connections closed at their timeouts (and busy ones kept), the connection limit refusing
//! the connection beyond it while the others keep working, the admin listener answering while
//! the proxy listener is full, 431 for too many or too large headers, and the open-file limit
//! raised at start. The 10 000-connection flood measurement is an ignored test at the end.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::client::{proxy_headers, TestClient};
use support::sidekey::{sidekey, Sidekey};
use support::upstream::{ok_json, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that a loaded machine never makes a closed-on-time connection look held open.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

fn providers(base: &str) -> String {
    format!(
        r#"
hdr:
  auth_mode: API_KEY
  proxy: {{base_url: "{base}/api", headers: {{authorization: "Bearer ${{apiKey}}"}}}}
"#
    )
}

const VAULT: &str = r#"
integrations:
  - {unique_key: hdr, provider: hdr}
connections:
  - {connection_id: c1, provider_config_key: hdr, credentials: {type: API_KEY, apiKey: "k-limits"}}
"#;

async fn start(args: &[&str]) -> (Upstream, Sidekey) {
    let up = Upstream::start(ok_json()).await;
    let sk = sidekey(&providers(&up.url("")), VAULT)
        .args(args.iter().copied())
        .start();
    (up, sk)
}

/// Reads until the peer closes (EOF or reset); `None` if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(got)
}

/// Sends one HTTP/1.1 request and reads one response (head, and a body of Content-Length).
async fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String) {
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("content-length"))
                })
                .unwrap_or(0);
            while got.len() < end + 4 + len {
                let n = stream.read(&mut buf).await.expect("read body");
                assert!(n > 0, "closed mid-body: {head}");
                got.extend_from_slice(&buf[..n]);
            }
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status");
            let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
            return (status, format!("{head}\r\n\r\n{body}"));
        }
        let n = tokio::time::timeout(CLOSE_BOUND, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read head");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A request sidekey answers itself without an upstream (401 missing_auth_header).
fn unauthenticated(host: &str) -> String {
    format!("GET /proxy/x HTTP/1.1\r\nhost: {host}\r\n\r\n")
}

#[tokio::test]
async fn silent_and_partial_heads_are_cut_at_the_header_read_timeout() {
    let (_up, sk) = start(&["--header-read-timeout", "300ms"]).await;
    let starts: [&[u8]; 5] = [
        b"",
        b"G",
        b"P",
        b"GET /proxy/x HTTP/1.1\r\nhost: a\r\nx-slow: ",
        b"PRI * HTTP/2.0\r\n",
    ];
    let mut conns = Vec::new();
    for _ in 0..4 {
        for start in starts {
            let mut s = TcpStream::connect(sk.addr).await.expect("connect");
            s.write_all(start).await.expect("write");
            conns.push(s);
        }
    }
    let began = Instant::now();
    for (i, s) in conns.iter_mut().enumerate() {
        let got = read_until_closed(s, CLOSE_BOUND).await;
        assert!(
            got.is_some(),
            "connection {i} (starting {:?}) is still open",
            String::from_utf8_lossy(starts[i % starts.len()])
        );
    }
    assert!(
        began.elapsed() >= Duration::from_millis(250),
        "cut before the timeout: {:?}",
        began.elapsed()
    );
    // The listener still serves whole requests, on time.
    let mut s = TcpStream::connect(sk.addr).await.expect("connect");
    let (status, _) = exchange(&mut s, &unauthenticated("a")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn idle_http1_keepalive_is_closed_and_a_busy_one_kept() {
    let (_up, sk) = start(&["--keepalive-timeout", "600ms"]).await;
    // Busy: a request every 200 ms for 2 s keeps the connection open throughout, longer than
    // the timeout: the limit is on idleness, not on age.
    let mut busy = TcpStream::connect(sk.addr).await.expect("connect");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (status, text) = exchange(&mut busy, &unauthenticated("a")).await;
        assert_eq!(status, 401, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle after its request: closed once the timeout has passed.
    let mut idle = TcpStream::connect(sk.addr).await.expect("connect");
    let (status, _) = exchange(&mut idle, &unauthenticated("a")).await;
    assert_eq!(status, 401);
    let began = Instant::now();
    let rest = read_until_closed(&mut idle, CLOSE_BOUND).await;
    assert_eq!(
        rest.as_deref(),
        Some(&b""[..]),
        "closed without another byte"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    // The same keep-alive limit holds on the admin listener.
    let mut admin = TcpStream::connect(sk.admin).await.expect("connect");
    let (status, _) = exchange(&mut admin, "GET /live HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(read_until_closed(&mut admin, CLOSE_BOUND).await.is_some());
}

/// An h2 client connection over `stream`; the returned task ends when sidekey closes it.
async fn h2_client(
    stream: TcpStream,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

#[tokio::test]
async fn idle_h2_connections_are_closed() {
    let (_up, sk) = start(&[
        "--header-read-timeout",
        "400ms",
        "--keepalive-timeout",
        "700ms",
    ])
    .await;
    // Preface and SETTINGS, then nothing: gone after the header-read timeout.
    let mut raw = TcpStream::connect(sk.addr).await.expect("connect");
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let began = Instant::now();
    assert!(
        read_until_closed(&mut raw, CLOSE_BOUND).await.is_some(),
        "a silent h2 connection is still open"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "{:?}",
        began.elapsed()
    );

    // One request, then idle: closed after the keep-alive timeout.
    let stream = TcpStream::connect(sk.addr).await.expect("connect");
    let (mut send, closed) = h2_client(stream).await;
    let req = http::Request::get(sk.url("/proxy/x"))
        .body(Empty::new())
        .expect("request");
    let res = send.send_request(req).await.expect("h2 response");
    assert_eq!(res.status(), 401);
    res.into_body().collect().await.expect("body");
    let began = Instant::now();
    tokio::time::timeout(CLOSE_BOUND, closed)
        .await
        .expect("an idle h2 connection is still open")
        .expect("join");
    assert!(
        began.elapsed() >= Duration::from_millis(600),
        "{:?}",
        began.elapsed()
    );
    drop(send);
}

#[tokio::test]
async fn beyond_max_connections_new_ones_are_refused_and_the_rest_served() {
    let (_up, sk) = start(&["--max-connections", "3", "--header-read-timeout", "30s"]).await;
    // Three connections with half a request each: the listener is full.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(sk.addr).await.expect("connect");
        s.write_all(b"GET /proxy/x HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    // The fourth is answered 503 and closed at once.
    let mut extra = TcpStream::connect(sk.addr).await.expect("connect");
    let got = read_until_closed(&mut extra, CLOSE_BOUND)
        .await
        .expect("the connection over the limit is closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("sidekey-error: too_many_connections"),
        "{text}"
    );
    assert!(text.contains(r#""code":"too_many_connections""#), "{text}");
    assert!(
        sk.wait_for_log("connection limit reached", Duration::from_secs(5)),
        "{}",
        sk.logs()
    );
    // The held ones are served when they finish their requests.
    for s in &mut held {
        let (status, text) = exchange(s, "host: a\r\n\r\n").await;
        assert_eq!(status, 401, "{text}");
    }
    // Closing one frees its place for a new connection.
    drop(held.pop());
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        let mut s = TcpStream::connect(sk.addr).await.expect("connect");
        s.write_all(unauthenticated("a").as_bytes())
            .await
            .expect("write");
        let mut buf = [0u8; 12];
        let n = s.read(&mut buf).await.unwrap_or(0);
        if &buf[..n] == b"HTTP/1.1 401" {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed: {:?}", &buf[..n]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn admin_answers_while_the_proxy_listener_is_full() {
    let (up, sk) = start(&[
        "--max-connections",
        "50",
        "--admin-max-connections",
        "4",
        "--header-read-timeout",
        "30s",
    ])
    .await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(sk.addr).await.expect("connect");
        let _ = s.write_all(b"G").await;
        flood.push(s);
    }
    let client = TestClient::http1();
    for path in ["/live", "/ready", "/metrics"] {
        let res = client
            .send("GET", &sk.admin_url(path), &[], Bytes::new())
            .await;
        assert_eq!(res.status, 200, "{path}: {}", res.text());
    }
    // The admin listener has its own budget: four idle admin connections fill it, and a
    // fifth is refused; the proxy flood did not use it up.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(sk.admin).await.expect("connect"));
    }
    let mut fifth = TcpStream::connect(sk.admin).await.expect("connect");
    let got = read_until_closed(&mut fifth, CLOSE_BOUND)
        .await
        .expect("refused");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503"));
    drop(idle);
    drop(flood);
    // With the flood gone, proxied requests go through again.
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        let mut s = TcpStream::connect(sk.addr).await.expect("connect");
        let req = format!(
            "GET /proxy/ok HTTP/1.1\r\nhost: a\r\n{}\r\n",
            proxy_headers("c1", "hdr")
                .iter()
                .map(|(k, v)| format!("{k}: {v}\r\n"))
                .collect::<String>()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = [0u8; 12];
        let n = s.read(&mut buf).await.unwrap_or(0);
        if &buf[..n] == b"HTTP/1.1 200" {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", &buf[..n]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up.count() >= 1);
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let (_up, sk) = start(&["--max-headers", "20", "--max-header-bytes", "4096"]).await;
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut s = TcpStream::connect(sk.addr).await.expect("connect");
    let (status, text) = exchange(
        &mut s,
        &format!("GET /proxy/x HTTP/1.1\r\nhost: a\r\n{many}\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{text}");
    let mut s = TcpStream::connect(sk.addr).await.expect("connect");
    let big = "v".repeat(5000);
    let (status, text) = exchange(
        &mut s,
        &format!("GET /proxy/x HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "{text}");
    // Within the limits, the same request is served.
    let mut s = TcpStream::connect(sk.addr).await.expect("connect");
    let few: String = (0..10).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (status, _) = exchange(
        &mut s,
        &format!("GET /proxy/x HTTP/1.1\r\nhost: a\r\n{few}\r\n"),
    )
    .await;
    assert_eq!(status, 401);

    // h2 has no count limit in hyper: sidekey's own 431, with its JSON error.
    let h2 = TestClient::h2c();
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let res = h2
        .send("GET", &sk.url("/proxy/x"), &headers, Bytes::new())
        .await;
    assert_eq!(res.status, 431, "{}", res.text());
    assert_eq!(res.error_code(), "request_header_fields_too_large");
    assert_eq!(
        res.header("sidekey-error"),
        Some("request_header_fields_too_large")
    );
    // An h2 header list over the byte limit never becomes a request.
    let stream = TcpStream::connect(sk.addr).await.expect("connect");
    let (mut send, _closed) = h2_client(stream).await;
    let req = http::Request::get(sk.url("/proxy/x"))
        .header("x-big", &big)
        .body(Empty::new())
        .expect("request");
    match send.send_request(req).await {
        Ok(res) => assert_eq!(res.status(), 431),
        Err(e) => assert!(
            format!("{e:?}").contains("REFUSED") || e.is_closed(),
            "{e:?}"
        ),
    }
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        .expect("hard nofile");
    if hard <= 512 {
        eprintln!("hard open-file limit {hard}: nothing to raise");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("providers.yaml"),
        providers("http://127.0.0.1:9"),
    )
    .expect("p");
    std::fs::write(dir.path().join("vault.yaml"), VAULT).expect("v");
    // prlimit starts sidekey (same process, exec) with a soft limit below the hard one.
    let mut child = std::process::Command::new("prlimit")
        .arg(format!("--nofile=512:{hard}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_sidekey"))
        .args([
            "serve",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--log-format=json",
        ])
        .current_dir(dir.path())
        .env("SIDEKEY_SECRET_KEY", support::CALLER_KEY)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn prlimit");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let serving = line.contains("sidekey is serving");
            seen.push(line);
            if serving {
                break;
            }
        }
        seen
    })
    .join()
    .expect("reader");
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let logs = lines.join("\n");
    assert!(logs.contains("raised the open-file limit"), "{logs}");
    let soft: Option<u64> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()));
    assert_eq!(soft, Some(hard), "{limits}");
}
