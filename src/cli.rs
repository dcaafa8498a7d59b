//! The command line: `sidekey [serve]`, `sidekey check`, `sidekey key new`,
//! `sidekey vault encrypt | rekey | new-key` (encryption at rest, see [`crate::config::sealed`]),
//! and `sidekey migrate` (the PostgreSQL store's schema, see [`crate::store::postgres`]).
//!
//! Every `serve` flag can also come from `SIDEKEY_<FLAG>` in the environment; durations are
//! humantime (`250ms`, `30s`, `5m`). The caller key comes only from the environment
//! (`SIDEKEY_SECRET_KEY`) or the vault, never from a flag, so it never shows in `ps`; the same
//! goes for the encryption keys (`SIDEKEY_ENCRYPTION_KEY`, `SIDEKEY_NEW_ENCRYPTION_KEY`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::conn::{Limits, DEFAULT_MAX_CONNECTIONS};
use crate::netpolicy::OverridePolicy;
use crate::otel::ConnectionIdAttr;
use crate::store::postgres::StoreUrl;
use crate::telemetry::LogFormat;
use crate::upstream::ResolvePin;

/// The longest duration any flag accepts; larger values would overflow deadline arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

// The value parsers below return `String` errors on purpose: clap takes any error that converts
// into `Box<dyn Error>`, prints only its Display after the flag's name, and never matches on it,
// so a typed error would add a type and change nothing anyone sees or handles.

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 250ms, 30s or 5m: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("`{s}` is longer than a year"));
    }
    Ok(d)
}

/// A duration that must not be zero (a zero timeout would cut every connection at once).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

/// A count of at least one.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(format!("`{s}` must be at least 1")),
        Ok(n) if n <= u32::MAX as usize => Ok(n),
        Ok(_) => Err(format!("`{s}` is too large")),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// Header bytes: at least 1 KiB, so that an ordinary request head always fits.
fn header_bytes(s: &str) -> Result<usize, String> {
    let n = at_least_one(s)?;
    if n < 1024 {
        return Err(format!("`{s}` is below 1024 bytes"));
    }
    Ok(n)
}

/// An absolute http(s) URL without credentials, query or fragment.
fn public_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("`{s}` is not a URL like https://connect.example.com"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(a)) if !a.as_str().contains('@') => {}
        _ => {
            return Err(format!(
                "`{s}` is not an http(s) URL like https://connect.example.com"
            ))
        }
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(format!("`{s}` must not have a query or fragment"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Shown after the flags of `sidekey --help` and `sidekey serve --help`.
const AFTER_HELP: &str = "\
Environment:
  Every flag above can also be set by the environment variable shown beside it; a flag given on
  the command line wins. Durations are written like 250ms, 30s or 5m.
  SIDEKEY_SECRET_KEY  caller keys accepted besides the vault's secret_keys (comma-separated);
                      never a flag, so a key never shows in the process list
  SIDEKEY_ENCRYPTION_KEY  opens the vault's sealed secrets (base64, 32 bytes; see
                      `sidekey vault --help`)
  SIDEKEY_WEBHOOK_SIGNING_KEY  signs auth webhooks (X-Nango-Hmac-Sha256); give the same
                      value to the receiver's verifyIncomingWebhookRequest
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

impl Cli {
    /// Parses `argv` as the binary does, but with every `SIDEKEY_*` variable ignored, so the
    /// flags alone decide: clap reads the environment while it parses, and an in-process test
    /// (`tests/support/app.rs`) must not take settings from the environment of whoever runs it.
    pub fn parse_ignoring_env<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = without_env(Self::command()).try_get_matches_from(argv)?;
        Self::from_arg_matches(&matches)
    }
}

