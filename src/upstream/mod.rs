//! Everything that opens connections to the outside: the pooled client ([`client`]), the TCP
//! connector with `--resolve` pins and the override address policy ([`connect`]), and the
//! rustls client configuration ([`tls`]).
//!
//! It sits below every module that calls out: the proxy's request path, the OAuth token
//! endpoints, the OTLP exporter (and later webhooks), so none of them depends on another to
//! reach the network.

pub mod client;
pub mod connect;
pub mod tls;

pub use client::{
    ClientError, ClientOptions, HttpClient, UpstreamBody, UpstreamClient, DEFAULT_POOL_IDLE_TIMEOUT,
};
pub use connect::{ConnectError, Connector, ResolvePin};
pub use tls::{read_pem_certs, tls_config, ClientTlsError};
