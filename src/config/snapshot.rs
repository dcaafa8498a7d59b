//! The immutable snapshot: providers and vault validated together and precompiled.
//!
//! Everything the request path would otherwise compute per request is done here once per
//! load: templates rendered into ready `HeaderValue`s (marked sensitive) and encoded query
//! pairs, base URLs resolved and parsed, lookups by integration and connection built. Only
//! values that change between loads (OAuth access tokens) stay as templates. `build` collects
//! every problem instead of stopping at the first, so `sidekey check` can list them all.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::providers::{AuthMode, Catalog, Provider};
use super::table::{ById, Connections};
use super::vault::{
    self, KeyPlacement, RawConnection, RawCredentials, RawIntegration, RawSecretKey, RawVault,
    Record,
};
use super::{Diagnostic, Sources};
use crate::secret::Secret;
use crate::template::{BaseUrlTemplate, Template, Values};

/// The characters left as they are in an injected query name or value (RFC 3986 unreserved).
const QUERY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query component.
pub fn encode_query_component(s: &str) -> String {
    utf8_percent_encode(s, QUERY_ENCODE).to_string()
}

/// What the snapshot build needs besides the files.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// SHA-256 digests of the keys given by `SIDEKEY_SECRET_KEY`.
    pub env_keys: Vec<[u8; 32]>,
    /// The generation number the new snapshot gets.
    pub generation: u64,
    /// `SIDEKEY_ENCRYPTION_KEY`: opens the vault's sealed values (see [`crate::config::sealed`]).
    pub encryption_key: Option<Arc<crate::config::sealed::EncryptionKey>>,
    /// The store's version counter: a new or changed record gets its next version, an
    /// unchanged one keeps the version it had in the previous snapshot. `None` (`sidekey
    /// check`, tests): every record built gets version 0.
    pub versions: Option<Arc<crate::config::Versions>>,
}

/// Where an injected value goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Header(HeaderName),
    /// A query parameter; the name is already percent-encoded. Shared by every connection of
    /// the integration that injects it.
    Query(Arc<str>),
}

/// A template and where its value goes.
#[derive(Debug, Clone)]
pub struct Injection {
    pub placement: Placement,
    pub template: Template,
}

/// A parsed upstream base URL.
///
/// Connections whose base URL is a template (`https://${connectionConfig.subdomain}.…`) each
/// hold one, so it is kept small: the authority and the Host header share one buffer, and the
/// path and query are one string (128 bytes with the `Arc`, against 192 plus three more
/// allocations when host, path and query were `String`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    pub port: u16,
    /// Where the path ends in `path_query`.
    path_len: u32,
    /// The base path without a trailing slash ("" for the root), then `?` and the base URL's
    /// own query when it has one.
    path_query: Box<str>,
    /// The Host header for this authority: the port only when it is not the scheme's default.
    pub host_header: http::HeaderValue,
}

/// The Host header for an authority: without user info, and with the port only when it is
/// not the scheme's default, as a browser sends it. `None` if it cannot be a header value.
pub fn host_header(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(p) if p != default_port => authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host_port)| host_port),
        _ => authority.host(),
    };
    HeaderValue::from_str(host).ok()
}

/// Why a base URL was refused. Each variant holds the URL with its user info masked
/// ([`crate::secret::redact_urls`]), never as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    #[error("`{url}` is not a URL: {detail}")]
    NotAUrl { url: String, detail: String },
    #[error("`{0}` has no scheme")]
    NoScheme(String),
    #[error("`{0}`: only http and https are supported")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}`: user info in a base URL is not supported")]
    UserInfo(String),
    #[error("`{0}` has a host that cannot be sent in a header")]
    Host(String),
    #[error("`{0}` is too long")]
    TooLong(String),
}

impl BaseUrl {
    /// The base path without a trailing slash ("" for the root).
    pub fn path(&self) -> &str {
        self.path_query
            .get(..self.path_len as usize)
            .unwrap_or(&self.path_query)
    }

    /// The base URL's own query, if any (without `?`).
    pub fn query(&self) -> Option<&str> {
        self.path_query.get(self.path_len as usize + 1..)
    }

    /// The same base with the root path (its query kept).
    pub fn with_root_path(&self) -> Self {
        let query = self.query().map(|q| format!("?{q}")).unwrap_or_default();
        Self {
            path_len: 0,
            path_query: query.into_boxed_str(),
            ..self.clone()
        }
    }

    /// The host without brackets or port, lowercase.
    pub fn host(&self) -> String {
        bare_host(&self.authority)
    }

    /// The host without brackets or port, as written (no allocation: for the request path).
    pub fn host_str(&self) -> &str {
        self.authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// Whether both name the same host (hosts are case-insensitive), without allocating.
    pub fn same_host(&self, other: &BaseUrl) -> bool {
        self.host_str().eq_ignore_ascii_case(other.host_str())
    }

    /// Parses an absolute `http` or `https` URL. Error messages quote the URL with its user
    /// info masked ([`crate::secret::redact_urls`]).
    pub fn parse(url: &str) -> Result<Self, BaseUrlError> {
        let shown = crate::secret::redact_urls(url);
        let s = || shown.to_string();
        let uri: Uri =
            url.trim()
                .parse()
                .map_err(|e: http::uri::InvalidUri| BaseUrlError::NotAUrl {
                    url: s(),
                    detail: e.to_string(),
                })?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| BaseUrlError::NoScheme(s()))?;
        let default_port = if scheme == Scheme::HTTPS {
            443
        } else if scheme == Scheme::HTTP {
            80
        } else {
            return Err(BaseUrlError::Scheme(s()));
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| BaseUrlError::NoHost(s()))?;
        if authority.as_str().contains('@') {
            return Err(BaseUrlError::UserInfo(s()));
        }
        if bare_host(&authority).is_empty() {
            return Err(BaseUrlError::NoHost(s()));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        let host_header =
            host_header(&scheme, &authority).ok_or_else(|| BaseUrlError::Host(s()))?;
        // One buffer for the authority and the Host header (the header is the authority, or
        // its host part when the port is the scheme's default): `Uri` parsing kept the whole
        // URL text alive behind both.
        let shared = bytes::Bytes::copy_from_slice(authority.as_str().as_bytes());
        let authority = Authority::from_maybe_shared(shared.clone()).unwrap_or(authority);
        let host_header = match shared
            .windows(host_header.len())
            .position(|w| w == host_header.as_bytes())
        {
            Some(at) => HeaderValue::from_maybe_shared(shared.slice(at..at + host_header.len()))
                .unwrap_or(host_header),
            None => host_header,
        };
        let path = uri.path().trim_end_matches('/');
        let path_len = u32::try_from(path.len()).map_err(|_| BaseUrlError::TooLong(s()))?;
        let mut path_query = String::from(path);
        if let Some(q) = uri.query() {
            path_query.push('?');
            path_query.push_str(q);
        }
        Ok(Self {
            scheme,
            host_header,
            port,
            authority,
            path_len,
            path_query: path_query.into_boxed_str(),
        })
    }
}

/// An authority's host without brackets or port, lowercase.
fn bare_host(authority: &Authority) -> String {
    authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// An integration: a provider plus the operator's settings for it.
#[derive(Debug)]
pub struct Integration {
    pub unique_key: String,
    /// The same key, shared by every connection of this integration as its
    /// `provider_config_key` (one allocation instead of one per connection).
    pub key: Arc<str>,
    pub display_name: Option<String>,
    pub provider: Arc<Provider>,
    pub base_url: Option<BaseUrlTemplate>,
    pub injections: Vec<Injection>,
    pub oauth_client_id: Option<Secret>,
    pub oauth_client_secret: Option<Secret>,
    pub scopes: Option<String>,
    /// Whether a template reads `${credentials.x}`; only then is a credential map built.
    uses_credentials: bool,
    /// The injections rendered per request (those that need the access token), shared by
    /// every connection of this integration.
    dynamic: Arc<[Injection]>,
    /// Whether templates are rendered after the build (access-token injections, a token URL):
    /// only then do its connections keep `connection_config` and `metadata` decoded.
    renders_later: bool,
    /// The record this was compiled from, for the API and for recompiling its connections.
    pub record: RawIntegration,
    /// This integration's metric handles, made on first use (see [`crate::metrics`]).
    pub metrics: std::sync::OnceLock<crate::metrics::IntegrationMetrics>,
}

/// A connection's stored credential.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    ApiKey(Secret),
    Basic {
        username: Secret,
        password: Secret,
    },
    OAuth2 {
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_at: Option<jiff::Timestamp>,
    },
    /// Boxed: OAUTH2_CC connections are rare, and unboxed this variant alone would make every
    /// connection's credential (so every `Connection`) 32 bytes larger.
    OAuth2Cc(Box<ClientCredentials>),
}

/// An OAUTH2_CC connection's credential.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCredentials {
    pub client_id: Option<Secret>,
    pub client_secret: Option<Secret>,
    pub token: Option<Secret>,
    pub expires_at: Option<jiff::Timestamp>,
}

