//! The bounded connection cache (`--connection-cache N`): a replica in front of a store of a
//! million connections holds only those it serves. Integrations and caller keys are loaded
//! whole; a connection enters the snapshot the first time a request names it (one indexed
//! query), is kept fresh by the fleet's change notifications like any other record, and is
//! evicted when the cache is over its bound and the connection was not used since the last
//! sweep (second chance: each request sets a flag on the compiled connection, the sweep
//! clears it).
//!
//! A read and the changes the replica applies race: a connection read at change number `S`
//! must not enter the snapshot if a change to it after `S` was already applied (the change was
//! skipped, because the connection was not cached then, and the read would bring back the
//! older record). So the store remembers, for the last changes it applied or committed, the
//! newest change number of each connection and integration they touched ([`Recent`]); a fill
//! whose read is older than one of those is dropped (the next request reads again). Fills and
//! evictions run on the writer's task ([`crate::store::writer::Local`]) after the store's
//! refresh, so they are ordered with every other change of the snapshot.
//!
//! Requests for the same missing connection at once share one read (single flight).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use super::PgStore;
use crate::config::vault::RawConnection;
use crate::config::{Change, Connection, Snapshot};
use crate::state::{BoxFuture, ColdError, ColdStore, ListFilter};
use crate::store::StoreError;

/// Changes remembered for the race above; past this many the memory is cleared and every
/// read older than the last change applied is dropped instead.
const RECENT_MAX: usize = 65_536;
/// The least time between two sweeps while the cache is within twice its bound.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The bound and the bookkeeping of the cache.
pub(super) struct Cache {
    capacity: usize,
    recent: Mutex<Recent>,
    last_sweep: Mutex<Option<std::time::Instant>>,
    /// Reads under way, by (integration, connection id).
    inflight: Mutex<HashMap<(String, String), Arc<Flight>>>,
}

type Flight = OnceCell<Result<Option<Arc<Connection>>, ColdError>>;

#[derive(Default)]
struct Recent {
    /// The newest change number that touched each connection, or (id `""`) integration.
    by_key: HashMap<(Box<str>, Box<str>), i64>,
    /// Every change at or below this number may be forgotten: reads older are dropped.
    floor: i64,
}

impl Cache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            recent: Mutex::new(Recent::default()),
            last_sweep: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Remembers that change `seq` touched this connection (or, with `None`, integration).
    pub(super) fn record(&self, integration: &str, id: Option<&str>, seq: i64) {
        let mut r = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if r.by_key.len() >= RECENT_MAX {
            let top = r.by_key.values().copied().max().unwrap_or(0);
            r.floor = r.floor.max(top);
            r.by_key.clear();
        }
        let k = (Box::from(integration), Box::from(id.unwrap_or("")));
        let e = r.by_key.entry(k).or_insert(seq);
        *e = (*e).max(seq);
    }

    /// Refuses every read older than change `seq` (the store was loaded whole again).
    pub(super) fn forget_before(&self, seq: i64) {
        let mut r = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        r.floor = r.floor.max(seq);
        r.by_key.clear();
    }

    /// Whether a change after `seq` touched the connection or its integration.
    fn changed_after(&self, integration: &str, id: &str, seq: i64) -> bool {
        let r = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let newer = |i: &str| {
            r.by_key
                .get(&(Box::from(integration), Box::from(i)))
                .is_some_and(|&s| s > seq)
        };
        r.floor > seq || newer(id) || newer("")
    }

    /// The snapshot without the connections not used since the last sweep, when it holds
    /// more than the bound (down to nine tenths of it, so a sweep is not needed again at
    /// once); `None` when it is within the bound. A sweep takes only connections unused since
    /// the one before, at most every [`SWEEP_EVERY`]: a burst that uses more than the bound at
    /// once (an API write naming many connections, read just before it) is not evicted under
    /// its feet, so the cache may hold more for a moment. Past twice the bound it also takes
    /// connections in use, at once.
    pub(super) fn sweep(&self, snap: &Snapshot) -> Option<(Snapshot, usize)> {
        let held = snap.connection_count();
        if held <= self.capacity {
            return None;
        }
        let hard = held > self.capacity.saturating_mul(2);
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !hard && last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return None;
            }
            *last = Some(std::time::Instant::now());
        }
        let keep = self.capacity - self.capacity / 10;
        let excess = held - keep;
        let mut victims: std::collections::HashSet<(String, String)> = Default::default();
        // The first pass takes connections not used since the last sweep and clears the mark
        // of the others; past twice the bound a second pass takes those unmarked by the first.
        'passes: for _ in 0..(if hard { 2 } else { 1 }) {
            for table in snap.connections.values() {
                for c in table.values() {
                    if victims.len() >= excess {
                        break 'passes;
                    }
                    if !c.take_used() {
                        victims.insert((
                            c.provider_config_key.to_string(),
                            c.connection_id.to_string(),
                        ));
                    }
                }
            }
        }
        if victims.is_empty() {
            return None;
        }
        let mut next = snap.clone();
        let evicted = victims.len();
        for (provider_config_key, connection_id) in victims {
            if let Ok(s) = next.with(Change::DeleteConnection {
                provider_config_key,
                connection_id,
            }) {
                next = s;
            }
        }
        Some((next, evicted))
    }
}

