//! Refreshed OAuth tokens as store writes: the store's [`Writer`] is the token manager's
//! [`TokenWriter`], so a refreshed credential reaches the vault through the one writer, at a
//! new version, like any API write.
//!
//! The write is computed at commit time from the connection's record as it is then (an API
//! write of its metadata meanwhile is kept), with the new token in it. It happens only while
//! the record is still at the version the token manager started from or last wrote: a record
//! changed meanwhile (the writer reads a vault edited behind its back before it applies, and
//! the build gives an edited record a new version) wins, and nothing is written.

use std::future::Future;
use std::pin::Pin;

use super::writer::Writer;
use super::{Expect, StoreError};
use crate::config::Snapshot;
use crate::credstore::{Key, Persisted, StoredCredential};
use crate::oauth::TokenWriter;

impl TokenWriter for Writer {
    fn persist<'a>(
        &'a self,
        key: &'a Key,
        cred: &'a StoredCredential,
        version: u64,
    ) -> Pin<Box<dyn Future<Output = Option<Persisted>> + Send + 'a>> {
        Box::pin(async move {
            let make = || -> super::writer::Compute {
                let (pck, cid, cred) = (key.0.clone(), key.1.clone(), cred.clone());
                Box::new(move |snap: &Snapshot| {
                    let Some(c) = snap.connection(&pck, &cid) else {
                        return Err(StoreError::Precondition(Expect::ConnectionExists {
                            provider_config_key: pck.clone(),
                            connection_id: cid.clone(),
                        }));
                    };
                    let mut record = c.record();
                    if c.version != version
                        || !crate::credstore::apply_refreshed(&mut record.credentials, &cred)
                    {
                        return Err(StoreError::Precondition(Expect::ConnectionVersion {
                            provider_config_key: pck.clone(),
                            connection_id: cid.clone(),
                            version: c.version,
                        }));
                    }
                    record.updated_at = Some(crate::config::vault::now());
                    Ok(vec![crate::config::Change::PutConnection(record, 0)])
                })
            };
            let mut result = self.update(make()).await;
            // A bounded connection cache (the PostgreSQL store) may have evicted the connection
            // during the token call, or a reload emptied it: read it in again and write once
            // more, so the refreshed token (a rotated refresh token) is not lost.
            if let (Err(StoreError::Precondition(Expect::ConnectionExists { .. })), Some(state)) =
                (&result, self.state())
            {
                if state.cold.get().is_some()
                    && state.ensure_connection(&key.0, &key.1).await.is_ok()
                {
                    result = self.update(make()).await;
                }
            }
            match result {
                Ok(snap) => Some(match snap.connection(&key.0, &key.1) {
                    Some(c) => Persisted::Vault(c.version),
                    None => Persisted::Skipped("the connection is no longer in the vault".into()),
                }),
                Err(StoreError::Precondition(Expect::ConnectionExists { .. })) => Some(
                    Persisted::Skipped("the connection is no longer in the vault".into()),
                ),
                Err(StoreError::Precondition(_)) => Some(Persisted::Skipped(
                    "the connection's credential was changed in the vault meanwhile".into(),
                )),
                // A vault on a read-only mount without `--vault-read-only`: the state file,
                // as with the flag (no warning each time: nothing is wrong with the token).
                Err(StoreError::ReadOnly(_)) => {
                    tracing::debug!(target: "sidekey::oauth", provider_config_key = %key.0,
                        connection_id = %key.1,
                        "the vault is read-only; the refreshed credential goes to the state file");
                    None
                }
                Err(e) => {
                    tracing::warn!(target: "sidekey::oauth", provider_config_key = %key.0,
                        connection_id = %key.1, error = %e,
                        "cannot write the refreshed credential to the vault; trying the state file");
                    None
                }
            }
        })
    }
}