/// `cmd` with no argument read from the environment, in it or any of its subcommands.
fn without_env(mut cmd: clap::Command) -> clap::Command {
    let args: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_some())
        .map(|a| a.get_id().clone())
        .collect();
    for id in args {
        cmd = cmd.mut_arg(id, |a| a.env(None::<&'static str>));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, without_env);
    }
    cmd
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
    /// Encryption at rest: seal the vault's secrets, move them to a new key, make a key
    #[command(subcommand, after_long_help = VAULT_HELP)]
    Vault(VaultCommand),
    /// Create or update the PostgreSQL store's schema (`serve --store` also does, at start)
    Migrate(StoreArgs),
    /// Move records between a vault file and the PostgreSQL store
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every record of a vault file into the store, in one transaction (records with
    /// the same names are replaced; running replicas apply the import at once)
    Import {
        /// The vault file to read (checked as `sidekey check` does; sealed values are opened
        /// with SIDEKEY_ENCRYPTION_KEY, which also seals them in the store)
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// providers.yaml the vault is checked against [default: ./providers.yaml, else the
        /// copy built into the binary]
        #[arg(
            long,
            env = "SIDEKEY_PROVIDERS",
            hide_env_values = true,
            value_name = "PATH"
        )]
        providers: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write the store's records to a new vault file (mode 0600; secrets sealed when
    /// SIDEKEY_ENCRYPTION_KEY is set, so `sidekey check` with the same key accepts it)
    Export {
        /// The vault file to write (replaced atomically)
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
        /// providers.yaml the records are checked against [default: ./providers.yaml, else
        /// the copy built into the binary]
        #[arg(
            long,
            env = "SIDEKEY_PROVIDERS",
            hide_env_values = true,
            value_name = "PATH"
        )]
        providers: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where `sidekey migrate` finds the store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The PostgreSQL store: postgres://user:password@host:port/database[?sslmode=require]
    #[arg(long, env = "SIDEKEY_STORE", hide_env_values = true, value_name = "URL", value_parser = store_url)]
    pub store: StoreUrl,
    /// PEM file of CA certificates trusted for the store's TLS, besides the web PKI roots
    #[arg(
        long,
        env = "SIDEKEY_EXTRA_CA",
        hide_env_values = true,
        value_name = "PEM"
    )]
    pub extra_ca: Option<PathBuf>,
}

/// `--store`, checked when sidekey connects: clap's error would repeat the value (a password).
fn store_url(s: &str) -> Result<StoreUrl, std::convert::Infallible> {
    Ok(StoreUrl::new(s))
}

const VAULT_HELP: &str = "\
Sealed fields: connections' apiKey, password, access_token, refresh_token, and OAUTH2_CC
client_secret and token; integrations' oauth_client_secret. Each is stored as enc:v1:...
(AES-256-GCM, bound to its connection or integration and field). Comments other than those
at the top of the vault are not kept when it is rewritten.

