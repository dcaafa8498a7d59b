//! Sending one request upstream and classifying what went wrong.
//!
//! Errors from hyper-util's client arrive as a chain; [`classify`] walks it to tell a refused
//! override, a connect timeout, a TLS failure and an unreachable host apart, each with its own
//! error code.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use super::client::{ConnectError, HttpClient};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Sends `req` and waits at most `timeout` for the response head.
pub async fn send(
    client: &HttpClient,
    req: Request<ProxyBody>,
    timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(ProxyError::UpstreamTimeout(format!(
            "no response head within {timeout:?}"
        ))),
    }
}

/// Maps a client error to sidekey's error codes by walking its source chain.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return match c {
                ConnectError::Blocked(why) => ProxyError::BaseUrlOverrideNotAllowed(why.clone()),
                ConnectError::Timeout(_) => ProxyError::UpstreamTimeout(c.to_string()),
                _ => ProxyError::UpstreamUnreachable(c.to_string()),
            };
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return ProxyError::UpstreamTls(t.to_string());
        }
        // An io::Error's `source()` skips the error it wraps; step into it instead.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    ProxyError::UpstreamUnreachable(err.to_string())
}
