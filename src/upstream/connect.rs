//! The TCP side of every upstream connection: `--resolve` pins (operator-trusted, whatever the
//! policy), name resolution, and for caller overrides the address policy of [`crate::netpolicy`],
//! checked on every resolved address before a packet is sent.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One `--resolve HOST:PORT:ADDR` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvePin {
    pub host: String,
    pub port: u16,
    pub ip: IpAddr,
    /// A port to connect to instead of `port`.
    pub to_port: Option<u16>,
}

/// A `--resolve` value that is not `HOST:PORT:ADDR` (clap prints it after the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not HOST:PORT:ADDR")]
pub struct BadPin(String);

impl std::str::FromStr for ResolvePin {
    type Err = BadPin;

    /// Parses `HOST:PORT:ADDR`, ADDR being `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`.
    fn from_str(s: &str) -> Result<Self, BadPin> {
        let bad = || BadPin(s.to_string());
        let (host, rest) = s.split_once(':').ok_or_else(bad)?;
        let (port, addr) = rest.split_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let (ip, to_port) = if let Some(v6) = addr.strip_prefix('[') {
            let (ip, after) = v6.split_once(']').ok_or_else(bad)?;
            let to_port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().map_err(|_| bad())?),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (ip.parse().map_err(|_| bad())?, to_port)
        } else if let Some((ip, p)) = addr.split_once(':') {
            (
                ip.parse().map_err(|_| bad())?,
                Some(p.parse().map_err(|_| bad())?),
            )
        } else {
            (addr.parse().map_err(|_| bad())?, None)
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            ip,
            to_port,
        })
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Blocked(String),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot resolve `{0}`")]
    Resolve(String),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("invalid upstream URL")]
    InvalidUri,
}

/// A TCP connector that honours `--resolve` pins and, when `public_only`, refuses any
/// address that [`crate::netpolicy::is_public`] refuses.
#[derive(Clone)]
pub struct Connector {
    pins: Arc<HashMap<(String, u16), SocketAddr>>,
    public_only: bool,
    timeout: Duration,
}

impl Connector {
    pub fn new(pins: &[ResolvePin], public_only: bool, timeout: Duration) -> Self {
        let pins = pins
            .iter()
            .map(|p| {
                (
                    (p.host.clone(), p.port),
                    SocketAddr::new(p.ip, p.to_port.unwrap_or(p.port)),
                )
            })
            .collect();
        Self {
            pins: Arc::new(pins),
            public_only,
            timeout,
        }
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let host = uri
            .host()
            .ok_or(ConnectError::InvalidUri)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let addrs: Vec<SocketAddr> = if let Some(pinned) = self.pins.get(&(host.clone(), port)) {
            // Operator-pinned: trusted whatever the policy.
            vec![*pinned]
        } else {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| ConnectError::Resolve(host.clone()))?
                    .collect(),
            };
            if self.public_only {
                let public: Vec<SocketAddr> = addrs
                    .iter()
                    .copied()
                    .filter(|a| crate::netpolicy::is_public(a.ip()))
                    .collect();
                if public.is_empty() {
                    return Err(ConnectError::Blocked(format!(
                        "`{host}` resolves to an address that a Base-Url-Override may not reach"
                    )));
                }
                public
            } else {
                addrs
            }
        };
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => last = Some(ConnectError::Io(addr, e)),
                Err(_) => last = Some(ConnectError::Timeout(self.timeout)),
            }
        }
        Err(last.unwrap_or(ConnectError::Resolve(host)))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolve_pins() {
        let p: ResolvePin = "API.example.com:443:127.0.0.1".parse().expect("parses");
        assert_eq!(
            (p.host.as_str(), p.port, p.to_port),
            ("api.example.com", 443, None)
        );
        let p: ResolvePin = "h:443:127.0.0.1:8443".parse().expect("parses");
        assert_eq!(p.to_port, Some(8443));
        let p: ResolvePin = "h:443:[::1]:9".parse().expect("parses");
        assert_eq!((p.ip, p.to_port), ("::1".parse().expect("ip"), Some(9)));
        let p: ResolvePin = "h:443:[::1]".parse().expect("parses");
        assert_eq!(p.to_port, None);
        for bad in [
            "h:443",
            "h:x:127.0.0.1",
            ":443:127.0.0.1",
            "h:443:nope",
            "h:443:[::1]x",
        ] {
            assert!(bad.parse::<ResolvePin>().is_err(), "{bad}");
        }
    }
}