Keys come only from the environment, never from a flag: SIDEKEY_ENCRYPTION_KEY (the vault's
key; for rekey the current one) and SIDEKEY_NEW_ENCRYPTION_KEY (rekey's new key).";

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Seal every secret in the vault with SIDEKEY_ENCRYPTION_KEY (values sealed with it
    /// already stay sealed); the vault must pass `sidekey check` first
    #[command(after_long_help = VAULT_HELP)]
    Encrypt(VaultFileArgs),
    /// Open every sealed secret with SIDEKEY_ENCRYPTION_KEY (the current key) and seal it
    /// again with SIDEKEY_NEW_ENCRYPTION_KEY, in one atomic write
    #[command(after_long_help = VAULT_HELP)]
    Rekey(VaultFileArgs),
    /// Print a fresh random key for SIDEKEY_ENCRYPTION_KEY (base64, 32 bytes)
    NewKey,
}

/// The files `sidekey vault encrypt` and `rekey` work on.
#[derive(Debug, Clone, Args)]
pub struct VaultFileArgs {
    /// providers.yaml the vault is checked against [default: ./providers.yaml, else the copy
    /// built into the binary]
    #[arg(
        long,
        env = "SIDEKEY_PROVIDERS",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub providers: Option<PathBuf>,
    /// The vault to rewrite (atomically, mode 0600)
    #[arg(
        long,
        env = "SIDEKEY_VAULT",
        hide_env_values = true,
        value_name = "PATH",
        default_value = "vault.yaml"
    )]
    pub vault: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a fresh random caller key and the `sha256` line to put in the vault
    New {
        /// What the key may do (comma-separated): proxy, connections:read, connections:write,
        /// connections:read_credentials, integrations:read, integrations:write,
        /// connect_sessions:write. Without it, every scope. An application pod needs only
        /// `proxy`.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
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
    /// Address of the public Connect listener: only what end users' browsers call (connect
    /// session routes, the auth routes of @nangohq/frontend); never the proxy or the
    /// management API. TLS like the proxy listener. Off when unset (the proxy listener serves
    /// the Connect routes too)
    #[arg(
        long,
        env = "SIDEKEY_CONNECT_LISTEN",
        hide_env_values = true,
        value_name = "ADDR",
        help_heading = "Connect"
    )]
    pub connect_listen: Option<SocketAddr>,
    /// The URL end users reach the Connect listener at, e.g. https://connect.example.com:
    /// `connect_link` and OAuth redirect URIs are built from it [default: the Connect
    /// listener's address, else the proxy listener's, over http]
    #[arg(
        long,
        env = "SIDEKEY_PUBLIC_URL",
        hide_env_values = true,
        value_name = "URL",
        value_parser = public_url,
        help_heading = "Connect"
    )]
    pub public_url: Option<String>,
    /// How long a connect session works after it is made
    #[arg(long, env = "SIDEKEY_CONNECT_SESSION_TTL", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "30m", help_heading = "Connect")]
    pub connect_session_ttl: Duration,
    /// Auth attempts (credentials submitted) one connect session may make; more answer 429
    #[arg(long, env = "SIDEKEY_CONNECT_MAX_ATTEMPTS", hide_env_values = true, value_name = "N", value_parser = at_least_one, default_value = "20", help_heading = "Connect")]
    pub connect_max_attempts: usize,
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
    /// Limit on the time between two chunks of an upstream response body, and on a write to a
    /// caller that stopped reading
    #[arg(long, env = "SIDEKEY_IDLE_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "60s", help_heading = "Upstreams")]
    pub idle_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse (less when the upstream's
    /// Keep-Alive: timeout= says so); keep it below the upstreams' own keep-alive timeouts
    #[arg(long, env = "SIDEKEY_POOL_IDLE_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "4s", help_heading = "Upstreams")]
    pub pool_idle_timeout: Duration,
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
    /// Keep integrations, connections and caller keys in PostgreSQL, shared by every replica
    /// (postgres://user:password@host:port/database[?sslmode=require]) instead of the vault
    /// file; providers.yaml stays a file. Needs SIDEKEY_ENCRYPTION_KEY
    #[arg(long, env = "SIDEKEY_STORE", hide_env_values = true, value_name = "URL", value_parser = store_url, help_heading = "Store")]
    pub store: Option<StoreUrl>,
    /// With --store: allow secrets in the database unsealed when SIDEKEY_ENCRYPTION_KEY is not
    /// set (for tests; never in production)
    #[arg(
        long,
        env = "SIDEKEY_ALLOW_PLAINTEXT_STORE",
        hide_env_values = true,
        help_heading = "Store"
    )]
    pub allow_plaintext_store: bool,
    /// With --store: the most connections kept in memory. Integrations and caller keys are
    /// loaded whole; a connection is read from the store when a request first names it and
    /// evicted when the cache is full and it was not used lately. 0 loads every connection
    /// at start (no reads on use, but memory grows with the store)
    #[arg(
        long,
        env = "SIDEKEY_CONNECTION_CACHE",
        hide_env_values = true,
        value_name = "N",
        default_value_t = 50_000,
        help_heading = "Store"
    )]
    pub connection_cache: usize,
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
    /// Open caller connections the proxy listener holds at most; beyond it new connections are
    /// closed at once (a 503 too_many_connections on cleartext) [default: 16384, lowered to
    /// half the open-file limit, the other half being left for upstream connections; a value
    /// given here is kept, with a warning if it does not fit]
    #[arg(long, env = "SIDEKEY_MAX_CONNECTIONS", hide_env_values = true, value_name = "N", value_parser = at_least_one, help_heading = "Listener limits")]
    pub max_connections: Option<usize>,
    /// Open connections the admin listener holds at most (its own budget, so probes are
    /// answered while the proxy listener is flooded)
    #[arg(long, env = "SIDEKEY_ADMIN_MAX_CONNECTIONS", hide_env_values = true, value_name = "N", value_parser = at_least_one, default_value = "64", help_heading = "Listener limits")]
    pub admin_max_connections: usize,
    /// A new caller connection must complete its first request head within this, or is closed
    #[arg(long, env = "SIDEKEY_HEADER_READ_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "10s", help_heading = "Listener limits")]
    pub header_read_timeout: Duration,
    /// A caller connection with no request in flight for this long is closed (HTTP/1.1
    /// keep-alive, and h2 with no open stream)
    #[arg(long, env = "SIDEKEY_KEEPALIVE_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "75s", help_heading = "Listener limits")]
    pub keepalive_timeout: Duration,
    /// Interval of h2 PINGs to callers, to find dead connections; 0s sends none
    #[arg(long, env = "SIDEKEY_H2_KEEPALIVE_INTERVAL", hide_env_values = true, value_name = "DURATION", value_parser = duration, default_value = "20s", help_heading = "Listener limits")]
    pub h2_keepalive_interval: Duration,
    /// How long an h2 PING may go unanswered before the connection is closed
    #[arg(long, env = "SIDEKEY_H2_KEEPALIVE_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "20s", help_heading = "Listener limits")]
    pub h2_keepalive_timeout: Duration,
    /// Largest request head in bytes (HTTP/1.1 start line and headers; the h2 header list);
    /// larger gets 431
    #[arg(long, env = "SIDEKEY_MAX_HEADER_BYTES", hide_env_values = true, value_name = "BYTES", value_parser = header_bytes, default_value = "65536", help_heading = "Listener limits")]
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets 431. Above 100, HTTP/1.1 parsing
    /// allocates per request
    #[arg(long, env = "SIDEKEY_MAX_HEADERS", hide_env_values = true, value_name = "N", value_parser = at_least_one, default_value = "100", help_heading = "Listener limits")]
    pub max_headers: usize,
    /// Most concurrent h2 streams on one caller connection
    #[arg(long, env = "SIDEKEY_MAX_CONCURRENT_STREAMS", hide_env_values = true, value_name = "N", value_parser = at_least_one, default_value = "100", help_heading = "Listener limits")]
    pub max_concurrent_streams: usize,
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
    // Auth webhooks (see crate::webhooks). Checked by `webhooks::check_url` in `run::start`.
    /// Where auth webhooks go (connection created, overridden, credential refused, refresh
    /// failed), in Nango's format, signed with SIDEKEY_WEBHOOK_SIGNING_KEY (required with it)
    #[arg(
        long,
        env = "SIDEKEY_WEBHOOK_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Webhooks"
    )]
    pub webhook_url: Option<String>,
    /// Let webhook URLs reach private, loopback and link-local addresses (by default they pass
    /// the policy of Base-Url-Override: public addresses only)
    #[arg(
        long,
        env = "SIDEKEY_WEBHOOK_ALLOW_PRIVATE",
        hide_env_values = true,
        help_heading = "Webhooks"
    )]
    pub webhook_allow_private: bool,
    /// The webhook outbox file [default: the vault's path + `.outbox`; with --vault-read-only,
    /// the state file's + `.outbox`, else memory only]
    #[arg(
        long,
        env = "SIDEKEY_WEBHOOK_OUTBOX",
        hide_env_values = true,
        value_name = "PATH",
        help_heading = "Webhooks"
    )]
    pub webhook_outbox: Option<PathBuf>,
    /// The `environment` named in every webhook body (Nango's environment name)
    #[arg(
        long,
        env = "SIDEKEY_WEBHOOK_ENVIRONMENT",
        hide_env_values = true,
        value_name = "NAME",
        default_value = "prod",
        help_heading = "Webhooks"
    )]
    pub webhook_environment: String,
    /// First wait before a failed webhook is sent again; doubled each time
    #[arg(long, env = "SIDEKEY_WEBHOOK_RETRY_BASE", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "3s", help_heading = "Webhooks")]
    pub webhook_retry_base: Duration,
    /// Longest wait between two attempts of one webhook
    #[arg(long, env = "SIDEKEY_WEBHOOK_RETRY_MAX", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "10m", help_heading = "Webhooks")]
    pub webhook_retry_max: Duration,
    /// Limit on one webhook attempt, to the receiver's response head
    #[arg(long, env = "SIDEKEY_WEBHOOK_TIMEOUT", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "20s", help_heading = "Webhooks")]
    pub webhook_timeout: Duration,
    /// A webhook still undelivered this long after its event is dropped
    #[arg(long, env = "SIDEKEY_WEBHOOK_GIVE_UP_AFTER", hide_env_values = true, value_name = "DURATION", value_parser = positive_duration, default_value = "24h", help_heading = "Webhooks")]
    pub webhook_give_up_after: Duration,
}

