//! The admin listener: `GET /live` and `GET /ready` for probes, `GET /metrics` for Prometheus.
//!
//! It runs on its own address (`--admin-listen`) so probes and scrapes never share a port with
//! the proxy, which stays on loopback in a sidecar. `/ready` answers 200 once a snapshot is
//! loaded and the proxy listener is bound, and 503 while draining.
//!
//! The admin listener has its own [`Limits`]: the same timeouts and header limits as the proxy,
//! and a small connection budget of its own, so a flood on the proxy listener (or on this one)
//! never leaves the probes without an answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::ProxyBody;
use crate::conn::{Limits, Protocols};
use crate::error::json_response;
use crate::metrics::Metrics;

/// Readiness shared between `main` and the admin listener.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

fn metrics_response(metrics: &Metrics) -> Response<ProxyBody> {
    let mut res = Response::new(crate::body::full(metrics.encode()));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    res
}

fn respond(health: &Health, metrics: &Metrics, req: &Request<Incoming>) -> Response<ProxyBody> {
    let json = |status, body: &'static str| {
        json_response(status, Bytes::from_static(body.as_bytes()), None)
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"code":"method_not_allowed","message":"use GET"}}"#,
        );
        res.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return res;
    }
    match req.uri().path() {
        "/live" => json(StatusCode::OK, r#"{"status":"live"}"#),
        "/ready" if health.is_ready() => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/ready" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
        "/metrics" => metrics_response(metrics),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no such admin route"}}"#,
        ),
    }
}

/// Serves the admin routes on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    limits: Limits,
) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let protocols = Arc::new(Protocols::new(limits));
    let max_headers = protocols.limits().max_headers;
    // The admin listener answers until the process ends: it never drains.
    let (_never, stopping) = tokio::sync::watch::channel(false);
    let mut refusals = crate::server::Refusals::new("admin");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::conn::refuse(stream, true);
            refusals.refused(max);
            continue;
        };
        let health = health.clone();
        let metrics = metrics.clone();
        let svc = service_fn(move |req| {
            let res = if req.headers().len() > max_headers {
                crate::conn::too_many_headers()
            } else {
                respond(&health, &metrics, &req)
            };
            async move { Ok::<_, std::convert::Infallible>(res) }
        });
        let protocols = protocols.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            crate::conn::serve_plain(stream, protocols, stopping, svc).await;
        });
    }
}
