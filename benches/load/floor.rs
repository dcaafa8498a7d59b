//! The floor of a hyper proxy, for the load harness (`benches/load/run.sh`, layout `floor`).
//!
//! Question answered: how fast can *any* proxy built on hyper's HTTP/1 server and client be on
//! this machine? This program does the job of the harness's nginx configuration and nothing
//! else: it checks the caller key and the two routing headers by byte comparison, strips them,
//! injects the upstream bearer token, rewrites `/proxy/X` to `/api/X`, and forwards over a
//! keep-alive pool of `hyper::client::conn::http1` connections, streaming both bodies. No
//! configuration, no snapshot, no retries, timeouts, metrics or logs. Whatever sidekey costs
//! above this is sidekey's own; whatever this costs above nginx is hyper's.
//!
//! ```text
//! cargo build --release --example bench-floor
//! target/release/examples/bench-floor --listen 127.0.0.1:PORT --upstream 127.0.0.1:UPORT
//! ```
//!
//! Like sidekey with one worker, it runs on a tokio current-thread runtime.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const CALLER: &[u8] = b"Bearer bench-caller-key";
const UPSTREAM_AUTH: &str = "Bearer bench-upstream-token";

type Pool = Arc<Mutex<Vec<client::SendRequest<Incoming>>>>;
type Out = BoxBody<Bytes, hyper::Error>;

/// The upstream's body; returns its connection to the pool once read to the end.
struct Pooled {
    inner: Incoming,
    done: bool,
    sender: Option<client::SendRequest<Incoming>>,
    pool: Pool,
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.is_end_stream() {
            if let (Some(s), Ok(mut pool)) = (self.sender.take(), self.pool.lock()) {
                pool.push(s);
            }
        }
    }
}

fn status(code: StatusCode) -> Response<Out> {
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

async fn proxy(req: Request<Incoming>, upstream: &'static str, pool: Pool) -> Response<Out> {
    let (mut parts, body) = req.into_parts();
    let h = &parts.headers;
    let ok = h.get(AUTHORIZATION).map(HeaderValue::as_bytes) == Some(CALLER)
        && h.get("connection-id").map(HeaderValue::as_bytes) == Some(&b"c1"[..])
        && h.get("provider-config-key").map(HeaderValue::as_bytes) == Some(&b"bench"[..]);
    let Some(rest) = parts.uri.path().strip_prefix("/proxy/") else {
        return status(StatusCode::NOT_FOUND);
    };
    if !ok {
        return status(StatusCode::UNAUTHORIZED);
    }
    let mut pq = String::with_capacity(parts.uri.path().len() + 8);
    pq.push_str("/api/");
    pq.push_str(rest);
    if let Some(q) = parts.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let Ok(uri) = pq.parse::<Uri>() else {
        return status(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.headers.remove("connection-id");
    parts.headers.remove("provider-config-key");
    parts
        .headers
        .insert(AUTHORIZATION, HeaderValue::from_static(UPSTREAM_AUTH));
    parts
        .headers
        .insert(HOST, HeaderValue::from_static(upstream));
    let req = Request::from_parts(parts, body);
    let mut idle = pool.lock().ok().and_then(|mut p| p.pop());
    let ready = match idle.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    let mut sender = match idle {
        Some(s) if ready => s,
        _ => match connect(upstream).await {
            Some(s) => s,
            None => return status(StatusCode::BAD_GATEWAY),
        },
    };
    match sender.send_request(req).await {
        Ok(res) => res.map(|inner| {
            Pooled {
                inner,
                done: false,
                sender: Some(sender),
                pool,
            }
            .boxed()
        }),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

async fn connect(upstream: &str) -> Option<client::SendRequest<Incoming>> {
    let tcp = TcpStream::connect(upstream).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = client::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

fn main() {
    let (Some(listen), Some(upstream)) = (arg("--listen"), arg("--upstream")) else {
        eprintln!("usage: bench-floor --listen 127.0.0.1:PORT --upstream 127.0.0.1:UPORT");
        std::process::exit(2);
    };
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-floor: runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bench-floor: bind {listen}: {e}");
                std::process::exit(1);
            }
        };
        let pool: Pool = Arc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let pool = pool.clone();
                    async move { Ok::<_, Infallible>(proxy(req, upstream, pool).await) }
                });
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
