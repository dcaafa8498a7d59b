//! Listener limits through the real binary, with raw sockets for the hostile clients: partial
//! and silent request heads cut at the header-read timeout, idle HTTP/1.1 keep-alive and idle
//! h2 connections closed at their timeouts (and busy ones kept), the connection limit refusing
//! the connection beyond it while the others keep working, the admin listener answering while
//! the proxy listener is full, 431 for too many or too large headers, the h2 SETTINGS that
//! announce the limits, a half-sent head not holding up the drain, and the open-file limit
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
async fn a_half_sent_head_does_not_hold_up_the_drain() {
    let (_up, mut sk) = start(&["--drain-timeout", "60s", "--header-read-timeout", "60s"]).await;
    let mut half = TcpStream::connect(sk.addr).await.expect("connect");
    half.write_all(b"GET /proxy/x HTTP/1.1\r\nhost: a\r\n")
        .await
        .expect("write");
    // Let sidekey read the bytes into hyper before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sk.signal("TERM");
    assert_eq!(sk.wait_exit(CLOSE_BOUND), Some(0), "{}", sk.logs());
    assert!(
        !sk.logs().contains("drain timeout reached"),
        "{}",
        sk.logs()
    );
    drop(half);
}

#[tokio::test]
async fn h2_settings_announce_the_stream_and_header_limits() {
    let (_up, sk) = start(&[
        "--max-concurrent-streams",
        "7",
        "--max-header-bytes",
        "5000",
    ])
    .await;
    let mut raw = TcpStream::connect(sk.addr).await.expect("connect");
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    // The server's first frame is its SETTINGS: 9-byte header, then 6-byte (id, value) pairs.
    let mut head = [0u8; 9];
    tokio::time::timeout(CLOSE_BOUND, raw.read_exact(&mut head))
        .await
        .expect("settings in time")
        .expect("read");
    assert_eq!(head[3], 0x4, "a SETTINGS frame: {head:?}");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    raw.read_exact(&mut payload).await.expect("payload");
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        settings.contains(&(0x3, 7)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert!(
        settings.contains(&(0x6, 5000)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );
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
    // An h2 header list over the byte limit never becomes a request: the h2 layer's 431.
    let stream = TcpStream::connect(sk.addr).await.expect("connect");
    let (mut send, _closed) = h2_client(stream).await;
    let req = http::Request::get(sk.url("/proxy/x"))
        .header("x-big", &big)
        .body(Empty::new())
        .expect("request");
    let res = send.send_request(req).await.expect("h2 response");
    assert_eq!(res.status(), 431);
}

/// A sidekey started through `prlimit` with the given open-file limits (so its soft limit can
/// start below the hard one, as under systemd's defaults); `bin` is the binary to run.
struct Limited {
    child: std::process::Child,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Limited {
    fn start(bin: &str, nofile: &str, base: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("providers.yaml"), providers(base)).expect("p");
        std::fs::write(dir.path().join("vault.yaml"), VAULT).expect("v");
        let mut child = std::process::Command::new("prlimit")
            .arg(format!("--nofile={nofile}"))
            .arg("--")
            .arg(bin)
            .args([
                "serve",
                "--listen=127.0.0.1:0",
                "--admin-listen=127.0.0.1:0",
                "--log-format=json",
            ])
            .args(args)
            .current_dir(dir.path())
            .env("SIDEKEY_SECRET_KEY", support::CALLER_KEY)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn prlimit");
        let stderr = child.stderr.take().expect("stderr");
        let logs: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("sidekey is serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let serving = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("sidekey did not start: {:?}", logs.lock().expect("lock")));
        let v: serde_json::Value = serde_json::from_str(&serving).expect("json log");
        let addr = v["listen"].as_str().expect("listen").parse().expect("addr");
        let admin = v["admin"].as_str().expect("admin").parse().expect("addr");
        Self {
            child,
            logs,
            addr,
            admin,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    fn proc_field(&self, file: &str, key: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hard_nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        .expect("hard nofile")
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let hard = hard_nofile();
    if hard <= 512 {
        eprintln!("hard open-file limit {hard}: nothing to raise");
        return;
    }
    let sk = Limited::start(
        env!("CARGO_BIN_EXE_sidekey"),
        &format!("512:{hard}"),
        "http://127.0.0.1:9",
        &[],
    );
    let limits = sk.proc_field("limits", "Max open files");
    assert!(
        sk.logs().contains("raised the open-file limit"),
        "{}",
        sk.logs()
    );
    let soft: Option<u64> = limits
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok());
    assert_eq!(soft, Some(hard), "{limits}");
}

/// One request on a fresh connection; its latency, or `None` when it failed or took over 2 s.
async fn timed(addr: std::net::SocketAddr, request: &str, expect: u16) -> Option<Duration> {
    let began = Instant::now();
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got.starts_with(format!("HTTP/1.1 {expect}").as_bytes())
            .then(|| began.elapsed())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// The figure of issue 15, item 1: 10 000 connections that send one byte each, then `/live`
/// and a proxied request timed on fresh connections while they are held, and sidekey's RSS.
/// sidekey runs with a soft open-file limit of 1024 (the usual default) under this process's
/// hard limit. `SIDEKEY_FLOOD_BIN` runs another binary (e.g. a build from before the limits),
/// `SIDEKEY_FLOOD_ARGS` adds flags, `SIDEKEY_FLOOD_NOFILE` sets its `soft:hard` limits. Run: `cargo test --test limits -- --ignored --nocapture
/// flood` (the test process needs 10 000 descriptors of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: 10 000 sockets"]
async fn flood_of_one_byte_connections() {
    const FLOOD: usize = 10_000;
    let up = Upstream::start(ok_json()).await;
    let bin = std::env::var("SIDEKEY_FLOOD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sidekey").to_string());
    let hard = hard_nofile();
    let extra = std::env::var("SIDEKEY_FLOOD_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let nofile = std::env::var("SIDEKEY_FLOOD_NOFILE").unwrap_or(format!("1024:{hard}"));
    let sk = Limited::start(&bin, &nofile, &up.url(""), &extra);
    let rss = |sk: &Limited| {
        sk.proc_field("status", "VmRSS")
            .split_whitespace()
            .nth(1)
            .unwrap_or("?")
            .to_string()
    };
    let idle_rss = rss(&sk);
    let live = "GET /live HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_string();
    let proxied = format!(
        "GET /proxy/ok HTTP/1.1\r\nhost: a\r\nconnection: close\r\n{}\r\n",
        proxy_headers("c1", "hdr")
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect::<String>()
    );
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let addr = sk.addr;
    for _ in 0..FLOOD {
        tasks.spawn(async move {
            // Generous: a SYN dropped from a full accept backlog is sent again after 1 s, 3 s.
            let mut s = tokio::time::timeout(Duration::from_secs(8), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            s.write_all(b"G").await.ok()?;
            Some(s)
        });
    }
    let mut held = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(s)) = done {
            held.push(s);
        }
    }
    let flood_secs = began.elapsed().as_secs_f64();
    let mut lives = Vec::new();
    let mut proxieds = Vec::new();
    for _ in 0..20 {
        lives.push(timed(sk.admin, &live, 200).await);
        proxieds.push(timed(sk.addr, &proxied, 200).await);
    }
    let flood_rss = rss(&sk);
    let hwm = sk.proc_field("status", "VmHWM");
    let open = {
        let metrics = "GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
        let mut s = TcpStream::connect(sk.admin).await.ok();
        let mut text = String::new();
        if let Some(s) = s.as_mut() {
            let _ = s.write_all(metrics.as_bytes()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text)).await;
        }
        text.lines()
            .find(|l| l.starts_with("sidekey_client_connections "))
            .unwrap_or("sidekey_client_connections ?")
            .to_string()
    };
    let summary = |v: &[Option<Duration>]| {
        let mut ok: Vec<Duration> = v.iter().flatten().copied().collect();
        ok.sort();
        format!(
            "{}/{} answered, median {:?}, max {:?}",
            ok.len(),
            v.len(),
            ok.get(ok.len() / 2),
            ok.last()
        )
    };
    println!("binary: {bin}");
    println!(
        "flood: {} of {FLOOD} connections held after {flood_secs:.1}s",
        held.len()
    );
    println!("during the flood: {open}");
    println!("/live:    {}", summary(&lives));
    println!("proxied:  {}", summary(&proxieds));
    println!("RSS: {idle_rss} kB idle, {flood_rss} kB during the flood; {hwm}");
    println!(
        "open-file limit of sidekey: {}",
        sk.proc_field("limits", "Max open files")
    );
    drop(held);
}
