//! PostgreSQL as the store of a fleet: every replica loads the records from one database,
//! commits its API writes and refreshed tokens there, and applies the others' writes as they
//! are notified.
//!
//! - **Load** ([`PgStore::load`]): integrations, caller keys and connections are read whole, in
//!   one repeatable-read transaction, into the snapshot, with the fleet's change number at that
//!   moment. (Whole for now: a bounded connection cache filled on use is the next step.)
//! - **Writes** ([`Backend::commit`]): the writer's group commits in one transaction that first
//!   locks `sidekey_head`, the one row holding the fleet's last change number. If that number
//!   is not the one this replica has applied, another replica wrote first: the commit is
//!   refused as a conflict, the writer refreshes (applies what it missed) and applies the group
//!   again on top, so preconditions are always checked against the fleet's current state. Each
//!   change is written to its table and appended to `sidekey_changes` with the next number,
//!   and `NOTIFY sidekey_changes, '<number>'` goes out with the commit.
//! - **Versions**: a connection's version is handed out by this replica (the current time in
//!   microseconds, or one more than the last version it saw), and the commit refuses one not
//!   above the fleet's highest (then the writer retries with a larger one). So versions keep
//!   increasing in commit order across the fleet, as the token manager expects.
//! - **Propagation** ([`listen`]): each replica keeps one connection that `LISTEN`s. A
//!   notification (or a reconnection, which reads the last number) announces a number; a poke
//!   through the writer makes its [`Backend::refresh`] read `sidekey_changes` past the last
//!   number applied and apply them with [`crate::state::publish_changes_from`] — no full
//!   reload. Snapshot changes therefore all happen on the writer's task, one at a time.
//! - **Refresh lease** ([`PgLease`]): the token manager takes a transaction-scoped advisory
//!   lock on the connection before it calls a token endpoint, re-reads the row, and uses the
//!   credential another replica committed meanwhile instead of calling (see
//!   [`crate::oauth::RefreshLease`]).
//!
//! Secrets in every record are sealed with `SIDEKEY_ENCRYPTION_KEY` exactly as in the vault
//! file (same envelope, same associated data), so a `pg_dump` holds no plaintext secret.

mod cache;
mod listen;
pub mod outbox;
pub mod schema;
pub mod sessions;
pub mod tls;
pub mod transfer;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;

use super::writer::Writer;
use super::{Backend, BoxFuture, StoreError, Write};
use crate::config::providers::Catalog;
use crate::config::sealed::{self, EncryptionKey};
use crate::config::vault::{RawConnection, RawIntegration, RawSecretKey, RawVault};
use crate::config::{BuildOptions, Change, Diagnostic, Snapshot};
use crate::credstore::{Key, StoredCredential};
use crate::oauth::{LeaseGrant, RefreshLease};
use crate::state::State;

/// The channel every replica listens on.
pub const CHANNEL: &str = "sidekey_changes";
/// How the store is named in diagnostics (never the URL, which may hold a password).
pub const STORE_NAME: &str = "the PostgreSQL store";
/// Changes kept in `sidekey_changes` for replicas that are catching up.
const RETAIN_CHANGES: i64 = 100_000;
/// How often (in changes) the log is pruned.
const PRUNE_EVERY: i64 = 1_000;
/// Refresh leases held at once, at most (more wait for one to end).
const LEASE_POOL: usize = 16;
/// Changes read from `sidekey_changes` per query while catching up.
const CATCH_UP_BATCH: i64 = 1000;

/// A store URL from `--store` / `SIDEKEY_STORE`. Its `Debug` hides it: it may hold a password.
#[derive(Clone)]
pub struct StoreUrl(String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreUrl(***)")
    }
}

impl StoreUrl {
    /// Takes `--store` as given: it is checked when sidekey connects ([`PgStore::open`]),
    /// not by the command-line parser, whose error would repeat the value (a password).
    pub fn new(s: &str) -> Self {
        Self(s.to_string())
    }

    /// The connection settings; `sslmode=verify-full` and `verify-ca` (which tokio-postgres
    /// does not name) are `require`, and every TLS connection verifies the server anyway.
    fn config(&self) -> Result<tokio_postgres::Config, PgError> {
        if !(self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")) {
            return Err(PgError::Url(
                "the store must be a postgres://user:password@host:port/database URL".into(),
            ));
        }
        let url = self
            .0
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        url.parse::<tokio_postgres::Config>()
            // The parser's message names the bad part, not the value.
            .map_err(|e| PgError::Url(e.to_string()))
    }
}

/// Why the store could not be opened or loaded. Never holds the URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("--store: {0}")]
    Url(String),
    #[error("cannot connect to {STORE_NAME}: {0}")]
    Connect(String),
    #[error("{STORE_NAME}: {0}")]
    Migrate(#[from] schema::MigrateError),
    #[error("{STORE_NAME}: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("{STORE_NAME}: {0}")]
    Write(String),
    #[error("{STORE_NAME} holds records that do not load:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Records(Vec<Diagnostic>),
}

