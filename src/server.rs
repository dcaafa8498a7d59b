//! Accept loops: the proxy listener (HTTP/1.1 and h2c prior knowledge on one port, or TLS with
//! ALPN `h2`/`http/1.1` when a certificate is given) and graceful drain.
//!
//! [`serve`] takes an already-bound listener, so tests bind `127.0.0.1:0`. When `shutdown`
//! resolves, it closes the listener (new connections are refused), lets in-flight connections
//! finish their requests within the drain timeout, and returns. Each open caller connection is
//! counted in the `sidekey_client_connections` gauge.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::idle::WriteStall;
use crate::proxy::App;

/// How long a caller may take to complete its TLS handshake, or to send its first byte.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection preface every HTTP/2 client sends first; no HTTP/1 request starts with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one cleartext connection. The first bytes are peeked, not read: a connection that
/// does not open with the HTTP/2 preface goes straight to hyper's HTTP/1 server, without the
/// version-sniffing wrapper around every read that the auto server needs. h2c connections,
/// and any whose first bytes are only the start of the preface (a lone `P` of `POST`), go to
/// the auto server, which reads on until it can tell.
async fn serve_plain<S>(
    stream: TcpStream,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    svc: S,
    write_idle: Duration,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::body::ProxyBody>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut first = [0u8; H2_PREFACE.len()];
    // A caller that sends nothing is let go after the handshake timeout, as a TLS caller
    // would be, or at once when the listener closes: nothing is in flight on it yet.
    let n = tokio::select! {
        peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)) => match peeked {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(n)) => n,
        },
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    // A caller that stops reading is let go after the idle timeout (`proxy::idle`).
    let stream = WriteStall::new(stream, write_idle);
    let ended = if !H2_PREFACE.starts_with(&first[..n]) {
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        watcher.watch(conn).await.map_err(Into::into)
    } else {
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        watcher.watch(conn).await
    };
    if let Err::<(), Box<dyn std::error::Error + Send + Sync>>(e) = ended {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves, then drains for at most `drain`.
/// With `tls`, every connection is a TLS connection.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let write_idle = app.options.idle_timeout;
        let open = app.metrics.client_connection();
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(crate::router::handle(&app, req).await) }
        });
        let Some(acceptor) = acceptor.clone() else {
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let _open = open;
                serve_plain(stream, builder, watcher, stopping, svc, write_idle).await;
            });
            continue;
        };
        // The handshake runs in the connection's task, so a slow client never holds up accept.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _open = open;
            let tls = match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                acceptor.accept(WriteStall::new(stream, write_idle)),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder
                .serve_connection(TokioIo::new(tls), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!(
        connections = graceful.count(),
        ?drain,
        "listener closed; draining open connections"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain timeout reached; closing remaining connections"
        );
    }
}
