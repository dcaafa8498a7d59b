//! OAuth token management: the access token each OAUTH2 / OAUTH2_CC request injects, refreshed
//! proactively before it expires and reactively after an upstream 401, single-flight per
//! connection, with a cool-down after failures, and persisted through the store's writer
//! ([`TokenManager::use_store`]: a read-modify-write of the connection's record, committed and
//! published like an API write, so the file store is the only code that writes the vault) or,
//! for a read-only vault, [`crate::credstore`]'s state file.
//!
//! State lives per connection (provider_config_key, connection_id) in the [`TokenManager`],
//! which the proxy owns, so it survives snapshot reloads. Each state remembers the store
//! version of the record it started from or last wrote itself ([`Connection::version`]). A
//! snapshot whose record has a newer version was changed by someone else — the operator's hand
//! edit, an API write — and the vault's credential wins; an older version is a request still
//! finishing on an older snapshot, and changes nothing. While the manager's own write is on its
//! way (the writer publishes the new record before it answers) a newer version is its own.
//!
//! Single-flight: each connection has an async refresh lock. A request that finds its token
//! stale takes the lock, checks again (a request before it may have refreshed meanwhile), and
//! only then calls the token endpoint; everyone queued behind it finds the new token. The new
//! refresh token replaces the old one before the lock is released, and the credential is
//! persisted before the next refresh may start, so writes land in order.
//!
//! Across replicas sharing a PostgreSQL store, a [`RefreshLease`] taken before the call makes
//! the refresh single-flight for the whole fleet: the holder re-reads the stored credential
//! (another replica may have refreshed meanwhile) and calls only if it still must.
//!
//! Each refresh emits one `sidekey::oauth` event with `result = "ok" | "error"`, and the
//! metrics count it (`sidekey_token_refreshes_total`, once the app attaches them); neither ever
//! carries a token.

pub mod endpoint;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use crate::config::{Connection, Credential, Snapshot};
use crate::credstore::{CredStore, Key, Persisted, StoredCredential};
use crate::error::ProxyError;
use crate::secret::Secret;
use endpoint::{TokenEndpoint, TokenFailure, TokenRequest};

/// Refresh this long before expiry unless the provider sets `token_expiration_buffer`.
pub const DEFAULT_EXPIRATION_BUFFER: Duration = Duration::from_secs(5 * 60);

/// Token-manager settings from the command line.
#[derive(Debug, Clone)]
pub struct OAuthOptions {
    /// After a failed refresh, requests on that connection fail fast for this long.
    pub refresh_cooldown: Duration,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        Self {
            refresh_cooldown: Duration::from_secs(30),
        }
    }
}

/// An access token handed to one request; `generation` tells whether it has been refreshed
/// since (see [`TokenManager::refresh_after_unauthorized`]).
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<Secret>,
    generation: u64,
}

impl AccessToken {
    pub fn expose(&self) -> &str {
        self.secret.expose()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken(***, generation {})", self.generation)
    }
}

struct Failure {
    until: Instant,
    provider_error: Option<String>,
}

/// What the manager holds for one connection.
struct SlotState {
    token: Option<AccessToken>,
    refresh_token: Option<Secret>,
    expires_at: Option<Timestamp>,
    /// The store version of the record this state started from or last wrote.
    version: u64,
    /// The fingerprint of the vault credential this state started from: how the read-only
    /// vault's state file names the credential an entry replaces, across restarts.
    vault_fp: [u8; 32],
    /// A write of a refreshed credential through the store is on its way: the newer version
    /// it publishes before answering is this state's, not an edit.
    writing: bool,
    failure: Option<Failure>,
    /// Bumped when the vault wins; a refresh started before then is discarded.
    epoch: u64,
}

