//! Moving records between the two stores: `sidekey store import` (a vault file into
//! PostgreSQL) and `sidekey store export` (PostgreSQL into a vault file). Both go through the
//! same code as serving: the vault is checked and opened by the build `sidekey check` runs, the
//! import is one commit of the store (sealed, versioned, logged in `sidekey_changes` and
//! notified, so running replicas apply it at once), and the export is the file store's own
//! renderer (`store::render`), sealing every secret when `SIDEKEY_ENCRYPTION_KEY` is set, so
//! the exported vault passes `sidekey check` with the same key.

use std::sync::Arc;

use super::{PgError, PgStore};
use crate::config::{BuildOptions, Change, Snapshot};
use crate::store::Backend as _;

/// What an import wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Imported {
    pub caller_keys: usize,
    pub integrations: usize,
    pub connections: usize,
}

/// Writes every record of `vault` (a snapshot built from the vault file) into the store, in
/// one transaction: records with the same names are replaced, others in the store are kept.
pub async fn import(store: &PgStore, vault: &Snapshot) -> Result<Imported, PgError> {
    // Loading first gives the store's change number, which the commit checks.
    let opts = BuildOptions {
        env_keys: Vec::new(),
        generation: 0,
        encryption_key: store.key.clone(),
        versions: None,
    };
    store.load(vault.catalog.clone(), &opts).await?;
    let mut changes = Vec::new();
    let mut done = Imported::default();
    for k in vault.secret_keys.iter().filter_map(|k| k.record.clone()) {
        changes.push(Change::PutKey(k));
        done.caller_keys += 1;
    }
    let records = vault.records();
    for i in records.integrations {
        changes.push(Change::PutIntegration(i));
        done.integrations += 1;
    }
    for c in records.connections {
        changes.push(Change::PutConnection(c, store.next_version()));
        done.connections += 1;
    }
    store
        .commit_changes(changes)
        .await
        .map_err(|e| PgError::Write(e.to_string()))?;
    Ok(done)
}

/// The store's records as a vault file's text (secrets sealed with the store's key, if any).
pub async fn export(
    store: &PgStore,
    catalog: Arc<crate::config::providers::Catalog>,
) -> Result<(Vec<u8>, Snapshot), PgError> {
    let opts = BuildOptions {
        env_keys: Vec::new(),
        generation: 0,
        encryption_key: store.key.clone(),
        versions: None,
    };
    let snap = store.load(catalog, &opts).await?;
    let mut out = Vec::new();
    let header = "# sidekey vault exported from the PostgreSQL store (`sidekey store export`).\n";
    crate::store::render::write_snapshot(&mut out, header, &snap, store.key.as_deref())
        .map_err(|e| PgError::Write(format!("cannot render the vault: {e}")))?;
    Ok((out, snap))
}
