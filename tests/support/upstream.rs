//! Loopback upstreams that record every request they receive.
//!
//! [`Upstream::start`] takes a synchronous handler that sees the whole recorded request (body
//! collected). [`Upstream::start_raw`] hands the handler the live request, for streaming tests
//! where the body must not be held in memory. Both speak HTTP/1.1 and h2c; the `_tls` variants
//! speak TLS with ALPN h2 and http/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request head arrived.
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type SyncHandler = Arc<dyn Fn(&Recorded) -> Response<TestBody> + Send + Sync>;
pub type RawHandler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A body from bytes.
pub fn body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A response with a status and a body.
pub fn reply(status: u16, b: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = Response::new(body(b));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r
}

/// A handler answering 200 `{"ok":true}` to everything.
pub fn ok_json() -> SyncHandler {
    Arc::new(|_| {
        let mut r = reply(200, r#"{"ok":true}"#);
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
        r
    })
}

pub struct Upstream {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// A plain HTTP/1.1 + h2c upstream with a recording handler.
    pub async fn start(handler: SyncHandler) -> Self {
        Self::spawn(Mode::Sync(handler), None).await
    }

    /// [`Upstream::start`] on a given address (a receiver that comes back on the port it had).
    pub async fn start_on(addr: SocketAddr, handler: SyncHandler) -> Self {
        Self::spawn_at(addr, Mode::Sync(handler), None).await
    }

    /// A TLS upstream (ALPN h2 + http/1.1) with a recording handler.
    pub async fn start_tls(handler: SyncHandler, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::spawn(Mode::Sync(handler), Some(tls)).await
    }

    /// A plain upstream whose handler gets the live request (nothing is recorded but the head).
    pub async fn start_raw(handler: RawHandler) -> Self {
        Self::spawn(Mode::Raw(handler), None).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().expect("lock").len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The only request received; panics if there were several or none.
    pub fn only(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(
            r.len(),
            1,
            "expected exactly one upstream request, got {r:#?}"
        );
        r.into_iter().next().expect("one")
    }

    async fn spawn(mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        Self::spawn_at(any, mode, tls).await
    }

    async fn spawn_at(at: SocketAddr, mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind(at).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let rec = recorded.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let mode = mode.clone();
                let rec = rec.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mode = mode.clone();
                        let rec = rec.clone();
                        async move { Ok::<_, Infallible>(handle(mode, rec, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acc) => {
                            if let Ok(tls) = acc.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            recorded,
            connections,
            task,
        }
    }
}

#[derive(Clone)]
enum Mode {
    Sync(SyncHandler),
    Raw(RawHandler),
}

async fn handle(
    mode: Mode,
    rec: Arc<Mutex<Vec<Recorded>>>,
    req: Request<Incoming>,
) -> Response<TestBody> {
    let at = Instant::now();
    match mode {
        Mode::Raw(h) => {
            rec.lock().expect("lock").push(Recorded {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
                body: Bytes::new(),
                at,
            });
            h(req).await
        }
        Mode::Sync(h) => {
            let (parts, b) = req.into_parts();
            let body = match b.collect().await {
                Ok(c) => c.to_bytes(),
                Err(_) => Bytes::from_static(b"<body error>"),
            };
            let r = Recorded {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
                at,
            };
            rec.lock().expect("lock").push(r.clone());
            h(&r)
        }
    }
}

/// A loopback listener that never accepts, its backlog filled, so a connection attempt to it
/// hangs until the connector's timeout (the kernel drops SYNs to a full accept queue).
pub struct FullBacklog {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _held: Vec<std::net::TcpStream>,
}

impl FullBacklog {
    pub async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut held = Vec::new();
        for _ in 0..64 {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            {
                Ok(s) => held.push(s),
                Err(_) => {
                    return Self {
                        addr,
                        _listener: listener,
                        _held: held,
                    }
                }
            }
        }
        panic!("the backlog of {addr} never filled");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