/// What [`ColdStore`] reads through: the store and the state it fills.
pub(super) struct PgCold(pub(super) Arc<PgStore>);

/// One connection as read from the table, with the change number the read saw.
pub(super) struct Read {
    pub(super) seq: i64,
    pub(super) version: i64,
    pub(super) record: RawConnection,
}

fn cold_error(e: StoreError) -> ColdError {
    ColdError(match e {
        StoreError::Unavailable(m) => m,
        other => other.to_string(),
    })
}

/// A failed statement, as the store names it (no URL, no value).
fn failed(e: tokio_postgres::Error) -> ColdError {
    cold_error(super::db_error(e))
}

impl PgCold {
    /// A pooled connection, or why the store cannot be read.
    async fn client(&self) -> Result<deadpool_postgres::Object, ColdError> {
        self.0.client().await.map_err(|e| cold_error(e.into()))
    }

    fn cache(&self) -> Result<&Cache, ColdError> {
        self.0
            .cache
            .get()
            .ok_or_else(|| ColdError("the connection cache is not set up".into()))
    }

    /// Reads one connection by its key (the primary key's index).
    async fn read(&self, integration: &str, id: &str) -> Result<Option<Read>, ColdError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT h.seq, c.version, c.record::text FROM sidekey_head h
                 LEFT JOIN sidekey_connections c
                   ON c.provider_config_key = $1 AND c.connection_id = $2",
            )
            .await
            .map_err(failed)?;
        let row = client
            .query_one(&stmt, &[&integration, &id])
            .await
            .map_err(failed)?;
        let (Some(version), Some(text)) =
            (row.get::<_, Option<i64>>(1), row.get::<_, Option<&str>>(2))
        else {
            return Ok(None);
        };
        let record = match self.0.open_connection(text) {
            Ok(r) => r,
            Err(problem) => {
                // As a whole load skips it: logged (the message names the field, never its
                // value), and not served.
                tracing::error!(provider_config_key = %integration, connection_id = %id,
                    %problem, "a stored connection does not load; not served");
                return Ok(None);
            }
        };
        Ok(Some(Read {
            seq: row.get(0),
            version,
            record,
        }))
    }

    /// Compiles a read against the serving snapshot; `None` if its integration is gone or it
    /// does not compile here (as a whole load skips it, loudly: the caller gets 404).
    fn compile(&self, read: &Read) -> Option<Arc<Connection>> {
        let state = self.attached().ok()?;
        let snap = state.snapshot.load();
        if !snap
            .integrations
            .contains_key(read.record.provider_config_key.as_str())
        {
            return None;
        }
        match snap.with(Change::PutConnection(
            read.record.clone(),
            read.version.max(0) as u64,
        )) {
            Ok(with) => with
                .connection(&read.record.provider_config_key, &read.record.connection_id)
                .cloned(),
            Err(d) => {
                tracing::error!(provider_config_key = %read.record.provider_config_key,
                    connection_id = %read.record.connection_id,
                    problem = %d.first().map(ToString::to_string).unwrap_or_default(),
                    "a stored connection does not compile here; not served");
                None
            }
        }
    }

    fn attached(&self) -> Result<&Arc<crate::state::State>, ColdError> {
        self.0
            .attached
            .get()
            .map(|a| &a.state)
            .ok_or_else(|| ColdError("the store is not attached yet".into()))
    }

    /// Hands a read to the writer to enter the snapshot (see the module's text); with `wait`,
    /// returns once the writer has handled it.
    pub(super) async fn fill(&self, read: Read, wait: bool) {
        let Some(attached) = self.0.attached.get() else {
            return;
        };
        // The writer's refresh must have applied at least what the read saw.
        self.0.announce(read.seq);
        let store = self.0.clone();
        let local: crate::store::writer::Local = Box::new(move |snap: &Snapshot| {
            let Read {
                seq,
                version,
                record,
            } = read;
            let cache = store.cache.get()?;
            if store.applied.load(std::sync::atomic::Ordering::SeqCst) < seq
                || cache.changed_after(&record.provider_config_key, &record.connection_id, seq)
            {
                return None;
            }
            let version = version.max(0) as u64;
            if snap
                .connection(&record.provider_config_key, &record.connection_id)
                .is_some_and(|c| c.version >= version)
            {
                return None;
            }
            snap.with(Change::PutConnection(record, version)).ok()
        });
        let writer = attached.writer.clone();
        if wait {
            let _ = writer.local(local).await;
        } else {
            tokio::spawn(async move {
                let _ = writer.local(local).await;
            });
        }
    }

    async fn load(
        &self,
        integration: &str,
        id: &str,
        wait: bool,
    ) -> Result<Option<Arc<Connection>>, ColdError> {
        let state = self.attached()?;
        // With `wait` the caller reads the snapshot next: a fill refused because a change
        // newer than the read was applied meanwhile is read again (a few times at most).
        let tries = if wait { 3 } else { 1 };
        let mut conn = None;
        for _ in 0..tries {
            let read = match self.read(integration, id).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    state.metrics.cache_load("absent");
                    return Ok(None);
                }
                Err(e) => {
                    state.metrics.cache_load("error");
                    return Err(e);
                }
            };
            state.metrics.cache_load("found");
            conn = self.compile(&read);
            if conn.is_none() {
                return Ok(None);
            }
            self.fill(read, wait).await;
            if !wait || state.snapshot.load().connection(integration, id).is_some() {
                break;
            }
        }
        Ok(conn)
    }
}