impl Credential {
    /// The record form, as the vault and the API write it.
    pub fn to_raw(&self) -> RawCredentials {
        let ts = |t: &Option<jiff::Timestamp>| t.map(|t| t.to_string());
        match self {
            Self::ApiKey(k) => RawCredentials::ApiKey { api_key: k.clone() },
            Self::Basic { username, password } => RawCredentials::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            Self::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => RawCredentials::OAuth2 {
                access_token: access_token.clone(),
                refresh_token: refresh_token.clone(),
                expires_at: ts(expires_at),
            },
            Self::OAuth2Cc(cc) => RawCredentials::OAuth2Cc {
                client_id: cc.client_id.clone(),
                client_secret: cc.client_secret.clone(),
                token: cc.token.clone(),
                expires_at: ts(&cc.expires_at),
            },
        }
    }
}

/// A connection with everything precomputed for the request path.
///
/// Kept small (issue 12: 100k connections in 64 MiB): what the request path reads is here
/// compiled; what only the API and the record read (`connection_config`, `metadata`,
/// `end_user`, `tags`, timestamps) is one compact JSON text, decoded on demand.
#[derive(Debug)]
pub struct Connection {
    pub connection_id: Box<str>,
    /// The integration's key, shared with the integrations table (no copy per connection).
    pub provider_config_key: Arc<str>,
    pub integration: Arc<Integration>,
    pub credential: Credential,
    /// `None` when no base URL is configured anywhere: requests need `Base-Url-Override`.
    /// Shared by the connections of an integration whose base URL is the same string.
    pub base_url: Option<Arc<BaseUrl>>,
    /// Injected headers whose values are known at load time (sensitive). Boxed slices, not
    /// `Vec`s: 8 bytes each, which keep `Arc<Connection>` inside mimalloc's 256-byte class.
    pub static_headers: Box<[(HeaderName, HeaderValue)]>,
    /// Injected query pairs known at load time, percent-encoded.
    pub static_query: Box<[(Arc<str>, Box<str>)]>,
    /// The record's cold fields as compact JSON ([`Extra`]); `None` when all are empty.
    extra: Option<Box<str>>,
    /// `connection_config` and `metadata` decoded, kept only when something renders templates
    /// after the build (the integration's access-token templates, an OAuth token URL), so the
    /// request path never parses JSON.
    template_maps: Option<Box<TemplateMaps>>,
    /// The store's version of this record: it changes whenever the record does (an API write,
    /// a refreshed token, a hand edit the file store noticed).
    pub version: u64,
    /// Set while `webhooks::status` holds an auth error for this connection (an upstream 401,
    /// a failed refresh): the request path reads only this flag on a 2xx, and goes to the
    /// error table to clear the error only when it is set. One byte, which the struct's
    /// padding had room for (it stays in the 192-byte class).
    auth_error: std::sync::atomic::AtomicBool,
    /// Set by each request that uses this connection, cleared by the bounded connection
    /// cache's sweep (the PostgreSQL store's `--connection-cache`): a connection not used
    /// since the last sweep is the one evicted (second chance). One more byte of padding.
    used: std::sync::atomic::AtomicBool,
}

/// What only some connections need, boxed so the others pay 8 bytes for it.
#[derive(Debug, Clone, Default)]
struct TemplateMaps {
    /// `connection_config` and `metadata`, decoded, for templates rendered after the build.
    connection_config: Map<String, Value>,
    metadata: Map<String, Value>,
}