impl SlotState {
    /// The token, if it is not within `buffer` of its expiry. No expiry: always usable.
    fn usable(&self, now: Timestamp, buffer: Duration) -> Option<AccessToken> {
        let token = self.token.as_ref()?;
        match self.expires_at {
            None => Some(token.clone()),
            Some(e) => (millis_until(now, e) > buffer.as_millis() as i64).then(|| token.clone()),
        }
    }

    /// The token, if it has not actually expired yet.
    fn unexpired(&self, now: Timestamp) -> Option<AccessToken> {
        let token = self.token.as_ref()?;
        match self.expires_at {
            None => Some(token.clone()),
            Some(e) => (millis_until(now, e) > 0).then(|| token.clone()),
        }
    }

    fn cooling_down(&self) -> Option<&Failure> {
        self.failure.as_ref().filter(|f| f.until > Instant::now())
    }
}

fn millis_until(now: Timestamp, then: Timestamp) -> i64 {
    then.as_millisecond().saturating_sub(now.as_millisecond())
}

struct Slot {
    state: Mutex<SlotState>,
    refresh: tokio::sync::Mutex<()>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone, Copy)]
enum Trigger {
    Expiry,
    Unauthorized,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Expiry => "expiry",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// Per-connection OAuth state, shared by every request of the process.
pub struct TokenManager {
    endpoint: Arc<dyn TokenEndpoint>,
    store: Arc<CredStore>,
    options: OAuthOptions,
    slots: Mutex<HashMap<String, HashMap<String, Arc<Slot>>>>,
    /// How many slots `slots` holds, kept as they are added and recounted by `prune`.
    tracked: AtomicUsize,
    generation: AtomicU64,
    /// Where refresh outcomes are counted for `/metrics` (`fail_fast`: answered from the
    /// cool-down without a call), once the app attaches it.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The store's writer, when the vault takes writes: refreshed credentials are committed
    /// through it (else `store` keeps them in its state file, or in memory).
    writer: std::sync::OnceLock<Arc<dyn TokenWriter>>,
    /// Told of every refresh that reached the token endpoint (or failed before it), for the
    /// connection auth-error state and its webhooks; set once by the app.
    observer: std::sync::OnceLock<Arc<dyn RefreshObserver>>,
    /// The fleet's refresh lease, when replicas share a store (PostgreSQL).
    lease: std::sync::OnceLock<Arc<dyn RefreshLease>>,
}

/// Hears refresh outcomes: `webhooks::status` implements it (the token manager sits below it
/// in the module graph, so it names only this). Never called for requests answered from the
/// cool-down, so a failing connection is reported once per `--refresh-cooldown`.
pub trait RefreshObserver: Send + Sync {
    /// A refresh failed; `provider_error` is the token endpoint's error code, if it sent one.
    fn refresh_failed(&self, conn: &Connection, provider_error: Option<&str>);
    /// A refresh succeeded.
    fn refreshed(&self, conn: &Connection);
}

/// A lease on one connection's refresh across every replica sharing a store (the PostgreSQL
/// store implements it): only its holder calls the token endpoint. The holder keeps it until
/// the refreshed credential is committed through the [`TokenWriter`], so a replica that gets
/// it next reads the new refresh token instead of spending the old one (a provider that
/// rotates refresh tokens answers `invalid_grant` to the old one).
pub trait RefreshLease: Send + Sync {
    /// Waits for the lease on `key`. `version` is the record's version the caller's state
    /// holds; when the store's differs, the grant carries the store's credential (another
    /// replica refreshed meanwhile), and the local snapshot already holds that record.
    /// An error (the store is unreachable) means no refresh may happen now.
    fn acquire<'a>(
        &'a self,
        key: &'a Key,
        version: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<LeaseGrant, String>> + Send + 'a>>;
}

/// A held refresh lease.
pub struct LeaseGrant {
    /// Released when dropped.
    pub guard: Box<dyn Send + Sync>,
    /// The store's credential and version, when they are not the caller's.
    pub current: Option<(StoredCredential, u64)>,
}

/// Commits refreshed credentials as store writes. The store's writer implements it
/// (`store::writer`): the token manager sits below the store in the module graph, so it names
/// only this.
pub trait TokenWriter: Send + Sync {
    /// Commits `cred` into the connection's record at a new version, durable and published
    /// before the future resolves, unless the record is no longer at `version` (someone else
    /// changed it: their credential wins). `Persisted::Vault` carries the new version. `None`
    /// when the store could not take the write at all (read-only, unavailable): the caller
    /// falls back to the state file.
    fn persist<'a>(
        &'a self,
        key: &'a Key,
        cred: &'a StoredCredential,
        version: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Persisted>> + Send + 'a>>;
}

impl TokenManager {
    pub fn new(
        endpoint: Arc<dyn TokenEndpoint>,
        store: Arc<CredStore>,
        options: OAuthOptions,
    ) -> Self {
        Self {
            endpoint,
            store,
            options,
            slots: Mutex::default(),
            tracked: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
            metrics: None,
            writer: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
            lease: std::sync::OnceLock::new(),
        }
    }

