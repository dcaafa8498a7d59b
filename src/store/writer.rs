//! The one writer: serialises every write, commits waiting writes together, publishes.
//!
//! Writes queue on a channel. The task takes all that are waiting (up to [`MAX_GROUP`]),
//! first publishes whatever the backend says changed behind its back, then applies each
//! write to the snapshot in order — a write whose precondition fails, or whose records do not
//! compile, is refused alone and the others go on — and commits the survivors with one
//! backend call. Only after that commit is the new snapshot published and each writer
//! answered, so an `Ok` means durable and visible. If the commit finds the stored data
//! changed meanwhile (a hand edit racing the write, another replica's commit), the group is
//! tried again on top of it ([`Backend::conflict_retries`] times); after that the writers get
//! the conflict.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Backend, Expect, StoreError, Write};
use crate::config::{Change, Snapshot};
use crate::state::State;

/// The most writes committed together.
const MAX_GROUP: usize = 256;

struct Pending {
    write: Write,
    /// Computes the write's changes from the state it commits on (see [`Writer::update`]).
    compute: Option<Compute>,
    /// A change of what the snapshot caches, not of any record (see [`Writer::local`]).
    local: Option<Local>,
    reply: oneshot::Sender<Result<Arc<Snapshot>, StoreError>>,
}

/// A change of the snapshot that is not a write: the bounded connection cache taking in a
/// connection read from the store. It runs on the writer's task, after the backend's refresh,
/// so it is ordered with every change the snapshot takes; `None` leaves the snapshot as it is.
pub type Local = Box<dyn FnOnce(&Snapshot) -> Option<Snapshot> + Send>;

/// Changes worked out from the state as it is when the write commits (after the backend's
/// refresh and the writes before it in the group), or why it must not commit. Called again
/// if the group is retried.
pub type Compute = Box<dyn Fn(&Snapshot) -> Result<Vec<Change>, StoreError> + Send + Sync>;

