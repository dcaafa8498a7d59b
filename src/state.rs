//! The apply path: how a new snapshot becomes the one serving.
//!
//! Every source of change ends here — a file reload, a hand edit the store's writer noticed,
//! an API write, later a database notification: swap the snapshot in one step, log what
//! changed (counts, never values), forget the token state of connections that are gone, and
//! move the metrics (the generation gauge; `sidekey_reloads_total` for reloads). Requests that
//! loaded the previous snapshot finish on it. The sources only build: the file reloader
//! (`config::reload`, below this module) reaches [`publish`] through `config::Publish`.
//! Every publish also reconciles the connection auth errors (`webhooks::status`) with the new
//! snapshot: a changed credential clears its error, a recompiled connection gets its flag.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::diff::{diff, Changes, Counts};
use crate::config::{Change, Snapshot, Source};
use crate::metrics::Metrics;
use crate::oauth::TokenManager;
use crate::webhooks::status::AuthErrors;

/// What every source of change publishes into: the one serving snapshot, the token state that
/// must forget removed connections, and the metrics that follow the generation. Built by
/// `app::AppBuilder`; the request path, the writer and the reload loop share it.
pub struct State {
    pub snapshot: ArcSwap<Snapshot>,
    /// OAuth token state per connection; outlives snapshot swaps.
    pub oauth: TokenManager,
    /// Served on the admin listener; other parts record through it (retries, refreshes, reloads).
    pub metrics: Arc<Metrics>,
    /// Connections whose credential was refused; outlives snapshot swaps (each publish
    /// reconciles it with the new snapshot).
    pub errors: Arc<AuthErrors>,
    /// Set when the snapshot holds only a bounded cache of the connections (the PostgreSQL
    /// store's `--connection-cache`): where the others are read from.
    pub cold: std::sync::OnceLock<Arc<dyn ColdStore>>,
}

/// A boxed future, so that [`ColdStore`] stays object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The store behind a snapshot that caches only the connections in use. The request path asks
/// it only on a miss; everything else reads the snapshot as before.
pub trait ColdStore: Send + Sync + 'static {
    /// The connection from the store (`None`: it does not exist), compiled against the serving
    /// snapshot. The cache is filled behind the caller; with `wait`, only once the serving
    /// snapshot holds it (an API write computes from the snapshot).
    fn connection<'a>(
        &'a self,
        integration: &'a str,
        id: &'a str,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Arc<crate::config::Connection>>, ColdError>>;

    /// Connections whose id, or whose integration's key, is `selector`, narrowed to the
    /// integration and connection id when given (at most two: one, or ambiguous), for
    /// `/connections/{selector}/proxy`.
    fn selector<'a>(
        &'a self,
        selector: &'a str,
        integration: Option<&'a str>,
        id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Arc<crate::config::Connection>>, ColdError>>;

    /// Whether the store holds any connection of `integration`.
    fn has_connections<'a>(
        &'a self,
        integration: &'a str,
    ) -> BoxFuture<'a, Result<bool, ColdError>>;

    /// The connections `GET /connections` lists, newest first as Nango orders them, narrowed
    /// by `filter`; each is handed to `each` until it answers `false`. Not cached.
    fn list<'a>(
        &'a self,
        filter: ListFilter<'a>,
        each: &'a mut (dyn FnMut(Arc<crate::config::Connection>) -> bool + Send),
    ) -> BoxFuture<'a, Result<(), ColdError>>;
}

/// What the store narrows a listing by (the rest is filtered in memory).
#[derive(Debug, Default, Clone, Copy)]
pub struct ListFilter<'a> {
    pub integrations: Option<&'a [String]>,
    pub connection_id: Option<&'a str>,
    pub end_user_id: Option<&'a str>,
}

/// The store could not be read; the message names no secret and no URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ColdError(pub String);

impl State {
    /// Makes sure the serving snapshot holds connection `(integration, id)` if the store has
    /// it (a no-op without a bounded cache, or when it is cached already).
    pub async fn ensure_connection(&self, integration: &str, id: &str) -> Result<(), ColdError> {
        let Some(cold) = self.cold.get() else {
            return Ok(());
        };
        if self.snapshot.load().connection(integration, id).is_some() {
            return Ok(());
        }
        cold.connection(integration, id, true).await.map(|_| ())
    }
}

/// The file reload loop and the store's hand-edit check live below this module: they publish
/// through this trait, into the same apply path as everything else.
impl crate::config::Publish for State {
    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
    fn publish(&self, new: Arc<Snapshot>, source: Source) -> Changes {
        publish(self, new, source)
    }
    fn refused(&self) {
        self.metrics.reload("failure");
    }
}

/// Publishes a snapshot built from scratch (a reload, a hand edit seen by the writer): the
/// changes are worked out by comparing the two snapshots. A reload also drops the state-file
/// entries the new vault supersedes, which is file I/O: reloads publish from a blocking
/// thread, and the other sources prune memory only.
pub fn publish(app: &State, new: Arc<Snapshot>, source: Source) -> Changes {
    let old = app.snapshot.swap(new.clone());
    let changes = diff(&old, &new);
    match source {
        Source::Reload { trigger, started } => {
            log_reload(&new, &changes, trigger, started);
            app.oauth.prune(&new);
            app.metrics.reload("success");
        }
        Source::Other(name) => {
            log(&new, &changes, name);
            app.oauth.prune_memory(&new);
        }
    }
    app.metrics.set_generation(new.generation);
    app.errors.reconcile_held(&new, app.cold.get().is_some());
    // Freeing a large snapshot takes time too: here (a reload's blocking thread, the writer's
    // task) rather than on a request thread, unless a request still holds it.
    drop(old);
    changes
}

