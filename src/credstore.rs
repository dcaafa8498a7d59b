//! Where refreshed OAuth credentials outlive the process when the store cannot take them: a
//! state file (`--state PATH`) for read-only vaults such as a Kubernetes Secret mount. With a
//! writable vault, `sidekey serve` commits refreshed tokens through the store's writer
//! ([`crate::oauth::TokenManager::use_store`]); this store then keeps nothing but a state file
//! left from a read-only run (its entries still apply while the vault holds what they replace).
//!
//! The state file is written with [`crate::atomic_file::write`] (mode 0600), so a crash leaves
//! the old file or the new one. It holds, per connection, the refreshed credential,
//! `updated_at`, and the fingerprint (see [`crate::config::snapshot::fingerprint`]) of the vault
//! credential it replaced. An entry applies only while the vault still holds that credential:
//! once the vault's credential changes, the vault is newer by definition and the entry is
//! dropped. A fingerprint, not a store version, because the entry must be recognised after a
//! restart, and versions are not stored in the vault.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::vault::RawCredentials;
use crate::config::Snapshot;
use crate::secret::Secret;

/// A credential as sidekey stores it after a refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum StoredCredential {
    #[serde(rename = "OAUTH2")]
    OAuth2 {
        access_token: Secret,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_token: Option<Secret>,
        /// RFC 3339, as written into the vault.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    #[serde(rename = "OAUTH2_CC")]
    OAuth2Cc {
        token: Secret,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
}

/// One state-file entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateEntry {
    pub provider_config_key: String,
    pub connection_id: String,
    /// When sidekey stored this credential (RFC 3339).
    pub updated_at: String,
    /// Hex SHA-256 fingerprint of the vault credential this entry replaces.
    pub replaces: String,
    pub credentials: StoredCredential,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[serde(default)]
    connections: Vec<StateEntry>,
}

const STATE_HEADER: &str = "# sidekey state: OAuth credentials refreshed while the vault was read-only.\n# Each entry applies only while the vault still holds the credential it `replaces`.\n";

/// Why the state file could not be read or written. Never quotes the file's values (it holds
/// tokens): a parse error says only where.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: crate::config::limits::ReadError,
    },
    #[error("{path}: {source}")]
    Refused {
        path: String,
        source: crate::config::limits::Refused,
    },
    #[error("{path}: not a sidekey state file (at `{at}`)")]
    NotState { path: String, at: String },
    #[error("cannot write the state file: {0}")]
    Serialize(String),
    #[error("{path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Where a refreshed credential ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persisted {
    /// Committed into the vault by the store's writer, at this store version.
    Vault(u64),
    State,
    /// Not written: the vault's credential changed by hand (the vault wins) or the connection is
    /// gone.
    Skipped(String),
    /// Nowhere to write (or every write failed): kept in memory only.
    Memory,
}

/// Identifies a connection: (provider_config_key, connection_id).
pub type Key = (String, String);

/// The state file of refreshed credentials. Writes are serialized by one lock, so two
/// connections refreshed at once never rewrite the file from the same stale entries.
#[derive(Debug, Default)]
pub struct CredStore {
    state: Option<PathBuf>,
    entries: Mutex<HashMap<Key, StateEntry>>,
    write_lock: Mutex<()>,
}

impl CredStore {
    /// A store that keeps nothing across restarts.
    pub fn memory() -> Self {
        Self::default()
    }