/// A stored record opened, or `None` (logged) when it does not open here: one bad row is
/// left out of a list, as a whole load leaves it out.
fn opened(store: &PgStore, text: &str) -> Option<RawConnection> {
    match store.open_connection(text) {
        Ok(r) => Some(r),
        Err(problem) => {
            tracing::error!(%problem, "a stored connection does not load; left out");
            None
        }
    }
}

/// Takes a read's entry out of [`Cache::inflight`] when dropped, if it is still that read's.
struct Landed<'a> {
    cache: &'a Cache,
    key: (String, String),
    flight: Arc<Flight>,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        let mut m = self
            .cache
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if m.get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            m.remove(&self.key);
        }
    }
}

impl ColdStore for PgCold {
    fn connection<'a>(
        &'a self,
        integration: &'a str,
        id: &'a str,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Arc<Connection>>, ColdError>> {
        Box::pin(async move {
            let cache = self.cache()?;
            if wait {
                // API writes are rare: a read of their own, filled before they go on.
                return self.load(integration, id, true).await;
            }
            let key = (integration.to_string(), id.to_string());
            let flight = {
                let mut m = cache
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                m.entry(key.clone()).or_default().clone()
            };
            // Removed from the map when this request is done with it, answered or dropped (a
            // caller that hangs up must not leave its entry behind).
            let _done = Landed {
                cache,
                key,
                flight: flight.clone(),
            };
            flight
                .get_or_init(|| self.load(integration, id, false))
                .await
                .clone()
        })
    }

    fn selector<'a>(
        &'a self,
        selector: &'a str,
        integration: Option<&'a str>,
        id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Arc<Connection>>, ColdError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT h.seq, c.version, c.record::text FROM sidekey_head h
                     JOIN sidekey_connections c
                       ON (c.connection_id = $1 OR c.provider_config_key = $1)
                      AND ($2::text IS NULL OR c.provider_config_key = $2)
                      AND ($3::text IS NULL OR c.connection_id = $3)
                     ORDER BY c.provider_config_key, c.connection_id LIMIT 2",
                    &[&selector, &integration, &id],
                )
                .await
                .map_err(failed)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let Some(record) = opened(&self.0, row.get(2)) else {
                    continue;
                };
                let read = Read {
                    seq: row.get(0),
                    version: row.get(1),
                    record,
                };
                if let Some(c) = self.compile(&read) {
                    out.push(c);
                    self.fill(read, false).await;
                }
            }
            Ok(out)
        })
    }

    fn has_connections<'a>(
        &'a self,
        integration: &'a str,
    ) -> BoxFuture<'a, Result<bool, ColdError>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM sidekey_connections WHERE provider_config_key = $1)",
                    &[&integration],
                )
                .await
                .map(|row| row.get(0))
                .map_err(failed)
        })
    }

    fn list<'a>(
        &'a self,
        filter: ListFilter<'a>,
        each: &'a mut (dyn FnMut(Arc<Connection>) -> bool + Send),
    ) -> BoxFuture<'a, Result<(), ColdError>> {
        Box::pin(async move {
            use futures_util::StreamExt as _;
            let client = self.client().await?;
            let integrations: Option<Vec<String>> = filter.integrations.map(<[String]>::to_vec);
            let rows = client
                .query_raw(
                    "SELECT version, record::text FROM sidekey_connections
                     WHERE ($1::text[] IS NULL OR provider_config_key = ANY($1))
                       AND ($2::text IS NULL OR connection_id = $2)
                       AND ($3::text IS NULL OR record->'end_user'->>'id' = $3)
                     ORDER BY record->>'created_at' DESC NULLS LAST, provider_config_key, connection_id",
                    [
                        &integrations as &(dyn tokio_postgres::types::ToSql + Sync),
                        &filter.connection_id,
                        &filter.end_user_id,
                    ],
                )
                .await
                .map_err(failed)?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let row = row.map_err(failed)?;
                let Some(record) = opened(&self.0, row.get(1)) else {
                    continue;
                };
                let read = Read {
                    seq: 0,
                    version: row.get(0),
                    record,
                };
                // One that does not compile here is not listed (as at a whole load).
                if let Some(c) = self.compile(&read) {
                    if !each(c) {
                        break;
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::{build, BuildOptions};
    use crate::config::Sources;

    fn snapshot(n: usize) -> Snapshot {
        let mut vault =
            String::from("integrations:\n  - {unique_key: gh, provider: k}\nconnections:\n");
        for i in 0..n {
            vault.push_str(&format!(
                "  - {{connection_id: c{i}, provider_config_key: gh, credentials: {{type: API_KEY, apiKey: k{i}}}}}\n"
            ));
        }
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: "k: {auth_mode: API_KEY, proxy: {base_url: \"https://k.example\", headers: {x-key: \"${apiKey}\"}}}\n".into(),
            vault_name: "vault.yaml".into(),
            vault,
        };
        match build(&src, &BuildOptions::default()) {
            Ok(s) => s,
            Err(d) => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_read_older_than_a_change_it_missed_is_refused() {
        let cache = Cache::new(10);
        cache.record("gh", Some("c1"), 7);
        assert!(cache.changed_after("gh", "c1", 6), "read before change 7");
        assert!(
            !cache.changed_after("gh", "c1", 7),
            "read at change 7 saw it"
        );
        assert!(!cache.changed_after("gh", "c2", 6), "another connection");
        // An integration's change covers all its connections.
        cache.record("gh", None, 9);
        assert!(cache.changed_after("gh", "c2", 8));
        assert!(!cache.changed_after("other", "c2", 8));
        // A whole load: every read before it is refused.
        cache.forget_before(20);
        assert!(cache.changed_after("other", "c9", 19));
        assert!(!cache.changed_after("other", "c9", 20));
        // Forgotten changes make every older read refused.
        for i in 0..RECENT_MAX + 1 {
            cache.record("x", Some(&i.to_string()), 100 + i as i64);
        }
        assert!(cache.changed_after("never", "touched", 100));
    }

    #[test]
    fn a_sweep_takes_connections_unused_since_the_last_one() {
        let cache = Cache::new(10);
        let snap = snapshot(12);
        // Everything was just used (connections are compiled marked): the first sweep only
        // clears the marks, and leaves the cache over its bound for a moment.
        assert!(cache.sweep(&snap).is_none());
        // c0..c4 are used again; the next sweep (past SWEEP_EVERY) takes only unused ones.
        for i in 0..5 {
            if let Some(c) = snap.connection("gh", &format!("c{i}")) {
                c.touch();
            }
        }
        *cache
            .last_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let (next, evicted) = cache.sweep(&snap).expect("over the bound");
        assert_eq!(evicted, 12 - 9, "down to nine tenths of the bound");
        assert_eq!(next.connection_count(), 9);
        for i in 0..5 {
            assert!(
                next.connection("gh", &format!("c{i}")).is_some(),
                "c{i} was used"
            );
        }
        // Within the bound: nothing to do.
        assert!(cache.sweep(&next).is_none());
        // Past twice the bound, used connections go too, at once.
        let small = Cache::new(2);
        let (next, evicted) = small.sweep(&snap).expect("hard");
        assert_eq!((next.connection_count(), evicted), (2, 10));
    }
}