    /// Reports refresh outcomes to `observer` from now on. Set once; later calls are ignored.
    pub fn observe(&self, observer: Arc<dyn RefreshObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Takes the fleet's refresh lease around every token call from now on (a store shared by
    /// replicas). Set once; later calls are ignored.
    pub fn use_lease(&self, lease: Arc<dyn RefreshLease>) {
        let _ = self.lease.set(lease);
    }

    /// Persists refreshed credentials through the store's writer from now on (a writable
    /// vault). Set once, after the writer starts; later calls are ignored.
    pub fn use_store(&self, writer: Arc<dyn TokenWriter>) {
        let _ = self.writer.set(writer);
    }

    /// Counts refresh outcomes in `metrics` (`sidekey_token_refreshes_total{result}`).
    pub fn set_metrics(&mut self, metrics: Arc<crate::metrics::Metrics>) {
        self.metrics = Some(metrics);
    }

    fn count(&self, result: &'static str) {
        if let Some(m) = &self.metrics {
            m.token_refresh(result);
        }
    }

    /// Forgets the token state of connections the snapshot no longer has, and drops state-file
    /// entries its vault has superseded (blocking file I/O: call at startup, or from
    /// `spawn_blocking` after a reload). A connection added back later starts afresh from the
    /// vault (and the state file). A request still finishing on an older snapshot may create
    /// the state of a removed connection again (to refresh after a 401, say); that state is
    /// dropped at the next reload.
    pub fn prune(&self, snapshot: &Snapshot) {
        self.prune_memory(snapshot);
        self.store.prune(snapshot);
    }

    /// The in-memory half of [`TokenManager::prune`]: no file I/O, cheap enough for the
    /// writer task.
    pub fn prune_memory(&self, snapshot: &Snapshot) {
        {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.retain(|integration, per_connection| {
                let Some(live) = snapshot.connections.get(integration.as_str()) else {
                    return false;
                };
                per_connection.retain(|id, _| live.contains_key(id.as_str()));
                !per_connection.is_empty()
            });
            let n = slots.values().map(HashMap::len).sum();
            self.tracked.store(n, Ordering::Relaxed);
            self.publish_tracked(n);
        }
    }

    /// How many connections have token state in memory (the `sidekey_oauth_connections` gauge).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn publish_tracked(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.set_oauth_connections(n);
        }
    }

    /// The token state the manager holds for an OAuth connection (access token, refresh token,
    /// expiry), for `GET /connections/{id}` with credentials. `None` for other connections.
    pub fn current(
        &self,
        conn: &Connection,
    ) -> Option<(Secret, Option<Secret>, Option<Timestamp>)> {
        if !is_oauth(conn) {
            return None;
        }
        let slot = self.slot(conn);
        let st = slot.lock();
        let token = st.token.as_ref()?;
        Some((
            Secret::new(token.expose()),
            st.refresh_token.clone(),
            st.expires_at,
        ))
    }

