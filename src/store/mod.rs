//! The store seam: where records live durably, and the one way to change them.
//!
//! A write is a [`Write`]: changes that commit together or not at all, with preconditions
//! checked against the state as it is when the write commits (not when it was sent), so
//! concurrent writers cannot lose each other's updates. The [`writer`] task takes every write
//! that is waiting, applies each to the snapshot in turn, makes the result durable with one
//! store commit (group commit), publishes it through [`crate::state`], and only then answers
//! each caller: a write answered `Ok` is durable and visible to the proxy.
//!
//! [`file::FileStore`] keeps the records in the vault file; [`postgres::PgStore`], the store
//! of a fleet, implements the same [`Backend`] trait without touching the request path.

pub mod file;
pub mod postgres;
pub mod render;
pub mod sessions;
pub mod splice;
mod tokens;
pub mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{Change, Diagnostic, Snapshot};

/// What must hold when a write commits; a failed one refuses the whole write.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    IntegrationExists(String),
    IntegrationAbsent(String),
    ConnectionExists {
        provider_config_key: String,
        connection_id: String,
    },
    /// The integration's record is still this one (a PATCH computed from what the caller
    /// read): a hand edit or another write of it meanwhile is not silently overwritten.
    /// Boxed: the record is much larger than the other variants.
    IntegrationRecord {
        key: String,
        record: Box<crate::config::vault::RawIntegration>,
    },
    /// The connection is at this version (an update computed from what the caller read).
    ConnectionVersion {
        provider_config_key: String,
        connection_id: String,
        version: u64,
    },
}

/// Changes that commit together, and what must hold for them to.
#[derive(Debug, Clone, Default)]
pub struct Write {
    pub expect: Vec<Expect>,
    pub changes: Vec<Change>,
}

impl Write {
    pub fn new(changes: Vec<Change>) -> Self {
        Self {
            expect: Vec::new(),
            changes,
        }
    }

    pub fn expecting(mut self, e: Expect) -> Self {
        self.expect.push(e);
        self
    }
}

/// Why a write was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The records would not compile (paths relative to the record).
    #[error("invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Diagnostic>),
    /// A precondition did not hold.
    #[error("precondition failed: {0:?}")]
    Precondition(Expect),
    /// The store cannot take writes (a read-only vault, a Kubernetes Secret mount).
    #[error("the store is read-only: {0}")]
    ReadOnly(String),
    /// The stored data changed in a way this write cannot be applied to.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store could not be reached or written; nothing was committed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A boxed future, so that [`Backend`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A durable home for the records.
pub trait Backend: Send + Sync + 'static {
    /// A new snapshot if the stored records changed behind this process's back (a hand edit
    /// of the vault); the writer publishes it before applying the waiting writes to it.
    fn refresh(
        &self,
        current: Arc<Snapshot>,
    ) -> BoxFuture<'_, Result<Option<Snapshot>, StoreError>>;

    /// Makes `next` durable: called once per group of writes, with every change in it.
    fn commit(
        &self,
        next: Arc<Snapshot>,
        changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A version for a record written now: increasing, never reused.
    fn next_version(&self) -> u64;

    /// Called by the writer once writes have stopped for a moment ([`writer`]), with the
    /// snapshot serving: the vault file folds its journal then. Nothing by default.
    fn idle(&self, current: Arc<Snapshot>) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = current;
        Box::pin(async { Ok(()) })
    }

    /// How many times the writer applies a group again after a [`StoreError::Conflict`] (each
    /// time after [`Backend::refresh`]). The vault file: once (a hand edit racing the write).
    /// A shared database, where other replicas commit all the time, says more.
    fn conflict_retries(&self) -> usize {
        1
    }

    /// A smaller snapshot when this one caches more than the backend keeps (the PostgreSQL
    /// store's bounded connection cache evicts connections not used lately); called by the
    /// writer after each group. The vault file holds everything: never.
    fn trim(&self, _current: &Snapshot) -> Option<Snapshot> {
        None
    }
}