impl ServeArgs {
    /// The proxy listener's limits and the admin listener's, as the flags say (before the
    /// connection limit is fitted to the open-file limit).
    pub fn listener_limits(&self) -> (Limits, Limits) {
        let proxy = Limits {
            max_connections: self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            header_read_timeout: self.header_read_timeout,
            keepalive_timeout: self.keepalive_timeout,
            h2_keepalive_interval: (!self.h2_keepalive_interval.is_zero())
                .then_some(self.h2_keepalive_interval),
            h2_keepalive_timeout: self.h2_keepalive_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_concurrent_streams: u32::try_from(self.max_concurrent_streams).unwrap_or(u32::MAX),
        };
        let admin = Limits {
            max_connections: self.admin_max_connections,
            ..proxy.clone()
        };
        (proxy, admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of `cmd` and its subcommands that reads a variable, by name.
    fn env_args(cmd: &clap::Command, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if let Some(env) = a.get_env() {
                out.push(env.to_string_lossy().into_owned());
            }
        }
        for c in cmd.get_subcommands() {
            env_args(c, out);
        }
    }

    #[test]
    fn parsing_for_tests_reads_no_variable() {
        use clap::CommandFactory as _;
        let mut with = Vec::new();
        env_args(&Cli::command(), &mut with);
        assert!(
            with.iter().any(|e| e == "SIDEKEY_LISTEN") && with.len() > 20,
            "the binary's parser reads the environment: {with:?}"
        );
        let mut without = Vec::new();
        env_args(&without_env(Cli::command()), &mut without);
        assert_eq!(without, Vec::<String>::new());
        let cli =
            Cli::parse_ignoring_env(["sidekey", "serve", "--listen=127.0.0.1:1"]).expect("parses");
        match cli.command {
            Some(Command::Serve(args)) => {
                assert_eq!(args.listen, "127.0.0.1:1".parse().expect("addr"))
            }
            other => panic!("{other:?}"),
        }
    }
}