    /// The token to inject for this connection, refreshed first if it expires within the
    /// provider's buffer. `None` for connections that are not OAuth.
    pub async fn access_token(&self, conn: &Connection) -> Result<Option<AccessToken>, ProxyError> {
        if !is_oauth(conn) {
            return Ok(None);
        }
        let slot = self.slot(conn);
        let buffer = conn
            .integration
            .provider
            .token_expiration_buffer
            .unwrap_or(DEFAULT_EXPIRATION_BUFFER);
        if let Some(t) = slot.lock().usable(Timestamp::now(), buffer) {
            return Ok(Some(t));
        }
        let _flight = slot.refresh.lock().await;
        {
            let st = slot.lock();
            let now = Timestamp::now();
            if let Some(t) = st.usable(now, buffer) {
                return Ok(Some(t));
            }
            if let Some(f) = st.cooling_down() {
                if let Some(t) = st.unexpired(now) {
                    return Ok(Some(t));
                }
                self.count("fail_fast");
                return Err(refresh_failed(f.provider_error.clone()));
            }
        }
        match self.refresh_locked(conn, &slot, Trigger::Expiry).await {
            Ok(t) => Ok(Some(t)),
            // A refresh tried early (inside the buffer) that failed does not fail requests
            // while the old token still works; the cool-down keeps the endpoint from hammering.
            Err(e) => slot.lock().unexpired(Timestamp::now()).map(Some).ok_or(e),
        }
    }

