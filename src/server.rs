//! The proxy listener's accept loop (HTTP/1.1 and h2c prior knowledge on one port, or TLS with
//! ALPN `h2`/`http/1.1` when a certificate is given), its connection limit, and graceful drain.
//!
//! [`serve`] takes an already-bound listener, so tests bind `127.0.0.1:0`. Each connection
//! holds a permit of the listener's semaphore ([`Limits::max_connections`]); when none is left,
//! a new connection is accepted and closed at once (cleartext callers get a 503
//! `too_many_connections`), so a flood costs no file descriptors beyond the limit and the open
//! connections keep being served. When `shutdown` resolves, the listener closes (new
//! connections are refused), open connections finish their requests within the drain timeout
//! (the semaphore tells when all permits are back), and `serve` returns. Each open caller
//! connection is counted in the `sidekey_client_connections` gauge. What happens on one
//! connection is in [`crate::conn`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::app::App;
use crate::conn::{Limits, Protocols};

/// How long a caller may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one warning about refused connections per this long.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts connections refused at the limit, and says so in the log now and then.
#[derive(Debug)]
pub struct Refusals {
    listener: &'static str,
    since_warn: u64,
    last_warn: Option<Instant>,
}

impl Refusals {
    pub fn new(listener: &'static str) -> Self {
        Self {
            listener,
            since_warn: 0,
            last_warn: None,
        }
    }

    pub fn refused(&mut self, limit: usize) {
        self.since_warn += 1;
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_WARN_EVERY)
        {
            tracing::warn!(
                listener = self.listener,
                limit,
                refused = self.since_warn,
                "connection limit reached; refusing new connections"
            );
            self.since_warn = 0;
            self.last_warn = Some(now);
        }
    }
}

/// Raises the soft open-file limit to the hard limit (at start, so that `--max-connections`
/// can be honoured), and returns the soft limit in force afterwards, `None` when unknown or
/// unlimited. A failure leaves the limit as it was.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let before = getrlimit(Resource::Nofile);
        // Linux refuses an unlimited soft limit for files; its default ceiling (nr_open) is 2^20.
        let target = before.maximum.unwrap_or(1 << 20);
        if before.current.is_some_and(|soft| soft < target) {
            let raised = rustix::process::Rlimit {
                current: Some(target),
                maximum: before.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => tracing::info!(
                    from = before.current,
                    to = target,
                    "raised the open-file limit to the hard limit"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Open-file descriptors kept aside besides connections: the listeners, configuration
/// files and their watches, the log, the runtime's own.
const FD_RESERVE: u64 = 64;

/// The largest proxy connection limit the open-file limit `nofile` affords with `admin`
/// connections for the admin listener: half of what is left, so every caller connection can
/// have an upstream connection too.
pub fn fit_max_connections(wanted: usize, admin: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return wanted;
    };
    let spare = nofile.saturating_sub(FD_RESERVE + admin as u64) / 2;
    wanted
        .min(usize::try_from(spare).unwrap_or(usize::MAX))
        .max(1)
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The proxy, the management API and the Connect routes ([`crate::router`]).
    Main,
    /// The public Connect listener (`--connect-listen`): only what an end user's browser
    /// calls ([`crate::connect::handle_public`]).
    Connect,
}

/// Serves `role` on `listener` until `shutdown` resolves, then drains for at most `drain`.
/// With `tls`, every connection is a TLS connection.
pub async fn serve(
    listener: TcpListener,
    role: Role,
    app: Arc<App>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let permits = Arc::new(Semaphore::new(max));
    let mut protocols = Protocols::new(limits).with_write_idle(app.proxy.options.idle_timeout);
    if role == Role::Connect {
        // The frontend SDK's OAuth popup waits for WebSocket messages from this listener.
        protocols = protocols.with_upgrades();
    }
    let protocols = Arc::new(protocols);
    let max_headers = protocols.limits().max_headers;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut refusals = Refusals::new(match role {
        Role::Main => "proxy",
        Role::Connect => "connect",
    });
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::conn::refuse(stream, acceptor.is_none());
            refusals.refused(max);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = app.state.metrics.client_connection();
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move {
                if req.headers().len() > max_headers {
                    return Ok(crate::conn::too_many_headers());
                }
                let res = match role {
                    Role::Main => crate::router::handle(&app, req).await,
                    Role::Connect => crate::connect::handle_public(&app, req).await,
                };
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let protocols = protocols.clone();
        let mut stopping = stopping.clone();
        let Some(acceptor) = acceptor.clone() else {
            tokio::spawn(async move {
                let _held = (permit, open);
                crate::conn::serve_plain(stream, protocols, stopping, svc).await;
            });
            continue;
        };
        // The handshake runs in the connection's task, so a slow client never holds up accept.
        tokio::spawn(async move {
            let _held = (permit, open);
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let tls = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                // Nothing is in flight before the handshake ends: no reason to hold the drain.
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            crate::conn::serve_tls(tls, protocols, stopping, svc).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let open = max - permits.available_permits();
    tracing::info!(
        connections = open,
        ?drain,
        "listener closed; draining open connections"
    );
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain timeout reached; closing remaining connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_fits_half_the_spare_descriptors() {
        assert_eq!(fit_max_connections(16_384, 64, None), 16_384);
        assert_eq!(fit_max_connections(16_384, 64, Some(1 << 20)), 16_384);
        assert_eq!(fit_max_connections(16_384, 64, Some(1024)), 448);
        assert_eq!(fit_max_connections(10, 64, Some(1024)), 10);
        assert_eq!(fit_max_connections(16_384, 64, Some(10)), 1);
    }
}
