//! The vault file as a store: the records live in `vault.yaml`, rewritten whole on each
//! commit (temporary file, fsync, rename, fsync of the directory, mode 0600).
//!
//! The file is also edited by hand, so every commit first asks whether it still holds what
//! sidekey last read or wrote (a hash of the file's bytes, taken under the same lock the
//! reloader holds for a whole reload, so reloads and commits never interleave). If it does
//! not, the writer publishes the file's records first and applies the waiting writes on top
//! of them; if the file changes again between that check and the rename, the commit is
//! refused as a conflict instead of overwriting the edit. A vault that does not load stops
//! writes with a conflict that names its first problem, while the last good snapshot serves.
//!
//! With `SIDEKEY_ENCRYPTION_KEY` set, every secret is sealed before the file is written
//! ([`crate::config::sealed`]), so an API write never puts a plaintext secret on disk.
//!
//! Versions are assigned here: a counter that starts at the current time in microseconds, so
//! versions keep increasing across restarts without being stored in the file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Backend, BoxFuture, StoreError};
use crate::config::reload::Reloader;
use crate::config::vault::RawVault;
use crate::config::{load_files, snapshot, Change, Snapshot};

/// The vault file store.
pub struct FileStore {
    inner: Arc<Inner>,
    version: AtomicU64,
}

struct Inner {
    reloader: Arc<Reloader>,
    read_only: bool,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("vault", &self.inner.reloader.paths().vault)
            .field("read_only", &self.inner.read_only)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    pub fn new(reloader: Arc<Reloader>, read_only: bool) -> Self {
        let now = jiff::Timestamp::now().as_microsecond().max(1) as u64;
        Self {
            inner: Arc::new(Inner {
                reloader,
                read_only,
            }),
            version: AtomicU64::new(now),
        }
    }
}

/// Runs blocking file work off the runtime's worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Unavailable(format!(
            "the vault writer failed: {e}"
        )))
    })
}

impl Inner {
    fn vault_path(&self) -> PathBuf {
        let p = &self.reloader.paths().vault;
        // Write through a symlink to its target rather than replacing the link with a file.
        std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())
    }

    fn refresh_blocking(&self, current: &Snapshot) -> Result<Option<Snapshot>, StoreError> {
        let mut last = self.reloader.lock_last_seen();
        let src = load_files(self.reloader.paths()).map_err(|d| {
            StoreError::Conflict(format!(
                "the vault cannot be read: {}",
                d.first().map(ToString::to_string).unwrap_or_default()
            ))
        })?;
        let hash = self.reloader.content_hash(&src);
        if *last == Some(hash) {
            return Ok(None);
        }
        let generation = current.generation + 1;
        let fresh =
            snapshot::build_reusing(&src, &self.reloader.options(generation), Some(current))
                .map_err(|d| {
                    StoreError::Conflict(format!(
                        "the vault was edited and does not load; fix it first: {}",
                        d.first().map(ToString::to_string).unwrap_or_default()
                    ))
                })?;
        *last = Some(hash);
        self.reloader.set_generation(generation);
        Ok(Some(fresh))
    }

    fn commit_blocking(&self, next: &Snapshot) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly(
                "the vault is read-only (--vault-read-only); change it where it is managed".into(),
            ));
        }
        let mut last = self.reloader.lock_last_seen();
        // A reload that published the file's records after this write took its base would be
        // overwritten by it: apply the write again on top of the reload instead.
        if self.reloader.generation() + 1 != next.generation {
            return Err(StoreError::Conflict(
                "the configuration was reloaded while this write was being made".into(),
            ));
        }
        let src = load_files(self.reloader.paths())
            .map_err(|_| StoreError::Conflict("the vault changed while writing".into()))?;
        if *last != Some(self.reloader.content_hash(&src)) {
            return Err(StoreError::Conflict(
                "the vault was edited while this write was being made".into(),
            ));
        }
        let text = render(
            &src.vault,
            next,
            self.reloader.encryption_key().map(|k| &**k),
        )?;
        crate::atomic_file::write(&self.vault_path(), text.as_bytes(), 0o600)
            .map_err(|e| StoreError::Unavailable(format!("cannot write the vault: {e}")))?;
        let written = crate::config::Sources { vault: text, ..src };
        *last = Some(self.reloader.content_hash(&written));
        self.reloader.set_generation(next.generation);
        Ok(())
    }
}

/// The vault text for `next`: the old file's leading comment block, then the records, with
/// every secret sealed when an encryption key is set.
fn render(
    old: &str,
    next: &Snapshot,
    key: Option<&crate::config::sealed::EncryptionKey>,
) -> Result<String, StoreError> {
    let mut records: RawVault = next.records();
    records.secret_keys = next
        .secret_keys
        .iter()
        .filter_map(|k| k.record.clone())
        .collect();
    if let Some(key) = key {
        crate::config::sealed::seal_vault(&mut records, key)
            .map_err(|e| StoreError::Unavailable(format!("cannot seal the vault: {e}")))?;
    }
    let body = serde_yaml_ng::to_string(&records)
        .map_err(|e| StoreError::Unavailable(format!("cannot serialize the vault: {e}")))?;
    let header = crate::config::vault::leading_comments(old);
    Ok(format!("{header}{body}"))
}

impl Backend for FileStore {
    fn refresh(
        &self,
        current: Arc<Snapshot>,
    ) -> BoxFuture<'_, Result<Option<Snapshot>, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || inner.refresh_blocking(&current)))
    }

    fn commit(
        &self,
        next: Arc<Snapshot>,
        _changes: Vec<Change>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || inner.commit_blocking(&next)))
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed)
    }
}