    /// After the upstream answered 401 to `stale`: one refresh, unless another request has
    /// already refreshed past `stale` (then its token is returned without a call), or a
    /// refresh failed within the cool-down.
    pub async fn refresh_after_unauthorized(
        &self,
        conn: &Connection,
        stale: &AccessToken,
    ) -> Result<AccessToken, ProxyError> {
        if !is_oauth(conn) {
            return Err(refresh_failed(None));
        }
        let slot = self.slot(conn);
        let _flight = slot.refresh.lock().await;
        {
            let st = slot.lock();
            if let Some(t) = st
                .token
                .as_ref()
                .filter(|t| t.generation != stale.generation)
            {
                return Ok(t.clone());
            }
            if let Some(f) = st.cooling_down() {
                self.count("fail_fast");
                return Err(refresh_failed(f.provider_error.clone()));
            }
        }
        self.refresh_locked(conn, &slot, Trigger::Unauthorized)
            .await
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    fn token(&self, s: Secret) -> AccessToken {
        AccessToken {
            secret: Arc::new(s),
            generation: self.next_generation(),
        }
    }

    /// The slot for a connection, reconciled with the snapshot's credential.
    fn slot(&self, conn: &Connection) -> Arc<Slot> {
        let existing = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots
                .get(&*conn.provider_config_key)
                .and_then(|m| m.get(&*conn.connection_id))
                .cloned()
        };
        let slot = match existing {
            Some(s) => s,
            None => {
                let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = slots
                    .entry(conn.provider_config_key.to_string())
                    .or_default()
                    .entry(conn.connection_id.to_string());
                match entry {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let slot = e
                            .insert(Arc::new(Slot {
                                state: Mutex::new(self.initial(conn, true, 0)),
                                refresh: tokio::sync::Mutex::new(()),
                            }))
                            .clone();
                        // Counted under the lock, so that `prune`'s recount cannot interleave.
                        let n = self.tracked.fetch_add(1, Ordering::Relaxed) + 1;
                        self.publish_tracked(n);
                        slot
                    }
                }
            }
        };
        let mut st = slot.lock();
        if conn.version > st.version && !st.writing {
            // The record changed since this state read or wrote it: an operator's edit (or an
            // API write). Its credential wins.
            tracing::info!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
                connection_id = %conn.connection_id, "the vault's credential changed; using it");
            let epoch = st.epoch + 1;
            *st = self.initial(conn, false, epoch);
        }
        drop(st);
        slot
    }

    /// A connection's starting state: the state file's credential if it replaced exactly the
    /// vault's, else the vault's.
    fn initial(&self, conn: &Connection, use_store: bool, epoch: u64) -> SlotState {
        let vault_fp = conn.fingerprint();
        let stored = use_store
            .then(|| self.store.lookup(&key(conn), &vault_fp))
            .flatten();
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<Timestamp>().ok());
        let (token, refresh_token, expires_at) = match (stored, &conn.credential) {
            (
                Some(StoredCredential::OAuth2 {
                    access_token,
                    refresh_token,
                    expires_at,
                }),
                Credential::OAuth2 { .. },
            ) => (Some(access_token), refresh_token, parse(&expires_at)),
            (Some(StoredCredential::OAuth2Cc { token, expires_at }), Credential::OAuth2Cc(_)) => {
                (Some(token), None, parse(&expires_at))
            }
            (
                _,
                Credential::OAuth2 {
                    access_token,
                    refresh_token,
                    expires_at,
                },
            ) => (
                Some(access_token.clone()),
                refresh_token.clone(),
                *expires_at,
            ),
            (_, Credential::OAuth2Cc(cc)) => (cc.token.clone(), None, cc.expires_at),
            _ => (None, None, None),
        };
        SlotState {
            token: token.map(|t| self.token(t)),
            refresh_token,
            expires_at,
            version: conn.version,
            vault_fp,
            writing: false,
            failure: None,
            epoch,
        }
    }

    /// Calls the token endpoint; the caller holds the slot's refresh lock.
    async fn refresh_locked(
        &self,
        conn: &Connection,
        slot: &Slot,
        trigger: Trigger,
    ) -> Result<AccessToken, ProxyError> {
        // Across replicas: only the lease's holder calls the endpoint, and it first takes
        // what another holder committed meanwhile. Held until the new credential is stored.
        let _lease = match self.lease.get() {
            Some(lease) => {
                let version = slot.lock().version;
                match lease.acquire(&key(conn), version).await {
                    Ok(grant) => {
                        if let Some(t) = self.adopt(conn, slot, grant.current.as_ref()) {
                            return Ok(t);
                        }
                        Some(grant.guard)
                    }
                    Err(e) => {
                        self.count("error");
                        tracing::warn!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
                            connection_id = %conn.connection_id, trigger = trigger.as_str(), error = %e,
                            "cannot take the refresh lease; not refreshing");
                        return Err(refresh_failed(None));
                    }
                }
            }
            None => None,
        };
        let (epoch, refresh_token) = {
            let st = slot.lock();
            (st.epoch, st.refresh_token.clone())
        };
        let grant_type = match conn.credential {
            Credential::OAuth2Cc(_) => "client_credentials",
            _ => "refresh_token",
        };
        let trace = crate::otel::TokenSpan::start(conn, grant_type, trigger.as_str());
        let result = match build_request(conn, refresh_token.as_ref()) {
            Ok(req) => self.endpoint.exchange(req).await,
            Err(f) => Err(f),
        };
        trace.end(result.as_ref().err().map(|f| f.provider_error.as_deref()));
        let grant = match result {
            Ok(g) => g,
            Err(f) => {
                self.count("error");
                tracing::warn!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
                    connection_id = %conn.connection_id, grant_type, trigger = trigger.as_str(),
                    result = "error", provider_error = f.provider_error.as_deref().unwrap_or(""),
                    detail = %f.detail, cooldown = ?self.options.refresh_cooldown, "token refresh failed");
                slot.lock().failure = Some(Failure {
                    until: Instant::now() + self.options.refresh_cooldown,
                    provider_error: f.provider_error.clone(),
                });
                if let Some(o) = self.observer.get() {
                    o.refresh_failed(conn, f.provider_error.as_deref());
                }
                return Err(refresh_failed(f.provider_error));
            }
        };
        let now = Timestamp::now();
        let expires_at = grant.expires_in.and_then(|s| {
            Timestamp::from_second(
                now.as_second()
                    .saturating_add(s.min(i64::MAX as u64 / 2) as i64),
            )
            .ok()
        });
        let (token, stored, version, vault_fp) = {
            let mut st = slot.lock();
            if st.epoch != epoch {
                // The vault's credential changed while the call was out; the vault wins.
                return st.token.clone().ok_or_else(|| refresh_failed(None));
            }
            let token = self.token(grant.access_token.clone());
            st.token = Some(token.clone());
            if let Some(rt) = grant.refresh_token {
                st.refresh_token = Some(rt); // rotation: the old one is gone before anyone reads it
            }
            st.expires_at = expires_at;
            st.failure = None;
            let expires = expires_at.map(|t| t.to_string());
            let stored = match conn.credential {
                Credential::OAuth2Cc(_) => StoredCredential::OAuth2Cc {
                    token: grant.access_token,
                    expires_at: expires,
                },
                _ => StoredCredential::OAuth2 {
                    access_token: grant.access_token,
                    refresh_token: st.refresh_token.clone(),
                    expires_at: expires,
                },
            };
            // The writer publishes the new record before it answers: requests that see it
            // first must not take it for a hand edit (the refresh lock, held by the caller,
            // keeps this the only write of the connection's state on its way).
            st.writing = self.writer.get().is_some();
            (token, stored, st.version, st.vault_fp)
        };
        let k = key(conn);
        let through_store = match self.writer.get() {
            Some(w) => {
                // Cleared however this ends: a request dropped mid-write (its client went
                // away) must not leave the state deaf to the operator's edits.
                let writing = Writing(slot);
                let done = w.persist(&k, &stored, version).await;
                {
                    // The new version and the end of the write under one lock: no request
                    // sees the one without the other.
                    let mut st = slot.lock();
                    if let (Some(Persisted::Vault(v)), true) = (&done, st.epoch == epoch) {
                        st.version = *v;
                    }
                    st.writing = false;
                }
                drop(writing);
                done
            }
            None => None,
        };
        let outcome = match through_store {
            Some(done) => done,
            None => {
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.persist(&k, &stored, &vault_fp))
                    .await
                    .unwrap_or(Persisted::Memory)
            }
        };
        let stored_in = match &outcome {
            Persisted::Vault(_) => "vault",
            Persisted::State => "state",
            Persisted::Skipped(why) => {
                tracing::warn!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
                    connection_id = %conn.connection_id, reason = %why, "refreshed credential not stored");
                "skipped"
            }
            Persisted::Memory => {
                if self.writer.get().is_some() || self.store.has_state_file() {
                    tracing::warn!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
                        connection_id = %conn.connection_id,
                        "refreshed credential kept in memory only; a restart goes back to the vault's");
                }
                "memory"
            }
        };
        self.count("ok");
        if let Some(o) = self.observer.get() {
            o.refreshed(conn);
        }
        tracing::info!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
            connection_id = %conn.connection_id, grant_type, trigger = trigger.as_str(),
            result = "ok", stored = stored_in, expires_in = ?grant.expires_in, "token refreshed");
        Ok(token)
    }
}