/// The fields of a connection record that the request path never reads, as stored (compact
/// JSON) in [`Connection`].
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extra {
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub connection_config: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_override: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Connection {
    /// The values for rendering this connection's templates, with the given access token.
    /// `connection_config` and `metadata` are there only for integrations that render
    /// templates after the build (see `template_maps`); static ones were rendered at compile.
    pub fn values<'a>(&'a self, access_token: Option<&'a str>) -> Values<'a> {
        let mut v = Values {
            access_token,
            connection_config: self.template_maps.as_deref().map(|m| &m.connection_config),
            metadata: self.template_maps.as_deref().map(|m| &m.metadata),
            ..Values::default()
        };
        match &self.credential {
            Credential::ApiKey(k) => v.api_key = Some(k.expose()),
            Credential::Basic { username, password } => {
                v.username = Some(username.expose());
                v.password = Some(password.expose());
            }
            _ => {}
        }
        v
    }

    /// The cold fields, decoded.
    pub fn extra(&self) -> Extra {
        self.extra
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    /// The cold fields exactly as stored: equal texts mean equal fields.
    pub fn extra_text(&self) -> &str {
        self.extra.as_deref().unwrap_or("")
    }

    pub fn connection_config(&self) -> Map<String, Value> {
        self.extra().connection_config
    }

    pub fn metadata(&self) -> Map<String, Value> {
        self.extra().metadata
    }

    pub fn end_user(&self) -> Option<Value> {
        self.extra().end_user
    }

    pub fn tags(&self) -> Map<String, Value> {
        self.extra().tags
    }

    pub fn created_at(&self) -> Option<String> {
        self.extra().created_at
    }

    pub fn updated_at(&self) -> Option<String> {
        self.extra().updated_at
    }

    /// Injections rendered per request (those that need the access token): the integration's.
    pub fn dynamic(&self) -> &[Injection] {
        &self.integration.dynamic
    }

    /// SHA-256 over the credential (in its canonical form: `expires_at` as sidekey prints
    /// it), computed when asked: the read-only vault's state file names the credential an
    /// entry replaces by it, across restarts. Within a process, a changed record is told by
    /// its [`Connection::version`].
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.credential.to_raw())
    }

    /// Whether an auth error may be recorded for this connection (see the field). Relaxed:
    /// the flag is a hint; the error table behind it is the truth, read under its lock.
    #[inline]
    pub fn auth_error_hint(&self) -> bool {
        self.auth_error.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets or clears the hint; only `webhooks::status` calls it, under its table's lock.
    pub fn set_auth_error_hint(&self, on: bool) {
        self.auth_error
            .store(on, std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the connection used (for the bounded cache's sweep). Read first, so a hot
    /// connection's cache line is written once per sweep, not once per request.
    #[inline]
    pub fn touch(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }

    /// Whether the connection was used since the last call, clearing the mark (the sweep).
    pub fn take_used(&self) -> bool {
        self.used.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The record this connection was compiled from.
    pub fn record(&self) -> RawConnection {
        let e = self.extra();
        RawConnection {
            connection_id: self.connection_id.to_string(),
            provider_config_key: self.provider_config_key.to_string(),
            credentials: self.credential.to_raw(),
            connection_config: e.connection_config,
            metadata: e.metadata,
            end_user: e.end_user,
            tags: e.tags,
            webhook_url_override: e.webhook_url_override,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// The snapshot's lookup tables: persistent hash maps (a put or delete shares every untouched
/// node with the previous snapshot) keyed by `Arc<str>`, hashed with foldhash (fast, seeded
/// per process) rather than SipHash. Only the operator's records insert keys.
pub type Table<V> = imbl::GenericHashMap<
    Arc<str>,
    V,
    foldhash::fast::RandomState,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// One accepted caller key: its digest and what it may do.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerKey {
    pub digest: [u8; 32],
    pub scopes: crate::auth::Scopes,
    /// From `SIDEKEY_SECRET_KEY` (kept for the life of the process) rather than the vault.
    pub from_env: bool,
    /// The vault record (none for environment keys), written back as it was.
    pub record: Option<RawSecretKey>,
}

/// One consistent view of all configuration, swapped whole on reload or write.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub generation: u64,
    /// The accepted caller keys (environment and vault).
    pub secret_keys: Arc<[CallerKey]>,
    pub integrations: Table<Arc<Integration>>,
    /// Connections by integration key, then connection id.
    pub connections: Table<Connections>,
    /// Connections by connection id alone, for integration.app-style selectors.
    pub by_connection_id: ById,
    pub catalog: Arc<Catalog>,
    /// Problems that don't stop the load (unusable providers nobody uses, …).
    pub warnings: Arc<[Diagnostic]>,
}

/// One change to the state: what an API write, a refreshed token or a database notification
/// applies to a snapshot.
#[derive(Debug, Clone)]
pub enum Change {
    /// Insert or replace an integration; its connections are recompiled against it.
    PutIntegration(RawIntegration),
    /// Remove an integration and every connection of it.
    DeleteIntegration(String),
    /// Insert or replace a connection, with the store's version for it.
    PutConnection(RawConnection, u64),
    DeleteConnection {
        provider_config_key: String,
        connection_id: String,
    },
    /// Insert or replace a vault caller key (by digest).
    PutKey(RawSecretKey),
    /// Remove a vault caller key by its hex digest.
    DeleteKey(String),
}

impl Snapshot {
    pub fn connection(
        &self,
        provider_config_key: &str,
        connection_id: &str,
    ) -> Option<&Arc<Connection>> {
        self.connections
            .get(provider_config_key)?
            .get(connection_id)
    }

    pub fn connection_count(&self) -> usize {
        self.connections.values().map(Connections::len).sum()
    }

    /// This snapshot with one change applied, or the problems that refuse it (paths relative
    /// to the record, file name empty). Costs O(log n) for a connection or key; an
    /// integration recompiles its own connections and nothing else.
    pub fn with(&self, change: Change) -> Result<Snapshot, Vec<Diagnostic>> {
        let mut next = self.clone();
        let mut b = Builder::new("", &self.catalog);
        match change {
            Change::PutConnection(raw, version) => {
                let Some(int) = next
                    .integrations
                    .get(raw.provider_config_key.as_str())
                    .cloned()
                else {
                    b.error(
                        "provider_config_key",
                        format!("no integration `{}`", raw.provider_config_key),
                    );
                    return Err(b.errors);
                };
                match b.connection("", raw, &int, version) {
                    Some(conn) => next.insert_connection(Arc::new(conn)),
                    None => return Err(b.errors),
                }
            }
            Change::DeleteConnection {
                provider_config_key,
                connection_id,
            } => next.remove_connection(&provider_config_key, &connection_id),
            Change::PutIntegration(raw) => {
                let Some(int) = b.integration("", &raw) else {
                    return Err(b.errors);
                };
                let int = Arc::new(int);
                let key: Arc<str> = Arc::from(int.unique_key.as_str());
                let old = next.connections.get(&*key).cloned().unwrap_or_default();
                let mut table = Connections::default();
                for conn in old.values() {
                    let at = format!("connections[{}]", conn.connection_id);
                    if let Some(c) = b.connection(&at, conn.record(), &int, conn.version) {
                        table.insert(Arc::new(c));
                    }
                }
                if !b.errors.is_empty() {
                    return Err(b.errors);
                }
                next.integrations.insert(key.clone(), int);
                for conn in table.values() {
                    next.by_connection_id.insert(conn.clone());
                }
                if !table.is_empty() {
                    next.connections.insert(key, table);
                }
            }
            Change::DeleteIntegration(key) => {
                if let Some(table) = next.connections.remove(key.as_str()) {
                    for conn in table.values() {
                        next.by_connection_id
                            .remove(&conn.provider_config_key, &conn.connection_id);
                    }
                }
                next.integrations.remove(key.as_str());
            }
            Change::PutKey(raw) => {
                let key = b.caller_key("", &raw).ok_or_else(|| b.errors.clone())?;
                let mut keys: Vec<CallerKey> = next
                    .secret_keys
                    .iter()
                    .filter(|k| k.from_env || k.digest != key.digest)
                    .cloned()
                    .collect();
                keys.push(key);
                next.secret_keys = keys.into();
            }
            Change::DeleteKey(hex) => {
                let digest = parse_sha256(&hex);
                next.secret_keys = next
                    .secret_keys
                    .iter()
                    .filter(|k| k.from_env || Some(k.digest) != digest)
                    .cloned()
                    .collect();
            }
        }
        Ok(next)
    }

    /// Adds (or replaces) a connection in both lookups.
    fn insert_connection(&mut self, conn: Arc<Connection>) {
        let pck: Arc<str> = conn.provider_config_key.clone();
        let mut table = self.connections.get(&*pck).cloned().unwrap_or_default();
        table.insert(conn.clone());
        self.connections.insert(pck, table);
        self.by_connection_id.insert(conn);
    }

    fn remove_connection(&mut self, pck: &str, cid: &str) {
        let Some(mut table) = self.connections.get(pck).cloned() else {
            return;
        };
        if table.remove(cid).is_none() {
            return;
        }
        if table.is_empty() {
            self.connections.remove(pck);
        } else {
            self.connections.insert(Arc::from(pck), table);
        }
        self.by_connection_id.remove(pck, cid);
    }

    /// Every record in this snapshot (vault keys only, not the environment's), in a stable
    /// order: what the file store writes and the property test compares.
    pub fn records(&self) -> RawVault {
        let mut integrations: Vec<RawIntegration> = self
            .integrations
            .values()
            .map(|i| i.record.clone())
            .collect();
        integrations.sort_by(|a, b| a.unique_key.cmp(&b.unique_key));
        let mut connections: Vec<RawConnection> = self
            .connections
            .values()
            .flat_map(|t| t.values())
            .map(|c| c.record())
            .collect();
        connections.sort_by(|a, b| {
            (&a.provider_config_key, &a.connection_id)
                .cmp(&(&b.provider_config_key, &b.connection_id))
        });
        RawVault {
            secret_keys: Vec::new(),
            integrations,
            connections,
        }
    }
}

/// Validates both files and builds a snapshot, or returns every error found.
pub fn build(src: &Sources, opts: &BuildOptions) -> Result<Snapshot, Vec<Diagnostic>> {
    build_reusing(src, opts, None)
}

/// [`build`], sharing with `previous` (the snapshot being replaced) every integration and
/// connection whose record and compiled inputs did not change, so a reload holds the old
/// snapshot plus what changed, not two snapshots. The result equals a [`build`] of the same
/// files: a record is shared only if compiling it again would give the same value.
pub fn build_reusing(
    src: &Sources,
    opts: &BuildOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let catalog = match Catalog::parse(&src.providers_name, &src.providers) {
        Ok(c) => c,
        Err(d) => {
            errors.push(d);
            Catalog::default()
        }
    };
    let catalog = Arc::new(catalog);
    // Each record is compiled as soon as it is parsed and then dropped, so a load holds the
    // growing snapshot plus one record, never the whole vault as events or records. Sealed
    // values are opened first, record by record, so the rest of the build (and the snapshot)
    // only ever sees plaintext.
    let opener = crate::config::sealed::Opener::new(opts.encryption_key.as_deref());
    let mut compile = Compile::new(&src.vault_name, &catalog, opts, previous, Some(opener));
    if let Err(d) = vault::parse_each(&src.vault_name, &src.vault, &mut |r| compile.record(r)) {
        errors.push(d);
        return Err(errors);
    }
    let (mut snapshot, sealing) = compile.finish().map_err(|mut e| {
        errors.append(&mut e);
        errors.clone()
    })?;
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings = snapshot.warnings.to_vec();
    if let Some(sealing) = sealing {
        warnings.extend(sealing.diagnostics(&src.vault_name));
    }
    warnings.extend(catalog.warnings(&src.providers_name));
    snapshot.warnings = warnings.into();
    Ok(snapshot)
}

/// Builds a snapshot from parsed records, naming problems by their place in `file`. Every
/// record goes through the same compile step as [`Snapshot::with`], so building from scratch
/// and applying the same records one by one give the same snapshot.
pub fn build_records(
    file: &str,
    catalog: Arc<Catalog>,
    raw: RawVault,
    opts: &BuildOptions,
) -> Result<Snapshot, Vec<Diagnostic>> {
    build_records_reusing(file, catalog, raw, opts, None)
}

/// An integration of `previous` that compiling `new` again gave the same value for.
fn reusable_integration(
    previous: Option<&Snapshot>,
    new: &Integration,
) -> Option<Arc<Integration>> {
    let old = previous?.integrations.get(new.unique_key.as_str())?;
    // Providers are compared by their compiled form (Debug prints every field, in order): the
    // providers file may have changed around an integration without changing its provider.
    (old.record == new.record
        && (Arc::ptr_eq(&old.provider, &new.provider)
            || format!("{:?}", old.provider) == format!("{:?}", new.provider)))
    .then(|| old.clone())
}

/// What a build does with a connection record, given the snapshot it replaces.
enum Previous {
    /// Compiling the record again would give this connection (same integration, shared, so
    /// compiled from the same inputs; same record): share it, version included.
    Reuse(Arc<Connection>),
    /// The same record under a changed integration: compile it again, keeping its version.
    Keep(u64),
    /// A new or changed record.
    New,
}

fn previous_connection(
    previous: Option<&Snapshot>,
    int: &Arc<Integration>,
    raw: &RawConnection,
) -> Previous {
    let Some(old) =
        previous.and_then(|p| p.connection(&raw.provider_config_key, &raw.connection_id))
    else {
        return Previous::New;
    };
    if !same_record(old, raw) {
        Previous::New
    } else if Arc::ptr_eq(&old.integration, int) {
        Previous::Reuse(old.clone())
    } else {
        Previous::Keep(old.version)
    }
}

/// Whether `raw` is the record `old` was compiled from. An `expires_at` is compared as a
/// timestamp: the record a connection gives back prints it in sidekey's form, which a
/// hand-written vault need not use, and writing it another way is no change.
fn same_record(old: &Connection, raw: &RawConnection) -> bool {
    let record = old.record();
    if record == *raw {
        return true;
    }
    let canonical = |e: &mut Option<String>| {
        if let Some(t) = e
            .as_deref()
            .and_then(|s| s.trim().parse::<jiff::Timestamp>().ok())
        {
            *e = Some(t.to_string());
        }
    };
    let mut raw = raw.clone();
    match &mut raw.credentials {
        RawCredentials::OAuth2 { expires_at, .. } | RawCredentials::OAuth2Cc { expires_at, .. } => {
            canonical(expires_at)
        }
        _ => return false,
    }
    record == raw
}

fn build_records_reusing(
    file: &str,
    catalog: Arc<Catalog>,
    raw: RawVault,
    opts: &BuildOptions,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut compile = Compile::new(file, &catalog, opts, previous, None);
    for (i, k) in raw.secret_keys.into_iter().enumerate() {
        compile.record(Record::SecretKey(i, k));
    }
    for (i, int) in raw.integrations.into_iter().enumerate() {
        compile.record(Record::Integration(i, int));
    }
    compile.record(Record::IntegrationsDone);
    // Connections are moved out of the records, not cloned: a large vault is built with one
    // allocation fewer per field, and freed once.
    for (i, conn) in raw.connections.into_iter().enumerate() {
        compile.record(Record::Connection(i, conn));
    }
    compile.finish().map(|(snapshot, _)| snapshot)
}

/// The compile side of a build, fed one record at a time in file order (by the streaming
/// parse, or from a [`RawVault`]). Connections are compiled as they arrive once every
/// integration is known; those read before the `integrations` list (a hand-written vault may
/// put it last) wait for it. Problems come out in the order a whole-vault build gives them:
/// caller keys, integrations, then connections.
struct Compile<'c, 'p> {
    b: Builder<'c>,
    catalog: &'c Arc<Catalog>,
    generation: u64,
    /// The store's version counter (see [`BuildOptions::versions`]).
    versions: Option<&'c crate::config::Versions>,
    previous: Option<&'p Snapshot>,
    /// Opens sealed values (a build from the file); `None` for records already in plaintext.
    opener: Option<crate::config::sealed::Opener<'c>>,
    /// The first value that could not be opened: the build fails with it alone.
    open_error: Option<crate::config::sealed::OpenError>,
    key_errors: Vec<Diagnostic>,
    key_warnings: Vec<Diagnostic>,
    secret_keys: Vec<CallerKey>,
    integrations: Table<Arc<Integration>>,
    /// Every integration key of the file, built or not.
    known: std::collections::HashSet<String>,
    integrations_done: bool,
    waiting: Vec<(usize, RawConnection)>,
    connections: HashMap<Arc<str>, Connections>,
    by_connection_id: ById,
}

impl<'c, 'p> Compile<'c, 'p> {
    fn new(
        file: &'c str,
        catalog: &'c Arc<Catalog>,
        opts: &'c BuildOptions,
        previous: Option<&'p Snapshot>,
        opener: Option<crate::config::sealed::Opener<'c>>,
    ) -> Self {
        let secret_keys = opts
            .env_keys
            .iter()
            .map(|d| CallerKey {
                digest: *d,
                scopes: crate::auth::Scopes::ALL,
                from_env: true,
                record: None,
            })
            .collect();
        Self {
            b: Builder::new(file, catalog),
            catalog,
            generation: opts.generation,
            versions: opts.versions.as_deref(),
            previous,
            opener,
            open_error: None,
            key_errors: Vec::new(),
            key_warnings: Vec::new(),
            secret_keys,
            integrations: Table::default(),
            known: std::collections::HashSet::new(),
            integrations_done: false,
            waiting: Vec::new(),
            connections: HashMap::new(),
            by_connection_id: ById::default(),
        }
    }

    fn record(&mut self, record: Record) {
        if self.open_error.is_some() {
            return;
        }
        match record {
            Record::SecretKey(i, k) => self.secret_key(i, &k),
            Record::Integration(i, int) => self.integration(i, int),
            Record::IntegrationsDone => self.integrations_done(),
            Record::Connection(i, conn) if self.integrations_done => self.connection(i, conn),
            Record::Connection(i, conn) => self.waiting.push((i, conn)),
        }
    }

    fn secret_key(&mut self, i: usize, k: &RawSecretKey) {
        // Caller keys may come anywhere in the file; their problems are listed first.
        let (errors, warnings) = (self.b.errors.len(), self.b.warnings.len());
        if let Some(key) = self.b.caller_key(&format!("secret_keys[{i}]"), k) {
            self.secret_keys.push(key);
        }
        self.key_errors.extend(self.b.errors.drain(errors..));
        self.key_warnings.extend(self.b.warnings.drain(warnings..));
    }

    fn integration(&mut self, i: usize, mut raw: RawIntegration) {
        if let Some(opener) = &mut self.opener {
            if let Err(e) = opener.integration(i, &mut raw) {
                self.open_error = Some(e);
                return;
            }
        }
        self.known.insert(raw.unique_key.clone());
        let at = format!("integrations[{i}]");
        if let Some(int) = self.b.integration(&at, &raw) {
            if self.integrations.contains_key(int.unique_key.as_str()) {
                self.b.error(
                    format!("{at}.unique_key"),
                    format!("duplicate unique_key `{}`", int.unique_key),
                );
            } else {
                let int =
                    reusable_integration(self.previous, &int).unwrap_or_else(|| Arc::new(int));
                self.integrations
                    .insert(Arc::from(int.unique_key.as_str()), int);
            }
        }
    }

    fn integrations_done(&mut self) {
        self.integrations_done = true;
        for (i, conn) in std::mem::take(&mut self.waiting) {
            if self.open_error.is_some() {
                return;
            }
            self.connection(i, conn);
        }
    }

    fn connection(&mut self, i: usize, mut raw_conn: RawConnection) {
        if let Some(opener) = &mut self.opener {
            if let Err(e) = opener.connection(i, &mut raw_conn) {
                self.open_error = Some(e);
                return;
            }
        }
        let at = format!("connections[{i}]");
        let Some(int) = self
            .integrations
            .get(raw_conn.provider_config_key.as_str())
            .cloned()
        else {
            // An integration that failed to build has already reported its own error.
            if !self.known.contains(raw_conn.provider_config_key.as_str()) {
                self.b.error(
                    format!("{at}.provider_config_key"),
                    format!("no integration `{}`", raw_conn.provider_config_key),
                );
            }
            return;
        };
        let version = match previous_connection(self.previous, &int, &raw_conn) {
            Previous::Reuse(old) => Ok(old),
            Previous::Keep(v) => Err(v),
            Previous::New => Err(self.versions.map_or(0, |v| v.next())),
        };
        let conn = match version {
            Ok(old) => old,
            Err(version) => match self.b.connection(&at, raw_conn, &int, version) {
                Some(c) => Arc::new(c),
                None => return,
            },
        };
        let table = self
            .connections
            .entry(conn.provider_config_key.clone())
            .or_default();
        if table.contains_key(&conn.connection_id) {
            self.b.error(
                at,
                format!(
                    "duplicate connection `{}` for integration `{}`",
                    conn.connection_id, conn.provider_config_key
                ),
            );
            return;
        }
        table.insert(conn.clone());
        self.by_connection_id.insert(conn);
    }

    /// The snapshot, and what opening sealed values found (when this build opened them).
    fn finish(
        mut self,
    ) -> Result<(Snapshot, Option<crate::config::sealed::OpenReport>), Vec<Diagnostic>> {
        if !self.integrations_done {
            self.integrations_done();
        }
        if let Some(e) = self.open_error {
            return Err(vec![e.diagnostic(self.b.file)]);
        }
        let mut errors = self.key_errors;
        errors.append(&mut self.b.errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut warnings = self.key_warnings;
        warnings.append(&mut self.b.warnings);
        Ok((
            Snapshot {
                generation: self.generation,
                secret_keys: self.secret_keys.into(),
                integrations: self.integrations,
                connections: self.connections.into_iter().collect(),
                by_connection_id: self.by_connection_id,
                catalog: self.catalog.clone(),
                warnings: warnings.into(),
            },
            self.opener.map(|o| o.report),
        ))
    }
}

/// Parses a hex SHA-256 digest, any case.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

/// Compiles records into the model, collecting problems. Paths are `base.field`, where `base`
/// names the record in its file (`connections[3]`), or is empty for an API write.
struct Builder<'a> {
    file: &'a str,
    catalog: &'a Catalog,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// The last base URL string parsed per integration and its result: connections of an
    /// integration with a fixed base URL all render the same string, parsed (and stored) once.
    last_base: HashMap<String, (String, Arc<BaseUrl>)>,
}

fn join(base: &str, field: &str) -> String {
    match (base.is_empty(), field.is_empty()) {
        (true, _) => field.to_string(),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}.{field}"),
    }
}

impl<'a> Builder<'a> {
    fn new(file: &'a str, catalog: &'a Catalog) -> Self {
        Self {
            file,
            catalog,
            errors: Vec::new(),
            warnings: Vec::new(),
            last_base: HashMap::new(),
        }
    }

    fn error(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(Diagnostic::error(self.file, path, msg));
    }

    fn caller_key(&mut self, base: &str, raw: &RawSecretKey) -> Option<CallerKey> {
        let Some(digest) = parse_sha256(&raw.sha256) else {
            self.error(
                join(base, "sha256"),
                "must be 64 hexadecimal digits (the SHA-256 of the key)",
            );
            return None;
        };
        let scopes = match &raw.scopes {
            None => crate::auth::Scopes::ALL,
            Some(names) => match crate::auth::Scopes::parse(names) {
                Ok(s) => s,
                Err(unknown) => {
                    self.error(
                        join(base, "scopes"),
                        format!(
                            "unknown scope `{unknown}` (known: {})",
                            crate::auth::Scope::NAMES.join(", ")
                        ),
                    );
                    return None;
                }
            },
        };
        Some(CallerKey {
            digest,
            scopes,
            from_env: false,
            record: Some(raw.clone()),
        })
    }

    /// Parses a base URL, reusing the integration's previous result when the string is the same.
    fn base_url(&mut self, int: &str, s: String) -> Result<Arc<BaseUrl>, BaseUrlError> {
        if let Some((prev, parsed)) = self.last_base.get(int) {
            if *prev == s {
                return Ok(parsed.clone());
            }
        }
        let parsed = Arc::new(BaseUrl::parse(&s)?);
        self.last_base.insert(int.to_string(), (s, parsed.clone()));
        Ok(parsed)
    }

    fn integration(&mut self, base: &str, raw: &RawIntegration) -> Option<Integration> {
        let at = |f: &str| join(base, f);
        if raw.unique_key.trim().is_empty() {
            self.error(at("unique_key"), "must not be empty");
            return None;
        }
        let provider = match self.catalog.providers.get(&raw.provider) {
            None => {
                self.error(
                    at("provider"),
                    format!("unknown provider `{}`", raw.provider),
                );
                return None;
            }
            Some(Err(errs)) => {
                for e in errs {
                    self.error(at("provider"), format!("provider `{}`: {e}", raw.provider));
                }
                return None;
            }
            Some(Ok(p)) => p.clone(),
        };
        let cfg = raw.integration_config.clone().unwrap_or_default();
        let mut base_url = provider.base_url.clone();
        if let Some(b) = &cfg.base_url {
            match BaseUrlTemplate::compile(b) {
                Ok(t) => base_url = Some(t),
                Err(e) => self.error(at("integration_config.baseUrl"), e.to_string()),
            }
        }
        let mut injections: Vec<Injection> = provider
            .headers
            .iter()
            .map(|(h, t)| Injection {
                placement: Placement::Header(h.clone()),
                template: t.clone(),
            })
            .chain(provider.query.iter().map(|(q, t)| Injection {
                placement: Placement::Query(encode_query_component(q).into()),
                template: t.clone(),
            }))
            .collect();
        if let Some(name) = &cfg.key_name {
            let placement = match cfg.key_placement.unwrap_or(KeyPlacement::Header) {
                KeyPlacement::Header => match HeaderName::from_bytes(name.trim().as_bytes()) {
                    Ok(h) => Some(Placement::Header(h)),
                    Err(_) => {
                        self.error(at("integration_config.keyName"), "not a valid header name");
                        None
                    }
                },
                KeyPlacement::Query => {
                    Some(Placement::Query(encode_query_component(name.trim()).into()))
                }
            };
            let template = cfg.value_template.as_deref().unwrap_or("${apiKey}");
            match (placement, Template::compile(template)) {
                (Some(placement), Ok(template)) => {
                    injections.retain(|inj| inj.placement != placement);
                    injections.push(Injection {
                        placement,
                        template,
                    });
                }
                (_, Err(e)) => self.error(at("integration_config.valueTemplate"), e.to_string()),
                (None, _) => {}
            }
        } else if cfg.key_placement.is_some() || cfg.value_template.is_some() {
            self.error(
                at("integration_config.keyName"),
                "keyPlacement and valueTemplate need keyName",
            );
        }
        let targets_auth = injections
            .iter()
            .any(|inj| inj.placement == Placement::Header(http::header::AUTHORIZATION));
        match provider.auth_mode {
            AuthMode::ApiKey if injections.is_empty() => {
                self.error(
                    at("integration_config"),
                    format!(
                        "provider `{}` gives no header or query template for the API key; set integration_config.keyName (and keyPlacement, valueTemplate)",
                        provider.name
                    ),
                );
                return None;
            }
            AuthMode::OAuth2 | AuthMode::OAuth2Cc
                if !targets_auth && !injections.iter().any(|i| i.template.uses_access_token()) =>
            {
                if let Ok(t) = Template::compile("Bearer ${accessToken}") {
                    injections.push(Injection {
                        placement: Placement::Header(http::header::AUTHORIZATION),
                        template: t,
                    });
                }
            }
            _ => {}
        }
        if base_url.is_none() {
            self.warnings.push(Diagnostic::warning(
                self.file,
                at("integration_config.baseUrl"),
                "no base URL from the provider or the integration; requests must send Base-Url-Override",
            ));
        }
        let creds = raw.credentials.as_ref();
        let reads_credentials = |p: &crate::template::Placeholder| {
            matches!(p, crate::template::Placeholder::Credentials(_))
        };
        let uses_credentials = injections
            .iter()
            .any(|inj| inj.template.placeholders().any(reads_credentials))
            || base_url
                .as_ref()
                .is_some_and(|b| b.placeholders().any(reads_credentials));
        let dynamic: Arc<[Injection]> = injections
            .iter()
            .filter(|inj| inj.template.uses_access_token())
            .cloned()
            .collect();
        let renders_later =
            !dynamic.is_empty() || provider.token_url.is_some() || provider.refresh_url.is_some();
        Some(Integration {
            unique_key: raw.unique_key.clone(),
            key: Arc::from(raw.unique_key.as_str()),
            display_name: raw.display_name.clone(),
            provider,
            base_url,
            injections,
            oauth_client_id: creds.and_then(|c| c.oauth_client_id.clone()),
            oauth_client_secret: creds.and_then(|c| c.oauth_client_secret.clone()),
            scopes: creds.and_then(|c| c.scopes.clone()),
            uses_credentials,
            renders_later,
            dynamic,
            record: raw.clone(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    fn connection(
        &mut self,
        base: &str,
        raw: RawConnection,
        int: &Arc<Integration>,
        version: u64,
    ) -> Option<Connection> {
        let at = |f: &str| join(base, f);
        let errors_before = self.errors.len();
        if raw.connection_id.trim().is_empty() {
            self.error(at("connection_id"), "must not be empty");
        }
        let mode = int.provider.auth_mode;
        let fits = matches!(
            (mode, &raw.credentials),
            (AuthMode::ApiKey, RawCredentials::ApiKey { .. })
                | (AuthMode::Basic, RawCredentials::Basic { .. })
                | (AuthMode::OAuth2, RawCredentials::OAuth2 { .. })
                | (AuthMode::OAuth2Cc, RawCredentials::OAuth2Cc { .. })
        );
        if !fits {
            self.error(
                at("credentials.type"),
                format!(
                    "`{}` does not fit provider `{}`, whose auth mode is {}",
                    raw.credentials.type_name(),
                    int.provider.name,
                    mode.as_str()
                ),
            );
            return None;
        }
        let timestamp = |b: &mut Self, s: &Option<String>| {
            s.as_deref()
                .and_then(|s| match s.trim().parse::<jiff::Timestamp>() {
                    Ok(t) => Some(t),
                    Err(_) => {
                        b.error(at("credentials.expires_at"), "not an RFC 3339 timestamp");
                        None
                    }
                })
        };
        let creds_map = int
            .uses_credentials
            .then(|| credentials_map(&raw.credentials));
        let credential = match raw.credentials {
            RawCredentials::ApiKey { api_key } => {
                if api_key.is_empty() {
                    self.error(at("credentials.apiKey"), "must not be empty");
                }
                Credential::ApiKey(api_key)
            }
            RawCredentials::Basic { username, password } => {
                if username.is_empty() {
                    self.error(at("credentials.username"), "must not be empty");
                }
                Credential::Basic { username, password }
            }
            RawCredentials::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
                ..
            } => Credential::OAuth2 {
                access_token,
                refresh_token,
                expires_at: timestamp(self, &expires_at),
            },
            RawCredentials::OAuth2Cc {
                client_id,
                client_secret,
                token,
                expires_at,
            } => {
                let has_id = client_id.is_some() || int.oauth_client_id.is_some();
                let has_secret = client_secret.is_some() || int.oauth_client_secret.is_some();
                if !has_id || !has_secret {
                    self.error(
                        at("credentials"),
                        "OAUTH2_CC needs client_id and client_secret on the connection or oauth_client_id and oauth_client_secret on the integration",
                    );
                }
                if int.provider.token_url.is_none() {
                    self.error(
                        at("provider_config_key"),
                        format!("provider `{}` has no token_url", int.provider.name),
                    );
                }
                Credential::OAuth2Cc(Box::new(ClientCredentials {
                    client_id,
                    client_secret,
                    token,
                    expires_at: timestamp(self, &expires_at),
                }))
            }
        };
        let extra = Extra {
            connection_config: raw.connection_config,
            metadata: raw.metadata,
            end_user: raw.end_user,
            tags: raw.tags,
            webhook_url_override: raw.webhook_url_override,
            created_at: raw.created_at,
            updated_at: raw.updated_at,
        };
        let extra_text = if extra.is_empty() {
            None
        } else {
            match serde_json::to_string(&extra) {
                Ok(t) => Some(t.into_boxed_str()),
                Err(_) => {
                    self.error(at("metadata"), "cannot be stored as JSON");
                    return None;
                }
            }
        };
        let mut conn = Connection {
            connection_id: raw.connection_id.into_boxed_str(),
            provider_config_key: int.key.clone(),
            integration: int.clone(),
            credential,
            base_url: None,
            static_headers: Box::default(),
            static_query: Box::default(),
            extra: extra_text,
            template_maps: None,
            version,
            auth_error: std::sync::atomic::AtomicBool::new(false),
            used: std::sync::atomic::AtomicBool::new(true),
        };
        let mut values = conn.values(None);
        values.credentials = creds_map.as_ref();
        values.connection_config = Some(&extra.connection_config);
        values.metadata = Some(&extra.metadata);
        // Base URL: the connection's own `baseUrl`, else the integration's or provider's template.
        let base = match extra
            .connection_config
            .get("baseUrl")
            .and_then(Value::as_str)
        {
            Some(s) => Some(Ok(s.to_string())),
            None => int.base_url.as_ref().map(|t| t.render(&values)),
        };
        let base_url = match base {
            None => None,
            Some(Ok(s)) => match self.base_url(&int.unique_key, s) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.error(at("connection_config"), format!("base URL: {e}"));
                    None
                }
            },
            Some(Err(missing)) => {
                self.error(
                    at("connection_config"),
                    format!("the base URL needs `{missing}`, which this connection does not set"),
                );
                None
            }
        };
        let mut static_headers = Vec::new();
        let mut static_query = Vec::new();
        for inj in &int.injections {
            if inj.template.uses_access_token() {
                continue; // rendered per request, from `plan.dynamic`
            }
            let Some(value) = inj.template.render(&values) else {
                continue; // a header whose placeholders don't resolve is left out
            };
            match &inj.placement {
                Placement::Header(h) => match HeaderValue::from_str(&value) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        static_headers.push((h.clone(), v));
                    }
                    Err(_) => self.error(
                        at("credentials"),
                        format!("the value injected into header `{h}` is not a valid header value"),
                    ),
                },
                Placement::Query(q) => {
                    static_query.push((q.clone(), encode_query_component(&value).into()))
                }
            }
        }
        if let Credential::Basic { username, password } = &conn.credential {
            let targets_auth = static_headers
                .iter()
                .any(|(h, _)| h == http::header::AUTHORIZATION);
            if !targets_auth {
                let raw = format!("{}:{}", username.expose(), password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                match HeaderValue::from_str(&format!("Basic {encoded}")) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        static_headers.push((http::header::AUTHORIZATION, v));
                    }
                    Err(_) => self.error(at("credentials"), "cannot build a Basic header"),
                }
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        conn.base_url = base_url;
        conn.static_headers = static_headers.into_boxed_slice();
        conn.static_query = static_query.into_boxed_slice();
        let keep_maps =
            int.renders_later && !(extra.connection_config.is_empty() && extra.metadata.is_empty());
        if keep_maps {
            conn.template_maps = Some(Box::new(TemplateMaps {
                connection_config: extra.connection_config,
                metadata: extra.metadata,
            }));
        }
        Some(conn)
    }
}

/// The credential's fields as a map, for `${credentials.x}` placeholders.
fn credentials_map(c: &RawCredentials) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<&Secret>| {
        if let Some(v) = v {
            m.insert(k.to_string(), Value::String(v.expose().to_string()));
        }
    };
    match c {
        RawCredentials::ApiKey { api_key } => put("apiKey", Some(api_key)),
        RawCredentials::Basic { username, password } => {
            put("username", Some(username));
            put("password", Some(password));
        }
        RawCredentials::OAuth2 { .. } | RawCredentials::OAuth2Cc { .. } => {}
    }
    m
}

/// A digest of the credential as written in the vault (also used by `credstore` to recognise
/// the versions sidekey wrote itself).
pub fn fingerprint(c: &RawCredentials) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |v: Option<&Secret>| {
        let s = v.map(Secret::expose).unwrap_or("");
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    match c {
        RawCredentials::ApiKey { api_key } => field(Some(api_key)),
        RawCredentials::Basic { username, password } => {
            field(Some(username));
            field(Some(password));
        }
        RawCredentials::OAuth2 {
            access_token,
            refresh_token,
            expires_at,
            ..
        } => {
            field(Some(access_token));
            field(refresh_token.as_ref());
            field(expires_at.clone().map(Secret::new).as_ref());
        }
        RawCredentials::OAuth2Cc {
            client_id,
            client_secret,
            token,
            ..
        } => {
            field(client_id.as_ref());
            field(client_secret.as_ref());
            field(token.as_ref());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDERS: &str = r#"
api:
  auth_mode: API_KEY
  proxy:
    base_url: https://${connectionConfig.sub}.example.com/v1/
    headers: {x-api-key: "${apiKey}", x-tenant: "${connectionConfig.tenant}"}
    query: {key: "$<apiKey>"}
basic: {auth_mode: BASIC, proxy: {base_url: "https://b.example"}}
oauth: {auth_mode: OAUTH2, token_url: "https://t.example/token", proxy: {base_url: "https://o.example"}}
generic: {auth_mode: API_KEY}
jwt: {auth_mode: JWT}
plain: {auth_mode: API_KEY, proxy: {base_url: "https://p.example", headers: {authorization: "Bearer ${apiKey}"}}}
"#;

    fn build_vault(vault: &str) -> Result<Snapshot, Vec<Diagnostic>> {
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: PROVIDERS.into(),
            vault_name: "vault.yaml".into(),
            vault: vault.into(),
        };
        build(&src, &BuildOptions::default())
    }

    fn messages(errs: &[Diagnostic]) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }

    /// 100k connections in 64 MiB (issue 12) leaves no room for a fatter `Connection`: with
    /// its `Arc` counts it must stay inside mimalloc's 192-byte size class.
    #[test]
    fn a_connection_fits_the_192_byte_class() {
        let with_counts = std::mem::size_of::<Connection>() + 2 * std::mem::size_of::<usize>();
        assert!(
            with_counts <= 192,
            "Arc<Connection> takes {with_counts} bytes"
        );
        assert!(std::mem::size_of::<Credential>() <= 56);
    }

    #[test]
    fn base_url_parts() {
        let b = BaseUrl::parse("https://API.Example.com:8443/v1/?a=b&c").expect("parses");
        assert_eq!((b.path(), b.query()), ("/v1", Some("a=b&c")));
        assert_eq!((b.host().as_str(), b.port), ("api.example.com", 8443));
        assert_eq!(b.host_str(), "API.Example.com");
        assert!(b.same_host(&BaseUrl::parse("http://api.example.COM/x").expect("parses")));
        assert!(!b.same_host(&BaseUrl::parse("https://api.example.org").expect("parses")));
        assert_eq!(b.host_header, "API.Example.com:8443");
        assert_eq!(b.authority.as_str(), "API.Example.com:8443");
        let root = b.with_root_path();
        assert_eq!((root.path(), root.query()), ("", Some("a=b&c")));
        let plain = BaseUrl::parse("http://h.example:80").expect("parses");
        assert_eq!((plain.path(), plain.query()), ("", None));
        assert_eq!(plain.host_header, "h.example");
        assert_eq!(plain.with_root_path(), plain);
    }

    #[test]
    fn host_header_drops_user_info_and_default_ports() {
        let h = |s: &str, a: &str| {
            let scheme: Scheme = s.parse().expect("scheme");
            let authority: Authority = a.parse().expect("authority");
            host_header(&scheme, &authority).map(|v| v.to_str().expect("ascii").to_string())
        };
        assert_eq!(
            h("https", "api.example.com:443").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            h("http", "api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            h("http", "127.0.0.1:8080").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(h("https", "u:p@[::1]:8443").as_deref(), Some("[::1]:8443"));
        assert_eq!(h("https", "u@host").as_deref(), Some("host"));
    }

    #[test]
    fn precompiles_headers_query_and_base_url() {
        let s = build_vault(
            r#"
integrations: [{unique_key: i, provider: api}]
connections:
  - {connection_id: c, provider_config_key: i, credentials: {type: API_KEY, apiKey: "k y"}, connection_config: {sub: acme}}
"#,
        )
        .expect("builds");
        let c = s.connection("i", "c").expect("present");
        let base = c.base_url.as_ref().expect("base");
        assert_eq!(base.host(), "acme.example.com");
        assert_eq!(base.path(), "/v1");
        assert_eq!(
            c.static_headers.len(),
            1,
            "x-tenant left out: placeholder unresolved"
        );
        assert!(c.static_headers[0].1.is_sensitive());
        assert_eq!(c.static_query, [("key".into(), "k%20y".into())].into());
    }

    #[test]
    fn basic_and_oauth_defaults() {
        let s = build_vault(
            r#"
integrations: [{unique_key: b, provider: basic}, {unique_key: o, provider: oauth}]
connections:
  - {connection_id: c, provider_config_key: b, credentials: {type: BASIC, username: u, password: p}}
  - {connection_id: c, provider_config_key: o, credentials: {type: OAUTH2, access_token: t}}
"#,
        )
        .expect("builds");
        let b = s.connection("b", "c").expect("present");
        assert_eq!(b.static_headers[0].1, "Basic dTpw");
        let o = s.connection("o", "c").expect("present");
        assert_eq!(o.dynamic().len(), 1);
        assert_eq!(s.by_connection_id.get("c").count(), 2);
    }

    /// The build compiles records as the parse reads them; a vault whose sections come in
    /// another order (connections before integrations, caller keys last) gives the same
    /// snapshot, and the same problems in the same order, as the usual order.
    #[test]
    fn section_order_does_not_matter() {
        let keys = "secret_keys: [{sha256: nothex}, {sha256: ''}]\n";
        let ints = "integrations:\n  - {unique_key: i, provider: api}\n  - {unique_key: i, provider: api}\n  - {unique_key: b, provider: basic}\n";
        let conns = "connections:\n  - {connection_id: c, provider_config_key: i, credentials: {type: BASIC, username: u}}\n  - {connection_id: e, provider_config_key: missing, credentials: {type: API_KEY, apiKey: k}}\n  - {connection_id: d, provider_config_key: b, credentials: {type: BASIC, username: u, password: p}}\n";
        let usual = messages(&build_vault(&format!("{keys}{ints}{conns}")).expect_err("refused"));
        assert!(usual.len() >= 4, "{usual:?}");
        for text in [
            format!("{conns}{ints}{keys}"),
            format!("{ints}{conns}{keys}"),
            format!("{conns}{keys}{ints}"),
        ] {
            let got = messages(&build_vault(&text).expect_err("refused"));
            assert_eq!(got, usual, "{text}");
        }
        let ints = "integrations:\n  - {unique_key: b, provider: basic}\n  - {unique_key: i, provider: api}\n";
        let conns = "connections:\n  - {connection_id: d, provider_config_key: b, credentials: {type: BASIC, username: u, password: p}}\n  - {connection_id: x, provider_config_key: i, credentials: {type: API_KEY, apiKey: k}, connection_config: {sub: s, tenant: t}}\n";
        let usual = build_vault(&format!("{ints}{conns}")).expect("builds");
        let reordered = build_vault(&format!("{conns}{ints}")).expect("builds");
        assert_eq!(usual.records(), reordered.records());
        assert_eq!(usual.connection_count(), 2);
    }

    #[test]
    fn collects_every_error_with_its_path() {
        let errs = build_vault(
            r#"
secret_keys: [{sha256: nothex}]
integrations:
  - {unique_key: i, provider: api}
  - {unique_key: i, provider: api}
  - {unique_key: g, provider: generic}
  - {unique_key: j, provider: jwt}
  - {unique_key: u, provider: nope}
connections:
  - {connection_id: c, provider_config_key: i, credentials: {type: BASIC, username: u}}
  - {connection_id: d, provider_config_key: i, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: e, provider_config_key: missing, credentials: {type: API_KEY, apiKey: k}}
  - {connection_id: f, provider_config_key: i, credentials: {type: API_KEY, apiKey: k}, connection_config: {sub: x}}
  - {connection_id: f, provider_config_key: i, credentials: {type: API_KEY, apiKey: k}, connection_config: {sub: x}}
"#,
        )
        .expect_err("refused");
        let m = messages(&errs);
        let expect = [
            "vault.yaml: secret_keys[0].sha256:",
            "vault.yaml: integrations[1].unique_key: duplicate",
            "vault.yaml: integrations[2].integration_config: provider `generic` gives no header",
            "vault.yaml: integrations[3].provider: provider `jwt`: auth mode `JWT`",
            "vault.yaml: integrations[4].provider: unknown provider `nope`",
            "vault.yaml: connections[0].credentials.type: `BASIC` does not fit",
            "vault.yaml: connections[1].connection_config: the base URL needs `connectionConfig.sub`",
            "vault.yaml: connections[2].provider_config_key: no integration `missing`",
            "vault.yaml: connections[4]: duplicate connection `f`",
        ];
        for e in expect {
            assert!(
                m.iter().any(|l| l.starts_with(e)),
                "missing {e:?} in {m:#?}"
            );
        }
        assert_eq!(m.len(), expect.len(), "{m:#?}");
    }

    #[test]
    fn private_api_generic_uses_integration_config() {
        let s = build_vault(
            r#"
integrations:
  - unique_key: g
    provider: generic
    integration_config: {baseUrl: "https://internal.example/api", keyPlacement: query, keyName: api_key, valueTemplate: "K-${apiKey}"}
connections:
  - {connection_id: c, provider_config_key: g, credentials: {type: API_KEY, apiKey: s}}
"#,
        )
        .expect("builds");
        let c = s.connection("g", "c").expect("present");
        assert_eq!(c.static_query, [("api_key".into(), "K-s".into())].into());
        assert_eq!(c.base_url.as_ref().map(|b| b.path()), Some("/api"));
    }

    #[test]
    fn errors_never_contain_credentials() {
        let errs = build_vault(
            r#"
integrations: [{unique_key: i, provider: plain}]
connections:
  - {connection_id: c, provider_config_key: i, credentials: {type: API_KEY, apiKey: "bad\nhunter2"}}
"#,
        )
        .expect_err("refused");
        for e in messages(&errs) {
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    /// Everything the request path and the API read from a snapshot, in a stable order.
    fn canon(s: &Snapshot) -> String {
        let mut out = String::new();
        let mut keys: Vec<String> = s
            .secret_keys
            .iter()
            .map(|k| format!("{}:{:?}:{}", hex::encode(k.digest), k.scopes, k.from_env))
            .collect();
        keys.sort();
        out.push_str(&format!("keys {keys:?}\n"));
        let mut ints: Vec<_> = s.integrations.values().collect();
        ints.sort_by(|a, b| a.unique_key.cmp(&b.unique_key));
        for i in ints {
            out.push_str(&format!(
                "int {} {} {:?} {}\n",
                i.unique_key,
                i.provider.name,
                i.record,
                i.injections.len()
            ));
        }
        let mut conns: Vec<_> = s.connections.values().flat_map(|t| t.values()).collect();
        conns.sort_by(|a, b| {
            (&a.provider_config_key, &a.connection_id)
                .cmp(&(&b.provider_config_key, &b.connection_id))
        });
        for c in conns {
            let headers: Vec<_> = c
                .static_headers
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
                .collect();
            out.push_str(&format!(
                "conn {}/{} v{} {:?} {:?} {:?} {:?} {:?} int={}\n",
                c.provider_config_key,
                c.connection_id,
                c.version,
                c.record(),
                c.base_url
                    .as_ref()
                    .map(|b| (b.host(), b.path().to_string())),
                headers,
                c.static_query,
                c.dynamic().len(),
                Arc::as_ptr(&c.integration)
                    == Arc::as_ptr(&s.integrations[&*c.provider_config_key]),
            ));
        }
        let mut by_id: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for c in s.by_connection_id.values() {
            by_id
                .entry(&c.connection_id)
                .or_default()
                .push(&c.provider_config_key);
            // The index holds the very connection the integration's table holds.
            assert!(s
                .connection(&c.provider_config_key, &c.connection_id)
                .is_some_and(|t| Arc::ptr_eq(t, c)));
        }
        let ids: Vec<String> = by_id
            .into_iter()
            .map(|(id, mut l)| {
                l.sort();
                format!("{id}:{l:?}")
            })
            .collect();
        out.push_str(&format!("ids {ids:?}\n"));
        out
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::parse("providers.yaml", PROVIDERS).expect("providers"))
    }

    #[derive(Debug, Clone)]
    enum Op {
        PutInt(u8, u8),
        DelInt(u8),
        PutConn(u8, u8, u8, bool),
        DelConn(u8, u8),
        PutKey(u8, bool),
        DelKey(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..3u8, 0..4u8).prop_map(|(i, p)| Op::PutInt(i, p)),
            (0..3u8).prop_map(Op::DelInt),
            (0..3u8, 0..4u8, 0..3u8, any::<bool>())
                .prop_map(|(i, c, k, s)| Op::PutConn(i, c, k, s)),
            (0..3u8, 0..4u8).prop_map(|(i, c)| Op::DelConn(i, c)),
            (0..3u8, any::<bool>()).prop_map(|(k, s)| Op::PutKey(k, s)),
            (0..3u8).prop_map(Op::DelKey),
        ]
    }

    fn change(op: &Op) -> Change {
        let ik = |i: u8| format!("int{i}");
        match op {
            Op::PutInt(i, p) => {
                let (provider, cfg) = match p {
                    0 => ("plain", None),
                    1 => ("api", None),
                    2 => ("basic", None),
                    _ => ("generic", Some(RawIntegrationConfigForTest::generic())),
                };
                Change::PutIntegration(RawIntegration {
                    unique_key: ik(*i),
                    provider: provider.into(),
                    display_name: None,
                    credentials: None,
                    integration_config: cfg,
                    created_at: None,
                    updated_at: None,
                })
            }
            Op::DelInt(i) => Change::DeleteIntegration(ik(*i)),
            Op::PutConn(i, c, k, sub) => {
                let mut connection_config = Map::new();
                if *sub {
                    connection_config.insert("sub".into(), Value::String(format!("s{k}")));
                }
                Change::PutConnection(
                    RawConnection {
                        connection_id: format!("c{c}"),
                        provider_config_key: ik(*i),
                        credentials: if *k == 2 {
                            RawCredentials::Basic {
                                username: Secret::new("u"),
                                password: Secret::new(format!("p{c}")),
                            }
                        } else {
                            RawCredentials::ApiKey {
                                api_key: Secret::new(format!("key{k}")),
                            }
                        },
                        connection_config,
                        metadata: Map::new(),
                        end_user: None,
                        tags: Map::new(),
                        webhook_url_override: None,
                        created_at: None,
                        updated_at: None,
                    },
                    u64::from(*k),
                )
            }
            Op::DelConn(i, c) => Change::DeleteConnection {
                provider_config_key: ik(*i),
                connection_id: format!("c{c}"),
            },
            Op::PutKey(k, proxy_only) => Change::PutKey(RawSecretKey {
                sha256: hex::encode([*k; 32]),
                label: None,
                scopes: proxy_only.then(|| vec!["proxy".to_string()]),
            }),
            Op::DelKey(k) => Change::DeleteKey(hex::encode([*k; 32])),
        }
    }

    struct RawIntegrationConfigForTest;
    impl RawIntegrationConfigForTest {
        fn generic() -> super::super::vault::RawIntegrationConfig {
            super::super::vault::RawIntegrationConfig {
                base_url: Some("https://g.example/api".into()),
                key_placement: None,
                key_name: Some("x-key".into()),
                value_template: None,
                key_label: None,
            }
        }
    }

    proptest::proptest! {
        /// Invariant: applying any sequence of changes one at a time gives the same snapshot
        /// as building from scratch from the records that result (refused changes change
        /// nothing), with the environment's keys kept throughout.
        #[test]
        fn incremental_apply_equals_build_from_scratch(ops in proptest::collection::vec(op(), 0..40)) {
            let catalog = catalog();
            let opts = BuildOptions { env_keys: vec![[9; 32]], generation: 0, encryption_key: None, versions: None };
            let mut snap = build_records("v", catalog.clone(), RawVault::default(), &opts).expect("empty");
            let mut keys: std::collections::BTreeMap<String, RawSecretKey> = Default::default();
            let mut versions: HashMap<(String, String), u64> = HashMap::new();
            for op in &ops {
                let ch = change(op);
                let before = canon(&snap);
                match snap.with(ch.clone()) {
                    Ok(next) => {
                        snap = next;
                        match ch {
                            Change::PutKey(k) => { keys.insert(k.sha256.clone(), k); }
                            Change::DeleteKey(h) => { keys.remove(&h); }
                            Change::PutConnection(c, v) => { versions.insert((c.provider_config_key, c.connection_id), v); }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        proptest::prop_assert!(!e.is_empty());
                        proptest::prop_assert_eq!(before, canon(&snap), "a refused change changed nothing");
                    }
                }
            }
            let mut records = snap.records();
            records.secret_keys = keys.into_values().collect();
            let mut scratch = build_records("v", catalog, records, &opts).expect("the records of a valid snapshot build");
            // Versions come from the store, not the records: carry them over to compare.
            for (pck, table) in scratch.connections.clone().iter() {
                let mut t = table.clone();
                for (cid, c) in table.iter() {
                    let v = versions.get(&(pck.to_string(), cid.to_string())).copied().unwrap_or(0);
                    let c2 = Arc::new(Connection { version: v, ..clone_conn(c) });
                    t.insert(c2.clone());
                    scratch.by_connection_id.insert(c2);
                }
                scratch.connections.insert(pck.clone(), t);
            }
            proptest::prop_assert_eq!(canon(&scratch), canon(&snap));
        }
    }

    /// A reload (`build_reusing`) shares every record that did not change with the snapshot
    /// it replaces, compiles the ones that did, and gives the same snapshot as a fresh build.
    #[test]
    fn rebuilding_shares_what_did_not_change() {
        let vault = |key_c: &str| {
            format!(
                r#"
integrations: [{{unique_key: i, provider: plain}}, {{unique_key: b, provider: basic}}]
connections:
  - {{connection_id: c, provider_config_key: i, credentials: {{type: API_KEY, apiKey: "{key_c}"}}, metadata: {{m: 1}}}}
  - {{connection_id: d, provider_config_key: i, credentials: {{type: API_KEY, apiKey: k}}}}
  - {{connection_id: e, provider_config_key: b, credentials: {{type: BASIC, username: u, password: p}}}}
"#
            )
        };
        let src = |vault: String, providers: &str| Sources {
            providers_name: "providers.yaml".into(),
            providers: providers.into(),
            vault_name: "vault.yaml".into(),
            vault,
        };
        let opts = BuildOptions::default();
        let first = build(&src(vault("k1"), PROVIDERS), &opts).expect("builds");
        let same =
            build_reusing(&src(vault("k1"), PROVIDERS), &opts, Some(&first)).expect("builds");
        for (pck, cid) in [("i", "c"), ("i", "d"), ("b", "e")] {
            let (a, b) = (first.connection(pck, cid), same.connection(pck, cid));
            assert!(
                a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(a, b)),
                "{pck}/{cid} shared"
            );
        }
        assert!(Arc::ptr_eq(
            &first.integrations["i"],
            &same.integrations["i"]
        ));

        let edited =
            build_reusing(&src(vault("k2"), PROVIDERS), &opts, Some(&first)).expect("builds");
        let fresh = build(&src(vault("k2"), PROVIDERS), &opts).expect("builds");
        assert_eq!(canon(&edited), canon(&fresh));
        let shared = |s: &Snapshot, pck: &str, cid: &str| {
            Arc::ptr_eq(
                s.connection(pck, cid).expect("present"),
                first.connection(pck, cid).expect("present"),
            )
        };
        assert!(
            !shared(&edited, "i", "c"),
            "the edited connection is compiled again"
        );
        assert!(shared(&edited, "i", "d") && shared(&edited, "b", "e"));

        // A provider that changed under an unchanged integration recompiles its connections.
        let providers = PROVIDERS.replace("https://b.example", "https://b2.example");
        let moved =
            build_reusing(&src(vault("k1"), &providers), &opts, Some(&first)).expect("builds");
        assert_eq!(
            canon(&moved),
            canon(&build(&src(vault("k1"), &providers), &opts).expect("builds"))
        );
        assert!(!shared(&moved, "b", "e") && shared(&moved, "i", "d"));
        let e = moved.connection("b", "e").expect("present");
        assert_eq!(
            e.base_url.as_ref().map(|b| b.host()).as_deref(),
            Some("b2.example")
        );
    }

    fn clone_conn(c: &Connection) -> Connection {
        Connection {
            connection_id: c.connection_id.clone(),
            provider_config_key: c.provider_config_key.clone(),
            integration: c.integration.clone(),
            credential: c.credential.clone(),
            base_url: c.base_url.clone(),
            static_headers: c.static_headers.clone(),
            static_query: c.static_query.clone(),
            extra: c.extra.clone(),
            template_maps: c.template_maps.clone(),
            version: c.version,
            auth_error: std::sync::atomic::AtomicBool::new(c.auth_error_hint()),
            used: std::sync::atomic::AtomicBool::new(true),
        }
    }

    proptest::proptest! {
        /// Invariant: any text as the vault or providers file is either a snapshot or a list of
        /// diagnostics; the build never panics.
        #[test]
        fn build_never_panics(vault in "(integrations|connections|secret_keys|unique_key|provider|connection_id|credentials|type|API_KEY|apiKey|[-:{}\\[\\], \n]|[a-z]{1,4}){0,60}", providers in "(api|auth_mode|API_KEY|proxy|base_url|headers|alias|\\$\\{apiKey\\}|[-:{}\\[\\], \n]|[a-z]{1,4}){0,40}") {
            let src = Sources {
                providers_name: "p".into(),
                providers,
                vault_name: "v".into(),
                vault,
            };
            let _ = build(&src, &BuildOptions::default());
        }
    }
}
