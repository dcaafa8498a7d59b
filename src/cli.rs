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
use crate::otel::ConnectionIdAttr;
use crate::proxy::client::ResolvePin;

/// The longest duration any flag accepts; larger values would overflow deadline arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 250ms, 30s or 5m: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("`{s}` is longer than a year"));
    }
    Ok(d)
}

/// Shown after the flags of `sidekey --help` and `sidekey serve --help`.
const AFTER_HELP: &str = "\
Environment:
  Every flag above can also be set by the environment variable shown beside it; a flag given on
  the command line wins. Durations are written like 250ms, 30s or 5m.
  SIDEKEY_SECRET_KEY  caller keys accepted besides the vault's secret_keys (comma-separated);
                      never a flag, so a key never shows in the process list
  RUST_LOG            log filter, e.g. info (default), debug, sidekey=debug,hyper=warn

Admin endpoints (on --admin-listen): GET /live, GET /ready, GET /metrics (Prometheus).
On SIGTERM or SIGINT sidekey stops accepting, answers 503 on /ready, lets in-flight requests
finish within --drain-timeout, and exits 0.";

#[derive(Debug, Parser)]
#[command(
    name = "sidekey",
    version,
    about = "A credential-injecting reverse proxy for third-party APIs (Nango-compatible proxy API)",
    long_about = "A credential-injecting reverse proxy for third-party APIs (Nango-compatible proxy API).\n\n\
Applications call /proxy/<endpoint> with their own key and the names of a connection; sidekey \
injects the stored credential and forwards the request to the provider. With no subcommand, \
sidekey runs `serve`.",
    after_long_help = AFTER_HELP,
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
    /// Run the proxy (the default)
    #[command(after_long_help = AFTER_HELP)]
    Serve(Box<ServeArgs>),
    /// Validate providers.yaml and the vault; print every problem; exit 1 on any error
    Check(FileArgs),
    /// Manage caller keys
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a fresh random caller key and the `sha256` line to put in the vault
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line, fields at the top level
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Configuration files")]
pub struct FileArgs {
    /// providers.yaml to load [default: ./providers.yaml, else the copy built into the binary]
    #[arg(
        long,
        env = "SIDEKEY_PROVIDERS",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub providers: Option<PathBuf>,
    /// The vault: integrations, connections and caller key digests; created (mode 0600) if
    /// missing, reloaded when it changes
    #[arg(
        long,
        env = "SIDEKEY_VAULT",
        hide_env_values = true,
        value_name = "PATH",
        default_value = "vault.yaml"
    )]
    pub vault: PathBuf,
    /// Where refreshed OAuth credentials are written when the vault is read-only
    #[arg(
        long,
        env = "SIDEKEY_STATE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Address of the proxy listener: HTTP/1.1 and h2c, or HTTPS with --tls-cert. Keep it on
    /// loopback unless callers come from elsewhere
    #[arg(
        long,
        env = "SIDEKEY_LISTEN",
        hide_env_values = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:3003",
        help_heading = "Listeners"
    )]
    pub listen: SocketAddr,
    /// Address of the admin listener: /live, /ready, /metrics
    #[arg(
        long,
        env = "SIDEKEY_ADMIN_LISTEN",
        hide_env_values = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:3004",
        help_heading = "Listeners"
    )]
    pub admin_listen: SocketAddr,
    /// PEM file of CA certificates trusted for upstreams, besides the bundled web PKI roots
    #[arg(
        long,
        env = "SIDEKEY_EXTRA_CA",
        hide_env_values = true,
        value_name = "PEM",
        help_heading = "Upstreams"
    )]
    pub extra_ca: Option<PathBuf>,
    /// Connect to ADDR for HOST:PORT (ADDR: IP, IP:PORT, [IPv6] or [IPv6]:PORT), keeping SNI and
    /// Host; repeatable, comma-separated in the environment
    #[arg(
        long,
        env = "SIDEKEY_RESOLVE",
        hide_env_values = true,
        value_name = "HOST:PORT:ADDR",
        value_delimiter = ',',
        help_heading = "Upstreams"
    )]
    pub resolve: Vec<ResolvePin>,
    /// Which Base-Url-Override values callers may use
    #[arg(long, env = "SIDEKEY_BASE_URL_OVERRIDE", hide_env_values = true, value_name = "POLICY", value_enum, default_value_t = OverridePolicy::Public, help_heading = "Upstreams")]
    pub base_url_override: OverridePolicy,
    /// Limit on establishing a TCP connection to an upstream
    #[arg(long, env = "SIDEKEY_CONNECT_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "10s", help_heading = "Upstreams")]
    pub connect_timeout: Duration,
    /// Limit from the end of the request body to the upstream's response head
    #[arg(long, env = "SIDEKEY_RESPONSE_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "60s", help_heading = "Upstreams")]
    pub response_timeout: Duration,
    /// Limit on the time between two chunks of an upstream response body
    #[arg(long, env = "SIDEKEY_IDLE_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "60s", help_heading = "Upstreams")]
    pub idle_timeout: Duration,
    /// Base of the exponential retry backoff (full jitter)
    #[arg(long, env = "SIDEKEY_RETRY_BACKOFF_BASE", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "200ms", help_heading = "Retries and token refresh")]
    pub retry_backoff_base: Duration,
    /// Cap of the exponential retry backoff
    #[arg(long, env = "SIDEKEY_RETRY_BACKOFF_MAX", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "5s", help_heading = "Retries and token refresh")]
    pub retry_backoff_max: Duration,
    /// An upstream asking to wait longer than this (Retry-After) gets its response returned
    /// at once
    #[arg(long, env = "SIDEKEY_RETRY_MAX_WAIT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "30s", help_heading = "Retries and token refresh")]
    pub retry_max_wait: Duration,
    /// Largest request body kept for replay on retry; larger bodies stream once
    #[arg(long, env = "SIDEKEY_RETRY_BUFFER_BYTES", hide_env_values = true, value_name = "BYTES", default_value_t = 64 * 1024, help_heading = "Retries and token refresh")]
    pub retry_buffer_bytes: usize,
    /// Never write refreshed OAuth credentials to the vault (a Secret mount); use --state
    #[arg(
        long,
        env = "SIDEKEY_VAULT_READ_ONLY",
        hide_env_values = true,
        help_heading = "Configuration files"
    )]
    pub vault_read_only: bool,
    /// After a failed token refresh, how long requests on that connection fail fast
    #[arg(long, env = "SIDEKEY_REFRESH_COOLDOWN", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "30s", help_heading = "Retries and token refresh")]
    pub refresh_cooldown: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before sidekey exits
    #[arg(long, env = "SIDEKEY_DRAIN_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "25s", help_heading = "Operations")]
    pub drain_timeout: Duration,
    /// After a change in a watched directory, how long it must stay quiet before sidekey reloads
    #[arg(long, env = "SIDEKEY_RELOAD_SETTLE", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "200ms", help_heading = "Configuration files")]
    pub reload_settle: Duration,
    /// Log format on stderr; the level comes from RUST_LOG (default info)
    #[arg(long, env = "SIDEKEY_LOG_FORMAT", hide_env_values = true, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Operations")]
    pub log_format: LogFormat,
    /// PEM certificate chain for TLS on the proxy listener (with --tls-key); reloaded when the
    /// file changes
    #[arg(
        long,
        env = "SIDEKEY_TLS_CERT",
        hide_env_values = true,
        value_name = "PEM",
        requires = "tls_key",
        help_heading = "Listeners"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the proxy listener (with --tls-cert); reloaded when the file
    /// changes
    #[arg(
        long,
        env = "SIDEKEY_TLS_KEY",
        hide_env_values = true,
        value_name = "PEM",
        requires = "tls_cert",
        help_heading = "Listeners"
    )]
    pub tls_key: Option<PathBuf>,
    /// Worker threads of the runtime [default: one per core]
    #[arg(
        long,
        env = "SIDEKEY_WORKER_THREADS",
        hide_env_values = true,
        value_name = "N",
        help_heading = "Operations"
    )]
    pub worker_threads: Option<usize>,
    // OpenTelemetry (see crate::otel).
    /// Export a trace span per request (and per upstream attempt and token call) over
    /// OTLP/HTTP to this receiver, e.g. http://127.0.0.1:4318 (`/v1/traces` is appended);
    /// off when unset
    // Checked by `otel::traces_url` in main, not by clap, whose error would echo the value.
    #[arg(
        long,
        env = "SIDEKEY_OTLP_ENDPOINT",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Tracing"
    )]
    pub otlp_endpoint: Option<String>,
    /// How spans name the connection: its id in full, a hash of it, or not at all
    #[arg(long, env = "SIDEKEY_OTLP_CONNECTION_ID", hide_env_values = true, value_name = "MODE", value_enum, default_value_t = ConnectionIdAttr::Hash, help_heading = "Tracing")]
    pub otlp_connection_id: ConnectionIdAttr,
}