impl PgError {
    /// Worth retrying: the database may come (back) up.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) => true,
            Self::Query(e) => e.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// The PostgreSQL backend.
pub struct PgStore {
    pool: Pool,
    /// Connections that hold refresh leases (see [`PgLease`]).
    lease_pool: Pool,
    config: tokio_postgres::Config,
    tls: tls::MakeRustls,
    key: Option<Arc<EncryptionKey>>,
    /// The last change number this replica's snapshot holds (written on the writer's task).
    applied: AtomicI64,
    /// The highest change number known to exist (notifications, conflicts, reconnections).
    announced: AtomicI64,
    /// The last version handed out or seen.
    last_version: AtomicU64,
    attached: OnceLock<Attached>,
    /// Log entries that notifications carried, by change number, not applied yet.
    pending: std::sync::Mutex<std::collections::BTreeMap<i64, LogRow>>,
    /// Set by [`PgStore::bound_cache`]: the snapshot holds only the connections in use.
    cache: OnceLock<cache::Cache>,
    /// A providers.yaml read since the last refresh ([`PgStore::reload_providers`]).
    next_catalog: std::sync::Mutex<Option<NextCatalog>>,
}

struct Attached {
    state: Arc<State>,
    writer: Writer,
    poke: Arc<Notify>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn now_micros() -> u64 {
    jiff::Timestamp::now().as_microsecond().max(1) as u64
}

impl PgStore {
    /// Connects (a pool of up to `pool_size` connections) and brings the schema up to date.
    pub async fn open(
        url: &StoreUrl,
        tls: rustls::ClientConfig,
        key: Option<Arc<EncryptionKey>>,
        pool_size: usize,
    ) -> Result<Arc<Self>, PgError> {
        let mut config = url.config()?;
        if config.get_application_name().is_none() {
            config.application_name("sidekey");
        }
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives_idle(Duration::from_secs(30));
        let tls = tls::MakeRustls::new(tls);
        let on = SpawnOn {
            tls: tls.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let mgr = Manager::from_connect(
            config.clone(),
            on.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| PgError::Connect(e.to_string()))?;
        // Leases get their own pool: a lease holds its connection across the token call and
        // then waits for the writer, which needs one from `pool`; sharing one pool, enough
        // refreshes at once would hold every connection and wait for each other.
        let lease_pool = Pool::builder(Manager::from_connect(
            config.clone(),
            on,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        ))
        .max_size(LEASE_POOL)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| PgError::Connect(e.to_string()))?;
        let store = Arc::new(Self {
            pool,
            lease_pool,
            config,
            tls,
            key,
            applied: AtomicI64::new(0),
            announced: AtomicI64::new(0),
            last_version: AtomicU64::new(now_micros()),
            attached: OnceLock::new(),
            pending: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            cache: OnceLock::new(),
            next_catalog: std::sync::Mutex::new(None),
        });
        let mut client = store.client().await.map_err(|e| PgError::Connect(e.0))?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    /// Keeps at most `capacity` connections in memory (`--connection-cache`), read from the
    /// store when first used (see [`cache`]); before [`PgStore::load`]. Without it the
    /// store is loaded whole (`sidekey store export`, tests).
    pub fn bound_cache(&self, capacity: usize) {
        let _ = self.cache.set(cache::Cache::new(capacity));
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Unreachable> {
        get(&self.pool).await
    }

    /// The connection pool, for the Connect sessions and the webhook outbox.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Reads every record into a snapshot over `catalog`: integrations and keys, and the
    /// connections too unless the cache is bounded (then they are read on use).
    pub async fn load(
        &self,
        catalog: Arc<Catalog>,
        opts: &BuildOptions,
    ) -> Result<Snapshot, PgError> {
        let mut client = self.client().await.map_err(|e| PgError::Connect(e.0))?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let head = tx
            .query_one("SELECT seq, version FROM sidekey_head", &[])
            .await?;
        let (seq, version): (i64, i64) = (head.get(0), head.get(1));
        let keys = tx
            .query("SELECT record::text FROM sidekey_keys ORDER BY sha256", &[])
            .await?;
        let ints = tx
            .query(
                "SELECT record::text FROM sidekey_integrations ORDER BY unique_key",
                &[],
            )
            .await?;
        let mut problems = Vec::new();
        let mut raw = RawVault::default();
        for (i, row) in keys.iter().enumerate() {
            match serde_json::from_str::<RawSecretKey>(row.get(0)) {
                Ok(k) => raw.secret_keys.push(k),
                Err(e) => problems.push(Diagnostic::error(
                    STORE_NAME,
                    format!("secret_keys[{i}]"),
                    e.to_string(),
                )),
            }
        }
        for (i, row) in ints.iter().enumerate() {
            match self.open_integration(row.get(0)) {
                Ok(r) => raw.integrations.push(r),
                Err(m) => problems.push(Diagnostic::error(
                    STORE_NAME,
                    format!("integrations[{i}]"),
                    m,
                )),
            }
        }
        if !problems.is_empty() {
            return Err(PgError::Records(problems));
        }
        let mut snap = crate::config::snapshot::build_records(STORE_NAME, catalog, raw, opts)
            .map_err(PgError::Records)?;
        if self.cache.get().is_some() {
            tx.commit().await?;
            self.applied.store(seq, Ordering::SeqCst);
            self.announced.fetch_max(seq, Ordering::SeqCst);
            self.seen_version(version as u64);
            return Ok(snap);
        }
        // Connections one by one as the rows stream in (never all rows in memory at once),
        // each with its stored version. One that does not compile here (say, this replica's
        // providers.yaml lacks what it needs) is left out, loudly, rather than keeping the
        // replica from serving every other one.
        let conns = tx
            .query_raw(
                "SELECT version, record::text FROM sidekey_connections",
                std::iter::empty::<i64>(),
            )
            .await?;
        let mut conns = std::pin::pin!(conns);
        use futures_util::StreamExt as _;
        while let Some(row) = conns.next().await {
            let row = row?;
            let v: i64 = row.get(0);
            let rec = match self.open_connection(row.get(1)) {
                Ok(r) => r,
                Err(m) => {
                    tracing::error!(error = %m, "a stored connection does not load; skipped");
                    continue;
                }
            };
            let (pck, cid) = (rec.provider_config_key.clone(), rec.connection_id.clone());
            match snap.with(Change::PutConnection(rec, v as u64)) {
                Ok(s) => snap = s,
                Err(d) => tracing::error!(provider_config_key = %pck, connection_id = %cid,
                    problem = %d.first().map(ToString::to_string).unwrap_or_default(),
                    "a stored connection does not compile here; skipped"),
            }
        }
        tx.commit().await?;
        self.applied.store(seq, Ordering::SeqCst);
        self.announced.fetch_max(seq, Ordering::SeqCst);
        self.seen_version(version as u64);
        Ok(snap)
    }

    /// Starts following the fleet's changes into `state` through `writer` (the writer of the
    /// app built over this store): the LISTEN task and the task that pokes the writer.
    pub fn attach(self: &Arc<Self>, state: Arc<State>, writer: Writer) {
        if self.cache.get().is_some() {
            let _ = state.cold.set(Arc::new(cache::PgCold(self.clone())));
        }
        let poke = Arc::new(Notify::new());
        if self
            .attached
            .set(Attached {
                state: state.clone(),
                writer: writer.clone(),
                poke: poke.clone(),
            })
            .is_err()
        {
            return;
        }
        tokio::spawn(listen::run(self.clone()));
        if let Some(cache) = self.cache.get() {
            // A sweep follows the writer's groups; with none coming, a cache left over its
            // bound (a sweep postponed, see `Cache::sweep`) is swept within a second.
            let (capacity, state, writer) = (cache.capacity(), state.clone(), writer.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if state.snapshot.load().connection_count() > capacity
                        && writer.local(Box::new(|_| None)).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                poke.notified().await;
                if store.behind() {
                    if let Err(e) = writer.write(Write::default()).await {
                        tracing::warn!(error = %e, "cannot apply the store's changes yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        poke.notify_one();
                    }
                }
            }
        });
    }

    /// A lease for the token manager ([`crate::oauth::TokenManager::use_lease`]).
    pub fn lease(self: &Arc<Self>) -> Arc<dyn RefreshLease> {
        Arc::new(PgLease(self.clone()))
    }

    fn behind(&self) -> bool {
        self.announced.load(Ordering::SeqCst) > self.applied.load(Ordering::SeqCst)
    }

    /// Change `seq` exists: apply it (and all before it) soon.
    fn announce(&self, seq: i64) {
        self.announced.fetch_max(seq, Ordering::SeqCst);
        if self.behind() {
            if let Some(a) = self.attached.get() {
                a.poke.notify_one();
            }
        }
    }

    /// Applies every change up to `seq` now, through the writer.
    async fn catch_up(&self, seq: i64) -> Result<(), StoreError> {
        self.announced.fetch_max(seq, Ordering::SeqCst);
        match self.attached.get() {
            Some(a) if self.behind() => a.writer.write(Write::default()).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    fn seen_version(&self, v: u64) {
        self.last_version.fetch_max(v, Ordering::SeqCst);
    }

    fn seal_json<T: serde::Serialize>(
        &self,
        mut rec: T,
        seal: impl Fn(&mut T, &EncryptionKey) -> Result<(), sealed::SealError>,
    ) -> Result<String, StoreError> {
        if let Some(k) = &self.key {
            seal(&mut rec, k).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        serde_json::to_string(&rec).map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn open_integration(&self, text: &str) -> Result<RawIntegration, String> {
        let mut r: RawIntegration = serde_json::from_str(text).map_err(|e| e.to_string())?;
        sealed::Opener::new(self.key.as_deref())
            .integration(0, &mut r)
            .map_err(|e| e.diagnostic(STORE_NAME).message)?;
        Ok(r)
    }

    fn open_connection(&self, text: &str) -> Result<RawConnection, String> {
        let mut r: RawConnection = serde_json::from_str(text).map_err(|e| e.to_string())?;
        sealed::Opener::new(self.key.as_deref())
            .connection(0, &mut r)
            .map_err(|e| e.diagnostic(STORE_NAME).message)?;
        Ok(r)
    }

    async fn commit_changes(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(db_error)?;
        let head = tx
            .query_one("SELECT seq, version FROM sidekey_head FOR UPDATE", &[])
            .await
            .map_err(db_error)?;
        let (mut seq, head_version): (i64, i64) = (head.get(0), head.get(1));
        if seq != self.applied.load(Ordering::SeqCst) {
            // Another replica committed first: apply its changes, then this group again.
            self.announced.fetch_max(seq, Ordering::SeqCst);
            return Err(StoreError::Conflict(
                "another replica changed the store first".into(),
            ));
        }
        let mut top = head_version;
        for ch in &changes {
            if let Change::PutConnection(_, v) = ch {
                let v = i64::try_from(*v).unwrap_or(i64::MAX);
                if v <= head_version {
                    self.seen_version(head_version as u64);
                    return Err(StoreError::Conflict(
                        "another replica wrote a newer version first".into(),
                    ));
                }
                top = top.max(v);
            }
        }
        let mut rows = Vec::with_capacity(changes.len());
        let mut touched = Vec::with_capacity(changes.len());
        for ch in changes {
            seq += 1;
            touched.push((seq, touched_by(&ch)));
            rows.push(self.write_change(&tx, seq, ch).await?);
        }
        // The log keeps the last RETAIN_CHANGES changes; pruned every PRUNE_EVERY changes,
        // in the commit that crosses the mark (a replica away longer reloads whole).
        let before = head.get::<_, i64>(0);
        if before / PRUNE_EVERY != seq / PRUNE_EVERY {
            tx.execute(
                "DELETE FROM sidekey_changes WHERE seq <= $1",
                &[&(seq - RETAIN_CHANGES)],
            )
            .await
            .map_err(db_error)?;
        }
        tx.execute(
            "UPDATE sidekey_head SET seq = $1, version = $2",
            &[&seq, &top],
        )
        .await
        .map_err(db_error)?;
        let payload = Notice::payload(seq, rows);
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        if let Some(cache) = self.cache.get() {
            for (seq, (integration, id)) in touched {
                cache.record(&integration, id.as_deref(), seq);
            }
        }
        self.applied.store(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Writes one change to its table; returns its entry for the change log.
    async fn write_change(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        seq: i64,
        ch: Change,
    ) -> Result<LogRow, StoreError> {
        let row = match ch {
            Change::PutIntegration(r) => {
                let key = r.unique_key.clone();
                let json = self.seal_json(r, sealed::seal_integration)?;
                tx.execute(
                    "INSERT INTO sidekey_integrations (unique_key, record, seq) VALUES ($1, $2::text::jsonb, $3)
                     ON CONFLICT (unique_key) DO UPDATE SET record = excluded.record, seq = excluded.seq",
                    &[&key, &json, &seq],
                )
                .await
                .map_err(db_error)?;
                LogRow::new("integration", key, None, None, Some(json))
            }
            Change::DeleteIntegration(key) => {
                tx.execute(
                    "DELETE FROM sidekey_integrations WHERE unique_key = $1",
                    &[&key],
                )
                .await
                .map_err(db_error)?;
                // Its connections go with it, cached here or not (every replica's snapshot
                // drops them when it applies this change).
                tx.execute(
                    "DELETE FROM sidekey_connections WHERE provider_config_key = $1",
                    &[&key],
                )
                .await
                .map_err(db_error)?;
                LogRow::new("integration", key, None, None, None)
            }
            Change::PutConnection(r, v) => {
                let (pck, cid) = (r.provider_config_key.clone(), r.connection_id.clone());
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                let json = self.seal_json(r, sealed::seal_connection)?;
                tx.execute(
                    "INSERT INTO sidekey_connections (provider_config_key, connection_id, version, record, seq)
                     VALUES ($1, $2, $3, $4::text::jsonb, $5)
                     ON CONFLICT (provider_config_key, connection_id)
                     DO UPDATE SET version = excluded.version, record = excluded.record, seq = excluded.seq",
                    &[&pck, &cid, &v, &json, &seq],
                )
                .await
                .map_err(db_error)?;
                LogRow::new("connection", pck, Some(cid), Some(v), Some(json))
            }
            Change::DeleteConnection {
                provider_config_key,
                connection_id,
            } => {
                tx.execute(
                    "DELETE FROM sidekey_connections WHERE provider_config_key = $1 AND connection_id = $2",
                    &[&provider_config_key, &connection_id],
                )
                .await
                .map_err(db_error)?;
                LogRow::new(
                    "connection",
                    provider_config_key,
                    Some(connection_id),
                    None,
                    None,
                )
            }
            Change::PutKey(k) => {
                let sha = k.sha256.to_ascii_lowercase();
                let json = serde_json::to_string(&k)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                tx.execute(
                    "INSERT INTO sidekey_keys (sha256, record, seq) VALUES ($1, $2::text::jsonb, $3)
                     ON CONFLICT (sha256) DO UPDATE SET record = excluded.record, seq = excluded.seq",
                    &[&sha, &json, &seq],
                )
                .await
                .map_err(db_error)?;
                LogRow::new("key", sha, None, None, Some(json))
            }
            Change::DeleteKey(sha) => {
                let sha = sha.to_ascii_lowercase();
                tx.execute("DELETE FROM sidekey_keys WHERE sha256 = $1", &[&sha])
                    .await
                    .map_err(db_error)?;
                LogRow::new("key", sha, None, None, None)
            }
        };
        tx.execute(
            "INSERT INTO sidekey_changes (seq, kind, key1, key2, version, record) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)",
            &[&seq, &row.kind, &row.key1, &row.key2, &row.version, &row.record],
        )
        .await
        .map_err(db_error)?;
        Ok(row)
    }

    /// Applies every change committed past the last one applied (see the module's text).
    async fn catch_up_locked(&self, current: Arc<Snapshot>) -> Result<(), StoreError> {
        let Some(attached) = self.attached.get() else {
            return Ok(());
        };
        let mut applied = self.applied.load(Ordering::SeqCst);
        let mut next: Snapshot = (*current).clone();
        let mut changes = Vec::new();
        // First what the notifications carried, in order from the next number on.
        let notified: Vec<(i64, LogRow)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|seq, _| *seq > applied);
            let mut run = Vec::new();
            let mut want = applied + 1;
            while let Some(row) = pending.remove(&want) {
                run.push((want, row));
                want += 1;
            }
            run
        };
        for (seq, row) in notified {
            applied = seq;
            self.apply_one(seq, self.change_from_log(row), &mut next, &mut changes);
        }
        if self.announced.load(Ordering::SeqCst) <= applied {
            self.publish_caught_up(attached, &current, next, changes, applied);
            return Ok(());
        }
        let client = self.client().await.map_err(StoreError::from)?;
        loop {
            let rows = client
                .query(
                    "SELECT seq, kind, key1, key2, version, record::text,
                            (extract(epoch from clock_timestamp() - committed_at) * 1000)::float8
                     FROM sidekey_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&applied, &CATCH_UP_BATCH],
                )
                .await
                .map_err(db_error)?;
            let n = rows.len();
            let first = rows.first().map(|r| r.get::<_, i64>(0));
            let gap = match first {
                Some(seq) => seq != applied + 1,
                // Announced but not in the log: pruned (see RETAIN_CHANGES).
                None => changes.is_empty() && self.announced.load(Ordering::SeqCst) > applied,
            };
            if gap {
                drop(client);
                return self.resync_whole(attached, current).await;
            }
            if let Some(last) = rows.last() {
                // How long after its commit the newest change is read here (committed_at is
                // the transaction's start: an upper bound), for RUST_LOG=sidekey::store=debug.
                let lag_ms: f64 = last.get(6);
                tracing::debug!(changes = n, lag_ms, "applying the store's changes");
            }
            for row in rows {
                let seq: i64 = row.get(0);
                applied = seq;
                self.apply_one(seq, self.change_from_row(&row), &mut next, &mut changes);
            }
            if (n as i64) < CATCH_UP_BATCH {
                break;
            }
        }
        self.publish_caught_up(attached, &current, next, changes, applied);
        Ok(())
    }

    /// One change from the log applied to `next` (or skipped, loudly, if it does not load
    /// or compile here).
    fn apply_one(
        &self,
        seq: i64,
        change: Result<Change, String>,
        next: &mut Snapshot,
        changes: &mut Vec<Change>,
    ) {
        if let (Some(cache), Ok(ch)) = (self.cache.get(), &change) {
            let (integration, id) = touched_by(ch);
            cache.record(&integration, id.as_deref(), seq);
            // A connection this replica does not cache stays out: it is read when first used.
            if let (Change::PutConnection(r, _), Some(_)) = (ch, &id) {
                if next
                    .connection(&r.provider_config_key, &r.connection_id)
                    .is_none()
                {
                    return;
                }
            }
        }
        match change {
            Ok(ch) => match next.with(ch.clone()) {
                Ok(s) => {
                    *next = s;
                    changes.push(ch);
                }
                Err(d) => tracing::error!(seq,
                    problem = %d.first().map(ToString::to_string).unwrap_or_default(),
                    "a change from the store does not compile here; skipped"),
            },
            Err(m) => {
                tracing::error!(seq, error = %m, "a change from the store does not load; skipped")
            }
        }
    }

    fn publish_caught_up(
        &self,
        attached: &Attached,
        current: &Arc<Snapshot>,
        mut next: Snapshot,
        changes: Vec<Change>,
        applied: i64,
    ) {
        if !changes.is_empty() {
            next.generation = current.generation + 1;
            crate::state::publish_changes_from(
                &attached.state,
                current,
                Arc::new(next),
                &changes,
                "store change",
            );
        }
        self.applied.store(applied, Ordering::SeqCst);
    }

    /// A notification's payload (see [`Notice`]): its change number, and the entries it
    /// carries kept for the next catch-up.
    fn notified(&self, payload: &str) {
        if let Ok(seq) = payload.parse::<i64>() {
            return self.announce(seq);
        }
        let Ok(notice) = serde_json::from_str::<Notice>(payload) else {
            tracing::debug!("an unexpected notification payload; ignored");
            return;
        };
        let applied = self.applied.load(Ordering::SeqCst);
        let first = notice.seq - notice.rows.len() as i64 + 1;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: a replica that does not apply (the writer stuck on a dead database)
            // reads the log back later instead.
            if pending.len() > MAX_PENDING {
                pending.clear();
            }
            for (i, row) in notice.rows.into_iter().enumerate() {
                let seq = first + i as i64;
                if seq > applied {
                    pending.insert(seq, row);
                }
            }
        }
        self.announce(notice.seq);
    }

    /// Serves providers.yaml as `catalog` from now on: the writer loads the store again over
    /// it (every integration recompiled; a bounded cache starts empty) and publishes that as
    /// a reload. If a stored integration does not compile over it, nothing changes and the
    /// problems are returned (the last good snapshot keeps serving).
    pub async fn reload_providers(&self, catalog: Arc<Catalog>) -> Result<(), StoreError> {
        let Some(a) = self.attached.get() else {
            return Err(StoreError::Unavailable("the store is not attached".into()));
        };
        let (done, result) = tokio::sync::oneshot::channel();
        // A newer file replaces one not loaded yet (its caller hears nothing: superseded).
        *self.next_catalog.lock().unwrap_or_else(|p| p.into_inner()) = Some((catalog, done));
        // The writer's next refresh (this one's, or a group's that comes first) loads it.
        a.writer.local(Box::new(|_| None)).await?;
        result.await.unwrap_or(Ok(()))
    }

    /// The changes this replica missed are no longer in the log (it was away longer than
    /// [`RETAIN_CHANGES`] changes): load everything again and publish it as a whole.
    async fn resync_whole(
        &self,
        attached: &Attached,
        current: Arc<Snapshot>,
    ) -> Result<(), StoreError> {
        tracing::warn!(
            applied = self.applied.load(Ordering::SeqCst),
            "the changes this replica missed were pruned from the store's log; loading it whole"
        );
        self.load_again(attached, current, None).await
    }

    /// Loads the store whole again (over `catalog`, or the current one) and publishes it.
    async fn load_again(
        &self,
        attached: &Attached,
        current: Arc<Snapshot>,
        catalog: Option<Arc<Catalog>>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let reload = catalog.is_some();
        let opts = BuildOptions {
            env_keys: current
                .secret_keys
                .iter()
                .filter(|k| k.from_env)
                .map(|k| k.digest)
                .collect(),
            generation: current.generation + 1,
            encryption_key: self.key.clone(),
            versions: None,
        };
        let mut snap = self
            .load(catalog.unwrap_or_else(|| current.catalog.clone()), &opts)
            .await
            .map_err(|e| match e {
                PgError::Records(d) => StoreError::Invalid(d),
                other => StoreError::Unavailable(other.to_string()),
            })?;
        snap.generation = current.generation + 1;
        if let Some(cache) = self.cache.get() {
            // Changes skipped by this load (a pruned log) are not remembered one by one: a
            // read from before it must not fill the cache.
            cache.forget_before(self.applied.load(Ordering::SeqCst));
        }
        let source = if reload {
            crate::config::Source::Reload {
                trigger: "providers.yaml changed",
                started,
            }
        } else {
            crate::config::Source::Other("store resynchronised")
        };
        crate::state::publish(&attached.state, Arc::new(snap), source);
        Ok(())
    }

    fn change_from_row(&self, row: &tokio_postgres::Row) -> Result<Change, String> {
        self.change_from_log(LogRow {
            kind: row.get::<_, &str>(1).to_string(),
            key1: row.get(2),
            key2: row.get(3),
            version: row.get(4),
            record: row.get(5),
        })
    }

    fn change_from_log(&self, row: LogRow) -> Result<Change, String> {
        let LogRow {
            kind,
            key1,
            key2,
            version,
            record,
        } = row;
        let record = record.as_deref();
        Ok(match (kind.as_str(), record) {
            ("integration", Some(r)) => Change::PutIntegration(self.open_integration(r)?),
            ("integration", None) => Change::DeleteIntegration(key1),
            ("connection", Some(r)) => {
                let v = version.unwrap_or(0).max(0) as u64;
                self.seen_version(v);
                Change::PutConnection(self.open_connection(r)?, v)
            }
            ("connection", None) => Change::DeleteConnection {
                provider_config_key: key1,
                connection_id: key2.unwrap_or_default(),
            },
            ("key", Some(r)) => Change::PutKey(serde_json::from_str(r).map_err(|e| e.to_string())?),
            ("key", None) => Change::DeleteKey(key1),
            (other, _) => return Err(format!("unknown change kind `{other}`")),
        })
    }
}

/// The integration and (for a connection) the connection id a change touches.
fn touched_by(ch: &Change) -> (String, Option<String>) {
    match ch {
        Change::PutIntegration(r) => (r.unique_key.clone(), None),
        Change::DeleteIntegration(k) => (k.clone(), None),
        Change::PutConnection(r, _) => {
            (r.provider_config_key.clone(), Some(r.connection_id.clone()))
        }
        Change::DeleteConnection {
            provider_config_key,
            connection_id,
        } => (provider_config_key.clone(), Some(connection_id.clone())),
        // Keys are not cached: recorded under a name no integration has.
        Change::PutKey(_) | Change::DeleteKey(_) => (String::new(), None),
    }
}

/// A providers.yaml waiting to be loaded, and where its result goes.
type NextCatalog = (
    Arc<Catalog>,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// One entry of the change log, as written and as notified.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LogRow {
    kind: String,
    key1: String,
    key2: Option<String>,
    version: Option<i64>,
    record: Option<String>,
}

impl LogRow {
    fn new(
        kind: &str,
        key1: String,
        key2: Option<String>,
        version: Option<i64>,
        record: Option<String>,
    ) -> Self {
        Self {
            kind: kind.to_string(),
            key1,
            key2,
            version,
            record,
        }
    }
}

/// A notification's payload: the last change number of a commit and, when they fit in
/// PostgreSQL's 8000-byte limit, the commit's log entries themselves (records sealed as in
/// the table), so a replica applies them without reading the log back. Larger commits send
/// the number alone (a plain integer), and the replica reads the log.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Notice {
    seq: i64,
    rows: Vec<LogRow>,
}

/// Notified entries kept for the next catch-up, at most.
const MAX_PENDING: usize = 10_000;
/// Room left in a notification (PostgreSQL refuses payloads of 8000 bytes or more).
const MAX_PAYLOAD: usize = 7_900;

impl Notice {
    fn payload(seq: i64, rows: Vec<LogRow>) -> String {
        match serde_json::to_string(&Notice { seq, rows }) {
            Ok(p) if p.len() < MAX_PAYLOAD => p,
            _ => seq.to_string(),
        }
    }
}

/// Opens the pools' connections on the runtime that opened the store (the request runtime),
/// whoever asks for one. A connection's socket belongs to the runtime it was made on, and its
/// driver task runs there: made on the background runtime (the writer's, at idle priority), a
/// request's cold read would wait for an idle-class thread to be scheduled at each step, which
/// on a busy core is milliseconds.
#[derive(Clone)]
struct SpawnOn {
    tls: tls::MakeRustls,
    runtime: tokio::runtime::Handle,
}

impl deadpool_postgres::Connect for SpawnOn {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let (tls, cfg) = (self.tls.clone(), pg_config.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let driver = self.runtime.spawn(async move {
            match cfg.connect(tls).await {
                Ok((client, connection)) => {
                    if tx.send(Ok(client)).is_ok() {
                        if let Err(e) = connection.await {
                            tracing::warn!(error = %e, "a connection to {STORE_NAME} ended");
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let (tls, cfg) = (self.tls.clone(), pg_config.clone());
        Box::pin(async move {
            match rx.await {
                Ok(Ok(client)) => Ok((client, driver)),
                Ok(Err(e)) => Err(e),
                // The runtime is shutting down: connect here, as deadpool would.
                Err(_) => {
                    let (client, connection) = cfg.connect(tls).await?;
                    Ok((
                        client,
                        tokio::spawn(async move {
                            let _ = connection.await;
                        }),
                    ))
                }
            }
        })
    }
}

/// A connection from `pool`, or why there is none (with the database's error and its causes:
/// the pool's own error does not name it as its source).
async fn get(pool: &Pool) -> Result<deadpool_postgres::Object, Unreachable> {
    pool.get().await.map_err(|e| {
        Unreachable(match &e {
            deadpool_postgres::PoolError::Backend(b) => chain(b),
            other => chain(other),
        })
    })
}

/// The pool could not hand out a connection: the database is down or unreachable.
struct Unreachable(String);

impl From<Unreachable> for StoreError {
    fn from(e: Unreachable) -> Self {
        StoreError::Unavailable(format!("{STORE_NAME} is unreachable: {}", e.0))
    }
}

/// A failed statement: the store did not take the write (nothing was committed).
fn db_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("{STORE_NAME}: {}", chain(&e)))
}

/// An error with its causes ("error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer"): the top line alone rarely says what to fix. None of them holds the URL.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

impl Backend for PgStore {
    fn refresh(
        &self,
        current: Arc<Snapshot>,
    ) -> BoxFuture<'_, Result<Option<Snapshot>, StoreError>> {
        Box::pin(async move {
            let catalog = self
                .next_catalog
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let (Some((catalog, done)), Some(a)) = (catalog, self.attached.get()) {
                // Loaded whole: nothing is left to catch up on. Its result goes to the reload
                // alone: a write waiting in the same group is not refused for a bad file.
                let loaded = self.load_again(a, current.clone(), Some(catalog)).await;
                let failed = loaded.is_err();
                let _ = done.send(loaded);
                if !failed {
                    return Ok(None);
                }
            }
            if self.behind() {
                self.catch_up_locked(current).await?;
            }
            Ok(None)
        })
    }

    fn commit(
        &self,
        _next: Arc<Snapshot>,
        changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.commit_changes(changes))
    }

    fn next_version(&self) -> u64 {
        let now = now_micros();
        let prev = self
            .last_version
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(1).max(now))
            })
            .unwrap_or(now);
        prev.saturating_add(1).max(now)
    }

    fn trim(&self, current: &Snapshot) -> Option<Snapshot> {
        let cache = self.cache.get()?;
        let metrics = &self.attached.get()?.state.metrics;
        match cache.sweep(current) {
            Some((next, evicted)) => {
                metrics.cache_evicted(evicted, next.connection_count());
                tracing::debug!(evicted, "connection cache swept");
                Some(next)
            }
            None => {
                metrics.set_cached_connections(current.connection_count());
                None
            }
        }
    }

    fn conflict_retries(&self) -> usize {
        // Replicas writing at once each find the others' commits first: every retry applies
        // what it missed, so a group commits once the fleet leaves it a gap.
        16
    }
}

/// The fleet-wide refresh lease: a transaction-scoped advisory lock on the connection, held
/// on its own pooled connection until the refreshed credential is committed. A replica killed
/// while holding it loses its database session, and with it the lock: the next replica takes
/// over at once. A holder that hangs is cut off by `idle_in_transaction_session_timeout`.
struct PgLease(Arc<PgStore>);

/// Longest a holder may keep the lease (the token call included).
const LEASE_TIMEOUT: &str = "120s";
/// Longest a replica waits for another's lease.
const LEASE_WAIT: &str = "130s";

fn lease_key(key: &Key) -> i64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"sidekey-refresh\0");
    h.update(key.0.as_bytes());
    h.update(b"\0");
    h.update(key.1.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// Held while a refresh is under way; dropping it ends the lease's transaction.
struct LeaseGuard(Option<deadpool_postgres::Object>);

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        // Never back into the pool inside a transaction: close it instead.
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

impl RefreshLease for PgLease {
    fn acquire<'a>(
        &'a self,
        key: &'a Key,
        version: u64,
    ) -> BoxFuture<'a, Result<LeaseGrant, String>> {
        Box::pin(async move {
            let store = &self.0;
            let client = get(&store.lease_pool)
                .await
                .map_err(|e| StoreError::from(e).to_string())?;
            let guard = LeaseGuard(Some(client));
            let Some(client) = guard.0.as_ref() else {
                return Err("no connection".into());
            };
            let fail = |e: tokio_postgres::Error| format!("{STORE_NAME}: {e}");
            client
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{LEASE_WAIT}'; \
                     SET LOCAL idle_in_transaction_session_timeout = '{LEASE_TIMEOUT}'"
                ))
                .await
                .map_err(fail)?;
            let waiting = std::time::Instant::now();
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&lease_key(key)])
                .await
                .map_err(fail)?;
            tracing::debug!(provider_config_key = %key.0, connection_id = %key.1,
                waited_ms = waiting.elapsed().as_millis() as u64, "refresh lease taken");
            // Read after the lock: another replica that refreshed released it only after
            // committing its token.
            let row = client
                .query_one(
                    "SELECT h.seq, c.version, c.record::text FROM sidekey_head h
                     LEFT JOIN sidekey_connections c
                       ON c.provider_config_key = $1 AND c.connection_id = $2",
                    &[&key.0, &key.1],
                )
                .await
                .map_err(fail)?;
            let seq: i64 = row.get(0);
            let stored_version: Option<i64> = row.get(1);
            let record: Option<&str> = row.get(2);
            let current = match (stored_version, record) {
                (Some(v), Some(text)) if v as u64 != version => {
                    let rec = store.open_connection(text)?;
                    // The local snapshot must hold the record at that version before the
                    // refreshed token is written over it (the write checks the version).
                    store.catch_up(seq).await.map_err(|e| e.to_string())?;
                    stored_credential(&rec).map(|c| (c, v as u64))
                }
                _ => None,
            };
            // With a bounded cache the snapshot may not hold the connection (read on use, not
            // filled yet, or evicted): the refreshed token is written over the snapshot's
            // record, so it must be there first.
            if let (Some(_), Some(v), Some(text), Some(a)) = (
                store.cache.get(),
                stored_version,
                record,
                store.attached.get(),
            ) {
                if a.state.snapshot.load().connection(&key.0, &key.1).is_none() {
                    let read = cache::Read {
                        seq,
                        version: v,
                        record: store.open_connection(text)?,
                    };
                    cache::PgCold(store.clone()).fill(read, true).await;
                }
            }
            Ok(LeaseGrant {
                guard: Box::new(guard),
                current,
            })
        })
    }
}