    /// Opens the store, reading the state file if it exists. An unreadable or malformed state
    /// file is an error: starting without it could resurrect a rotated-away refresh token.
    pub fn open(state: Option<PathBuf>) -> Result<Self, StateFileError> {
        let mut entries = HashMap::new();
        if let Some(p) = &state {
            // The same limits as the other configuration files: a regular file, size-capped.
            match crate::config::limits::read_file_if_exists(p) {
                Ok(Some(f)) => {
                    for e in parse_state(p, &f.text)? {
                        entries.insert((e.provider_config_key.clone(), e.connection_id.clone()), e);
                    }
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(StateFileError::Read {
                        path: p.display().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(Self {
            state,
            entries: Mutex::new(entries),
            write_lock: Mutex::new(()),
        })
    }

    pub fn has_state_file(&self) -> bool {
        self.state.is_some()
    }

    /// The stored credential for a connection whose vault credential has `vault_fp`, if the
    /// state file holds one that replaced exactly that credential.
    pub fn lookup(&self, key: &Key, vault_fp: &[u8; 32]) -> Option<StoredCredential> {
        let entries = self.entries.lock().ok()?;
        let e = entries.get(key)?;
        (e.replaces.eq_ignore_ascii_case(&hex::encode(vault_fp))).then(|| e.credentials.clone())
    }

    /// Drops state entries whose connection is gone or whose vault credential changed, and
    /// rewrites the state file if any was dropped. Blocking I/O: call at startup or from
    /// `spawn_blocking` after a reload.
    pub fn prune(&self, snapshot: &Snapshot) {
        let _w = self.write_lock.lock();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let before = entries.len();
        entries.retain(|(pck, cid), e| {
            let keep = snapshot
                .connection(pck, cid)
                .is_some_and(|c| e.replaces.eq_ignore_ascii_case(&hex::encode(c.fingerprint())));
            if !keep {
                tracing::info!(target: "sidekey::oauth", provider_config_key = %pck, connection_id = %cid,
                    "state entry dropped: the vault's credential changed or the connection is gone");
            }
            keep
        });
        if entries.len() != before {
            let snapshot: Vec<StateEntry> = entries.values().cloned().collect();
            drop(entries);
            if let Err(e) = self.write_state(snapshot) {
                tracing::warn!(target: "sidekey::oauth", error = %e, "cannot rewrite the state file");
            }
        }
    }

    /// Stores a refreshed credential in the state file, as replacing the vault credential
    /// whose fingerprint is `vault_fp`. Blocking I/O.
    pub fn persist(&self, key: &Key, cred: &StoredCredential, vault_fp: &[u8; 32]) -> Persisted {
        let _w = self.write_lock.lock();
        if self.state.is_none() {
            return Persisted::Memory;
        }
        let entry = StateEntry {
            provider_config_key: key.0.clone(),
            connection_id: key.1.clone(),
            updated_at: now_rfc3339(),
            replaces: hex::encode(vault_fp),
            credentials: cred.clone(),
        };
        let all: Vec<StateEntry> = match self.entries.lock() {
            Ok(mut entries) => {
                entries.insert(key.clone(), entry);
                entries.values().cloned().collect()
            }
            Err(_) => return Persisted::Memory,
        };
        match self.write_state(all) {
            Ok(()) => Persisted::State,
            Err(e) => {
                tracing::error!(target: "sidekey::oauth", provider_config_key = %key.0,
                    connection_id = %key.1, error = %e, "cannot write the state file");
                Persisted::Memory
            }
        }
    }

    fn write_state(&self, mut entries: Vec<StateEntry>) -> Result<(), StateFileError> {
        let Some(path) = &self.state else {
            return Ok(());
        };
        entries.sort_by(|a, b| {
            (&a.provider_config_key, &a.connection_id)
                .cmp(&(&b.provider_config_key, &b.connection_id))
        });
        let body = serde_yaml_ng::to_string(&StateFile {
            connections: entries,
        })
        .map_err(|e| StateFileError::Serialize(e.to_string()))?;
        let text = format!("{STATE_HEADER}{body}");
        crate::atomic_file::write(path, text.as_bytes(), 0o600).map_err(|source| {
            StateFileError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }
}

fn parse_state(path: &std::path::Path, text: &str) -> Result<Vec<StateEntry>, StateFileError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let path = || path.display().to_string();
    crate::config::limits::check_yaml(text).map_err(|source| StateFileError::Refused {
        path: path(),
        source,
    })?;
    // Messages from serde may quote a value; the state file holds tokens, so say only where.
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, StateFile>(de)
        .map(|f| f.connections)
        .map_err(|e| StateFileError::NotState {
            path: path(),
            at: e.path().to_string(),
        })
}

fn now_rfc3339() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Puts a refreshed credential into a connection's record: the access token (or client
/// credentials token) and its expiry replace the old ones; a refresh token only when the
/// provider rotated it. `false` if the record holds another type of credential.
pub fn apply_refreshed(creds: &mut RawCredentials, cred: &StoredCredential) -> bool {
    match (cred, creds) {
        (
            StoredCredential::OAuth2 {
                access_token,
                refresh_token,
                expires_at,
            },
            RawCredentials::OAuth2 {
                access_token: a,
                refresh_token: r,
                expires_at: e,
            },
        ) => {
            *a = access_token.clone();
            if let Some(new) = refresh_token {
                *r = Some(new.clone());
            }
            *e = expires_at.clone();
            true
        }
        (
            StoredCredential::OAuth2Cc { token, expires_at },
            RawCredentials::OAuth2Cc {
                token: t,
                expires_at: e,
                ..
            },
        ) => {
            *t = Some(token.clone());
            *e = expires_at.clone();
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::fingerprint;

    const VAULT: &str = "# help text\n# more help\n\nsecret_keys: []\nintegrations:\n  - {unique_key: i, provider: p}\nconnections:\n  - connection_id: c\n    provider_config_key: i\n    credentials: {type: OAUTH2, access_token: old, refresh_token: r1, expires_at: \"2020-01-01T00:00:00Z\", raw: {x: 1}}\n  - {connection_id: d, provider_config_key: i, credentials: {type: OAUTH2, access_token: other}}\n";

    fn key(c: &str) -> Key {
        ("i".into(), c.into())
    }

    fn fp_of(text: &str, c: &str) -> [u8; 32] {
        let v = crate::config::vault::parse("v", text).expect("vault parses");
        let conn = v
            .connections
            .iter()
            .find(|x| x.connection_id == c)
            .expect("conn");
        fingerprint(&conn.credentials)
    }

    fn fresh() -> StoredCredential {
        StoredCredential::OAuth2 {
            access_token: Secret::new("new"),
            refresh_token: Some(Secret::new("r2")),
            expires_at: Some("2030-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn the_state_file_applies_only_while_the_vault_matches() {
        let dir = tempfile::tempdir().expect("dir");
        let state = dir.path().join("state.yaml");
        let store = CredStore::open(Some(state.clone())).expect("open");
        let fp = fp_of(VAULT, "c");
        assert_eq!(store.persist(&key("c"), &fresh(), &fp), Persisted::State);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&state)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(store.lookup(&key("c"), &fp), Some(fresh()));
        assert_eq!(store.lookup(&key("c"), &[0; 32]), None);
        let text = std::fs::read_to_string(&state).expect("state");
        assert!(!text.is_empty());

        // Reopened (a restart): the entry is still there.
        let store = CredStore::open(Some(state.clone())).expect("reopen");
        assert_eq!(store.lookup(&key("c"), &fp), Some(fresh()));

        // A snapshot whose vault credential changed drops the entry, on disk too.
        let src = crate::config::Sources {
            providers_name: "p".into(),
            providers: "p: {auth_mode: OAUTH2, token_url: \"https://t.example/t\", proxy: {base_url: \"https://a.example\"}}".into(),
            vault_name: "v".into(),
            vault: VAULT.replace("access_token: old", "access_token: by-hand"),
        };
        let snap = crate::config::snapshot::build(&src, &Default::default()).expect("snapshot");
        store.prune(&snap);
        assert_eq!(store.lookup(&key("c"), &fp), None);
        let store = CredStore::open(Some(state)).expect("reopen");
        assert_eq!(store.lookup(&key("c"), &fp), None);
    }

    #[test]
    fn memory_store_and_bad_state_files() {
        let store = CredStore::memory();
        let fp = fp_of(VAULT, "c");
        assert_eq!(store.persist(&key("c"), &fresh(), &fp), Persisted::Memory);
        let dir = tempfile::tempdir().expect("dir");
        let state = dir.path().join("state.yaml");
        std::fs::write(
            &state,
            "connections: [{provider_config_key: i, connection_id: c, token: sk_hidden}]",
        )
        .expect("write");
        let err = CredStore::open(Some(state)).expect_err("refused");
        assert!(!err.to_string().contains("sk_hidden"), "{err}");
    }
}