/// The handle API routes and the token manager write through.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
    /// The state it publishes into (weak: the state's token manager holds the writer).
    state: std::sync::Weak<State>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer task for `app`'s snapshot over `backend` on `runtime` (the app's
    /// background runtime: a group's apply and publish are CPU the proxy should not wait for).
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        app: Arc<State>,
        backend: Arc<dyn Backend>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
        let state = Arc::downgrade(&app);
        runtime.spawn(run(app, backend, rx));
        Self { tx, state }
    }

    /// The state this writer publishes into, while it exists.
    pub fn state(&self) -> Option<Arc<State>> {
        self.state.upgrade()
    }

    /// Commits one write; the snapshot that includes it, once it is durable and published.
    pub async fn write(&self, write: Write) -> Result<Arc<Snapshot>, StoreError> {
        self.send(write, None, None).await
    }

    /// Commits the changes `compute` makes from the state at commit time: a read-modify-write
    /// of records that other writes (or a hand edit) may change meanwhile, such as a
    /// connection whose refreshed token replaces its credential and nothing else.
    pub async fn update(&self, compute: Compute) -> Result<Arc<Snapshot>, StoreError> {
        self.send(Write::default(), Some(compute), None).await
    }

    /// Changes what the snapshot caches (see [`Local`]), on the writer's task; the serving
    /// snapshot afterwards.
    pub async fn local(&self, local: Local) -> Result<Arc<Snapshot>, StoreError> {
        self.send(Write::default(), None, Some(local)).await
    }

    async fn send(
        &self,
        write: Write,
        compute: Option<Compute>,
        local: Option<Local>,
    ) -> Result<Arc<Snapshot>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable("the writer has stopped".into());
        self.tx
            .send(Pending {
                write,
                compute,
                local,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The longest a group waits for more writes (see [`run`]).
const MAX_GATHER: Duration = Duration::from_millis(5);

/// How long without a write before the backend is told writes went idle
/// ([`Backend::idle`]: the vault file folds its journal).
const IDLE_AFTER: Duration = Duration::from_secs(1);

async fn run(app: Arc<State>, backend: Arc<dyn Backend>, mut rx: mpsc::Receiver<Pending>) {
    // How many writes the last commit saw in the system (the group it answered plus those
    // queued behind it), and how long it took.
    let mut in_system = 0usize;
    let mut last_commit = Duration::ZERO;
    // Whether the backend should hear that writes went idle (once after start, for a journal
    // left by the last run, and once after each burst of writes).
    let mut idle_due = true;
    loop {
        let first = if idle_due {
            match tokio::time::timeout(IDLE_AFTER, rx.recv()).await {
                Ok(first) => first,
                Err(_) => {
                    idle_due = false;
                    if let Err(e) = backend.idle(app.snapshot.load_full()).await {
                        // The next commit tries again; nothing was lost.
                        tracing::warn!(error = %e, "the store could not tidy up while idle");
                    }
                    // A burst of writes freed every snapshot it replaced; mimalloc keeps such
                    // pages until asked (as after a reload): give them back once writes stop.
                    crate::memory::release_freed();
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { break };
        idle_due = true;
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // The writers the last group answered send their next writes a round trip later,
        // while those that arrived during the commit are already queued. Committing only the
        // queued ones splits steady writers into two halves that take turns (16 writers made
        // groups of 8 and 8: half the writes per rewrite; measured, BENCHMARKS.md). So a group
        // smaller than what the last commit saw waits a little for the rest: a quarter of the
        // last commit, at most MAX_GATHER. A lone writer never waits.
        let want = in_system.min(MAX_GROUP);
        if batch.len() < want {
            let deadline = tokio::time::Instant::now() + (last_commit / 4).min(MAX_GATHER);
            while batch.len() < want {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        let (locals, batch): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.local.is_some());
        if !locals.is_empty() {
            apply_locals(&app, backend.as_ref(), locals).await;
        }
        // Only writes size the next gather: cache fills are not commits.
        if !batch.is_empty() {
            let size = batch.len();
            commit_group(&app, backend.as_ref(), batch).await;
            last_commit = started.elapsed();
            in_system = size + rx.len();
        }
        trim(&app, backend.as_ref());
    }
}

/// Brings the snapshot up to the store: what changed behind this process's back (a hand
/// edit of the vault) is published before anything is applied on top.
async fn refresh(app: &State, backend: &dyn Backend) -> Result<(), StoreError> {
    if let Some(fresh) = backend.refresh(app.snapshot.load_full()).await? {
        crate::state::publish(
            app,
            Arc::new(fresh),
            crate::config::Source::Other("vault edited on disk"),
        );
    }
    Ok(())
}

/// Cache changes: after the backend's refresh (so the snapshot has every change the store
/// announced), each applied in turn and published once, without a commit.
async fn apply_locals(app: &State, backend: &dyn Backend, locals: Vec<Pending>) {
    if let Err(e) = refresh(app, backend).await {
        return answer_all(locals, Err(e));
    }
    let base = app.snapshot.load_full();
    let mut cur: Option<Snapshot> = None;
    let mut replies = Vec::with_capacity(locals.len());
    for p in locals {
        if let Some(f) = p.local {
            if let Some(next) = f(cur.as_ref().unwrap_or(&base)) {
                cur = Some(next);
            }
        }
        replies.push(p.reply);
    }
    let served = match cur {
        Some(next) => {
            let next = Arc::new(next);
            crate::state::publish_cache(app, &base, next.clone(), false);
            next
        }
        None => base,
    };
    for r in replies {
        let _ = r.send(Ok(served.clone()));
    }
}

/// Lets the backend bound what the snapshot caches (see [`Backend::trim`]).
fn trim(app: &State, backend: &dyn Backend) {
    let base = app.snapshot.load_full();
    if let Some(next) = backend.trim(&base) {
        crate::state::publish_cache(app, &base, Arc::new(next), true);
    }
}

async fn commit_group(app: &State, backend: &dyn Backend, batch: Vec<Pending>) {
    let mut last_conflict = None;
    for _attempt in 0..=backend.conflict_retries() {
        // Where a group's time goes, for `RUST_LOG=sidekey::store=debug` (BENCHMARKS.md).
        let started = std::time::Instant::now();
        if let Err(e) = refresh(app, backend).await {
            return answer_all(batch, Err(e));
        }
        let base = app.snapshot.load_full();
        let mut cur: Snapshot = (*base).clone();
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(batch.len());
        let mut all = Vec::new();
        for p in &batch {
            match apply(&cur, &p.write, p.compute.as_ref(), backend) {
                Ok((next, changes)) => {
                    cur = next;
                    all.extend(changes);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if all.is_empty() {
            return answer(batch, results, &base);
        }
        cur.generation = base.generation + 1;
        let next = Arc::new(cur);
        let applied = started.elapsed();
        match backend.commit(next.clone(), all.clone()).await {
            Ok(()) => {
                let committed = started.elapsed();
                crate::state::publish_changes(app, &base, next.clone(), &all);
                tracing::debug!(
                    writes = batch.len(),
                    refresh_and_apply_us = applied.as_micros() as u64,
                    commit_us = (committed - applied).as_micros() as u64,
                    publish_us = (started.elapsed() - committed).as_micros() as u64,
                    "group committed"
                );
                return answer(batch, results, &next);
            }
            Err(StoreError::Conflict(why)) => last_conflict = Some(why),
            Err(e) => return answer_all(batch, Err(e)),
        }
    }
    let why = last_conflict.unwrap_or_default();
    answer_all(batch, Err(StoreError::Conflict(why)))
}

/// One write applied to `cur`: the new snapshot and the changes as committed (versions set).
fn apply(
    cur: &Snapshot,
    write: &Write,
    compute: Option<&Compute>,
    backend: &dyn Backend,
) -> Result<(Snapshot, Vec<Change>), StoreError> {
    for e in &write.expect {
        if !holds(cur, e) {
            return Err(StoreError::Precondition(e.clone()));
        }
    }
    let computed;
    let planned = match compute {
        Some(f) => {
            computed = f(cur)?;
            &computed
        }
        None => &write.changes,
    };
    let mut next = cur.clone();
    let mut changes = Vec::with_capacity(planned.len());
    for ch in planned {
        let ch = match ch.clone() {
            Change::PutConnection(raw, _) => Change::PutConnection(raw, backend.next_version()),
            other => other,
        };
        next = next.with(ch.clone()).map_err(StoreError::Invalid)?;
        changes.push(ch);
    }
    Ok((next, changes))
}

fn holds(s: &Snapshot, e: &Expect) -> bool {
    match e {
        Expect::IntegrationExists(k) => s.integrations.contains_key(k.as_str()),
        Expect::IntegrationAbsent(k) => !s.integrations.contains_key(k.as_str()),
        Expect::IntegrationRecord { key, record } => s
            .integrations
            .get(key.as_str())
            .is_some_and(|i| i.record == **record),
        Expect::ConnectionExists {
            provider_config_key,
            connection_id,
        } => s.connection(provider_config_key, connection_id).is_some(),
        Expect::ConnectionVersion {
            provider_config_key,
            connection_id,
            version,
        } => s
            .connection(provider_config_key, connection_id)
            .is_some_and(|c| c.version == *version),
    }
}

fn answer(batch: Vec<Pending>, results: Vec<Result<(), StoreError>>, snap: &Arc<Snapshot>) {
    for (p, r) in batch.into_iter().zip(results) {
        let _ = p.reply.send(r.map(|()| snap.clone()));
    }
}

fn answer_all(batch: Vec<Pending>, r: Result<Arc<Snapshot>, StoreError>) {
    for p in batch {
        let _ = p.reply.send(r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::{build, BuildOptions};
    use crate::config::Sources;

    fn snapshot(display_name: &str) -> Snapshot {
        let src = Sources {
            providers_name: "providers.yaml".into(),
            providers: "oauth: {auth_mode: OAUTH2, token_url: \"https://t.example/token\", proxy: {base_url: \"https://o.example\"}}\n".into(),
            vault_name: "vault.yaml".into(),
            vault: format!(
                "integrations:\n  - {{unique_key: gh, provider: oauth, display_name: {display_name}, credentials: {{type: OAUTH2, oauth_client_id: id, oauth_client_secret: s1}}}}\n"
            ),
        };
        match build(&src, &BuildOptions::default()) {
            Ok(s) => s,
            Err(d) => panic!("{d:?}"),
        }
    }

    fn rec(s: &Snapshot) -> crate::config::vault::RawIntegration {
        match s.integrations.get("gh") {
            Some(i) => i.record.clone(),
            None => panic!("no integration gh"),
        }
    }

    /// A PATCH of an integration commits only while the record it was computed from is still
    /// the integration's: a hand edit (or another write) in between refuses it.
    #[test]
    fn integration_record_holds_only_while_the_record_is_unchanged() {
        let read = snapshot("First");
        let expect = |s: &Snapshot| Expect::IntegrationRecord {
            key: "gh".into(),
            record: Box::new(rec(s)),
        };
        let e = expect(&read);
        assert!(holds(&read, &e));
        // The same text built again (a reload that changed nothing) still holds.
        assert!(holds(&snapshot("First"), &e));
        assert!(!holds(&snapshot("Edited"), &e));
        let mut secret = rec(&read);
        if let Some(c) = secret.credentials.as_mut() {
            c.oauth_client_secret = Some("s2".to_string().into());
        }
        let other = Expect::IntegrationRecord {
            key: "gh".into(),
            record: Box::new(secret),
        };
        assert!(!holds(&read, &other));
        let gone = Expect::IntegrationRecord {
            key: "absent".into(),
            record: Box::new(rec(&read)),
        };
        assert!(!holds(&read, &gone));
    }
}