/// The token part of a stored connection's credential.
fn stored_credential(rec: &RawConnection) -> Option<StoredCredential> {
    use crate::config::vault::RawCredentials;
    match &rec.credentials {
        RawCredentials::OAuth2 {
            access_token,
            refresh_token,
            expires_at,
        } => Some(StoredCredential::OAuth2 {
            access_token: access_token.clone(),
            refresh_token: refresh_token.clone(),
            expires_at: expires_at.clone(),
        }),
        RawCredentials::OAuth2Cc {
            token: Some(token),
            expires_at,
            ..
        } => Some(StoredCredential::OAuth2Cc {
            token: token.clone(),
            expires_at: expires_at.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_never_shows_in_debug_or_errors() {
        let url = StoreUrl::new("postgres://u:hunter2@127.0.0.1:5432/db?sslmode=verify-full");
        assert_eq!(format!("{url:?}"), "StoreUrl(***)");
        assert!(url.config().is_ok(), "verify-full is accepted (as require)");
        let bad = StoreUrl::new("mysql://u:hunter2@h/db");
        let e = bad.config().expect_err("not postgres");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let bad = StoreUrl::new("postgres://u:hunter2@h/db?sslmode=bogus");
        let e = bad.config().expect_err("bad sslmode");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn notifications_carry_entries_only_when_they_fit() {
        let row = |n: usize| {
            LogRow::new(
                "connection",
                "gh".into(),
                Some("u".into()),
                Some(7),
                Some("x".repeat(n)),
            )
        };
        let small = Notice::payload(42, vec![row(10), row(10)]);
        let back: Notice = serde_json::from_str(&small).expect("json");
        assert_eq!((back.seq, back.rows.len()), (42, 2));
        assert_eq!(back.rows[1].version, Some(7));
        // PostgreSQL refuses 8000 bytes: a larger commit sends its number alone.
        assert_eq!(Notice::payload(43, vec![row(8000)]), "43");
    }

    #[test]
    fn lease_keys_differ_per_connection() {
        let k = |a: &str, b: &str| lease_key(&(a.to_string(), b.to_string()));
        assert_eq!(k("i", "c"), k("i", "c"));
        assert_ne!(k("i", "c"), k("i", "d"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(k("ab", "c"), k("a", "bc"));
    }
}
