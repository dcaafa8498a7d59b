//! Upstream server for the load harness (`benches/load/run.sh`).
//!
//! This is the fake "API" that sits behind the proxies being compared
//! (direct, nginx, sidekey). It is deliberately cheap so that the numbers
//! measure the proxy, not the upstream. Built as the cargo example
//! `bench-upstream`:
//!
//! ```text
//! cargo build --release --example bench-upstream
//! target/release/examples/bench-upstream --listen 127.0.0.1:18080 [--threads N]
//! ```
//!
//! Runtime: a tokio **current-thread** runtime by default (`--threads 1`).
//! The harness pins the upstream to a single CPU with `taskset`, and one
//! thread on one core avoids cross-thread wake-ups and keeps the upstream's
//! cost small and stable across layouts. `--threads N` (N > 1) switches to
//! a multi-thread runtime with N workers, should anyone want it.
//!
//! Routes (HTTP/1.1, keep-alive on, TCP_NODELAY on):
//!
//! * `GET|POST|… /api/<anything>` → `200`, fixed 100-byte JSON body,
//!   `content-type: application/json`. The request **must** carry
//!   `authorization: Bearer bench-upstream-token`, otherwise `401`. The proxies
//!   receive a different caller key, so a 200 proves they injected the
//!   upstream credential (and stripped the caller's).
//! * `GET /stream/<n>` and `GET /api/stream/<n>` → `200`, streams `<n>` zero
//!   bytes in 64 KiB chunks (`content-length` set).
//! * `POST /sink` and `POST /api/sink` → reads and discards the whole request
//!   body, answers `200 {"bytes":<n>}`.
//! * `GET /__stats` → `{"ok":…,"unauthorized":…,"not_found":…}` counters
//!   since start, so the harness can print how many 401s it caused.
//!
//! Everything under `/api/` (including `/api/stream` and `/api/sink`) checks
//! the bearer token; the bare `/stream` and `/sink` aliases do not.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const EXPECTED_AUTH: &[u8] = b"Bearer bench-upstream-token";

/// Exactly 100 bytes of JSON (checked at compile time below).
const ITEMS_BODY: &[u8] =
    br#"{"id":"item_0001","name":"bench","ok":true,"values":[1,2,3,4,5,6,7,8],"note":"sidekey-load-bench!!"}"#;
const _: () = assert!(ITEMS_BODY.len() == 100);

const CHUNK_SIZE: usize = 64 * 1024;
static ZEROS: [u8; CHUNK_SIZE] = [0u8; CHUNK_SIZE];

static OK: AtomicU64 = AtomicU64::new(0);
static UNAUTHORIZED: AtomicU64 = AtomicU64::new(0);
static NOT_FOUND: AtomicU64 = AtomicU64::new(0);

type Body = BoxBody<Bytes, hyper::Error>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    respond(status, "application/json", full(body))
}

fn authorized(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == EXPECTED_AUTH)
}

/// Streams `total` zero bytes in 64 KiB frames without allocating per chunk.
fn stream_zeros(total: u64) -> Response<Body> {
    let chunk = Bytes::from_static(&ZEROS);
    let chunk_u64 = CHUNK_SIZE as u64;
    let frames = total.div_ceil(chunk_u64);
    let body = StreamBody::new(stream::iter((0..frames).map(move |i| {
        let remaining = total - i * chunk_u64;
        // `remaining` <= CHUNK_SIZE in this branch, so the cast is lossless.
        let len = if remaining >= chunk_u64 {
            CHUNK_SIZE
        } else {
            remaining as usize
        };
        Ok::<_, hyper::Error>(Frame::data(chunk.slice(..len)))
    })));
    let mut resp = respond(StatusCode::OK, "application/octet-stream", body.boxed());
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(total));
    resp
}

async fn sink(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                }
            }
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    format!("{{\"error\":\"{e}\",\"bytes\":{n}}}"),
                )
            }
        }
    }
    json(StatusCode::OK, format!("{{\"bytes\":{n}}}"))
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();

    if path == "/__stats" {
        let s = format!(
            "{{\"ok\":{},\"unauthorized\":{},\"not_found\":{}}}",
            OK.load(Ordering::Relaxed),
            UNAUTHORIZED.load(Ordering::Relaxed),
            NOT_FOUND.load(Ordering::Relaxed)
        );
        return Ok(json(StatusCode::OK, s));
    }

    let (rest, needs_auth) = match path.strip_prefix("/api") {
        Some(r) if r.is_empty() || r.starts_with('/') => (r, true),
        _ => (path.as_str(), false),
    };

    if needs_auth && !authorized(&req) {
        UNAUTHORIZED.fetch_add(1, Ordering::Relaxed);
        return Ok(json(
            StatusCode::UNAUTHORIZED,
            &br#"{"error":"missing or wrong upstream credential"}"#[..],
        ));
    }

    let resp = if let Some(n) = rest.strip_prefix("/stream/") {
        match n.parse::<u64>() {
            Ok(total) if req.method() == Method::GET => stream_zeros(total),
            _ => json(StatusCode::BAD_REQUEST, &br#"{"error":"bad stream"}"#[..]),
        }
    } else if rest == "/sink" && req.method() == Method::POST {
        sink(req).await
    } else if needs_auth {
        // Any other /api/... path: the fixed 100-byte JSON document.
        // Drain a request body if there is one, so keep-alive stays usable.
        let _ = req.into_body().collect().await;
        json(StatusCode::OK, Bytes::from_static(ITEMS_BODY))
    } else {
        NOT_FOUND.fetch_add(1, Ordering::Relaxed);
        return Ok(json(
            StatusCode::NOT_FOUND,
            &br#"{"error":"not found"}"#[..],
        ));
    };
    if resp.status() == StatusCode::OK {
        OK.fetch_add(1, Ordering::Relaxed);
    }
    Ok(resp)
}

struct Args {
    listen: SocketAddr,
    threads: usize,
}

fn usage() -> ! {
    eprintln!("usage: bench-upstream --listen 127.0.0.1:PORT [--threads N]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut listen: Option<SocketAddr> = None;
    let mut threads = 1usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = it.next().and_then(|v| v.parse().ok()).or_else(|| usage()),
            "--threads" => {
                threads = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    Args {
        listen: listen.unwrap_or_else(|| usage()),
        threads,
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "bench-upstream listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept error: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service_fn(handle));
            if let Err(e) = conn.await {
                // Clients (wrk, curl) hang up mid-stream at the end of runs.
                if !e.is_incomplete_message() {
                    eprintln!("connection error: {e}");
                }
            }
        });
    }
}

fn main() -> std::io::Result<()> {
    let args = parse_args();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(args.listen))
}