/// Publishes a snapshot made by applying `applied` to `base`: the log counts come from the
/// changes themselves, so the cost does not grow with the number of connections. Only if
/// `base` is still the one serving: a reload that swapped in the file's records after the
/// write was committed already holds it, and is newer.
pub fn publish_changes(
    app: &State,
    base: &Arc<Snapshot>,
    new: Arc<Snapshot>,
    applied: &[Change],
) -> Changes {
    publish_changes_from(app, base, new, applied, "api write")
}

/// [`publish_changes`], logged as coming from `source` (another replica's write, applied
/// from the shared store, is "store change").
pub fn publish_changes_from(
    app: &State,
    base: &Arc<Snapshot>,
    new: Arc<Snapshot>,
    applied: &[Change],
    source: &'static str,
) -> Changes {
    let old = app.snapshot.compare_and_swap(base, new.clone());
    if !Arc::ptr_eq(&old, base) {
        tracing::debug!(
            generation = new.generation,
            "a reload published a newer snapshot first"
        );
        return Changes::default();
    }
    let old: Arc<Snapshot> = arc_swap::Guard::into_inner(old);
    let mut c = Changes::default();
    let count = |counts: &mut Counts, existed: bool| {
        if existed {
            counts.changed += 1
        } else {
            counts.added += 1
        }
    };
    let mut removed_any = false;
    for ch in applied {
        match ch {
            Change::PutIntegration(r) => count(
                &mut c.integrations,
                old.integrations.contains_key(r.unique_key.as_str()),
            ),
            Change::DeleteIntegration(k) => {
                c.integrations.removed += 1;
                c.connections.removed += old.connections.get(k.as_str()).map_or(0, |t| t.len());
                removed_any = true;
            }
            Change::PutConnection(r, _) => count(
                &mut c.connections,
                old.connection(&r.provider_config_key, &r.connection_id)
                    .is_some(),
            ),
            Change::DeleteConnection { .. } => {
                c.connections.removed += 1;
                removed_any = true;
            }
            Change::PutKey(_) => c.caller_keys_added += 1,
            Change::DeleteKey(_) => c.caller_keys_removed += 1,
        }
    }
    log(&new, &c, source);
    if removed_any {
        app.oauth.prune_memory(&new);
    }
    let partial = app.cold.get().is_some();
    if partial {
        // A connection the snapshot does not hold may only be evicted: drop the errors of
        // what was deleted, by name.
        for ch in applied {
            match ch {
                Change::DeleteIntegration(k) => app.errors.forget(k, None),
                Change::DeleteConnection {
                    provider_config_key,
                    connection_id,
                } => app.errors.forget(provider_config_key, Some(connection_id)),
                _ => {}
            }
        }
    }
    app.errors.reconcile_held(&new, partial);
    app.metrics.set_generation(new.generation);
    c
}

/// Publishes a change of what the bounded connection cache holds (a connection read from the
/// store, or evicted): no record changed, so nothing is logged at info or counted as a
/// change; only if `base` is still the one serving.
pub fn publish_cache(app: &State, base: &Arc<Snapshot>, new: Arc<Snapshot>, evicted: bool) -> bool {
    let old = app.snapshot.compare_and_swap(base, new.clone());
    if !Arc::ptr_eq(&old, base) {
        return false;
    }
    if evicted {
        app.oauth.prune_memory(&new);
    }
    app.errors.reconcile_held(&new, true);
    app.metrics.set_generation(new.generation);
    true
}

/// The event operators and tests read after a file reload.
fn log_reload(new: &Snapshot, changes: &Changes, trigger: &str, started: Instant) {
    tracing::info!(
        generation = new.generation,
        trigger,
        integrations = new.integrations.len(),
        connections = new.connection_count(),
        integrations_added = changes.integrations.added,
        integrations_removed = changes.integrations.removed,
        integrations_changed = changes.integrations.changed,
        connections_added = changes.connections.added,
        connections_removed = changes.connections.removed,
        connections_changed = changes.connections.changed,
        caller_keys_added = changes.caller_keys_added,
        caller_keys_removed = changes.caller_keys_removed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "configuration reloaded"
    );
}

fn log(new: &Snapshot, changes: &Changes, source: &str) {
    tracing::info!(
        generation = new.generation,
        source,
        integrations_added = changes.integrations.added,
        integrations_removed = changes.integrations.removed,
        integrations_changed = changes.integrations.changed,
        connections_added = changes.connections.added,
        connections_removed = changes.connections.removed,
        connections_changed = changes.connections.changed,
        caller_keys_added = changes.caller_keys_added,
        caller_keys_removed = changes.caller_keys_removed,
        "state updated"
    );
}