impl TokenManager {
    /// Takes the credential another replica committed (from a refresh lease) into the slot;
    /// its access token if that one is still usable (no call needed), else `None` (refresh,
    /// with its refresh token).
    fn adopt(
        &self,
        conn: &Connection,
        slot: &Slot,
        current: Option<&(StoredCredential, u64)>,
    ) -> Option<AccessToken> {
        let (cred, version) = current?;
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<Timestamp>().ok());
        let mut st = slot.lock();
        match cred {
            StoredCredential::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            } => {
                st.token = Some(self.token(access_token.clone()));
                st.refresh_token = refresh_token.clone();
                st.expires_at = parse(expires_at);
            }
            StoredCredential::OAuth2Cc { token, expires_at } => {
                st.token = Some(self.token(token.clone()));
                st.expires_at = parse(expires_at);
            }
        }
        st.version = *version;
        st.failure = None;
        let buffer = conn
            .integration
            .provider
            .token_expiration_buffer
            .unwrap_or(DEFAULT_EXPIRATION_BUFFER);
        let usable = st.usable(Timestamp::now(), buffer);
        if usable.is_some() {
            tracing::info!(target: "sidekey::oauth", provider_config_key = %conn.provider_config_key,
                connection_id = %conn.connection_id, "another replica refreshed the token; using it");
        }
        usable
    }
}

