//! The command line: `sidekey [serve]`, `sidekey check`, `sidekey key new`.
//!
//! Every `serve` flag can also come from `SIDEKEY_<FLAG>` in the environment; durations are
//! humantime (`250ms`, `30s`, `5m`). The caller key comes only from the environment
//! (`SIDEKEY_SECRET_KEY`) or the vault, never from a flag, so it never shows in `ps`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::netpolicy::OverridePolicy;
use crate::proxy::client::ResolvePin;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 250ms, 30s or 5m: {e}"))
}

#[derive(Debug, Parser)]
#[command(
    name = "sidekey",
    version,
    about = "A credential-injecting reverse proxy for third-party APIs (Nango-compatible proxy API)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve(Box<ServeArgs>),
    /// Validate providers.yaml and the vault; print every problem; exit 1 on any error.
    Check(FileArgs),
    /// Manage caller keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a fresh random caller key and the `sha256` line to put in the vault.
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// providers.yaml to load [default: ./providers.yaml, else the copy built into the binary]
    #[arg(long, env = "SIDEKEY_PROVIDERS", value_name = "PATH")]
    pub providers: Option<PathBuf>,
    /// The vault file (integrations, connections, caller key digests); created, mode 0600, if missing
    #[arg(
        long,
        env = "SIDEKEY_VAULT",
        value_name = "PATH",
        default_value = "vault.yaml"
    )]
    pub vault: PathBuf,
    /// Where refreshed OAuth credentials are written when the vault is read-only
    #[arg(long, env = "SIDEKEY_STATE", value_name = "PATH")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Address of the proxy listener (HTTP/1.1 and h2c)
    #[arg(
        long,
        env = "SIDEKEY_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:3003"
    )]
    pub listen: SocketAddr,
    /// Address of the admin listener (/live, /ready, /metrics)
    #[arg(
        long,
        env = "SIDEKEY_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:3004"
    )]
    pub admin_listen: SocketAddr,
    /// PEM file of CA certificates trusted for upstreams, besides the bundled web PKI roots
    #[arg(long, env = "SIDEKEY_EXTRA_CA", value_name = "PEM")]
    pub extra_ca: Option<PathBuf>,
    /// Connect to ADDR for HOST:PORT (ADDR: IP, IP:PORT, [IPv6] or [IPv6]:PORT), keeping SNI and Host; repeatable
    #[arg(
        long,
        env = "SIDEKEY_RESOLVE",
        value_name = "HOST:PORT:ADDR",
        value_delimiter = ','
    )]
    pub resolve: Vec<ResolvePin>,
    /// Which Base-Url-Override values callers may use
    #[arg(long, env = "SIDEKEY_BASE_URL_OVERRIDE", value_enum, default_value_t = OverridePolicy::Public)]
    pub base_url_override: OverridePolicy,
    /// Limit on establishing a TCP connection to an upstream
    #[arg(long, env = "SIDEKEY_CONNECT_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Limit from the end of the request body to the upstream's response head
    #[arg(long, env = "SIDEKEY_RESPONSE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub response_timeout: Duration,
    /// Limit on the time between two chunks of an upstream response body
    #[arg(long, env = "SIDEKEY_IDLE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Base of the exponential retry backoff (full jitter)
    #[arg(long, env = "SIDEKEY_RETRY_BACKOFF_BASE", value_parser = duration, default_value = "200ms")]
    pub retry_backoff_base: Duration,
    /// Cap of the exponential retry backoff
    #[arg(long, env = "SIDEKEY_RETRY_BACKOFF_MAX", value_parser = duration, default_value = "5s")]
    pub retry_backoff_max: Duration,
    /// An upstream asking to wait longer than this gets its response returned at once
    #[arg(long, env = "SIDEKEY_RETRY_MAX_WAIT", value_parser = duration, default_value = "30s")]
    pub retry_max_wait: Duration,
    /// Largest request body kept for replay on retry; larger bodies stream once
    #[arg(long, env = "SIDEKEY_RETRY_BUFFER_BYTES", value_name = "BYTES", default_value_t = 64 * 1024)]
    pub retry_buffer_bytes: usize,
    /// After a failed token refresh, how long requests on that connection fail fast
    #[arg(long, env = "SIDEKEY_REFRESH_COOLDOWN", value_parser = duration, default_value = "30s")]
    pub refresh_cooldown: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish
    #[arg(long, env = "SIDEKEY_DRAIN_TIMEOUT", value_parser = duration, default_value = "25s")]
    pub drain_timeout: Duration,
    /// After a change in a watched directory, how long it must stay quiet before sidekey reloads
    #[arg(long, env = "SIDEKEY_RELOAD_SETTLE", value_parser = duration, default_value = "200ms")]
    pub reload_settle: Duration,
    /// Log format (level via RUST_LOG, default info)
    #[arg(long, env = "SIDEKEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// PEM certificate chain for TLS on the proxy listener (with --tls-key)
    #[arg(
        long,
        env = "SIDEKEY_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the proxy listener (with --tls-cert)
    #[arg(
        long,
        env = "SIDEKEY_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Worker threads of the runtime [default: one per core]
    #[arg(long, env = "SIDEKEY_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
}