/// Clears a slot's `writing` flag when dropped.
struct Writing<'a>(&'a Slot);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.lock().writing = false;
    }
}

fn is_oauth(conn: &Connection) -> bool {
    matches!(
        conn.credential,
        Credential::OAuth2 { .. } | Credential::OAuth2Cc(_)
    )
}

fn key(conn: &Connection) -> Key {
    (
        conn.provider_config_key.to_string(),
        conn.connection_id.to_string(),
    )
}

fn refresh_failed(provider_error: Option<String>) -> ProxyError {
    ProxyError::CredentialsRefreshFailed { provider_error }
}

/// The token request for a connection: a refresh for OAUTH2, client credentials for OAUTH2_CC.
fn build_request(
    conn: &Connection,
    refresh_token: Option<&Secret>,
) -> Result<TokenRequest, TokenFailure> {
    let int = &conn.integration;
    let p = &int.provider;
    let url_template = match conn.credential {
        Credential::OAuth2 { .. } => p.refresh_url.as_ref().or(p.token_url.as_ref()),
        _ => p.token_url.as_ref(),
    }
    .ok_or_else(|| TokenFailure::local(format!("provider `{}` has no token_url", p.name)))?;
    let url = url_template
        .render(&conn.values(None))
        .map_err(|missing| TokenFailure::local(format!("the token URL needs `{missing}`")))?;
    let mut req = TokenRequest {
        url,
        form: Vec::new(),
        basic: None,
    };
    let (id, secret) = match &conn.credential {
        Credential::OAuth2 { .. } => {
            let rt = refresh_token
                .ok_or_else(|| TokenFailure::local("the connection has no refresh_token"))?;
            req.set("grant_type", Secret::new("refresh_token"));
            req.set("refresh_token", rt.clone());
            for (k, v) in &p.refresh_params {
                req.set(k, Secret::new(v.clone()));
            }
            (
                int.oauth_client_id.as_ref(),
                int.oauth_client_secret.as_ref(),
            )
        }
        Credential::OAuth2Cc(cc) => {
            let (client_id, client_secret) = (&cc.client_id, &cc.client_secret);
            req.set("grant_type", Secret::new("client_credentials"));
            // Nango stores scopes comma-separated; the OAuth `scope` parameter is space-separated.
            let scope: Vec<&str> = int
                .scopes
                .as_deref()
                .unwrap_or("")
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            if !scope.is_empty() {
                req.set("scope", Secret::new(scope.join(" ")));
            }
            for (k, v) in &p.token_params {
                req.set(k, Secret::new(v.clone()));
            }
            (
                client_id.as_ref().or(int.oauth_client_id.as_ref()),
                client_secret.as_ref().or(int.oauth_client_secret.as_ref()),
            )
        }
        _ => return Err(TokenFailure::local("not an OAuth connection")),
    };
    match (id, secret) {
        (Some(id), Some(secret)) if p.token_auth_basic => {
            req.basic = Some((id.clone(), secret.clone()));
        }
        _ => {
            if let Some(id) = id {
                req.set("client_id", id.clone());
            }
            if let Some(secret) = secret {
                req.set("client_secret", secret.clone());
            }
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests;
